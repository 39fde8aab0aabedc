"""Build edgerun's ``digits`` sample models (FP32/INT8, ONNX/TFLite) and samples.

Trains a small CNN (about 30k parameters) on scikit-learn's offline
``load_digits()`` set with fixed seeds, exports it to four files, measures the
held-out accuracy of every *written file* through onnxruntime / ai-edge-litert,
writes a model card beside each file and ten sample PNGs.

Usage (needs edgerun's optional ``build`` extra)::

    python tools/build_digits.py [--out models/digits]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import _modelkit as mk
import cv2
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SCRIPT = "tools/build_digits.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 0
EPOCHS = 60
BATCH_SIZE = 32
INPUT_SHAPE = (8, 8, 1)
TEST_SIZE = 450
#: An INT8 variant may lose at most this much accuracy against its FP32 sibling.
MAX_INT8_DROP = 0.01
#: Sample PNGs are the 8x8 images upscaled by this factor (nearest neighbour).
SAMPLE_UPSCALE = 4
LABELS = [str(d) for d in range(10)]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, x_test, y_train, y_test)``; images are raw values 0..16."""
    digits = load_digits()
    images = digits.images.astype(np.float32)
    return train_test_split(images, digits.target, test_size=TEST_SIZE, random_state=0, stratify=digits.target)


def preprocess(values: np.ndarray) -> np.ndarray:
    """Raw digit values (0..16, shape [N, 8, 8]) -> float32 NHWC [N, 8, 8, 1] in [0, 1]."""
    return (values.astype(np.float32) / 16.0)[..., np.newaxis]


def build_model() -> tf.keras.Model:
    """The small digits CNN; it emits logits (no softmax layer)."""
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            tf.keras.Input(INPUT_SHAPE, name="input"),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.25),
            layers.Dense(48, activation="relu"),
            layers.Dense(10, name="logits"),
        ],
        name="digits",
    )


def train(x_train: np.ndarray, y_train: np.ndarray) -> tf.keras.Model:
    """Train the CNN deterministically on the training split."""
    mk.set_seeds(SEED)
    model = build_model()
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    return model


def to_png_pixels(values: np.ndarray) -> np.ndarray:
    """Raw digit values (0..16) -> 8-bit pixels, ``round(value * 255 / 16)``."""
    return np.round(values * 255.0 / 16.0).astype(np.uint8)


def png_roundtrip(values: np.ndarray) -> np.ndarray:
    """What a client sees after upscaling to PNG size and INTER_AREA-resizing back.

    Returns float32 NHWC inputs ``pixel / 255`` (the card's preprocessing).
    """
    out = []
    for image in to_png_pixels(values):
        big = cv2.resize(image, None, fx=SAMPLE_UPSCALE, fy=SAMPLE_UPSCALE, interpolation=cv2.INTER_NEAREST)
        small = cv2.resize(big, (8, 8), interpolation=cv2.INTER_AREA)
        out.append(small)
    return (np.stack(out).astype(np.float32) / 255.0)[..., np.newaxis]


