"""In-process metrics and system figures."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from edgerun.telemetry import Metrics, SystemSampler
from edgerun.telemetry.metrics import LatencyStats


class Clock:
    """A settable monotonic clock (the metrics take the clock as a parameter)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(m: Metrics, total: float, version: str = "1.0.0") -> None:
    m.record("digits", version, "xnnpack", {"pre": 0.1, "infer": total / 2, "post": 0.05, "total": total})


def test_snapshot_has_the_protocol_shape_and_exact_window_percentiles() -> None:
    clock = Clock()
    m = Metrics(window_s=10, clock=clock)
    for i in range(1, 101):
        _record(m, float(i))
    m.error("digits", "1.0.0", "xnnpack")
    snap = m.snapshot()
    entry = snap["models"]["digits"]
    assert set(entry) == {"version", "delegate", "count", "errors", "latency_ms", "stages_ms"}
    assert (entry["count"], entry["errors"], entry["version"]) == (100, 1, "1.0.0")
    assert entry["latency_ms"] == {"p50": 50.5, "p95": 95.05, "p99": 99.01, "max": 100.0}
    assert entry["stages_ms"] == {"pre": 0.1, "infer": 25.25, "post": 0.05}


def test_the_window_slides_but_totals_keep_everything_since_start() -> None:
    clock = Clock()
    m = Metrics(window_s=10, clock=clock)
    for _ in range(50):
        _record(m, 100.0)
    clock.now += 20
    for _ in range(10):
        _record(m, 1.0)
    window = m.snapshot()["models"]["digits"]
    assert window["count"] == 10 and window["latency_ms"]["max"] == 1.0
    totals = m.totals()["digits@1.0.0"]
    assert totals["count"] == 60 and totals["stages_ms"]["total"]["max"] == 100.0
    assert totals["stages_ms"]["total"]["p50"] == pytest.approx(100.0, rel=0.1)  # histogram resolution
    assert totals["throughput_per_s"] == pytest.approx(60 / 20.1, rel=1e-3)  # from when the first 100 ms frame began


def test_versions_are_kept_apart_and_the_busier_one_is_reported_under_the_name() -> None:
    m = Metrics(window_s=60, clock=Clock())
    for _ in range(5):
        _record(m, 1.0, "1.0.0")
    for _ in range(7):
        _record(m, 2.0, "1.1.0")
    assert m.snapshot()["models"]["digits"]["version"] == "1.1.0"
    assert set(m.totals()) == {"digits@1.0.0", "digits@1.1.0"}


def test_dropped_frames_are_counted_per_model() -> None:
    m = Metrics(clock=Clock())
    m.dropped("cam", "1.0.0", "cpu", 3)
    m.dropped("cam", "1.0.0", "cpu", 2)
    assert m.totals()["cam@1.0.0"]["dropped"] == 5


def test_since_start_percentiles_stay_within_the_histogram_resolution() -> None:
    stats = LatencyStats()
    for i in range(1, 10001):
        stats.add(i / 1000.0, 0.0)  # 1 us .. 10 ms
    total = stats.summary_total()
    assert total is not None
    assert total["p50"] == pytest.approx(5.0, rel=0.1)
    assert total["p99"] == pytest.approx(9.9, rel=0.1)
    assert total["max"] == 10.0


def test_the_ring_keeps_the_newest_samples_once_it_wraps_and_the_histogram_its_extremes() -> None:
    stats = LatencyStats()
    for i in range(10_000):  # the ring holds 4,096: it wraps twice
        stats.add(float(i), float(i))
    recent = stats.window(0.0)
    assert len(recent) == 4096 and sorted(recent.tolist()) == [float(i) for i in range(10_000 - 4096, 10_000)]
    assert stats.window(9_990.0).tolist() == [float(i) for i in range(9_990, 10_000)]
    tiny, huge = LatencyStats(), LatencyStats()
    tiny.add(1e-6, 0.0)  # below the first bucket, and above the last: counted, not lost
    huge.add(1e9, 0.0)
    assert tiny.summary_total() is not None and huge.summary_total() is not None
    assert sum(tiny._hist) == sum(huge._hist) == 1 and tiny._hist[0] == 1 and huge._hist[-1] == 1


