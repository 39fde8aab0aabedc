"""Build edgerun's ``vibration`` sample models (FP32/INT8, ONNX/TFLite) and CSV samples.

A small 1-D CNN classifies 256-sample windows of a 3-axis accelerometer
(x, y radial, z axial; values in g, 1,000 Hz) into five machine conditions:
``normal``, ``imbalance``, ``misalignment``, ``bearing_fault``, ``looseness``.
It is trained on synthetic recordings generated here with fixed seeds, exported
to four files, and the held-out accuracy of every *written file* is measured
through onnxruntime / ai-edge-litert. A model card is written beside each file
and one CSV sample recording per class (8 windows, ``t,x,y,z``).

Signal model (one recording = 2,048 samples = 2.048 s, one machine state)
-------------------------------------------------------------------------
Each recording is simulated at 4 kHz, low-pass filtered (windowed-sinc FIR,
cut-off 400 Hz, the sensor's anti-alias filter) and decimated to 1 kHz.

* Shaft: frequency ``f0`` drawn from U(20, 40) Hz with a slow +/-0.5 % speed
  wobble (0.2-1 Hz); the shaft angle ``theta(t)`` is its integral.
* Common to every class (a running machine): a small once-per-revolution (1x)
  component on x/y (0.02-0.06 g, random phases), a weak 2x component, a weak
  1x on z, white gaussian sensor noise (sigma 0.005-0.02 g), then a random gain
  (0.9-1.1) and offset (+/-0.01 g, sensor bias) per axis. The sensor is
  AC-coupled (gravity removed, as with IEPE vibration sensors). Values are
  rounded to 1e-5 g, the CSV resolution.
* ``normal``: only the above.
* ``imbalance``: a rotating heavy spot, a strong 1x radial force
  (0.08-0.5 g): ``x = A cos(theta + phi)``, ``y = k A sin(theta + phi)``, i.e.
  90 degrees between the radial axes (``k`` 0.7-1.0, unequal stiffness), and
  little axial motion.
* ``misalignment``: coupling misalignment, strong 2x (0.08-0.35 g) and 3x
  (0.04-0.2 g) radial harmonics and a strong axial (z) 1x/2x component
  (0.06-0.3 g each).
* ``bearing_fault``: a local defect struck at a bearing defect frequency
  ``fd`` = (3.5-5.5) x ``f0`` (with 1 % timing jitter, rolling-element slip)
  gives impulses that each ring a structural resonance of 250-350 Hz (decay
  time constant 1.5-3 ms); the impulse amplitude (0.3-1.2 g) is modulated by
  the shaft rotation (``1 + m cos(theta)``, ``m`` 0.3-0.8: a defect passing
  through the load zone). Mostly radial (x/y), weaker on z.
* ``looseness``: mechanical looseness, many harmonics (1x-8x with random
  amplitudes decaying as ``1/sqrt(k)``) plus sub-/inter-harmonics (0.5x, 1.5x,
  2.5x), total 0.2-0.6 g, strongest on y; the waveform is then clipped
  asymmetrically (the loose part hits a stop on one side harder than on the
  other).

Data, split and model
---------------------
140 recordings per class; the split is **by recording**: the first 100 of each
class (windows of 256 samples with a hop of 128, 15 per recording) train the
model, the other 40 (8 non-overlapping windows each, 1,600 windows in all) are
held out and only used to measure accuracy and to pick the CSV samples.
The model input is float32 ``[N, 256, 3]`` raw values in g; the model
standardises each axis itself with the mean and standard deviation of the
training windows (constants in the exported files), so no preprocessing is
needed. The output is logits ``[N, 5]``. Network: Conv1D 7x16 stride 2, Conv1D
5x24, MaxPool 2, Conv1D 5x32, MaxPool 2, Conv1D 3x48 (all ReLU), global
average pooling, Dense 32 ReLU, Dense 5; Adam 2e-3, 25 epochs, batch 64.

Usage (needs edgerun's optional ``build`` extra)::

    python tools/build_vibration.py [--out models/vibration]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _modelkit as mk
import numpy as np
import tensorflow as tf

SCRIPT = "tools/build_vibration.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 0
LABELS = ["normal", "imbalance", "misalignment", "bearing_fault", "looseness"]
AXES = ("x", "y", "z")

#: Output sample rate (Hz), window length and training hop (samples).
FS = 1000
WINDOW = 256
TRAIN_HOP = 128
#: Samples per recording: 8 non-overlapping windows.
RECORDING = 8 * WINDOW
#: Simulation oversampling factor and the anti-alias filter used to decimate.
OVERSAMPLE = 4
AA_CUTOFF_HZ = 400.0
AA_TAPS = 129
#: Sensor output resolution (g); the CSV samples use 5 decimals.
RESOLUTION_DECIMALS = 5

#: Recordings per class; the first TRAIN_RECORDINGS of each class train the model.
RECORDINGS_PER_CLASS = 140
TRAIN_RECORDINGS = 100

INPUT_SHAPE = (WINDOW, len(AXES))
EPOCHS = 25
BATCH_SIZE = 64
#: Training windows fed to the INT8 calibrators (both formats).
CALIBRATION_WINDOWS = 1000
#: An INT8 variant may lose at most this much accuracy against its FP32 sibling.
MAX_INT8_DROP = 0.01

Signal = np.ndarray
Rng = np.random.Generator


# --------------------------------------------------------------------------- data


def _shaft_angle(rng: Rng, t: np.ndarray, f0: float) -> np.ndarray:
    """Shaft angle (rad) for a nominal speed ``f0`` with a slow +/-0.5 % wobble."""
    wobble = 0.005 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 2 * np.pi))
    freq = f0 * (1.0 + wobble)
    dt = t[1] - t[0]
    return 2 * np.pi * np.cumsum(freq) * dt + rng.uniform(0, 2 * np.pi)


def _harmonic(theta: np.ndarray, order: float, amplitude: float, phase: float) -> Signal:
    """``amplitude * cos(order * theta + phase)``."""
    return amplitude * np.cos(order * theta + phase)


def _base(rng: Rng, theta: np.ndarray) -> Signal:
    """Vibration of any running machine: small 1x on x/y, weak 2x, weak 1x axial. Shape [3, n]."""
    sig = np.zeros((3, theta.size))
    for axis in (0, 1):
        sig[axis] += _harmonic(theta, 1, rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi))
        sig[axis] += _harmonic(theta, 2, rng.uniform(0.0, 0.012), rng.uniform(0, 2 * np.pi))
    sig[2] += _harmonic(theta, 1, rng.uniform(0.005, 0.02), rng.uniform(0, 2 * np.pi))
    return sig


def _imbalance(rng: Rng, theta: np.ndarray, f0: float, t: np.ndarray) -> Signal:
    """Strong rotating 1x force: x and y 90 degrees apart, little axial motion."""
    amp, phase = rng.uniform(0.08, 0.5), rng.uniform(0, 2 * np.pi)
    sig = np.zeros((3, theta.size))
    sig[0] = amp * np.cos(theta + phase)
    sig[1] = rng.uniform(0.7, 1.0) * amp * np.sin(theta + phase)
    sig[2] = _harmonic(theta, 1, rng.uniform(0.0, 0.1) * amp, rng.uniform(0, 2 * np.pi))
    return sig


def _misalignment(rng: Rng, theta: np.ndarray, f0: float, t: np.ndarray) -> Signal:
    """Strong 2x and 3x radial harmonics and a strong axial (z) 1x/2x component."""
    sig = np.zeros((3, theta.size))
    a2, a3 = rng.uniform(0.08, 0.35), rng.uniform(0.04, 0.2)
    for axis in (0, 1):
        coupling = rng.uniform(0.6, 1.0)
        sig[axis] += _harmonic(theta, 1, rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi))
        sig[axis] += _harmonic(theta, 2, coupling * a2, rng.uniform(0, 2 * np.pi))
        sig[axis] += _harmonic(theta, 3, coupling * a3, rng.uniform(0, 2 * np.pi))
    sig[2] += _harmonic(theta, 1, rng.uniform(0.06, 0.3), rng.uniform(0, 2 * np.pi))
    sig[2] += _harmonic(theta, 2, rng.uniform(0.06, 0.3), rng.uniform(0, 2 * np.pi))
    return sig


def _bearing_fault(rng: Rng, theta: np.ndarray, f0: float, t: np.ndarray) -> Signal:
    """Impulses at the defect frequency ringing a 250-350 Hz resonance, shaft-modulated."""
    fs = 1.0 / (t[1] - t[0])
    fd = rng.uniform(3.5, 5.5) * f0
    resonance, tau = rng.uniform(250, 350), rng.uniform(1.5e-3, 3e-3)
    amp, depth = rng.uniform(0.3, 1.2), rng.uniform(0.3, 0.8)
    # Impact times: a regular train at fd with 1 % jitter (rolling-element slip).
    count = int(np.ceil(t[-1] * fd)) + 2
    period = 1.0 / fd
    times = rng.uniform(0, period) + np.arange(count) * period + rng.normal(0, 0.01 * period, count)
    times = times[(times >= 0) & (times < t[-1])]
    impulses = np.zeros(t.size)
    index = np.round(times * fs).astype(int)
    modulation = 1.0 + depth * np.cos(theta[index] + rng.uniform(0, 2 * np.pi))
    np.add.at(impulses, index, amp * modulation * rng.uniform(0.8, 1.2, index.size))
    tk = np.arange(int(6 * tau * fs)) / fs
    kernel = np.exp(-tk / tau) * np.sin(2 * np.pi * resonance * tk)
    ringing = np.convolve(impulses, kernel)[: t.size]
    gains = (rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), rng.uniform(0.15, 0.4))
    return np.stack([g * ringing for g in gains])


def _looseness(rng: Rng, theta: np.ndarray, f0: float, t: np.ndarray) -> Signal:
    """Many harmonics and sub-harmonics, clipped asymmetrically; strongest on y."""
    orders = [0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8]
    wave = np.zeros(theta.size)
    for order in orders:
        wave += rng.uniform(0.3, 1.0) / np.sqrt(order) * np.cos(order * theta + rng.uniform(0, 2 * np.pi))
    wave *= rng.uniform(0.2, 0.6) / np.std(wave)
    # The loose part hits a stop: one side is truncated much harder than the other.
    low, high = rng.uniform(0.3, 0.7), rng.uniform(1.2, 2.0)
    if rng.random() < 0.5:
        low, high = high, low
    wave = np.clip(wave, -low * np.std(wave), high * np.std(wave))
    gains = (rng.uniform(0.4, 0.7), 1.0, rng.uniform(0.2, 0.4))
    return np.stack([g * wave for g in gains])


FAULTS: dict[str, Callable[[Rng, np.ndarray, float, np.ndarray], Signal]] = {
    "imbalance": _imbalance,
    "misalignment": _misalignment,
    "bearing_fault": _bearing_fault,
    "looseness": _looseness,
}


def _anti_alias_kernel() -> np.ndarray:
    """Hamming-windowed sinc low-pass at AA_CUTOFF_HZ for the oversampled rate, unit DC gain."""
    cutoff = AA_CUTOFF_HZ / (FS * OVERSAMPLE)  # cycles per oversampled sample
    n = np.arange(AA_TAPS) - (AA_TAPS - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(AA_TAPS)
    return kernel / kernel.sum()


def make_recording(rng: Rng, label: str) -> np.ndarray:
    """Simulate one recording of ``label``; returns float64 [RECORDING, 3] in g (1e-5 g steps)."""
    n_fine = RECORDING * OVERSAMPLE
    t = np.arange(n_fine) / (FS * OVERSAMPLE)
    f0 = rng.uniform(20.0, 40.0)
    theta = _shaft_angle(rng, t, f0)
    sig = _base(rng, theta)
    if label != "normal":
        sig += FAULTS[label](rng, theta, f0, t)
    kernel = _anti_alias_kernel()
    sig = np.stack([np.convolve(axis, kernel, mode="same") for axis in sig])[:, ::OVERSAMPLE]
    sig += rng.normal(0.0, rng.uniform(0.005, 0.02), sig.shape)
    gain = rng.uniform(0.9, 1.1, (3, 1))
    offset = rng.uniform(-0.01, 0.01, (3, 1))
    return np.round((gain * sig + offset).T, RESOLUTION_DECIMALS)


def make_recordings() -> tuple[np.ndarray, np.ndarray]:
    """All recordings ``[R, RECORDING, 3]`` and labels ``[R]``, class by class, seeded."""
    rng = np.random.default_rng(SEED)
    recs, labels = [], []
    for index, label in enumerate(LABELS):
        for _ in range(RECORDINGS_PER_CLASS):
            recs.append(make_recording(rng, label))
            labels.append(index)
    return np.stack(recs), np.asarray(labels)


def windows(recs: np.ndarray, hop: int) -> np.ndarray:
    """Cut ``[R, T, 3]`` recordings into float32 ``[R, W, WINDOW, 3]`` windows with ``hop``."""
    starts = range(0, recs.shape[1] - WINDOW + 1, hop)
    return np.stack([recs[:, s : s + WINDOW] for s in starts], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- model


def axis_stats(train_windows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-axis mean and standard deviation (g) over all training windows."""
    flat = train_windows.reshape(-1, train_windows.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).tolist(), flat.std(axis=0).tolist()