def card(precision: str, accuracy: float, notes: str) -> dict[str, Any]:
    """The edgerun model card for one digits file."""
    return {
        "name": "digits",
        "version": "1.0.0",
        "task": "classification",
        "precision": precision,
        "description": ("Handwritten digit classifier (8x8 grayscale), trained on scikit-learn's digits set."),
        "labels": LABELS,
        "preprocess": {
            "size": [8, 8],
            "layout": "NHWC",
            "color": "gray",
            "resize": "stretch",
            "interpolation": "area",
            "scale": 1.0 / 255.0,
            "mean": [0.0],
            "std": [1.0],
        },
        "postprocess": {"softmax": True, "top_k": 3},
        "metrics": {"accuracy": round(float(accuracy), 4)},
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    """Build everything into ``--out``; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "digits")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    mk.remove_partial_files(out)  # what a killed build left; every file here is written atomically

    raw_train, raw_test, y_train, y_test = load_split()
    x_train, x_test = preprocess(raw_train), preprocess(raw_test)
    print(f"data: {len(x_train)} train / {len(x_test)} held-out test images")

    model = train(x_train, y_train)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    print(f"model: {model.count_params()} parameters, Keras held-out accuracy {keras_acc:.4f}")

    paths = mk.export_variants(model, out, "digits", INPUT_SHAPE, x_train)
    runners = mk.runners(paths)
    x_png = png_roundtrip(raw_test)
    accuracy: dict[str, float] = {}
    correct: dict[str, np.ndarray] = {}
    for key, run in runners.items():
        pred = np.argmax(run(x_test), axis=1)
        pred_png = np.argmax(run(x_png), axis=1)
        accuracy[key] = float(np.mean(pred == y_test))
        correct[key] = (pred == y_test) & (pred_png == y_test)
        print(
            f"{paths[key].name}: held-out accuracy {accuracy[key]:.4f} "
            f"({int(np.sum(pred == y_test))}/{len(y_test)}), "
            f"via PNG round trip {float(np.mean(pred_png == y_test)):.4f}"
        )

    split = (
        f"Trained with fixed seeds on {len(x_train)} images of scikit-learn's load_digits() "
        f"(train_test_split test_size={TEST_SIZE}, random_state=0, stratify=y); accuracy is "
        f"measured on the {len(x_test)} held-out images (input = value/16)."
    )
    onnx_fmt = {
        "qoperator": "QOperator format (QLinearConv/QLinearMatMul)",
        "qdq": "QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer kernels)",
    }[mk.DEFAULT_ONNX_INT8_FORMAT]
    notes = {
        "fp32_onnx": f"{split} Exported with tf2onnx (opset {mk.ONNX_OPSET}); dynamic batch "
        "dimension N; input 'input' [N,8,8,1] float32, output 'logits' [N,10].",
        "int8_onnx": f"{split} Static INT8 with onnxruntime quantize_static, {onnx_fmt}, uint8 "
        "activations, per-channel int8 weights, MinMax calibration over the "
        f"{len(x_train)} training images; float32 input/output, dynamic batch dimension N.",
        "fp32_tflite": f"{split} TFLiteConverter from the Keras model; batch 1, float32 I/O.",
        "int8_tflite": f"{split} Full-integer INT8 TFLite (Optimize.DEFAULT, "
        "TFLITE_BUILTINS_INT8, representative dataset = the "
        f"{len(x_train)} training images); batch 1, int8 input and output tensors "
        "(quantize with the input tensor's scale/zero point, dequantize the logits).",
    }
    for key, path in paths.items():
        precision = "int8" if key.startswith("int8") else "fp32"
        mk.write_card(
            path.with_name(path.name + ".card.yaml"),
            card(precision, accuracy[key], notes[key]),
            SCRIPT,
        )

    write_samples(out / "samples", raw_test, y_test, np.logical_and.reduce(list(correct.values())))

    failures = []
    for fmt in ("onnx", "tflite"):
        drop = accuracy[f"fp32_{fmt}"] - accuracy[f"int8_{fmt}"]
        if drop > MAX_INT8_DROP:
            failures.append(f"{fmt}: INT8 is {drop * 100:.2f} points below FP32")

    for path in paths.values():
        describe = mk.describe_onnx if path.suffix == ".onnx" else mk.describe_tflite
        print(f"{path.name} ({mk.size_kib(path)}):")
        for line in describe(path):
            print(f"  {line}")
    if failures:
        for failure in failures:
            print(f"ERROR: {failure}", file=sys.stderr)
        return 1
    return 0


def write_samples(folder: Path, raw_test: np.ndarray, y_test: np.ndarray, ok: np.ndarray) -> None:
    """Write one PNG per class (held-out images every model gets right) and digit_7.npy."""
    folder.mkdir(parents=True, exist_ok=True)
    for label in range(10):
        candidates = np.flatnonzero((y_test == label) & ok)
        if len(candidates) == 0:
            raise RuntimeError(f"no held-out {label} is classified correctly by all four models")
        index = int(candidates[0])
        pixels = to_png_pixels(raw_test[index])
        big = cv2.resize(pixels, None, fx=SAMPLE_UPSCALE, fy=SAMPLE_UPSCALE, interpolation=cv2.INTER_NEAREST)
        path = folder / f"digit_{label}.png"
        with mk.atomic_output(path) as tmp:
            if not cv2.imwrite(str(tmp), big):
                raise RuntimeError(f"could not write {path}")
        back = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if not np.array_equal(cv2.resize(back, (8, 8), interpolation=cv2.INTER_AREA), pixels):
            raise RuntimeError(f"{path}: INTER_AREA resize does not reproduce the 8x8 image")
        print(f"sample {path.name}: held-out test index {index}")
        if label == 7:
            with mk.atomic_output(folder / "digit_7.npy") as tmp:
                np.save(tmp, preprocess(raw_test[index : index + 1])[0])


if __name__ == "__main__":
    sys.exit(main())
