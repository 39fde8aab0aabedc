"""The seam between edgerun and an inference runtime.

A backend wraps one loaded model in one runtime on one delegate: numpy arrays
in, numpy arrays out. Pre- and post-processing live outside it
(``edgerun.processing``), selection of the delegate lives outside it
(``edgerun.accel``). The cut is here because everything above it is the same
for every runtime, and everything below it is vendor code that can fail in
vendor ways: a backend converts those failures into ``EdgerunError``
subclasses at this boundary.

Invariant: ``run`` takes and returns *float* data for quantized tensors. A
full-integer INT8 model is fed float inputs that the backend quantizes with
the tensor's own scale and zero point, and its outputs are dequantized the
same way, so a caller never sees the difference except in speed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np

from edgerun.errors import InputError, ModelLoadError
from edgerun.files import special_file, special_kind
from edgerun.opencv import opencv

__all__ = [
    "Backend",
    "QuantParams",
    "TensorSpec",
    "detect_format",
    "numeric",
    "Quantizer",
    "dequantize",
    "import_failure",
    "missing_library",
    "not_installed",
    "one_line",
]


class QuantParams(msgspec.Struct, frozen=True):
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


class TensorSpec(msgspec.Struct, frozen=True):
    """One input or output tensor as the runtime declares it.

    ``shape`` has ``None`` for dynamic dimensions; ``dtype`` is the type the
    runtime stores (``int8`` for a quantized tensor, whose ``quant`` then
    gives the parameters used to convert from and to float).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    quant: QuantParams | None = None

    @property
    def is_quantized(self) -> bool:
        """True when the runtime stores this tensor as integers with a scale."""
        return self.quant is not None

    @property
    def dynamic(self) -> bool:
        """True when any dimension is only known at run time."""
        return any(d is None for d in self.shape)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of ``shape`` fits this tensor: the same rank, and every fixed dimension equal."""
        return len(shape) == len(self.shape) and all(d is None or d == s for s, d in zip(shape, self.shape))

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dimension set (batch for the first, 1 elsewhere)."""
        return tuple((batch if i == 0 else 1) if d is None else d for i, d in enumerate(self.shape))

    def describe(self) -> str:
        """A short human form such as ``input [N,8,8,1] float32``."""
        dims = ",".join(
            "N" if (d is None and i == 0) else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)
        )
        text = f"{self.name} [{dims}] {np.dtype(self.dtype).name}"
        if self.quant is not None:
            text += f" (scale {self.quant.scale:.6g}, zero point {self.quant.zero_point})"
        return text

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": np.dtype(self.dtype).name,
            "quant": None if self.quant is None else {"scale": self.quant.scale, "zero_point": self.quant.zero_point},
        }


@runtime_checkable
class Backend(Protocol):
    """A model loaded in one runtime on one delegate.

    Attributes:
        format: ``"onnx"`` or ``"tflite"``.
        delegate: the edgerun name of the delegate the model runs on
            (``cpu``, ``xnnpack``, ``cuda``, ``edgetpu``...).
        inputs: the input tensors, in the order ``run`` takes them.
        outputs: the output tensors, in the order ``run`` returns them.
        threadsafe: whether ``run`` may be called from several threads at once.
    """

    format: str
    delegate: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    threadsafe: bool

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one inference; quantized tensors are converted from and to float."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""
        ...


