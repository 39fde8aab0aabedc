"""Build edgerun's ``mobilenet`` sample models: an UNTRAINED MobileNetV2 (224x224x3).

The network is ``tf.keras.applications.MobileNetV2(weights=None, classes=1000)``
initialised with fixed seeds. Its weights are random, so its predictions are
meaningless: it exists to exercise the runtime with a realistically sized
model (about 3.5 M parameters) and to measure FP32 vs INT8 speed. Four files
are written (FP32/INT8 x ONNX/TFLite), each with a model card; they are large
and are not committed (``models/mobilenet/`` is git-ignored).

Usage (needs edgerun's optional ``build`` extra)::

    python tools/build_mobilenet.py [--out models/mobilenet] [--alpha 1.0] [--bench]

``--alpha`` is Keras's width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4): a
narrower network runs the same graph with fewer channels, so its call is
shorter. The default builds the sample models; ``--alpha 0.5 --out DIR`` builds
the stand-in that ``benchmarks/bench_sync.py --mobilenet-dir DIR`` uses to put
a fast CPU's ratio of inference to MQTT work on a slower one.
``--bench`` also measures the median latency (2 threads, batch 1) of every
file and of the other ONNX INT8 format (built into a temporary folder).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

mk: Any = None  # tools/_modelkit.py and TensorFlow, imported by main() once the arguments are known
tf: Any = None

SCRIPT = "tools/build_mobilenet.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 0
SIZE = 224
INPUT_SHAPE = (SIZE, SIZE, 3)
#: The width multipliers taken: untrained, any positive one builds (0.5 and 0.6 make the narrower stand-ins
#: docs/performance.md uses); 0, a negative or NaN one would build nonsense or fail deep in Keras.
ALPHA_MAX = 4.0
N_CALIBRATION = 100
#: INT8 must be at least this many times faster than FP32 (checked with --bench).
MIN_INT8_SPEEDUP = 2.0
THREADS = 2
#: Interleaved benchmark rounds (the best round median is reported).
BENCH_ROUNDS = 3


def synthetic_images(count: int, seed: int) -> np.ndarray:
    """Deterministic "random but structured" uint8 RGB images, [count, 224, 224, 3].

    Each image is a sum of three octaves of uniform noise (4x4, 16x16 and
    56x56 grids, weights 0.5/0.3/0.2) bilinearly upsampled to 224x224,
    then Gaussian-blurred (sigma 2) and stretched to the full 0..255 range:
    smooth blobs and edges with natural-image-like statistics, not flat noise.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(count):
        acc = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
        for grid, weight in ((4, 0.5), (16, 0.3), (56, 0.2)):
            noise = rng.random((grid, grid, 3), dtype=np.float32)
            acc += weight * cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        acc = cv2.GaussianBlur(acc, (0, 0), 2.0)
        lo, hi = float(acc.min()), float(acc.max())
        images[i] = np.round((acc - lo) / max(hi - lo, 1e-6) * 255.0).astype(np.uint8)
    return images


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels -> float32 in [-1, 1] (``pixel / 127.5 - 1``), NHWC."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def card(precision: str, notes: str, alpha: float) -> dict[str, Any]:
    """The edgerun model card for one mobilenet file (no labels, no metrics)."""
    width = "" if alpha == 1.0 else f", width multiplier alpha={alpha}"
    return {
        "name": "mobilenet",
        "version": "1.0.0",
        "task": "classification",
        "precision": precision,
        "description": (
            f"MobileNetV2 (224x224 RGB, 1000 classes{width}) with UNTRAINED random weights "
            "(fixed seed): a size/speed benchmark, its predictions are meaningless."
        ),
        "preprocess": {
            "size": [SIZE, SIZE],
            "layout": "NHWC",
            "color": "rgb",
            "resize": "stretch",
            "interpolation": "linear",
            "scale": 1.0 / 127.5,
            "mean": [1.0, 1.0, 1.0],
            "std": [1.0, 1.0, 1.0],
        },
        "postprocess": {"softmax": False, "top_k": 5},
        "notes": notes,
    }