def test_recording_goes_on_while_a_snapshot_computes_its_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot copies the rings under the lock and computes after it: a record() made while the
    percentiles are being computed must not wait for them (it deadlocked here while the lock was held)."""
    import edgerun.telemetry.metrics as metrics_module

    m = Metrics(window_s=60)
    for i in range(1, 101):
        _record(m, float(i))
    computing, recorded = threading.Event(), threading.Event()
    summary = metrics_module._summary

    def summary_once_recorded(samples: Any) -> Any:
        computing.set()
        recorded.wait(timeout=10)
        return summary(samples)

    monkeypatch.setattr(metrics_module, "_summary", summary_once_recorded)
    snaps: list[dict[str, Any]] = []
    snapshot = threading.Thread(target=lambda: snaps.append(m.snapshot()))
    snapshot.start()
    assert computing.wait(timeout=10)
    recorder = threading.Thread(target=_record, args=(m, 1000.0))
    recorder.start()
    recorder.join(timeout=5)  # waits until the snapshot ends if the snapshot still holds the lock
    held = recorder.is_alive()
    recorded.set()
    snapshot.join(timeout=10)
    recorder.join(timeout=10)
    assert not held, "record() waited for the snapshot's percentiles"
    assert snaps[0]["models"]["digits"]["count"] == 100  # the copy taken before the new record
    assert m.snapshot()["models"]["digits"]["count"] == 101


def test_system_figures_come_from_the_board_or_are_null(tmp_path: Path) -> None:
    bare = SystemSampler(tmp_path / "none").sample()
    assert bare["temp_c"] is None and bare["throttled"] is None
    assert bare["rss_mb"] > 10 and bare["cpu_pct"] >= 0
    root = tmp_path / "pi"
    for zone, milli in (("thermal_zone0", "48250"), ("thermal_zone1", "-273000")):
        (root / "sys/class/thermal" / zone).mkdir(parents=True)
        (root / "sys/class/thermal" / zone / "temp").write_text(milli + "\n")
    firmware = root / "sys/devices/platform/soc/soc:firmware"
    firmware.mkdir(parents=True)
    (firmware / "get_throttled").write_text("50005\n")
    pi = SystemSampler(root).sample()
    assert pi["temp_c"] == 48.25  # the disconnected zone is ignored
    assert pi["throttled"] == 0x50005


def test_consecutive_windows_count_every_inference_and_error_exactly_once_while_recording_goes_on() -> None:
    """Each ``MetricsWindow.take()`` reads its counts and the next window's base in one hold of the lock:
    an inference recorded between two holds was counted in two windows."""
    import sys

    from edgerun.telemetry.metrics import MetricsWindow

    m = Metrics(window_s=60)
    window = MetricsWindow(m)
    stop = threading.Event()

    def infer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 5:
                _record(m, 1.0)
            else:
                m.error("digits", "1.0.0", "xnnpack")

    count = errors = 0

    def add(snap: dict[str, Any]) -> None:
        nonlocal count, errors
        entry = snap["models"].get("digits", {"count": 0, "errors": 0})
        count += entry["count"]
        errors += entry["errors"]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: between the two holds too
    threads = [threading.Thread(target=infer) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for _ in range(300):
            add(window.take())
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        sys.setswitchinterval(interval)
    add(window.take())
    total, total_errors = m.counters()[("digits", "1.0.0")]
    assert (count, errors) == (total, total_errors)


def test_a_metrics_record_names_the_version_serving_now_and_counts_every_version() -> None:
    """Once: an idle window named the first version ever seen (after an update, the one replaced), and
    a window where the version named served nothing dropped the other version's errors."""
    from edgerun.telemetry.metrics import MetricsWindow

    clock = Clock()
    m = Metrics(clock=clock)
    window = MetricsWindow(m)
    stages = {"pre": 0.1, "infer": 1.0, "post": 0.1, "total": 1.3}
    for _ in range(3):
        clock.now += 1
        m.record("digits", "1.0.0", "cpu", stages)
    clock.now += 1
    m.record("digits", "1.1.0", "cpu", stages)  # the update takes over
    records = [window.take()["models"]["digits"]]
    clock.now += 10
    records.append(window.take()["models"]["digits"])  # nobody asked anything
    for _ in range(2):
        clock.now += 1
        m.error("digits", "1.1.0", "cpu")  # bad frames only
    records.append(window.take()["models"]["digits"])
    clock.now += 1
    m.record("digits", "1.0.0", "cpu", stages)  # rolled back
    clock.now += 10
    records.append(window.take()["models"]["digits"])
    clock.now += 10
    records.append(window.take()["models"]["digits"])
    assert [(r["version"], r["count"], r["errors"]) for r in records] == [
        ("1.0.0", 4, 0),  # 1.0.0 served most; 1.1.0's one inference counted too
        ("1.1.0", 0, 0),  # quiet: the version that served last
        ("1.1.0", 0, 2),
        ("1.0.0", 1, 0),
        ("1.0.0", 0, 0),
    ]
    totals = m.counters()
    assert sum(r["count"] for r in records) == sum(c for c, _ in totals.values())
    assert sum(r["errors"] for r in records) == sum(e for _, e in totals.values())