class Quantizer:
    """Float to integer conversion for one quantized input tensor.

    OpenCV's ``addWeighted`` does the multiply, add, round-half-to-even and
    saturating cast in one pass: 46 us for a 224x224x3 input against 96 us for
    the five numpy passes, bit-identical (measured on the reference machine).
    """

    __slots__ = ("_cv2", "_cv_type", "_dtype", "_inv_scale", "_zero_point")

    def __init__(self, quant: QuantParams, dtype: np.dtype) -> None:
        self._inv_scale = 1.0 / quant.scale
        self._zero_point = float(quant.zero_point)
        self._dtype = np.dtype(dtype)
        self._cv2: Any = None
        self._cv_type = {"int8": 1, "uint8": 0}.get(self._dtype.name)  # CV_8S, CV_8U

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Quantize ``x``; integer input of the right type is passed through unchanged."""
        if x.dtype == self._dtype:
            return x
        if self._cv_type is not None and x.dtype == np.float32:
            if self._cv2 is None:
                self._cv2 = opencv()
            flat = np.ascontiguousarray(x).reshape(-1, 1)
            out = self._cv2.addWeighted(flat, self._inv_scale, flat, 0.0, self._zero_point, dtype=self._cv_type)
            return out.reshape(x.shape)
        info = np.iinfo(self._dtype)
        with np.errstate(over="ignore"):  # x / scale may pass float32's range: clipped to the integers below
            q = x.astype(np.float32)  # an array whatever its rank: a 0-d product would be a scalar, which out= refuses
            q *= np.float32(self._inv_scale)
            q += np.float32(self._zero_point)
            np.rint(q, out=q)
            np.clip(q, info.min, info.max, out=q)
            return q.astype(self._dtype)


def numeric(x: Any, spec: TensorSpec) -> np.ndarray:
    """``x`` unchanged if it is a numeric array ``run`` may convert to ``spec``'s type; else ``InputError``.

    Called only off the fast path (an input of another type than the tensor's): a list,
    a string or complex array, a bool array would otherwise fail in numpy or be cast silently.
    """
    if not isinstance(x, np.ndarray):
        raise InputError(f"{spec.name}: a numpy array is expected, got a {type(x).__name__}")
    if x.dtype.kind not in "fiu" and x.dtype != spec.dtype:
        raise InputError(f"{spec.name}: array dtype {x.dtype} is not numeric; {spec.describe()} expected")
    # float64 into a float32 tensor, or into a quantized one (which takes float32 values): a value past float32's
    # range would be cast to infinity (or clipped to the integer range), with numpy's warning on stderr
    wide = spec.dtype.itemsize if spec.dtype.kind == "f" else 4
    if x.dtype.kind == "f" and x.size and x.dtype != np.float32:  # float32, a quantized tensor's usual input, as is
        # quantized, NaN would be a confident answer (and numpy's cast warning on stderr, from float16 too)
        if spec.quant is not None and not np.isfinite(x).all():
            raise InputError(f"{spec.name}: array has NaN or infinite values; {spec.describe()} expected")
        if x.dtype.itemsize > wide and beyond_float32(x):
            raise InputError(f"{spec.name}: array has values beyond float32's range; {spec.describe()} expected")
    return x


FLOAT32_MAX = float(np.finfo(np.float32).max)


def beyond_float32(x: np.ndarray) -> bool:
    """Whether a wider float array holds a value past float32's range (infinite once cast); NaN is not. No copy
    of the array is made (``np.abs`` would make one)."""
    if not x.size:
        return False
    largest = np.fmax.reduce(x, axis=None)  # fmax passes NaN over, where max() would give NaN for the whole array
    smallest = np.fmin.reduce(x, axis=None)
    return bool(largest > FLOAT32_MAX or -smallest > FLOAT32_MAX)


def dequantize(q: np.ndarray, quant: QuantParams) -> np.ndarray:
    """Integer to float with the tensor's own parameters."""
    x = q.astype(np.float32)
    x -= np.float32(quant.zero_point)
    x *= np.float32(quant.scale)
    return x


_TFLITE_MAGIC = b"TFL3"


def detect_format(path: Path) -> str:
    """Tell a model's format from the file's content, not its name.

    A TFLite file is a FlatBuffer with the identifier ``TFL3`` at byte 4. An
    ONNX file is a protobuf ``ModelProto`` whose first field is
    ``ir_version`` (field 1, varint: tag byte ``0x08``); the runtime then
    validates the rest.

    Anything but a regular file (a FIFO, a socket, a device) is refused before it is opened: a FIFO
    with no writer held every command that loads a model until killed. It is opened without waiting
    (``O_NONBLOCK``, nothing to a regular file) and looked at again once open, for one put there since.

    Raises:
        ModelLoadError: the file is missing, empty, not a regular file, or neither format.
    """
    if (kind := special_file(path)) is not None:
        raise ModelLoadError(f"model path is {kind}, not a model file: {path}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if (kind := special_kind(mode)) is not None:
                raise ModelLoadError(f"model path is {kind}, not a model file: {path}")
            if stat.S_ISDIR(mode):  # os.open opens a folder for reading; its read says EISDIR
                raise IsADirectoryError
            head = os.read(fd, 16)  # a regular file: all 16 bytes, or all there are
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelLoadError(f"model path is a directory, not a model file: {path}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    if not head:
        raise ModelLoadError(f"model file is empty: {path}")
    if head[4:8] == _TFLITE_MAGIC:
        return "tflite"
    if head[0] == 0x08 and len(head) > 2 and head[1] < 0x80:
        return "onnx"
    raise ModelLoadError(f"not a model: {path} is neither an ONNX nor a TFLite file")


def one_line(exc: BaseException) -> str:
    """The first line of a vendor exception's message, for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def not_installed(exc: ImportError, package: str) -> bool:
    """True when ``exc`` says that ``package`` itself is absent.

    Any other ``ImportError`` means the package is there and its import failed: a
    shared library it links against is missing (``libXYZ.so: cannot open shared
    object file``), or a module it needs. That runtime is installed but unusable,
    and the user needs the import's reason, not "pip install" advice.
    """
    return isinstance(exc, ModuleNotFoundError) and exc.name == package


#: How a failed load of a shared library reads on Linux, macOS and Windows.
_LIBRARY_MISSING = ("cannot open shared object file", "Library not loaded", "DLL load failed")


def missing_library(text: str) -> bool:
    """True when an import error's ``text`` says a shared library could not be loaded."""
    return any(m in text for m in _LIBRARY_MISSING)


def raise_if_interrupted(exc: BaseException) -> None:
    """Raise ``KeyboardInterrupt`` when a vendor import's failure ``exc`` stems from one.

    A Ctrl-C that lands while an extension module initialises comes back as that module's
    failure, e.g. pybind11's ``ImportError: initialization failed`` with the interrupt as its
    cause (onnxruntime). It is the user stopping the command, not a broken install to reinstall.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        seen.add(id(link))
        link = link.__cause__ or link.__context__


def import_failure(exc: BaseException, reinstall: str) -> str:
    """``(ImportError: ...): hint`` for a vendor package that is installed and does not import.

    The hint is to install the shared library the error names when that is what is
    missing, else ``reinstall`` (e.g. "reinstall onnxruntime for this Python and numpy").
    """
    text = one_line(exc)
    hint = "install the shared library it names" if missing_library(text) else reinstall
    return f"({type(exc).__name__}: {text}): {hint}"
