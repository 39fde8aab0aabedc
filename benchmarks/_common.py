"""Helpers shared by the benchmarks: model paths, interleaved timing, statistics, tables, machine facts.

Every benchmark compares a candidate (edgerun) against a baseline (the bare
runtime, or a plain script) measured in the same run. Candidates and
baselines run in alternating blocks over several rounds, so drift on a noisy
machine (2-thread runs on a 2-vCPU VM slow down by 20-60% for minutes at a
time) hits every one of them alike; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

# ONNX Runtime's own telemetry (1.29 on: a device id written, an uploader thread) is off in edgerun
# (docs/accelerators.md); off here too, before anything imports it, so that the bare runtime, the plain
# scripts (they inherit the environment) and edgerun run alike.
if not os.environ.get("ORT_DISABLE_TELEMETRY"):  # unset or empty, as edgerun.backends.onnx reads it
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"

REPO = Path(__file__).resolve().parent.parent
DIGITS_DIR = REPO / "models" / "digits"
MOBILENET_DIR = REPO / "models" / "mobilenet"
DIGIT_SAMPLE = DIGITS_DIR / "samples" / "digit_3.png"
PACKAGES = ("onnxruntime", "ai-edge-litert", "numpy", "opencv-python-headless")

__all__ = [
    "DIGITS_DIR",
    "DIGIT_SAMPLE",
    "MOBILENET_DIR",
    "REPO",
    "Samples",
    "digits_models",
    "interleave",
    "machine_summary",
    "make_test_jpeg",
    "median_ratio",
    "median_delta",
    "mobilenet_models",
    "ms",
    "parse_args",
    "print_table",
    "spread",
    "us",
    "verdict",
]


def parse_args(
    description: str, argv: Sequence[str] | None = None, *, mobilenet_dir: bool = False
) -> argparse.Namespace:
    """The command line every benchmark takes: ``--quick`` for a short run.

    With ``mobilenet_dir``, also ``--mobilenet-dir DIR``: MobileNet files built elsewhere
    (``tools/build_mobilenet.py --alpha 0.5 --out DIR``) instead of ``models/mobilenet``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (seconds): fewer rounds and calls")
    if mobilenet_dir:
        parser.add_argument("--mobilenet-dir", type=Path, default=MOBILENET_DIR, help="where mobilenet_int8.tflite is")
    return parser.parse_args(argv)


def digits_models() -> list[Path]:
    """The four committed digits variants, FP32 then INT8, ONNX then TFLite."""
    return [DIGITS_DIR / f"digits_{p}.{f}" for f in ("onnx", "tflite") for p in ("fp32", "int8")]


def mobilenet_models() -> list[Path] | None:
    """The four MobileNet variants, or None (after printing how to build them) when any is missing."""
    paths = [MOBILENET_DIR / f"mobilenet_{p}.{f}" for f in ("onnx", "tflite") for p in ("fp32", "int8")]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        print(
            f"SKIP mobilenet rows: {', '.join(missing)} not found; build them with "
            "`pip install -e .[build]` then `python tools/build_mobilenet.py`"
        )
        return None
    return paths


def make_test_jpeg(path: Path, width: int = 640, height: int = 480, seed: int = 0) -> Path:
    """Write a deterministic smooth-noise colour JPEG (a stand-in for a camera still)."""
    from edgerun.opencv import opencv

    cv2 = opencv()  # through edgerun, so that its image-size bound applies (and no warning)

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 24, size=image.shape, dtype=np.uint8))
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"cannot write {path}")
    return path


def make_images(folder: Path, n: int, size: tuple[int, int], first_seed: int) -> Path:
    """``n`` deterministic colour JPEGs of ``size`` (smooth noise, one seed each), written once."""
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_test_jpeg(folder / f"img_{i:04d}.jpg", *size, seed=first_seed + i)
    done.write_text(str(n))
    return folder


@dataclass
class Samples:
    """Per-call times (seconds) of one candidate, kept per round."""

    rounds: list[np.ndarray] = field(default_factory=list)

    @property
    def pooled(self) -> np.ndarray:
        """Every call of every round."""
        return np.concatenate(self.rounds) if self.rounds else np.empty(0)

    def pct(self, q: float) -> float:
        """The ``q``-th percentile over all calls, in seconds."""
        return float(np.percentile(self.pooled, q))

    def round_medians(self) -> np.ndarray:
        """The median of each round, in seconds."""
        return np.array([float(np.median(r)) for r in self.rounds])


def interleave(
    candidates: dict[str, Callable[[], object]],
    rounds: int,
    block: int,
    warmup: int = 3,
) -> dict[str, Samples]:
    """Time each candidate in alternating blocks of ``block`` calls, ``rounds`` times.

    The order of the candidates rotates from round to round, so none always
    runs right after the same neighbour. Each block starts with ``warmup``
    untimed calls (caches, thread pools waking up after the previous block).
    """
    names = list(candidates)
    out = {name: Samples() for name in names}
    clock = time.perf_counter_ns
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            for _ in range(warmup):
                fn()
            times = np.empty(block, dtype=np.int64)
            for i in range(block):
                t0 = clock()
                fn()
                times[i] = clock() - t0
            out[name].rounds.append(times / 1e9)
    return out


def median_ratio(candidate: Samples | Sequence[float], baseline: Samples | Sequence[float]) -> float:
    """Median over rounds of candidate/baseline (round medians, or per-round values given directly)."""
    a = candidate.round_medians() if isinstance(candidate, Samples) else np.asarray(candidate, dtype=float)
    b = baseline.round_medians() if isinstance(baseline, Samples) else np.asarray(baseline, dtype=float)
    return float(np.median(a / b))


def median_delta(candidate: Samples, baseline: Samples) -> float:
    """Median over rounds of candidate minus baseline round medians, in seconds."""
    return float(np.median(candidate.round_medians() - baseline.round_medians()))


def verdict(ok: bool | None) -> str:
    """PASS, FAIL, or a dash where a row has no target."""
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def print_targets(results: Sequence[tuple[str, bool]], prefix: str = "") -> None:
    """The closing ``## targets`` section: one PASS/FAIL line per target."""
    print("\n## targets\n")
    for label, ok in results:
        print(f"{verdict(ok)} {prefix}{label}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (pasteable into docs/performance.md)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for text in fh:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> str:
    parts = []
    for dist in PACKAGES:
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def machine_summary() -> str:
    """One paragraph: date, CPU model and count, Python and package versions."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; {os.cpu_count()} CPU(s), {_cpu_model()}; Python {platform.python_version()} "
        f"({sys.executable}); {_versions()}"
    )


def ms(seconds: float) -> str:
    """Seconds as milliseconds with three decimals."""
    return f"{seconds * 1e3:.3f}"


def us(seconds: float) -> str:
    """Seconds as microseconds with one decimal."""
    return f"{seconds * 1e6:.1f}"


def spread(values: Sequence[float]) -> str:
    """``min-max`` of per-round values, to show how noisy a ratio was."""
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"
