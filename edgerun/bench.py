"""Benchmarking one model on one delegate: load time, latency percentiles, throughput, peak RSS.

Each (model, delegate) is measured in a fresh child process (``spawn``), so its
peak RSS is its own and one model's allocations do not slow the next. On Linux that
peak is the child's ``VmHWM``: ``getrusage``'s ``ru_maxrss`` survives ``exec`` and so
starts at the RSS of the process that spawned the child.

A percentile is only a tail estimate when some runs lie above it: p95 needs at least
20 runs, p99 at least 100. With fewer the figure is still the interpolated percentile
of the runs made, and ``BenchResult.sparse`` names it, so that the output can say so.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.errors import EdgerunError

__all__ = [
    "MIN_RUNS",
    "BenchResult",
    "bench_in_process",
    "bench_isolated",
    "percentile",
    "sparse_percentiles",
    "speed_ratios",
]


@dataclass(frozen=True)
class BenchResult:
    """Figures for one model on one delegate; times in ms, RSS in MB."""

    model: str
    path: str
    format: str
    precision: str | None
    delegate: str
    threads: int | None
    runs: int
    load_ms: float
    first_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    peak_rss_mb: float
    sparse: tuple[str, ...] = ()
    """The percentiles (``"p95"``, ``"p99"``) taken over too few runs to have any run above them."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return asdict(self)


#: The fewest runs for which a percentile has at least one run above it.
MIN_RUNS = {"p95": 20, "p99": 100}


def percentile(samples: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``."""
    return float(np.percentile(samples, q))


def sparse_percentiles(runs: int) -> tuple[str, ...]:
    """The percentiles that ``runs`` samples are too few to estimate (see ``MIN_RUNS``)."""
    return tuple(name for name, least in MIN_RUNS.items() if runs < least)


def _peak_rss_mb() -> float:
    """This process's peak resident set in MiB: its own, not the spawning process's."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def bench_in_process(path: str, delegate: str, runs: int, threads: int | None, **load_kwargs: Any) -> BenchResult:
    """Load ``path`` on ``delegate`` and time ``runs`` inferences of a synthetic input."""
    import edgerun
    from edgerun.accel.select import synthetic_inputs

    t0 = time.perf_counter()
    model = edgerun.load(path, delegate=delegate, threads=threads, warmup=False, **load_kwargs)
    load_ms = (time.perf_counter() - t0) * 1e3
    with model:
        inputs = synthetic_inputs(model.backend)
        t0 = time.perf_counter_ns()
        model.run(*inputs)
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        for _ in range(min(10, max(2, runs // 20))):
            model.run(*inputs)
        samples = np.empty(runs, dtype=np.float64)
        start = time.perf_counter()
        for i in range(runs):
            t = time.perf_counter_ns()
            model.run(*inputs)
            samples[i] = (time.perf_counter_ns() - t) / 1e6
        wall = time.perf_counter() - start
        return BenchResult(
            model=model.name,
            path=str(path),
            format=model.format,
            precision=model.card.precision,
            delegate=model.delegate,
            threads=threads,
            runs=runs,
            load_ms=load_ms,
            first_ms=first_ms,
            p50_ms=percentile(samples, 50),
            p95_ms=percentile(samples, 95),
            p99_ms=percentile(samples, 99),
            mean_ms=float(samples.mean()),
            throughput_per_s=runs / wall,
            peak_rss_mb=_peak_rss_mb(),
            sparse=sparse_percentiles(runs),
        )


def _child(path: str, delegate: str, runs: int, threads: int | None, load_kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": bench_in_process(path, delegate, runs, threads, **load_kwargs).to_dict()}
    except EdgerunError as exc:
        return {"error": str(exc)}


def bench_isolated(path: str, delegate: str, runs: int, threads: int | None, **load_kwargs: Any) -> BenchResult:
    """``bench_in_process`` in a fresh child process; errors come back as ``EdgerunError``."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        reply = pool.apply(_child, (path, delegate, runs, threads, load_kwargs))
    if "error" in reply:
        raise EdgerunError(reply["error"])
    fields = reply["ok"]
    return BenchResult(**{**fields, "sparse": tuple(fields["sparse"])})


def speed_ratios(results: list[BenchResult]) -> list[dict[str, Any]]:
    """FP32-over-INT8 p50 ratios for variants of one model (same card name, format and delegate)."""
    groups: dict[tuple[str, str, str], dict[str, BenchResult]] = {}
    for r in results:
        if r.precision:
            groups.setdefault((r.model, r.format, r.delegate), {})[r.precision] = r
    ratios = []
    for (model, fmt, delegate), by_precision in sorted(groups.items()):
        if "fp32" in by_precision and "int8" in by_precision:
            fp32, int8 = by_precision["fp32"], by_precision["int8"]
            ratios.append(
                {
                    "model": model,
                    "format": fmt,
                    "delegate": delegate,
                    "fp32_p50_ms": fp32.p50_ms,
                    "int8_p50_ms": int8.p50_ms,
                    "int8_speedup": fp32.p50_ms / int8.p50_ms,
                }
            )
    return ratios


def usable_delegates(path: Path, probe_root: str | None = None) -> list[str]:
    """Names of the delegates that could run ``path`` here, in rank order."""
    from edgerun.accel.probe import probe
    from edgerun.accel.runtimes import discover
    from edgerun.accel.select import find_candidates
    from edgerun.backends import detect_format

    fmt = detect_format(path)
    candidates, _ = find_candidates(path, fmt, "auto", probe(probe_root or "/"), discover(formats=(fmt,)))
    return [spec.name for spec, _ in candidates]
