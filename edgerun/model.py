"""A loaded model: backend + card + pre/post-processing, the library's main object.

``edgerun.load()`` opens a model file on the best delegate (``edgerun.accel``),
finds or infers its card, builds its preprocessor, and warms it up. ``Model``
then offers three levels:

* ``run(*tensors)``: tensors in, tensors out, the fast path (quantization is
  handled by the backend);
* ``prepare(item)``: an image path, encoded bytes, a decoded image or an array
  -> the input tensor;
* ``predict(item)``: prepare, run, and post-process into a result record.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from edgerun.accel.probe import probe
from edgerun.accel.select import Selection, select
from edgerun.backends import Backend, TensorSpec
from edgerun.backends.base import FLOAT32_MAX, beyond_float32
from edgerun.card import ModelCard, find_card, image_layout, infer_card, load_card, replace
from edgerun.errors import CardError, ConfigError, EdgerunError, InputError, ModelLoadError, UnusableInput
from edgerun.files import special_file
from edgerun.limits import THREADS_MAX
from edgerun.processing.classify import looks_like_probabilities, softmax, top_k
from edgerun.state import state_dir as default_state_dir

log = logging.getLogger(__name__)

__all__ = ["Model", "Prediction", "load", "default_threads"]

_TINY_MODEL_BYTES = 1 << 20


def default_threads(path: Path) -> int:
    """Threads for a model when the user names none.

    Tiny models (under 1 MiB) get one thread: at a few microseconds a call,
    handing work to a second thread costs more than it saves, and LiteRT's p99
    rose from 5 to 125 us with two threads (BASELINES.md). Others get every
    core, up to four.
    """
    try:
        if path.stat().st_size < _TINY_MODEL_BYTES:
            return 1
    except OSError:
        pass
    return max(1, min(4, os.cpu_count() or 1))


class Prediction(msgspec.Struct):
    """One result: the post-processed output and where the time went (ms)."""

    output: Any
    latency_ms: float
    stages_ms: dict[str, float] = msgspec.field(default_factory=dict)


class Model:
    """A model ready to run. Use ``edgerun.load()`` to make one."""

    def __init__(self, path: Path, selection: Selection, card: ModelCard, card_path: Path | None) -> None:
        self.path = path
        self.selection = selection
        self.card = card
        self.card_path = card_path
        self.backend: Backend = selection.backend
        self._lock = None if self.backend.threadsafe else threading.Lock()
        # A backend that holds more than memory (an isolated model's worker process) counts its users
        # and is retired when no longer served; the others are freed with their last reference.
        self._hold = getattr(self.backend, "hold", None)
        self._let_go = getattr(self.backend, "let_go", None)
        self._n_inputs = len(self.backend.inputs)
        self._preprocessor = self._make_preprocessor()
        self._check_labels()
        #: The fastest warm-up call (``run`` of constant inputs), ms; None before ``warmup()``.
        self.run_ms: float | None = None

    # -- description -------------------------------------------------------
    @property
    def name(self) -> str:
        """The card's model name."""
        return self.card.name

    @property
    def version(self) -> str:
        """The card's model version."""
        return self.card.version

    @property
    def delegate(self) -> str:
        """The delegate the model runs on now: the backend's, which an isolated model's worker changes
        when it moves to the next delegate after crashing (the selection's is the one chosen at load)."""
        return self.backend.delegate

    @property
    def available(self) -> bool:
        """Whether calls can be answered now: False while an isolated model cools down after its worker
        crashed on every delegate (``edgerun.isolation``)."""
        return bool(getattr(self.backend, "available", True))

    @property
    def format(self) -> str:
        """``onnx`` or ``tflite``."""
        return self.backend.format

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's input tensors."""
        return self.backend.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's output tensors."""
        return self.backend.outputs

    @property
    def batchable(self) -> bool:
        """Whether one call can carry several inputs (one input tensor, dynamic first dimension)."""
        return len(self.inputs) == 1 and self.inputs[0].shape[:1] == (None,)

    @property
    def takes_images(self) -> bool:
        """Whether images can be fed (the card or the tensor gives image preprocessing)."""
        return self._preprocessor is not None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: name, version, format, delegate, tensors, card."""
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "format": self.format,
            "delegate": self.delegate,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "card": self.card.to_dict(),
        }

    # -- running -----------------------------------------------------------
    def run(self, *tensors: np.ndarray) -> list[np.ndarray]:
        """Tensors in, tensors out (float for quantized tensors); the fast path."""
        if len(tensors) != self._n_inputs:
            raise InputError(f"{self.name} takes {self._n_inputs} input(s), got {len(tensors)}")
        if self._lock is None:
            return self.backend.run(tensors)
        with self._lock:
            return self.backend.run(tensors)

    def prepare(self, item: Any, name: str = "input") -> np.ndarray:
        """Turn one input into the model's input tensor (batch of one).

        ``item`` may be a path (image or ``.npy``), encoded image bytes, a decoded
        uint8 image (HxW or HxWxC), or a numeric array shaped like the input with
        or without its batch dimension (a batch of one: ``run`` takes batches).
        """
        if isinstance(item, (str, os.PathLike)):
            from edgerun.inputs import read_input

            name = os.fspath(item)
            item = read_input(item)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return self._image_tensor(bytes(item), name)
        if isinstance(item, np.ndarray):
            return self._array_tensor(item, name)
        raise InputError(f"{name}: cannot use a {type(item).__name__} as model input")

    def predict(self, item: Any, name: str | None = None) -> Prediction:
        """Prepare, run and post-process one input.

        ``name`` (a path's own by default) starts the message of an error the runtime raises, as it
        starts a failed prepare's: which input of many failed.
        """
        if name is None and isinstance(item, (str, os.PathLike)):
            name = os.fspath(item)
        t0 = time.perf_counter()
        tensor = self.prepare(item, name or "input")
        t1 = time.perf_counter()
        try:
            outputs = self.run(tensor)
        except EdgerunError as exc:
            if name is None:
                raise
            raise type(exc)(f"{name}: {exc}") from exc
        t2 = time.perf_counter()
        try:
            output = self.postprocess(outputs)
        except EdgerunError as exc:  # the card's labels do not count this output's classes
            if name is None:
                raise
            raise type(exc)(f"{name}: {exc}") from exc
        t3 = time.perf_counter()
        return Prediction(
            output=output,
            latency_ms=(t3 - t0) * 1e3,
            stages_ms={"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3},
        )

    def postprocess(self, outputs: Sequence[np.ndarray], row: int = 0) -> Any:
        """Outputs of one inference -> the result record's ``output`` for batch row ``row`` (``InputError``
        for a row the batch does not have).

        Raises:
            CardError: a classification card's labels do not count the classes of this output, which only
                an output tells where the model leaves its class count dynamic (a fixed one is refused at
                load). The card's fault, not the input's (one of the input's own shape, which the model
                took): counted against the model (OTA probation rolls back an update that ships such a
                card), as a ``CardError`` and not an ``InputError``, which the HTTP API answers 422 and never
                counts. Before, labels and bare indices were mixed in one result without a word.
        """
        if len(outputs) != len(self.outputs):  # what run() returns: one array per output tensor
            raise InputError(f"{len(outputs)} output array(s) given; {self.name} has {len(self.outputs)}")
        rows = len(outputs[0]) if np.ndim(outputs[0]) else 0
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= row < max(rows, 1):
            raise InputError(f"row {row!r} is not a row of this batch of {rows}")  # bool is not a row, np.int64 is
        row = int(row)
        task = self.card.task
        if task == "classification":
            scores = np.asarray(outputs[0][row], dtype=np.float32).reshape(-1)
            labels = self.card.labels
            if labels is not None and len(labels) != scores.size:
                raise CardError(
                    self._label_count(len(labels), f"output {self.outputs[0].describe()} gave", scores.size)
                )
            mode = self.card.postprocess.softmax
            if mode is True or (mode == "auto" and not looks_like_probabilities(scores)):
                scores = softmax(scores.astype(np.float32, copy=True))
            return top_k(scores, self.card.postprocess.top_k, self.card.labels)
        if task == "regression":
            return np.asarray(outputs[0][row], dtype=np.float64).reshape(-1).tolist()
        # raw outputs, each with its batch dimension: this row's slice of a batched call (a dynamic first dimension)
        return {
            spec.name: np.asarray(out[row : row + 1] if spec.shape[:1] == (None,) else out).tolist()
            for spec, out in zip(self.outputs, outputs)
        }

    def constant_inputs(self) -> list[np.ndarray]:
        """Mid-range constant inputs (0.5 for float and quantized tensors), for warm-up and smoke tests."""
        return [
            np.full(
                s.concrete_shape(), 0.5 if s.quant or s.dtype.kind == "f" else 1, np.float32 if s.quant else s.dtype
            )
            for s in self.inputs
        ]

    def warmup(self, runs: int = 2) -> None:
        """Run constant inputs so the first real request is not the slow one."""
        inputs = self.constant_inputs()
        for _ in range(runs):
            t0 = time.perf_counter()
            self.run(*inputs)
            took = (time.perf_counter() - t0) * 1e3
            self.run_ms = took if self.run_ms is None else min(self.run_ms, took)
        # The image path too, if OpenCV is loaded already; loading it (15 MB) for a warm-up would
        # cost every process that only ever receives arrays.
        if "cv2" in sys.modules:
            self.warm_images()

    def warm_images(self) -> None:
        """Import OpenCV and run the image preprocessing once, for a caller about to give images: the first
        image's ``pre`` time is then the image's own, not OpenCV's import (~20 ms, 50-100x a digit's)."""
        if self._preprocessor is None:
            return
        from edgerun.processing.image import preload

        preload()
        self._preprocessor(np.zeros((self._preprocessor.height, self._preprocessor.width, 3), np.uint8))

    def close(self) -> None:
        """Release the runtime."""
        self.backend.close()

    # -- serving: held by requests, retired when swapped out -------------------
    def hold(self) -> bool:
        """Count one request that will run this model, until its ``let_go``: a ``retire`` meanwhile waits
        for it. False when the model was retired already (counted all the same: ``let_go`` it)."""
        return True if self._hold is None else bool(self._hold())

    def let_go(self) -> None:
        """The end of a ``hold``."""
        if self._let_go is not None:
            self._let_go()

    def retire(self) -> None:
        """No longer served (swapped out by an update, a rollback or a reload; removed): an isolated
        model's worker stops and its shared memory is freed once the calls in progress and the requests
        holding the model are done. An in-process runtime is left to its last reference, as before."""
        retire = getattr(self.backend, "retire", None)
        if retire is not None:
            retire()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Model {self.name} {self.version} {self.format} on {self.delegate}>"

    # -- input mapping -----------------------------------------------------
    def _make_preprocessor(self) -> Any:
        spec = self.card.preprocess
        if spec is None or self._n_inputs != 1:
            return None
        from edgerun.processing.image import ImagePreprocessor

        tensor = self.inputs[0]
        layout = image_layout(tensor)
        if layout is None:
            raise CardError(
                f"card of {self.name} describes image preprocessing, "
                f"but input {tensor.describe()} is not an image tensor"
            )
        kind, channels, height, width = layout
        if spec.layout is not None and spec.layout != kind:
            raise CardError(f"card of {self.name} says layout {spec.layout}, but input {tensor.describe()} is {kind}")
        if spec.color == "gray" and channels != 1:
            # The image would be decoded in colour and fed as BGR: neither gray nor the model's order.
            raise CardError(
                f"card of {self.name} says color gray, but input {tensor.describe()} takes {channels} channels"
            )
        if spec.size is not None:
            if (height and height != spec.size[0]) or (width and width != spec.size[1]):
                raise CardError(
                    f"card of {self.name} says size {list(spec.size)}, but input {tensor.describe()} differs"
                )
            height, width = spec.size
        if not height or not width:
            return None  # dynamic spatial size and no size in the card: arrays only
        if spec.layout is None:
            spec = replace(spec, layout=kind)
        return ImagePreprocessor(spec, height, width, channels, tensor.dtype, quant=tensor.quant)

    def _check_labels(self) -> None:
        """Refuse a classification card whose labels do not count the output's classes (where the model fixes them)."""
        labels = self.card.labels
        if self.card.task != "classification" or labels is None or not self.outputs:
            return
        tensor = self.outputs[0]
        known = [d for d in tensor.shape[1:] if d is not None]  # a batch row's scores, flattened by ``postprocess``
        if not known or len(known) < len(tensor.shape) - 1:
            return  # a dynamic class dimension: the count is known only from an output
        classes = math.prod(known)
        if len(labels) != classes:
            raise CardError(self._label_count(len(labels), f"output {tensor.describe()} gives", classes))

    def _label_count(self, labels: int, output: str, classes: int) -> str:
        """``card of NAME has 3 labels, but OUTPUT 7 classes``: labels that do not count the classes."""
        return (
            f"card of {self.name} has {labels} label{'s' if labels != 1 else ''}, "
            f"but {output} {classes} class{'es' if classes != 1 else ''}"
        )

    def _image_tensor(self, data: bytes, name: str) -> np.ndarray:
        if self._preprocessor is None:
            from edgerun.sources.sensor import SENSOR_SUFFIXES  # here: an error's path only

            if os.path.splitext(name)[1].lower() in SENSOR_SUFFIXES:  # readings, not an image: another command
                raise InputError(
                    f"{name}: a sensor file is read in windows by 'edgerun run MODEL --source {name}'; "
                    "predict takes images and .npy arrays"
                )
            raise InputError(f"{name}: {self._no_images()}, or pass a .npy array")
        from edgerun.processing.image import decode_image

        return self._preprocessor(decode_image(data, name, gray=self._preprocessor.gray))

    def _array_tensor(self, array: np.ndarray, name: str) -> np.ndarray:
        spec = self.inputs[0]
        kind = array.dtype.kind
        if kind not in "fiub" or kind == "b":
            raise UnusableInput(f"{name}: array dtype {array.dtype} is not numeric; {spec.describe()} expected")
        if array.size == 0:
            raise UnusableInput(f"{name}: array of shape {list(array.shape)} is empty")
        if kind == "f" and not np.isfinite(array).all():  # a quantized model would turn it into a confident answer
            raise UnusableInput(f"{name}: array has NaN or infinite values")
        if kind == "f" and array.dtype.itemsize > 4 and beyond_float32(array):  # inf once cast
            raise UnusableInput(f"{name}: array has values beyond float32's range (above {FLOAT32_MAX:.4g} in size)")
        if self._preprocessor is not None and _looks_like_image(array):
            # A decoded image, even one of the input's own size: taken as the tensor without its batch dimension,
            # a 224x224 BGR image went in as 0-255 values in BGR order where 225x224 was normalised and made RGB.
            return self._pixels(array, name)
        if spec.fits(array.shape):
            if spec.shape[:1] == (None,) and array.shape[0] != 1:  # one result comes back: a batch would lose rows
                raise UnusableInput(
                    f"{name}: array of shape {list(array.shape)} is a batch of {array.shape[0]}; "
                    "one input (a batch of 1) is expected"
                )
            return array
        if spec.fits((1, *array.shape)):
            return array[None]
        if array.dtype == np.uint8 and array.ndim in (2, 3):  # pixels: what the card's preprocessing takes
            if self._preprocessor is None:  # the card's doing (an update that dropped it): counted against the model
                raise InputError(f"{name}: this is an image of {list(array.shape)} pixels, and {self._no_images()}")
            return self._pixels(array, name)
        # An array of another shape: the input's, whatever the version (an update must keep the input's shape)
        pixels = ""
        if self._preprocessor is not None and array.ndim in (2, 3):  # a 16-bit or float image, say
            pixels = f", and an image array is uint8 pixels, not {array.dtype}"
        raise UnusableInput(f"{name}: array of shape {list(array.shape)} does not fit {spec.describe()}{pixels}")

    def _no_images(self) -> str:
        """Why this model prepares no images, and what would make it (one clause of an error)."""
        preprocess, tensor = self.card.preprocess, self.inputs[0].describe()
        if preprocess is not None and self._n_inputs == 1:  # a preprocess section, and no size for a dynamic input
            where = "no card gives them" if self.card.inferred else "its card's preprocess gives no size"
            return (
                f"{self.name} has no image preprocessing: input {tensor} has no fixed height and width, and {where}; "
                "give it a card whose preprocess has size: [height, width]"
            )
        if preprocess is not None:
            return f"{self.name} has no image preprocessing: it takes {self._n_inputs} input tensors, not one image"
        return f"{self.name} has no image preprocessing (input {tensor}); give it a card with a preprocess section"

    def _pixels(self, array: np.ndarray, name: str) -> np.ndarray:
        """A decoded image (uint8 HxW or HxWxC) through the card's preprocessing, which the model has."""
        try:
            return self._preprocessor(array)
        except InputError as exc:  # its message (HxWx2 is no image) does not know the input's name
            raise type(exc)(f"{name}: {exc}") from None