def _alpha(text: str) -> float:
    """``--alpha``: a finite width multiplier above 0 and at most ``ALPHA_MAX``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= ALPHA_MAX):
        raise argparse.ArgumentTypeError(f"a width multiplier is above 0 and at most {ALPHA_MAX:g}, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Build the four files into ``--out``; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "mobilenet")
    parser.add_argument(
        "--alpha",
        type=_alpha,
        default=1.0,
        help=f"width multiplier, above 0 and at most {ALPHA_MAX:g} (default 1.0: the sample models)",
    )
    parser.add_argument("--bench", action="store_true", help="measure latencies (2 threads)")
    args = parser.parse_args(argv)
    global mk, tf  # imported once the arguments are known: a usage error needs no TensorFlow
    try:
        import _modelkit as mk
        import tensorflow as tf
    except ImportError as exc:
        parser.exit(1, f"{SCRIPT}: {exc.name} is not installed: pip install -e '.[build]'\n")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    mk.remove_partial_files(out)  # what a killed build left; every file here is written atomically

    mk.set_seeds(SEED)
    model = tf.keras.applications.MobileNetV2(weights=None, input_shape=INPUT_SHAPE, classes=1000, alpha=args.alpha)
    print(f"model: MobileNetV2 (alpha {args.alpha}), {model.count_params()} parameters, untrained (seed {SEED})")
    calibration = preprocess(synthetic_images(N_CALIBRATION, seed=SEED))
    check = preprocess(synthetic_images(20, seed=SEED + 1))

    paths = {
        "fp32_onnx": out / "mobilenet_fp32.onnx",
        "int8_onnx": out / "mobilenet_int8.onnx",
        "fp32_tflite": out / "mobilenet_fp32.tflite",
        "int8_tflite": out / "mobilenet_int8.tflite",
    }
    mk.export_onnx(model, paths["fp32_onnx"], INPUT_SHAPE, output_name="probabilities")
    mk.quantize_onnx(paths["fp32_onnx"], paths["int8_onnx"], calibration)
    mk.write_bytes(paths["fp32_tflite"], mk.export_tflite(model, INPUT_SHAPE))
    mk.write_bytes(paths["int8_tflite"], mk.export_tflite(model, INPUT_SHAPE, calibration))

    calib_doc = (
        f"{N_CALIBRATION} deterministic synthetic images (seed {SEED}): three octaves of "
        "uniform noise (4x4, 16x16, 56x56 grids) upsampled bilinearly to 224x224, "
        "Gaussian-blurred (sigma 2), stretched to 0..255"
    )
    untrained = (
        f"UNTRAINED: tf.keras.applications.MobileNetV2(weights=None, classes=1000, alpha={args.alpha}) with "
        f"random initial weights (seed {SEED}); outputs are softmax probabilities but "
        "carry no meaning. No accuracy metric. Built on demand by tools/build_mobilenet.py."
    )
    onnx_fmt = {
        "qoperator": "QOperator format (QLinearConv/QLinearMatMul...)",
        "qdq": "QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer kernels)",
    }[mk.DEFAULT_ONNX_INT8_FORMAT]
    notes = {
        "fp32_onnx": f"{untrained} Exported with tf2onnx (opset {mk.ONNX_OPSET}); input "
        "'input' NHWC [N,224,224,3] float32 with dynamic batch N, output 'probabilities'.",
        "int8_onnx": f"{untrained} Static INT8 with onnxruntime quantize_static, {onnx_fmt}, "
        f"uint8 activations, per-channel int8 weights, MinMax calibration over {calib_doc}; "
        "float32 input/output, NHWC, dynamic batch N.",
        "fp32_tflite": f"{untrained} TFLiteConverter from the Keras model; batch 1, float32 I/O.",
        "int8_tflite": f"{untrained} Full-integer INT8 TFLite (Optimize.DEFAULT, "
        f"TFLITE_BUILTINS_INT8, int8 input/output), representative dataset: {calib_doc}; "
        "batch 1.",
    }
    for key, path in paths.items():
        precision = "int8" if key.startswith("int8") else "fp32"
        mk.write_card(path.with_name(path.name + ".card.yaml"), card(precision, notes[key], args.alpha), SCRIPT)

    runners = {
        key: (mk.OnnxRunner if path.suffix == ".onnx" else mk.TfliteRunner)(path, THREADS)
        for key, path in paths.items()
    }
    reference = model.predict(check, verbose=0)
    print(
        f"Keras output on {len(check)} synthetic images: probabilities in "
        f"[{float(reference.min()):.3e}, {float(reference.max()):.3e}] (untrained)"
    )
    for key, path in paths.items():
        got = runners[key](check)
        print(f"{path.name} ({mk.size_kib(path)}): max |p - p_keras| = {float(np.abs(got - reference).max()):.2e}")
        describe = mk.describe_onnx if path.suffix == ".onnx" else mk.describe_tflite
        for line in describe(path):
            print(f"  {line}")

    if args.bench:
        return bench(paths, runners, calibration)
    return 0


def bench(paths: dict[str, Path], runners: dict[str, Any], calibration: np.ndarray) -> int:
    """Batch-1 latencies (best of interleaved round medians) of every file and the other ONNX INT8 format.

    Measures the bare runtime call: ``InferenceSession.run`` on a float32
    array, and LiteRT ``set_tensor``/``invoke``/``get_tensor`` on an input
    already converted to the tensor's dtype.
    """
    x = calibration[:1].copy()
    with tempfile.TemporaryDirectory() as tmp:
        timed: dict[str, tuple[str, Any, np.ndarray]] = {}
        for key, run in runners.items():
            if paths[key].suffix == ".onnx":
                timed[key] = (paths[key].name, run, x)
            else:
                timed[key] = (paths[key].name, run.invoke, run.quantize_input(x))
        for fmt in mk.ONNX_INT8_FORMATS:
            if fmt != mk.DEFAULT_ONNX_INT8_FORMAT:
                other = Path(tmp) / f"mobilenet_int8_{fmt}.onnx"
                mk.quantize_onnx(paths["fp32_onnx"], other, calibration, fmt)
                timed[f"alt_{fmt}"] = (f"(alternative) ONNX INT8 {fmt} format", mk.OnnxRunner(other, THREADS), x)
        rounds: dict[str, list[float]] = {key: [] for key in timed}
        for _ in range(BENCH_ROUNDS):  # interleaved, so machine noise hits every file alike
            for key, (_, fn, arg) in timed.items():
                rounds[key].append(mk.median_latency_ms(fn, arg))
    print(
        f"latency, batch 1, {THREADS} threads: best of {BENCH_ROUNDS} interleaved rounds, "
        "each the median of 200 runs after 20 warm-up runs:"
    )
    ms = {key: min(values) for key, values in rounds.items()}
    for key, (label, _, _) in timed.items():
        print(f"  {label}: {ms[key]:.2f} ms (rounds: {', '.join(f'{v:.2f}' for v in rounds[key])})")
    for fmt in ("onnx", "tflite"):  # a figure of this CPU, not a build failure: the models are built either way
        speedup = ms[f"fp32_{fmt}"] / ms[f"int8_{fmt}"]
        print(f"  {fmt}: INT8 is {speedup:.2f}x faster than FP32")
        if speedup < MIN_INT8_SPEEDUP:
            print(
                f"WARNING: {fmt} INT8 speed-up below {MIN_INT8_SPEEDUP}x on this CPU (the runtime's own INT8 kernels "
                "gain less on some CPUs: docs/performance.md)",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
