"""Shared helpers for the edgerun sample-model build scripts.

Used by ``tools/build_digits.py`` and ``tools/build_mobilenet.py``: seeding,
Keras -> ONNX export (tf2onnx), ONNX static INT8 quantization (onnxruntime),
Keras -> TFLite export (FP32 and full-integer INT8), runners that execute the
*written files* through onnxruntime / ai-edge-litert, a latency benchmark and
the model-card writer.

Every file is written atomically (a hidden ``.<stem>.<random>.partial<suffix>`` beside it,
fsynced, then renamed over it): a build that is interrupted (Ctrl-C, killed, a full disk)
leaves the file it was writing as it was before, never truncated; the next build deletes
the hidden files a killed one left (:func:`remove_partial_files`).

Only the packages of edgerun's optional ``build`` extra are needed here; this
module is not part of the ``edgerun`` package itself. TensorFlow and tf2onnx are
imported by the functions that convert, so the writers and runners work without them.
"""

from __future__ import annotations

import os

# Silence TensorFlow's C++ start-up chatter before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from ai_edge_litert.interpreter import Interpreter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from edgerun import files

if TYPE_CHECKING:
    import tensorflow as tf

#: ONNX opset used for every export.
ONNX_OPSET = 13
#: Name given to the symbolic (dynamic) batch dimension of ONNX exports.
BATCH_DIM = "N"
#: ONNX INT8 formats this module can produce.
#: ``qoperator``: QLinearConv / QLinearMatMul ... operators (uint8 activations,
#: int8 per-channel weights).
#: ``qdq``: QuantizeLinear/DequantizeLinear pairs around float ops with uint8
#: activations and int8 per-channel weights; onnxruntime fuses them back into
#: integer kernels when the session is created.
ONNX_INT8_FORMATS = ("qoperator", "qdq")
#: The format chosen for the sample models. Both formats run the same fused
#: integer kernels in onnxruntime; QDQ measured marginally faster on MobileNetV2
#: (x86-64, 2 threads, ``tools/build_mobilenet.py --bench``; figures in
#: ``models/README.md``) and is onnxruntime's recommended, more portable format.
DEFAULT_ONNX_INT8_FORMAT = "qdq"


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------- ONNX