def _check_file_name(what: str, value: str | os.PathLike[str]) -> None:
    """Refuse a file name that names no file: an empty one (``Path("")`` is the current folder, and "a directory,
    not a model file: ." would name no mistake) or one with a NUL character (the system takes none, and Python
    says so as a bare ``ValueError``)."""
    name = os.fspath(value)
    if not name:
        raise ConfigError(f"{what} is an empty string")
    if "\0" in str(name):
        raise ConfigError(f"{what} {str(name)!r} holds a NUL character, which no file name can")


def _check_twin(model_path: Path, delegate: str) -> None:
    """Refuse the Edge TPU pair's other file where selection would look it up (``accel.select.candidate_files``)
    and it is there as anything but a regular file (a FIFO, a socket, a device): ``X_edgetpu.tflite`` beside a
    plain ``X.tflite`` for the Edge TPU (``auto``, ``fastest``, ``edgetpu``), ``X.tflite`` beside a compiled
    ``X_edgetpu.tflite`` for any other delegate. Selection skips such a file as absent: a FIFO there left
    ``edgerun predict`` falling back, or failing, for a reason that named no FIFO."""
    name = model_path.name
    if not name.endswith(".tflite"):
        return
    stem = name[: -len(".tflite")]
    if stem.endswith("_edgetpu"):
        if delegate == "edgetpu":
            return
        twin, what = model_path.with_name(f"{stem[: -len('_edgetpu')]}.tflite"), "CPU twin"
    else:
        if delegate not in ("auto", "fastest", "edgetpu"):
            return
        twin, what = model_path.with_name(f"{stem}_edgetpu.tflite"), "Edge TPU twin"
    if (kind := special_file(twin)) is not None:
        raise ModelLoadError(f"{what} of {name} is {kind}, not a model file: {twin}")


