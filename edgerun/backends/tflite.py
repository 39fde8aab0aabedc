"""TFLite / LiteRT backend.

The interpreter comes from ``ai-edge-litert`` (the maintained runtime, with
XNNPACK for INT8), else ``tflite_runtime`` (what older device images have;
2.14 fails under numpy 2 and has no XNNPACK for INT8), else TensorFlow.

Delegates:
    ``xnnpack``  the interpreter's default CPU delegate (XNNPACK), multi-threaded;
    ``cpu``      the built-in reference kernels without default delegates;
    ``edgetpu``  Coral Edge TPU through ``libedgetpu`` (only ``*_edgetpu.tflite`` models);
    ``gpu``      the TFLite GPU delegate library (OpenCL/OpenGL on Arm boards).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.backends.base import (
    Quantizer,
    QuantParams,
    TensorSpec,
    dequantize,
    missing_library,
    not_installed,
    numeric,
    one_line,
    raise_if_interrupted,
)
from edgerun.errors import (
    BackendUnavailableError,
    DelegateError,
    InferenceError,
    InputError,
    ModelLoadError,
    RuntimeUnusableError,
)
from edgerun.native import native_calls

log = logging.getLogger(__name__)

#: Library file of each external delegate, per operating system.
DELEGATE_LIBRARIES: dict[str, dict[str, str]] = {
    "edgetpu": {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"},
    "gpu": {"Linux": "libtensorflowlite_gpu_delegate.so", "Darwin": "libtensorflowlite_gpu_delegate.dylib"},
}

DELEGATES = ("edgetpu", "gpu", "xnnpack", "cpu")

_INSTALL_HINTS = {
    "edgetpu": "install the Edge TPU runtime (libedgetpu1-std from the Coral apt repository)",
    "gpu": "build or install libtensorflowlite_gpu_delegate.so for this board",
}


def library_loads(name: str) -> str | None:
    """Try to load a shared library; return the error text, or None if it loads."""
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return str(exc).strip() or f"{name} not found"
    return None


def delegate_library(name: str) -> str | None:
    """The file name of delegate ``name``'s library on this OS, if it has one."""
    return DELEGATE_LIBRARIES.get(name, {}).get(platform.system())


def import_interpreter() -> tuple[Any, str]:
    """The interpreter module of the best TFLite runtime installed, and its name and version.

    A runtime that is installed but does not import (built for numpy 1 under numpy 2, a
    TensorFlow next to a protobuf it does not accept: ``TypeError: Descriptors cannot be
    created directly``, a shared library it needs missing: ``ImportError: libXYZ.so: cannot
    open shared object file``) is skipped like a missing one, its reason kept for the error;
    only a ``ModuleNotFoundError`` for the package itself means it is not installed.

    Raises:
        BackendUnavailableError: none of them is installed.
        RuntimeUnusableError: one or more is installed, and none imports.
    """
    broken: list[str] = []
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as litert

        return litert, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except Exception as exc:  # any failure of a vendor package's import: try the next one
        raise_if_interrupted(exc)
        if not (isinstance(exc, ImportError) and not_installed(exc, "ai_edge_litert")):
            broken.append(f"ai-edge-litert does not import ({type(exc).__name__}: {one_line(exc)})")
    try:
        from tflite_runtime import interpreter as tflite_rt

        return tflite_rt, f"tflite-runtime {getattr(tflite_rt, '__version__', '?')}"
    except Exception as exc:
        raise_if_interrupted(exc)
        if not (isinstance(exc, ImportError) and not_installed(exc, "tflite_runtime")):
            broken.append(f"tflite-runtime does not import ({type(exc).__name__}: {one_line(exc)})")
    try:
        import tensorflow as tf

        lite = tf.lite

        class _TfLite:  # tensorflow.lite spelled like the interpreter modules above
            Interpreter = lite.Interpreter
            load_delegate = lite.experimental.load_delegate
            OpResolverType = lite.experimental.OpResolverType

        return _TfLite, f"tensorflow {tf.__version__}"
    except Exception as exc:
        raise_if_interrupted(exc)
        if not (isinstance(exc, ImportError) and not_installed(exc, "tensorflow")):
            broken.append(f"tensorflow does not import ({type(exc).__name__}: {one_line(exc)})")
        elif not broken:
            raise BackendUnavailableError("no TFLite interpreter is installed: pip install ai-edge-litert") from exc
    reasons = "; ".join(broken)
    hint = "install the shared library named, or pip install ai-edge-litert"
    hint = hint if missing_library(reasons) else "pip install ai-edge-litert"
    raise RuntimeUnusableError(f"no TFLite interpreter works: {reasons}; {hint}")


#: fd 2 is one per process: two loads redirecting it at once would leave it pointing at a
#: closed memfd for good (the second restores what the first had put there).
_STDERR_LOCK = threading.RLock()


@contextlib.contextmanager
def _native_log_to_logger() -> Iterator[None]:
    """Route what the native runtime writes to fd 2 while loading into our log.

    LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``
    straight to the stderr file descriptor and offers Python no switch for it;
    on a CLI that must print one line per error, that line is noise. Its lines
    go to DEBUG, anything not marked INFO to WARNING. Redirections are serialised
    (``_STDERR_LOCK``): models loaded or resized from several threads at once.
    """
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            yield
            return
        try:
            # memfd: an anonymous in-memory file, no temp dir needed (tempfile costs 3 ms to import).
            sink = os.fdopen(os.memfd_create("litert-log"), "w+b") if hasattr(os, "memfd_create") else _tempfile()
        except OSError as exc:  # out of file descriptors: let the runtime print where it would
            os.close(saved)
            log.debug("litert: its native log is not captured: %s", exc)
            yield
            return
        with sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                for line in sink.read().decode(errors="replace").splitlines():
                    if line.strip():
                        log.log(logging.DEBUG if line.startswith("INFO:") else logging.WARNING, "litert: %s", line)


