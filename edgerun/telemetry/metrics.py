"""Per-model, per-version counters and latency percentiles, cheap enough to leave on.

Recording is on the hot path, so it does the least possible: an index bump and
two stores into a fixed ring (recent samples, for the sliding window) and one
bucket increment in a log-spaced histogram (everything since start, in constant
memory), found by bisecting the bucket edges. Ring and histogram are plain Python
lists: a store into a list costs a fraction of one into a NumPy array, and
``add`` takes 0.4 us where it took 1.8 with arrays and ``log10`` (2-vCPU EPYC).
Percentiles are computed with NumPy, over a copy, only when a snapshot is taken.
The figures since start (``totals()``) and since a ``mark()`` (``totals_since()``: a run's
summary, its own frames, every version together) are exact while every sample still fits the
ring (up to 4,096), and from the histogram beyond (about 10%).

Invariant: a snapshot never blocks recording for longer than copying the rings
(``LatencyStats.recent``); it computes after releasing the lock.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import numpy as np

__all__ = ["STAGES", "LatencyStats", "Metrics", "MetricsMark", "MetricsWindow", "NoMetrics", "percentiles"]

#: The stages every inference is timed in; "total" is end to end.
STAGES = ("pre", "infer", "post", "total")

_RING = 4096
# Histogram: 1 us to ~100 s, 24 buckets per decade (about 10% wide).
_H_MIN_MS = 1e-3
_H_PER_DECADE = 24
_H_BUCKETS = 8 * _H_PER_DECADE + 1
# Bucket b holds [MIN * 10**(b/24), MIN * 10**((b+1)/24)); bucket 0 everything below, the last everything above.
_H_EDGES = [_H_MIN_MS * 10 ** (b / _H_PER_DECADE) for b in range(1, _H_BUCKETS)]


class LatencyStats:
    """Latencies of one stage: recent samples with their times, and a since-start histogram."""

    __slots__ = ("_hist", "_i", "_ms", "_ts", "count", "max_ms", "sum_ms")

    def __init__(self) -> None:
        self._ts = [0.0] * _RING
        self._ms = [0.0] * _RING
        self._i = 0
        self._hist = [0] * _H_BUCKETS
        self.count = 0
        self.max_ms = 0.0
        self.sum_ms = 0.0

    def add(self, ms: float, now: float) -> None:
        """Record one latency in ms, taken at monotonic time ``now``."""
        i = self._i
        self._ts[i] = now
        self._ms[i] = ms
        self._i = i + 1 if i < _RING - 1 else 0
        self.count += 1
        self.sum_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        self._hist[bisect_right(_H_EDGES, ms)] += 1

    def recent(self) -> tuple[list[float], list[float]]:
        """Copies of the recent samples' times and latencies (at most the last 4,096).

        Two list slices, a few microseconds: what a snapshot does under the lock.
        """
        n = min(self.count, _RING)
        return self._ts[:n], self._ms[:n]

    def window(self, since: float) -> np.ndarray:
        """The recent samples taken at or after monotonic time ``since`` (at most the last 4,096)."""
        return _since(*self.recent(), since)

    def summary_window(self, since: float) -> dict[str, float] | None:
        """p50/p95/p99/max over the samples since ``since``; None when there are none."""
        return _summary(self.window(since))

    def summary_total(self) -> dict[str, float] | None:
        """p50/p95/p99/max/mean since start; None before the first sample.

        Exact while every sample is still in the ring (up to 4,096: a run of a few thousand frames);
        beyond, p50/p95/p99 come from the histogram (about 10% resolution: a bucket's geometric
        middle, capped by the maximum), max and mean stay exact. p50 <= p95 <= p99 <= max either way.
        """
        return _summary_since([self._copy_since(None)])

    def _state(self) -> tuple[int, float, float, list[int]]:
        """Where the figures since start stand (count, sum, max, a copy of the histogram): a ``Metrics.mark``."""
        return self.count, self.sum_ms, self.max_ms, self._hist[:]

    def _copy_since(
        self, state: tuple[int, float, float, list[int]] | None
    ) -> tuple[int, float, float, list[float] | None, list[int]]:
        """What ``_summary_since`` needs about the samples added after ``state`` (a ``_state``; None: since
        start), copied (under ``Metrics``' lock, list slices): their count, largest (exact, but for the case
        below) and sum, the samples themselves while they all fit the ring, and the histogram's difference."""
        count0, sum0, max0, hist0 = state if state is not None else (0, 0.0, 0.0, [0] * _H_BUCKETS)
        n = self.count - count0
        hist = [b - b0 for b, b0 in zip(self._hist, hist0, strict=True)]
        if n <= 0:
            return 0, 0.0, 0.0, [], hist
        if n <= _RING:  # the last n samples of the ring, oldest first
            i = self._i
            samples = self._ms[i - n : i] if n <= i else self._ms[i - n :] + self._ms[:i]
            return n, max(samples), self.sum_ms - sum0, samples, hist
        if self.max_ms > max0:  # the largest since start came after the mark: the largest since the mark
            return n, self.max_ms, self.sum_ms - sum0, None, hist
        # else below the mark's: the upper edge of the highest bucket filled since, at most the mark's largest
        edge = _H_MIN_MS * 10 ** ((max(b for b, k in enumerate(hist) if k) + 1) / _H_PER_DECADE)
        return n, min(edge, self.max_ms), self.sum_ms - sum0, None, hist