def _looks_like_image(array: np.ndarray) -> bool:
    """Whether ``array`` is a decoded image as OpenCV gives one: uint8, HxW or HxWx1/3/4 (a 3-D array of another
    last dimension, such as a CHW tensor without its batch dimension, is not)."""
    return array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)))


def load(
    path: str | os.PathLike[str],
    *,
    delegate: str = "auto",
    threads: int | None = None,
    strict: bool = False,
    verify: bool = True,
    card: ModelCard | str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    probe_root: str | os.PathLike[str] | None = None,
    warmup: bool = True,
) -> Model:
    """Load a model file on the best delegate this device offers.

    Args:
        path: an ``.onnx`` or ``.tflite`` file (the format is read from its content).
        delegate: ``auto``, ``fastest`` or a delegate name (``cpu``, ``xnnpack``,
            ``edgetpu``, ``gpu``, ``cuda``, ``tensorrt``, ``openvino``...).
        threads: CPU threads, 1 to 256; by default 1 for tiny models, else up to 4.
        strict: fail instead of falling back from an accelerator that is present.
        verify: check an accelerated delegate against the CPU reference.
        card: a card, or a card file; found beside the model when None.
        state_dir: where caches live (see ``edgerun.state``).
        probe_root: filesystem root to probe for accelerators (tests use fake trees).
        warmup: run two synthetic inferences before returning.

    Raises:
        EdgerunError: a subclass saying what is wrong (file, card, delegate).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ModelLoadError(f"model path must be a str or os.PathLike, got {type(path).__name__}")
    _check_file_name("model path", path)
    for what, folder in (("state_dir", state_dir), ("probe_root", probe_root)):
        if folder is not None and not isinstance(folder, (str, os.PathLike)):  # 5 was a folder "5", or descriptor 5
            raise ConfigError(f"{what} must be a str or os.PathLike, got {type(folder).__name__}")
    for what, value in (("card", card), ("state_dir", state_dir), ("probe_root", probe_root)):
        if isinstance(value, (str, os.PathLike)):
            _check_file_name(what, value)
    for what, flag in (("strict", strict), ("verify", verify), ("warmup", warmup)):
        if not isinstance(flag, (bool, np.bool_)):  # "no" would be true
            raise ConfigError(f"{what} must be True or False, got {flag!r}")
    if probe_root is not None and not os.path.isdir(probe_root):  # nothing would be found, without a word
        raise ConfigError(f"probe_root is not a directory: {os.fspath(probe_root)}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= THREADS_MAX
    ):
        raise ConfigError(f"threads must be an integer between 1 and {THREADS_MAX}, got {threads!r}")
    threads = None if threads is None else int(threads)  # np.int64 too (a runtime's options take int)
    if card is not None and not isinstance(card, (ModelCard, str, os.PathLike)):
        raise CardError(f"card must be a ModelCard or a card file path, got {type(card).__name__}")
    model_path = Path(path)
    if (kind := special_file(model_path)) is not None:  # a FIFO waits for a writer for good: refused before any read
        raise ModelLoadError(f"model path is {kind}, not a model file: {model_path}")
    _check_twin(model_path, delegate)
    threads = threads or default_threads(model_path)
    device = probe(probe_root or "/")
    state = default_state_dir(state_dir)
    selection = select(
        model_path,
        delegate=delegate,
        threads=threads,
        strict=strict,
        verify=verify,
        device=device,
        state_dir=state,
    )
    try:
        card_path: Path | None = None
        if isinstance(card, ModelCard):
            model_card = card
        else:
            card_path = Path(card) if card is not None else find_card(model_path)
            if card_path is not None:
                model_card = load_card(card_path, state / "cards")  # the caches' state directory, as given
            else:
                model_card = infer_card(model_path, selection.backend.inputs, selection.backend.outputs)
        model = Model(model_path, selection, model_card, card_path)
        if warmup:
            model.warmup()
    except BaseException:
        selection.backend.close()
        raise
    log.info(
        "loaded %s %s (%s) on %s with %d thread(s)", model.name, model.version, model.format, model.delegate, threads
    )
    return model