def _tempfile() -> Any:
    import tempfile

    return tempfile.TemporaryFile()


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(None if int(d) < 0 else int(d) for d in signature)
    scale, zero = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    quant = None
    if scale and np.issubdtype(dtype, np.integer):
        quant = QuantParams(scale=float(scale), zero_point=int(zero))
    return TensorSpec(name=detail["name"], shape=shape, dtype=dtype, quant=quant)


class TfliteBackend:
    """A model in a TFLite interpreter with one delegate."""

    format = "tflite"
    threadsafe = False  # one interpreter runs one inference at a time

    def __init__(
        self,
        path: Path,
        *,
        delegate: str = "xnnpack",
        threads: int | None = None,
        cache_dir: Path | None = None,
        delegate_options: dict[str, str] | None = None,
    ) -> None:
        del cache_dir  # no TFLite delegate here compiles engines
        module, self.runtime_version = import_interpreter()
        if delegate not in DELEGATES:
            raise DelegateError(f"TFLite has no delegate {delegate!r}")
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads or 1}
        if delegate == "cpu":
            kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif delegate in DELEGATE_LIBRARIES:
            library = delegate_library(delegate)
            if library is None:
                raise DelegateError(f"the {delegate} delegate has no library for {platform.system()}")
            # Check with ctypes first: a failed load_delegate leaves a half-built
            # Delegate whose __del__ raises (and prints) later.
            missing = library_loads(library)
            if missing is not None:
                raise DelegateError(f"{library} could not be loaded ({missing}): {_INSTALL_HINTS[delegate]}")
            try:
                kwargs["experimental_delegates"] = [module.load_delegate(library, delegate_options or {})]
            except (ValueError, OSError, RuntimeError) as exc:
                hint = _INSTALL_HINTS[delegate]
                raise DelegateError(f"{library} could not be loaded ({one_line(exc)}): {hint}") from exc
        try:
            with _native_log_to_logger():
                interp = module.Interpreter(**kwargs)
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            if delegate in DELEGATE_LIBRARIES:
                raise DelegateError(f"the {delegate} delegate refused the model: {one_line(exc)}") from exc
            raise ModelLoadError(f"TFLite cannot load {path}: {one_line(exc)}") from exc
        self._interp = interp
        self.delegate = delegate
        in_details = interp.get_input_details()
        out_details = interp.get_output_details()
        self.inputs = tuple(_spec(d) for d in in_details)
        self.outputs = tuple(_spec(d) for d in out_details)
        self._in_index = [d["index"] for d in in_details]
        self._in_shape = [tuple(d["shape"]) for d in in_details]
        self._in_prep = [Quantizer(s.quant, s.dtype) if s.quant is not None else None for s in self.inputs]
        self._out_index = [d["index"] for d in out_details]
        self._out_quant = [s.quant for s in self.outputs]

    def _resize(self, slot: int, shape: tuple[int, ...]) -> None:
        """Give input ``slot`` a new shape along its dynamic dimensions and re-plan the tensors."""
        spec = self.inputs[slot]
        if not spec.fits(shape):
            raise InputError(f"input of shape {list(shape)} does not fit {spec.describe()}")
        previous = self._in_shape[slot]
        try:
            with _native_log_to_logger():
                self._interp.resize_tensor_input(self._in_index[slot], list(shape), strict=True)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            with _native_log_to_logger():  # put the interpreter back as it was
                self._interp.resize_tensor_input(self._in_index[slot], list(previous), strict=True)
                self._interp.allocate_tensors()
            raise InputError(f"input of shape {list(shape)} does not fit {spec.describe()}: {one_line(exc)}") from exc
        self._in_shape[slot] = shape

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Quantize, ``set_tensor``, ``invoke``, ``get_tensor``, dequantize."""
        interp = self._interp
        if interp is None:
            raise InferenceError("the model is closed; load it again to run it")
        for slot, x in enumerate(inputs):
            spec = self.inputs[slot]
            prep = self._in_prep[slot]
            if not isinstance(x, np.ndarray) or x.dtype != spec.dtype:
                x = numeric(x, spec)
            data = prep(x) if prep is not None else (x if x.dtype == spec.dtype else x.astype(spec.dtype))
            if data.shape != self._in_shape[slot]:
                self._resize(slot, data.shape)
            try:
                interp.set_tensor(self._in_index[slot], data)
            except ValueError as exc:
                raise InputError(f"input does not fit {spec.describe()}: {one_line(exc)}") from exc
        started = native_calls.enter()
        try:
            interp.invoke()
        except RuntimeError as exc:
            raise InferenceError(f"TFLite failed: {one_line(exc)}") from exc
        finally:
            native_calls.leave(started)
        out = []
        for index, quant in zip(self._out_index, self._out_quant):
            y = interp.get_tensor(index)
            out.append(y if quant is None else dequantize(y, quant))
        return out

    def close(self) -> None:
        """Drop the interpreter (and with it any delegate it holds)."""
        self._interp = None