def _summary_total(copied: tuple[int, float, float, list[float] | None, list[int] | None]) -> dict[str, float] | None:
    """p50/p95/p99/max/mean from a count, max, sum, and the samples (all of them) or else the histogram."""
    count, max_ms, sum_ms, samples, hist = copied
    if not count:
        return None
    out: dict[str, float] = {}
    if samples is not None:  # every sample since start
        out.update(_summary(np.array(samples)) or {})
    else:
        cum = np.cumsum(np.array(hist))
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            b = int(np.searchsorted(cum, q * count))
            # The bucket's geometric middle, capped by the true maximum.
            mid = _H_MIN_MS * 10 ** ((b + 0.5) / _H_PER_DECADE)
            out[name] = _r(min(mid, max_ms))
        out["max"] = _r(max_ms)
    out["mean"] = _r(sum_ms / count)
    return out


def _summary_since(copies: list[tuple[int, float, float, list[float] | None, list[int]]]) -> dict[str, float] | None:
    """p50/p95/p99/max/mean of the samples of several ``LatencyStats._copy_since`` together (the versions of
    one model); None when there are none. Exact while every sample is in its ring, else from the histograms."""
    count = sum(c[0] for c in copies)
    if not count:
        return None
    max_ms, sum_ms = max(c[1] for c in copies), sum(c[2] for c in copies)
    if all(c[3] is not None for c in copies):
        return _summary_total((count, max_ms, sum_ms, [x for c in copies for x in c[3] or ()], None))
    return _summary_total((count, max_ms, sum_ms, None, [sum(bucket) for bucket in zip(*(c[4] for c in copies))]))


def _r(x: float) -> float:
    return round(float(x), 4)


def _since(ts: list[float], ms: list[float], since: float) -> np.ndarray:
    """The latencies in ``ms`` whose time in ``ts`` is at or after ``since``."""
    times, values = np.array(ts), np.array(ms)
    return values[times >= since]


def percentiles(samples: np.ndarray, qs: Iterable[float]) -> list[float]:
    """The ``qs``-th percentiles (0-100) of ``samples``, as ``np.percentile``'s default (linear) method gives
    them, to the bit. Not ``np.percentile`` itself: its first call imports ``numpy.ma``, which took 11 ms, the
    largest single cost of a ``predict`` or ``run`` command's start and end after the runtimes themselves."""
    a = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    if a.size == 0:
        raise ValueError("no samples: a percentile of nothing")
    at = (a.size - 1) * (np.asarray(list(qs), dtype=np.float64) / 100)  # in numpy's order of operations
    lo = np.floor(at).astype(np.intp)
    hi = np.minimum(lo + 1, a.size - 1)
    t, below, above = at - lo, a[lo], a[hi]
    diff = above - below
    # numpy's lerp: from the nearer end, so that a value between two equal ones is exactly that value
    return [float(v) for v in np.where(t >= 0.5, above - diff * (1 - t), below + diff * t)]


def _summary(samples: np.ndarray) -> dict[str, float] | None:
    """p50/p95/p99/max of some latencies; None when there are none."""
    if samples.size == 0:
        return None
    p50, p95, p99 = percentiles(samples, (50, 95, 99))
    return {"p50": _r(p50), "p95": _r(p95), "p99": _r(p99), "max": _r(samples.max())}


class _ModelStats(msgspec.Struct):
    version: str
    delegate: str
    started: float
    stages: dict[str, LatencyStats] = msgspec.field(default_factory=lambda: {s: LatencyStats() for s in STAGES})
    count: int = 0
    errors: int = 0
    dropped: int = 0
    error_ts: list[float] = msgspec.field(default_factory=list)
    last: float = 0.0  # the clock at its latest inference or error: which version served last


class MetricsMark(msgspec.Struct, frozen=True):
    """Where a ``Metrics``' figures since start stood at one moment (``Metrics.mark``)."""

    states: dict[tuple[str, str], dict[str, tuple[int, float, float, list[int]]]]


