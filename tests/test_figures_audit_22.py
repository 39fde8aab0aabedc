"""Audit of the figures a run reports: a summary's latencies are those of the run's own frames, every one."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgerun
from edgerun.ota.slot import ModelSlot
from edgerun.pipeline import Pipeline
from edgerun.sinks.base import Result
from edgerun.sources import open_source
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES
from tests.test_pipeline import ListSink


def _images(folder: Path, n: int, large: int = 0) -> Path:
    """``n`` digit images, the first ``large`` of them 1000 x 1000 (milliseconds to decode, not microseconds)."""
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000), np.uint8)
    for i in range(n):
        if i < large:
            cv2.imwrite(str(folder / f"{i:03d}.png"), noise)
        else:
            shutil.copy(SAMPLES / f"digit_{i % 10}.png", folder / f"{i:03d}.png")
    return folder


def _mean_of_records(results: list[Result]) -> float:
    """The mean of what the sinks recorded as each result's latency (pre + infer + post, ms)."""
    return sum(r.record["latency_ms"] for r in results) / len(results)


def _mean_of_stages(stages_ms: dict[str, dict[str, float]]) -> float:
    return sum(stages_ms[stage]["mean"] for stage in ("pre", "infer", "post"))


def test_after_a_hot_swap_the_summary_latencies_cover_every_frame_of_the_run_not_only_the_new_versions(
    tmp_path: Path,
) -> None:
    card = tmp_path / "card.yaml"
    card.write_text((DIGITS / "digits_fp32.onnx.card.yaml").read_text().replace("version: 1.0.0", "version: 2.0.0"))
    first = edgerun.load(DIGITS / "digits_int8.tflite")
    second = edgerun.load(DIGITS / "digits_fp32.onnx", card=card)
    slot = ModelSlot(first)
    sink = ListSink()

    def swap_before_the_last(_: Result) -> None:
        if len(sink.results) == 10:  # the frames already prepared finish on the first version
            slot.swap(second)  # which gets only small images: its latencies are not the run's

    metrics = Metrics()
    source = open_source(str(_images(tmp_path / "in", 40, large=10)))
    summary = Pipeline(source, slot, [sink], metrics=metrics, on_result=swap_before_the_last).run()
    versions = [r.record["version"] for r in sink.results]
    assert summary.frames == 40 and 10 <= versions.count("1.0.0") < 40
    # the summary's stage means add up to the mean latency the sinks recorded over all 40 results
    assert _mean_of_stages(summary.stages_ms) == pytest.approx(_mean_of_records(sink.results), abs=2e-3)
    for stage, figures in summary.stages_ms.items():  # its max is the larger of the two versions' maxima
        assert figures["max"] == max(t["stages_ms"][stage]["max"] for t in metrics.totals().values())


def test_a_run_on_metrics_used_before_reports_its_own_frames_only(tmp_path: Path) -> None:
    model = edgerun.load(DIGITS / "digits_int8.tflite")
    folder = _images(tmp_path / "in", 20)
    metrics = Metrics()  # shared, as a daemon's pipelines and a library caller's runs share one
    Pipeline(open_source(str(folder)), model, [ListSink()], metrics=metrics).run()
    sink = ListSink()
    summary = Pipeline(open_source(str(folder)), model, [sink], metrics=metrics, max_frames=1).run()
    assert summary.frames == 1 and metrics.totals()["digits@1.0.0"]["count"] == 21
    for figures in summary.stages_ms.values():  # one frame: its latency four times (docs/pipelines.md)
        assert figures["p50"] == figures["p95"] == figures["p99"] == figures["max"] == figures["mean"]
    assert _mean_of_stages(summary.stages_ms) == pytest.approx(sink.results[0].record["latency_ms"], abs=2e-3)


def test_a_run_without_a_single_inference_reports_no_latencies_though_the_metrics_have_some(tmp_path: Path) -> None:
    model = edgerun.load(DIGITS / "digits_int8.tflite")
    metrics = Metrics()
    Pipeline(open_source(str(_images(tmp_path / "in", 3))), model, [ListSink()], metrics=metrics).run()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image")
    summary = Pipeline(open_source(str(junk)), model, [ListSink()], metrics=metrics).run()
    assert (summary.frames, summary.errors, summary.stages_ms) == (1, 1, {})


def test_beyond_the_ring_a_runs_latencies_come_from_what_the_histogram_gained_since_its_start() -> None:
    metrics = Metrics()
    rng = np.random.default_rng(1)
    for ms in rng.uniform(10.0, 20.0, 5000):  # an earlier run, ten times slower
        metrics.record("m", "1", "cpu", {"total": float(ms)})
    mark = metrics.mark()
    run = rng.uniform(1.0, 2.0, 6000)
    for i, ms in enumerate(run):  # this run's: more than the ring holds, over a hot swap
        metrics.record("m", "1" if i < 4500 else "2", "cpu", {"total": float(ms)})
    figures = metrics.totals_since(mark, "m")["total"]
    for q, name in ((50, "p50"), (95, "p95"), (99, "p99")):
        assert figures[name] == pytest.approx(np.percentile(run, q), rel=0.1)
    assert figures["mean"] == pytest.approx(run.mean(), abs=1e-4)  # rounded to 4 places
    # the earlier run's max was larger, and version 1's largest since the mark left its ring: a bucket's edge
    assert run.max() <= figures["max"] <= 1.1 * run.max()


def test_a_version_s_throughput_since_start_counts_from_when_its_first_inference_began() -> None:
    """Its start was the end of its first inference: a version that had served one frame showed a rate of one
    over the few microseconds since (in /v1/status), not one over the time the frame took."""
    now = [100.0]
    metrics = Metrics(clock=lambda: now[0])
    metrics.record("m", "1", "cpu", {"pre": 1.0, "infer": 3.0, "post": 1.0, "total": 5.0})
    first = metrics.totals()["m@1"]
    assert first["elapsed_s"] == 0.005 and first["throughput_per_s"] == 200.0, first
    now[0] = 100.995  # 199 more, one every 5 ms: 200 in a second since the first began
    for _ in range(199):
        metrics.record("m", "1", "cpu", {"total": 5.0})
    assert metrics.totals()["m@1"]["throughput_per_s"] == 200.0