def export_onnx(
    model: tf.keras.Model,
    path: Path,
    input_shape: tuple[int, ...],
    *,
    input_name: str = "input",
    output_name: str = "output",
    opset: int = ONNX_OPSET,
) -> None:
    """Convert a Keras model to ONNX with tf2onnx, with a dynamic batch dimension.

    ``input_shape`` excludes the batch dimension. The model is traced through a
    ``tf.function`` (tf2onnx's ``from_keras`` does not handle Keras 3 models),
    and the symbolic batch dimension of every graph input/output is renamed to
    :data:`BATCH_DIM`.
    """
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)

    @tf.function(input_signature=[spec])
    def forward(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {output_name: model(x, training=False)}

    model_proto, _ = tf2onnx.convert.from_function(forward, input_signature=[spec], opset=opset)
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        dim0 = value.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = BATCH_DIM
    model_proto.producer_name = "edgerun-tools (tf2onnx)"
    onnx.checker.check_model(model_proto)
    with atomic_output(path) as tmp:
        onnx.save(model_proto, str(tmp))


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds calibration images to onnxruntime's calibrator in small batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 16) -> None:
        """Hold ``images`` (float32, model layout) to be served ``batch`` at a time."""
        self._input_name = input_name
        self._images = np.ascontiguousarray(images, dtype=np.float32)
        self._batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._images), self._batch):
            yield {self._input_name: self._images[start : start + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next feed dict, or ``None`` when exhausted."""
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        """Restart from the first batch."""
        self._iter = None


def quantize_onnx(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    fmt: str = DEFAULT_ONNX_INT8_FORMAT,
) -> None:
    """Statically quantize an FP32 ONNX model to INT8 with onnxruntime.

    The model first goes through ``quant_pre_process`` (shape inference and
    graph optimisation, as the onnxruntime docs recommend); it is then
    quantized with MinMax calibration over ``calibration``, uint8 activations
    and per-channel int8 weights in the requested ``fmt`` (see
    :data:`ONNX_INT8_FORMATS`). The dynamic batch dimension is kept. The
    intermediate models stay in a temporary folder; ``int8_path`` is written once, whole.
    """
    if fmt not in ONNX_INT8_FORMATS:
        raise ValueError(f"unknown ONNX INT8 format {fmt!r}; expected one of {ONNX_INT8_FORMATS}")
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        # ONNX's own shape inference is enough for these CNNs; onnxruntime's
        # symbolic shape inference would add sympy to the build dependencies.
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(prepped),
            str(quantized),
            ArrayCalibrationReader(input_name, calibration),
            quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = _drop_unused_opsets(onnx.load(str(quantized)))
    with atomic_output(int8_path) as out:
        onnx.save(model, str(out))


def _drop_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove opset imports of domains no node uses (quant_pre_process adds many); checked."""
    used = {node.domain for node in model.graph.node} | {""}
    keep = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    return model


def onnx_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    """Open an onnxruntime CPU session with ``threads`` intra-op threads, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """Runs a written ONNX file through onnxruntime."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        """Open ``path`` with :func:`onnx_session`."""
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return the first output for the float32 batch ``x``."""
        return self.session.run(None, {self.input_name: np.asarray(x, dtype=np.float32)})[0]


def describe_onnx(path: Path) -> list[str]:
    """Describe the graph inputs/outputs of an ONNX file (name, shape, dtype)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lines = []
    for kind, values in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for v in values:
            lines.append(f"{kind} {v.name!r} shape={v.shape} dtype={v.type}")
    return lines


# --------------------------------------------------------------------------- TFLite


def export_tflite(
    model: tf.keras.Model,
    input_shape: tuple[int, ...],
    representative: np.ndarray | None = None,
) -> bytes:
    """Convert a Keras model to a batch-1 TFLite flatbuffer.

    Without ``representative`` the result is plain FP32. With it (float32
    images, model layout, no batch dimension), the model is fully quantized
    to INT8, including int8 input and output tensors.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([1, *input_shape], tf.float32, name="input")
    # Keras 3 models traced through a plain tf.function / tf.Module keep their
    # variables as resources (calibration then fails on READ_VARIABLE), so go
    # through Keras' own batch-1 SavedModel export instead.
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # export() prints a summary
            model.export(tmp, format="tf_saved_model", input_signature=[spec], verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if representative is not None:
            images = np.asarray(representative, dtype=np.float32)

            def dataset() -> Iterator[list[np.ndarray]]:
                for image in images:
                    yield [image[np.newaxis]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


class TfliteRunner:
    """Runs a written TFLite file through ai-edge-litert, one image at a time.

    Integer input/output tensors are (de)quantized with the tensor's own scale
    and zero point, so callers always pass and receive float32.
    """

    def __init__(self, path: Path, threads: int = 2) -> None:
        """Load ``path`` with ``threads`` interpreter threads."""
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float32 batch-1 input -> the input tensor's dtype (quantized if integer)."""
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
        return np.asarray(x, dtype=dtype)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run one already-converted input tensor; return the raw output tensor."""
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        """Raw output tensor -> float32 (dequantized if integer)."""
        if np.issubdtype(y.dtype, np.integer):
            scale, zero_point = self.output["quantization"]
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32)

    def run_one(self, x: np.ndarray) -> np.ndarray:
        """Run a single batch-1 input (float32, with batch axis), return float32."""
        return self.dequantize_output(self.invoke(self.quantize_input(x)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run every image of the float32 batch ``x`` and stack the outputs."""
        return np.concatenate([self.run_one(x[i : i + 1]) for i in range(len(x))])


def describe_tflite(path: Path) -> list[str]:
    """Describe the input/output tensors of a TFLite file (name, shape, dtype, quant)."""
    interpreter = Interpreter(model_path=str(path))
    lines = []
    for kind, details in (
        ("input", interpreter.get_input_details()),
        ("output", interpreter.get_output_details()),
    ):
        for d in details:
            scale, zero_point = d["quantization"]
            quant = f" scale={scale!r} zero_point={zero_point}" if scale else ""
            lines.append(f"{kind} {d['name']!r} shape={d['shape'].tolist()} dtype={np.dtype(d['dtype']).name}{quant}")
    return lines


# --------------------------------------------------------------------------- files

#: Marks the temporary file an atomic write fills before renaming it over its target.
PARTIAL = ".partial"


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``onnx.save``,
    ``cv2.imwrite``, ``np.save``), renamed over it when the block ends without error
    (``edgerun.files.atomic_output``, marked :data:`PARTIAL` so :func:`remove_partial_files`
    finds what a killed build left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_output(path, PARTIAL) as tmp:
        yield tmp


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically (see :func:`atomic_output`)."""
    write_bytes(path, text.encode("utf-8"))


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files a killed build left in ``folder`` and its subfolders; those deleted."""
    removed = []
    for leftover in sorted(folder.rglob(f".*{PARTIAL}*")):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


# --------------------------------------------------------------------------- misc


def median_latency_ms(fn: Callable[[np.ndarray], Any], x: np.ndarray, *, warmup: int = 20, runs: int = 200) -> float:
    """Median wall-clock latency of ``fn(x)`` in milliseconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn(x)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000.0


class _CardDumper(yaml.SafeDumper):
    """YAML dumper writing mappings in block style and lists in flow style."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_CardDumper.add_representer(list, _represent_list)


def write_card(path: Path, card: dict[str, Any], script: str) -> None:
    """Write an edgerun model card (YAML) with a provenance header comment, atomically."""
    text = yaml.dump(card, Dumper=_CardDumper, sort_keys=False, default_flow_style=False, width=100)
    write_text(path, f"# edgerun model card (written by {script})\n{text}")


def export_variants(
    model: Any, out: Path, stem: str, input_shape: Sequence[int], calibration: np.ndarray
) -> dict[str, Path]:
    """Write ``<stem>_{fp32,int8}.{onnx,tflite}`` from a Keras model; INT8 calibrated on ``calibration``."""
    paths = {
        "fp32_onnx": out / f"{stem}_fp32.onnx",
        "int8_onnx": out / f"{stem}_int8.onnx",
        "fp32_tflite": out / f"{stem}_fp32.tflite",
        "int8_tflite": out / f"{stem}_int8.tflite",
    }
    export_onnx(model, paths["fp32_onnx"], input_shape, output_name="logits")
    quantize_onnx(paths["fp32_onnx"], paths["int8_onnx"], calibration)
    write_bytes(paths["fp32_tflite"], export_tflite(model, input_shape))
    write_bytes(paths["int8_tflite"], export_tflite(model, input_shape, calibration))
    return paths


def runners(paths: dict[str, Path]) -> dict[str, Any]:
    """A runner (float batch in, float scores out) for each written file, by key."""
    return {key: (OnnxRunner if path.suffix == ".onnx" else TfliteRunner)(path) for key, path in paths.items()}


def size_kib(path: Path) -> str:
    """Human-readable size of ``path``."""
    size = path.stat().st_size
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.2f} MiB"