class Metrics:
    """Counters and latencies per (model name, version); thread-safe.

    ``snapshot()`` returns the ``models`` part of PROTOCOL.md's ``metrics``
    record over a sliding window; ``totals()`` the figures since start.
    """

    def __init__(self, window_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _ModelStats] = {}
        self.started = clock()

    def _get(self, name: str, version: str, delegate: str) -> _ModelStats:
        key = (name, version)
        stats = self._models.get(key)
        if stats is None:
            stats = self._models[key] = _ModelStats(version=version, delegate=delegate, started=self._clock())
        stats.delegate = delegate
        return stats

    def record(self, name: str, version: str, delegate: str, stages_ms: Mapping[str, float]) -> None:
        """One successful inference with its per-stage times in ms (keys from ``STAGES``)."""
        now = self._clock()
        with self._lock:
            stats = self._get(name, version, delegate)
            stats.count += 1
            stats.last = now
            if stats.count == 1:  # it began serving when this inference began, not when it ended
                stats.started = min(stats.started, now - stages_ms.get("total", 0.0) / 1000.0)
            for stage, ms in stages_ms.items():
                s = stats.stages.get(stage)
                if s is not None:
                    s.add(ms, now)

    def error(self, name: str, version: str, delegate: str) -> None:
        """One failed inference (bad frame, runtime error)."""
        now = self._clock()
        with self._lock:
            stats = self._get(name, version, delegate)
            stats.errors += 1
            stats.last = now
            stats.error_ts.append(now)
            if len(stats.error_ts) > _RING:
                del stats.error_ts[: len(stats.error_ts) - _RING]

    def dropped(self, name: str, version: str, delegate: str, n: int = 1) -> None:
        """Frames a live source dropped before this model could take them."""
        with self._lock:
            self._get(name, version, delegate).dropped += n

    def snapshot(self, window_s: float | None = None) -> dict[str, Any]:
        """``{"window_s": w, "models": {name: {...}}}`` in PROTOCOL.md's metrics shape, over a sliding window.

        ``count`` and ``errors`` are over the window (``count`` is capped by the
        4,096 samples kept; ``MetricsWindow`` gives exact counts); ``latency_ms``
        is end to end, ``stages_ms`` the p50 of each stage. PROTOCOL.md keys models
        by name only: where several versions of one model are known, the one with
        most inferences in the window is reported under the name, or, in a window
        without any, the one that served last (never a version long replaced); its
        latencies are given, and ``count`` and ``errors`` are those of every version,
        so consecutive records still add up to the totals.
        """
        window = self.window_s if window_s is None else window_s
        now = self._clock()
        return self._collect(now - window, now, None)

    def _collect(
        self,
        since: float,
        now: float,
        base: dict[tuple[str, str], tuple[int, int]] | None,
        counters: dict[tuple[str, str], tuple[int, int]] | None = None,
    ) -> dict[str, Any]:
        # Under the lock, only copies (list slices, a few microseconds a stage); the arrays and
        # percentiles are computed after it, so a snapshot never holds up ``record``.
        # ``counters``, when given, is filled with ``counters()`` from the same moment.
        kept = []
        with self._lock:
            for (name, version), stats in self._models.items():
                if counters is not None:
                    counters[(name, version)] = (stats.count, stats.errors)
                if base is None:
                    counts = None
                    errors = sum(1 for t in stats.error_ts if t >= since)
                else:
                    count0, errors0 = base.get((name, version), (0, 0))
                    counts, errors = stats.count - count0, stats.errors - errors0
                recent = {stage: stats.stages[stage].recent() for stage in STAGES}
                kept.append((name, version, stats.delegate, counts, errors, recent, stats.last))
        models: dict[str, Any] = {}
        rank: dict[str, tuple[int, float]] = {}  # name -> (count, last) of the version reported
        for name, version, delegate, counts, errors, recent, last in kept:
            total = _since(*recent["total"], since)
            count = int(total.size) if counts is None else counts
            entry = {
                "version": version,
                "delegate": delegate,
                "count": count,
                "errors": errors,
                "latency_ms": _summary(total),
                "stages_ms": {
                    stage: (s["p50"] if (s := _summary(_since(*recent[stage], since))) else None)
                    for stage in ("pre", "infer", "post")
                },
            }
            other = models.get(name)
            if other is not None:  # every version's counts: consecutive records add up to the totals
                entry["count"], entry["errors"] = count + other["count"], errors + other["errors"]
                if (count, last) < rank[name]:  # the other served more, or last in a quiet window
                    other["count"], other["errors"] = entry["count"], entry["errors"]
                    continue
            models[name], rank[name] = entry, (count, last)
        return {"window_s": round(max(0.0, min(now - since, now - self.started)), 3), "models": models}

    def counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(count, errors) since start per (name, version)."""
        with self._lock:
            return {key: (s.count, s.errors) for key, s in self._models.items()}

    def totals(self) -> dict[str, dict[str, Any]]:
        """Everything since start per ``name@version``: counts, throughput and per-stage percentiles."""
        now = self._clock()
        out = {}
        copies = []  # the percentiles are computed after the lock: up to 4,096 samples a stage are sorted
        with self._lock:
            for (name, version), stats in self._models.items():
                elapsed = max(now - stats.started, 1e-9)
                out[f"{name}@{version}"] = {
                    "model": name,
                    "version": version,
                    "delegate": stats.delegate,
                    "count": stats.count,
                    "errors": stats.errors,
                    "dropped": stats.dropped,
                    "elapsed_s": round(elapsed, 3),
                    "throughput_per_s": round(stats.count / elapsed, 3),
                }
                copies.append({stage: stats.stages[stage]._copy_since(None) for stage in STAGES})
        for entry, copied in zip(out.values(), copies, strict=True):
            entry["stages_ms"] = {stage: _summary_since([c]) for stage, c in copied.items()}
        return out

    def sums(self) -> dict[tuple[str, str], dict[str, tuple[int, float]]]:
        """(count, exact sum in ms) per stage since start, per (name, version): what a Prometheus summary's
        ``_count`` and ``_sum`` need (the rounded mean of ``totals()`` times the count can fall between two
        reads, which Prometheus takes for a reset)."""
        with self._lock:
            return {
                key: {stage: (s.count, s.sum_ms) for stage, s in stats.stages.items()}
                for key, stats in self._models.items()
            }

    def mark(self) -> MetricsMark:
        """Where the figures since start stand now, for ``totals_since`` (a run's own figures)."""
        with self._lock:
            return MetricsMark(
                {key: {stage: stats.stages[stage]._state() for stage in STAGES} for key, stats in self._models.items()}
            )

    def totals_since(self, mark: MetricsMark, name: str) -> dict[str, dict[str, float]]:
        """p50/p95/p99/max/mean per stage over the inferences of model ``name`` recorded after ``mark``, every
        version together (a hot swap, an A/B candidate); empty where there are none.

        A run's summary: its own frames, not those of an earlier run on the same ``Metrics``, nor only the
        version serving at its end. Exact while each version's samples since the mark fit its ring (4,096);
        beyond, from the histograms (about 10%), the mean exact, and the max exact unless the ``Metrics`` held a
        larger one before the mark. Inferences another pipeline records on the same model meanwhile are in it.
        """
        copies: list[dict[str, Any]] = []
        with self._lock:
            for (model, version), stats in self._models.items():
                if model == name:
                    before = mark.states.get((model, version), {})
                    copies.append({stage: stats.stages[stage]._copy_since(before.get(stage)) for stage in STAGES})
        out = {stage: _summary_since([c[stage] for c in copies]) for stage in STAGES}
        return {stage: figures for stage, figures in out.items() if figures is not None}

    def models(self) -> Iterable[tuple[str, str]]:
        """The (name, version) pairs seen so far."""
        with self._lock:
            return list(self._models)


class NoMetrics(Metrics):
    """Metrics switched off: records nothing (for measuring what metrics cost)."""

    def record(self, name: str, version: str, delegate: str, stages_ms: Mapping[str, float]) -> None:
        """Ignore."""

    def error(self, name: str, version: str, delegate: str) -> None:
        """Ignore."""

    def dropped(self, name: str, version: str, delegate: str, n: int = 1) -> None:
        """Ignore."""


class MetricsWindow:
    """Consecutive windows over a ``Metrics``, for periodic records.

    Each ``take()`` covers the time since the previous one, with exact counts
    (from the counters, not the sample ring), so the counts of consecutive
    records add up to the total: a run of 150 inferences reports 150.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._since = metrics._clock()
        self._base = metrics.counters()

    def take(self) -> dict[str, Any]:
        """The window since the previous ``take`` (or since creation)."""
        now = self.metrics._clock()
        # This window's counts and the next one's base in one hold of the lock: an inference
        # recorded between two holds would be counted in both windows.
        counters: dict[tuple[str, str], tuple[int, int]] = {}
        snap = self.metrics._collect(self._since, now, self._base, counters=counters)
        self._base = counters
        snap["window_s"] = round(now - self._since, 3)
        self._since = now
        return snap