def build_model(mean: list[float], std: list[float]) -> tf.keras.Model:
    """The small 1-D CNN, standardising each axis with the fixed ``mean``/``std``; it emits logits.

    The standardisation is a ``Rescaling`` layer (``x / std - mean / std``) with
    plain Python constants, so it exports as constant Mul/Add in ONNX and TFLite
    (a Keras ``Normalization`` layer keeps its statistics as captured tensors,
    which tf2onnx turns into extra graph inputs).
    """
    layers = tf.keras.layers
    scale = [1.0 / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return tf.keras.Sequential(
        [
            tf.keras.Input(INPUT_SHAPE, name="input"),
            layers.Rescaling(scale, offset, name="standardize"),
            layers.Conv1D(16, 7, strides=2, padding="same", activation="relu"),
            layers.Conv1D(24, 5, padding="same", activation="relu"),
            layers.MaxPooling1D(2),
            layers.Conv1D(32, 5, padding="same", activation="relu"),
            layers.MaxPooling1D(2),
            layers.Conv1D(48, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling1D(),
            layers.Dense(32, activation="relu"),
            layers.Dense(len(LABELS), name="logits"),
        ],
        name="vibration",
    )


def train(x_train: np.ndarray, y_train: np.ndarray) -> tf.keras.Model:
    """Train the CNN deterministically on the training windows."""
    mk.set_seeds(SEED)
    model = build_model(*axis_stats(x_train))
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    return model


# --------------------------------------------------------------------------- samples


def write_csv(path: Path, rec: np.ndarray) -> None:
    """Write one recording as ``t,x,y,z`` (t in s, 4 decimals; g, 5 decimals), atomically."""
    lines = ["t," + ",".join(AXES)]
    for i, (x, y, z) in enumerate(rec):
        lines.append(f"{i / FS:.4f},{x:.5f},{y:.5f},{z:.5f}")
    mk.write_text(path, "\n".join(lines) + "\n")


def read_csv_windows(path: Path) -> np.ndarray:
    """Read a sample CSV back and cut it into non-overlapping float32 ``[W, WINDOW, 3]`` windows."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    return windows(data[np.newaxis, :, 1:], WINDOW)[0]


def write_samples(
    folder: Path,
    test_recs: np.ndarray,
    test_labels: np.ndarray,
    all_correct: np.ndarray,
    runners: dict[str, Callable[[np.ndarray], np.ndarray]],
    names: dict[str, str],
) -> list[str]:
    """Write one CSV per class from held-out recordings every file gets fully right.

    ``all_correct[r]`` says whether all four files classify every window of
    held-out recording ``r`` correctly. Each written CSV is read back and
    classified again by every runner; the table is printed. Returns problems.
    """
    folder.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    header = f"{'sample':<20}" + "".join(f"{names[key]:>24}" for key in runners)
    print(header)
    for label_index, label in enumerate(LABELS):
        candidates = np.flatnonzero((test_labels == label_index) & all_correct)
        if len(candidates) == 0:
            problems.append(f"no held-out {label} recording is classified correctly by all four files")
            continue
        rec_index = int(candidates[0])
        path = folder / f"{label}.csv"
        write_csv(path, test_recs[rec_index])
        back = read_csv_windows(path)
        row = f"{path.name:<20}"
        for key, run in runners.items():
            pred = np.argmax(run(back), axis=1)
            hits = int(np.sum(pred == label_index))
            row += f"{f'{hits}/{len(back)} {label}':>24}"
            if hits != len(back):
                wrong = ", ".join(LABELS[p] for p in pred[pred != label_index])
                problems.append(f"{path.name}: {names[key]} misclassifies {len(back) - hits} windows ({wrong})")
        held_out = RECORDINGS_PER_CLASS - TRAIN_RECORDINGS
        print(f"{row}   (held-out {label} recording {rec_index - label_index * held_out + 1} of {held_out})")
    return problems


# --------------------------------------------------------------------------- cards


def card(precision: str, accuracy: float, notes: str) -> dict[str, Any]:
    """The edgerun model card for one vibration file."""
    return {
        "name": "vibration",
        "version": "1.0.0",
        "task": "classification",
        "precision": precision,
        "description": (
            "Vibration anomaly classifier: one 256-sample window of a 3-axis accelerometer (x, y, z in g, "
            "1000 Hz) -> normal, imbalance, misalignment, bearing fault or looseness. Trained on synthetic data."
        ),
        "labels": LABELS,
        "postprocess": {"softmax": True, "top_k": 3},
        "metrics": {"accuracy": round(float(accuracy), 4)},
        "notes": notes,
    }


def card_notes(n_train_windows: int, n_test_windows: int, n_calibration: int) -> dict[str, str]:
    """The ``notes`` of each card, keyed like the file paths."""
    common = (
        f"Input: one window of {WINDOW} samples x 3 axes [x, y, z] (x, y radial, z axial), raw acceleration "
        f"in g at {FS} Hz (AC-coupled, no gravity), float32; the model standardises each axis internally "
        "(constant mean/std of the training windows), so no preprocessing. Output: logits for the 5 labels. "
        f"Data: synthetic recordings generated by {SCRIPT} with fixed seeds (shaft 20-40 Hz, per-class fault "
        "physics, sensor noise, per-axis gain/offset; see models/README.md). Split by recording: "
        f"{TRAIN_RECORDINGS} recordings per class train ({n_train_windows} windows, hop {TRAIN_HOP}), "
        f"{RECORDINGS_PER_CLASS - TRAIN_RECORDINGS} per class are held out ({n_test_windows} non-overlapping "
        "windows); accuracy is measured on the held-out windows with this file."
    )
    calib = f"{n_calibration} training windows drawn with a fixed seed"
    return {
        "fp32_onnx": f"{common} Exported with tf2onnx (opset {mk.ONNX_OPSET}); input 'input' [N,{WINDOW},3] "
        "float32, output 'logits' [N,5], dynamic batch dimension N.",
        "int8_onnx": f"{common} Static INT8 with onnxruntime quantize_static, QDQ format, uint8 activations, "
        f"per-channel int8 weights, MinMax calibration over {calib}; float32 input/output, dynamic batch N.",
        "fp32_tflite": f"{common} TFLiteConverter from the Keras model; batch 1, float32 I/O.",
        "int8_tflite": f"{common} Full-integer INT8 TFLite (Optimize.DEFAULT, TFLITE_BUILTINS_INT8, "
        f"representative dataset = {calib}); batch 1, int8 input and output tensors (quantize the g values "
        "with the input tensor's scale/zero point, dequantize the logits).",
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Build everything into ``--out``; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "vibration")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    mk.remove_partial_files(out)  # what a killed build left; every file here is written atomically

    start = time.perf_counter()
    recs, labels = make_recordings()
    is_train = np.tile(np.arange(RECORDINGS_PER_CLASS) < TRAIN_RECORDINGS, len(LABELS))
    train_w = windows(recs[is_train], TRAIN_HOP)  # [R, 15, 256, 3]
    test_w = windows(recs[~is_train], WINDOW)  # [R, 8, 256, 3]
    x_train = train_w.reshape(-1, *INPUT_SHAPE)
    y_train = np.repeat(labels[is_train], train_w.shape[1])
    x_test = test_w.reshape(-1, *INPUT_SHAPE)
    y_test = np.repeat(labels[~is_train], test_w.shape[1])
    print(
        f"data: {int(is_train.sum())} train recordings -> {len(x_train)} windows (hop {TRAIN_HOP}); "
        f"{int((~is_train).sum())} held-out recordings -> {len(x_test)} windows (hop {WINDOW}); "
        f"generated in {time.perf_counter() - start:.1f} s"
    )

    start = time.perf_counter()
    model = train(x_train, y_train)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    print(
        f"model: {model.count_params()} parameters, trained in {time.perf_counter() - start:.1f} s, "
        f"Keras held-out accuracy {keras_acc:.4f}"
    )

    calibration = x_train[np.random.default_rng(SEED).permutation(len(x_train))[:CALIBRATION_WINDOWS]]
    paths = mk.export_variants(model, out, "vibration", INPUT_SHAPE, calibration)
    runners = mk.runners(paths)
    accuracy: dict[str, float] = {}
    rec_correct: dict[str, np.ndarray] = {}
    for key, run in runners.items():
        pred = np.argmax(run(x_test), axis=1)
        hits = pred == y_test
        accuracy[key] = float(np.mean(hits))
        rec_correct[key] = hits.reshape(test_w.shape[:2]).all(axis=1)
        per_class = " ".join(f"{label}={np.mean(hits[y_test == i]):.3f}" for i, label in enumerate(LABELS))
        pairs, counts = np.unique(np.stack([y_test[~hits], pred[~hits]], axis=1), axis=0, return_counts=True)
        errors = ", ".join(f"{LABELS[t]}->{LABELS[p]} x{c}" for (t, p), c in zip(pairs, counts)) or "none"
        print(
            f"{paths[key].name}: held-out accuracy {accuracy[key]:.4f} ({int(hits.sum())}/{len(y_test)}); "
            f"per class {per_class}; errors {errors}"
        )

    notes = card_notes(len(x_train), len(x_test), len(calibration))
    for key, path in paths.items():
        precision = "int8" if key.startswith("int8") else "fp32"
        mk.write_card(path.with_name(path.name + ".card.yaml"), card(precision, accuracy[key], notes[key]), SCRIPT)

    failures = write_samples(
        out / "samples",
        recs[~is_train],
        labels[~is_train],
        np.logical_and.reduce(list(rec_correct.values())),
        runners,
        {key: path.name for key, path in paths.items()},
    )
    for fmt in ("onnx", "tflite"):
        drop = accuracy[f"fp32_{fmt}"] - accuracy[f"int8_{fmt}"]
        if drop > MAX_INT8_DROP:
            failures.append(f"{fmt}: INT8 is {drop * 100:.2f} points below FP32")

    for path in paths.values():
        describe = mk.describe_onnx if path.suffix == ".onnx" else mk.describe_tflite
        print(f"{path.name} ({mk.size_kib(path)}):")
        for line in describe(path):
            print(f"  {line}")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 1024:.1f} KiB in all")
    if failures:
        for failure in failures:
            print(f"ERROR: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
