"""A frame that fails because the run is being stopped is not counted against the model; a paced video
(a live source with no declared rate) holds its last frame for its time too.

Model errors in the metrics feed OTA probation, which rolls an update with errors back. A frame whose
model was closed as its caller stopped (``the model is closed``), or whose worker the daemon's stop
ended (``its worker is not started again once the stop began``), failed because of the stop, not the
model: each was counted as a model error all the same.

A paced video wrote each frame once for every 0.1 s slot until the next frame's, and its last frame once
at ``close``: the last frame's time was lost (a source giving a frame every 2 s played its last one for
0.1 s). Now the last frame is held from its capture to the close (one slot at least, ``MAX_HOLD_S`` at
most). Of several frames in one slot only the newest is written: by design, shown here with the way to
keep every frame (a declared rate).

Real models, real worker processes, real video files read back with OpenCV; the sources and sinks here
are real implementations of the seams.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgerun
from edgerun.isolation import load_isolated
from edgerun.model import Model
from edgerun.pipeline import Pipeline
from edgerun.sinks.annotate import LIVE_FPS, AnnotatedVideoSink, PacedRate
from edgerun.sinks.base import Result, result_record
from edgerun.sources.base import Frame
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES

IMAGE = (SAMPLES / "digit_3.png").read_bytes()

#: Seconds a wait here may take before the test is taken for hung (never a bound on how fast anything is).
HUNG_S = 30.0


class EndlessDigits:
    """A real Source of one digit image, over and over until closed; ``handed_on`` is set once the pipeline
    has taken ``n`` frames (it asks for the next frame only after handing the last one on)."""

    live = False
    decoded = False
    dropped = 0
    uri = "digits"

    def __init__(self, n: int = 4) -> None:
        self.handed_on = threading.Event()
        self._n = n
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        i = 0
        while not self._closed.is_set():
            if i == self._n:
                self.handed_on.set()
            yield Frame(IMAGE, time.time(), f"digit#{i}", i)
            i += 1

    def close(self) -> None:
        self._closed.set()


class KeepSink:
    """A real Sink that keeps every result; ``inline``: published from the inference thread."""

    def __init__(self, inline: bool = False) -> None:
        self.inline = inline
        self.results: list[Result] = []
        self.failed = threading.Event()

    def publish(self, result: Result) -> None:
        self.results.append(result)
        if not result.ok:
            self.failed.set()

    def close(self) -> None:
        pass


def _errors(metrics: Metrics, model: Model) -> int:
    return metrics.counters().get((model.name, model.version), (0, 0))[1]


def _failed(sink: KeepSink) -> list[str]:
    return [r.record["error"] for r in sink.results if not r.ok]


def test_frames_failing_on_a_model_closed_as_its_caller_stops_are_not_counted_against_the_model() -> None:
    """A library caller stops the run and closes the model (``with edgerun.load(...)`` ending on a signal):
    the frames in flight fail with ``the model is closed``, reported as failed frames, and the model's error
    count stays 0."""
    model = edgerun.load(DIGITS / "digits_int8.onnx")
    source, metrics = EndlessDigits(n=4), Metrics()
    pipeline: Pipeline | None = None

    class StopAndClose(KeepSink):
        """At the first result, once frames 1-3 wait in the queues: stop the run and close the model."""

        def publish(self, result: Result) -> None:
            if not self.results:
                assert source.handed_on.wait(HUNG_S)
                assert pipeline is not None
                pipeline.stop("shutdown")
                model.close()
            super().publish(result)

    sink = StopAndClose(inline=True)
    pipeline = Pipeline(source, model, [sink], metrics=metrics)
    summary = pipeline.run()

    assert summary.stopped_by == "shutdown"
    failed = _failed(sink)
    assert len(failed) >= 3, failed  # frames 1-3 at least were in flight
    assert all("the model is closed" in e for e in failed), failed
    assert summary.errors == len(failed)  # still failed frames to the run and its sinks
    assert metrics.counters()[(model.name, model.version)] == (1, 0)  # the one frame run; none against it


@pytest.mark.slow
def test_frames_failing_as_the_daemons_stop_ends_an_isolated_worker_are_not_counted_against_the_model() -> None:
    """The daemon's stop first stops the isolated workers (``IsolatedBackend.stop``), then the pipelines. A
    worker that dies in between is not started again: each frame fails with ``not started again once the
    stop began`` before the pipeline itself is told to stop, and none is counted against the model."""
    model = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    try:
        source, metrics, sink = EndlessDigits(), Metrics(), KeepSink()
        pipeline = Pipeline(source, model, [sink], metrics=metrics)
        run = threading.Thread(target=pipeline.run)
        run.start()
        try:
            assert source.handed_on.wait(HUNG_S)
            model.backend.stop()  # the daemon's _stop_workers
            os.kill(model.backend.process.pid, signal.SIGKILL)  # the worker dies as the daemon stops
            assert sink.failed.wait(HUNG_S)
            assert _errors(metrics, model) == 0  # the pipeline is not stopped yet: the worker's stop alone says it
        finally:
            pipeline.stop("shutdown")
            run.join(HUNG_S)
        assert not run.is_alive()
        failed = _failed(sink)
        assert failed and all("once the stop began" in e for e in failed), failed
        assert pipeline.summary.errors == len(failed)
        assert _errors(metrics, model) == 0
    finally:
        model.close()


# -- a paced video's last frame, and frames faster than its slots -------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Iterator[Model]:
    with edgerun.load(DIGITS / "digits_int8.onnx") as model:
        yield model


def _shade(n: int) -> np.ndarray:
    """Frame ``n``'s image: 64x64 pixels of gray level 8n, told apart in the video by its shade."""
    return np.full((64, 64, 3), 8 * n, np.uint8)


def _result(model: Model, n: int, ts: float) -> Result:
    """The result of frame ``n`` captured at ``ts`` (unix seconds), as the pipeline makes it."""
    frame = Frame(_shade(n), ts, f"cam/{n}", n)
    prediction = model.predict(frame.data, name=frame.source_id)
    return Result(frame, result_record(model, frame.source_id, prediction.output, prediction.latency_ms))


def _shown(path: str) -> list[int]:
    """The frame number each frame of the video at ``path`` shows (by its shade below the drawn label), after
    checking that the file declares as many frames as decode."""
    cap = cv2.VideoCapture(path)
    try:
        declared, shown = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), []
        while True:
            ok, image = cap.read()
            if not ok:
                break
            shown.append(round(float(image[40:, :].mean()) / 8))
    finally:
        cap.release()
    assert declared == len(shown)
    return shown


def _paced(path: Path, results: list[Result]) -> tuple[AnnotatedVideoSink, tuple[int, int]]:
    """``results`` into a paced video sink at ``LIVE_FPS``, closed: the sink, and the least and most slots its
    last frame can be due at the close (from the wall clock before and after it)."""
    sink = AnnotatedVideoSink(str(path), PacedRate(LIVE_FPS))
    for result in results:
        sink.publish(result)
    first, last = results[0].frame.ts, results[-1].frame.ts
    slot = math.floor((last - first) * LIVE_FPS + 1e-3)
    before = time.time()
    sink.close()
    after = time.time()
    due = [min(max(1, math.floor((t - first) * LIVE_FPS + 1e-3) - slot), 50) for t in (before, after)]
    return sink, (due[0], due[1])


def test_a_paced_videos_last_frame_is_held_from_its_capture_to_the_close(tmp_path: Path, digits: Model) -> None:
    """Frames 2 s apart, the last captured 2 s before the close: 6 s of video, the last frame's 2 s
    included (it was written once: 4.1 s)."""
    now = time.time()
    results = [_result(digits, n, now - 6.0 + 2.0 * n) for n in range(3)]
    sink, (least, most) = _paced(tmp_path / "out.avi", results)
    shown = _shown(sink.path)
    assert 20 <= least <= most
    assert len(shown) == sink.written and least <= sink.written - 40 <= most
    assert shown == [0] * 20 + [1] * 20 + [2] * (sink.written - 40)


def test_a_last_frame_long_before_the_close_is_held_five_seconds_at_most_and_one_after_it_once(
    tmp_path: Path, digits: Model, caplog: pytest.LogCaptureFixture
) -> None:
    an_hour_ago = time.time() - 3600.0
    sink, due = _paced(tmp_path / "old.avi", [_result(digits, n, an_hour_ago + 0.5 * n) for n in range(2)])
    assert due == (50, 50) and _shown(sink.path) == [0] * 5 + [1] * 50  # MAX_HOLD_S
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing plays after it: no gap to say
    later = time.time() + 60.0  # stamped after the close: the clock was set back
    sink, due = _paced(tmp_path / "ahead.avi", [_result(digits, n, later + 0.5 * n) for n in range(2)])
    assert due == (1, 1) and _shown(sink.path) == [0] * 5 + [1]


def test_a_source_faster_than_the_slots_keeps_the_newest_frame_a_slot_and_a_declared_rate_keeps_every_frame(
    tmp_path: Path, digits: Model
) -> None:
    """By design: a paced video shows one frame each tenth of a second, so 30 frames a second play as 10, in
    real time; a rate given (``--fps 30``) writes every frame once, at that rate."""
    start = time.time() - 1.0
    results = [_result(digits, n, start + n / 30) for n in range(31)]
    sink, (least, most) = _paced(tmp_path / "paced.avi", results)
    shown = _shown(sink.path)
    assert shown[:10] == [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]  # the newest of each tenth of a second
    assert least <= shown.count(30) <= most and len(shown) == 10 + shown.count(30)
    every = AnnotatedVideoSink(str(tmp_path / "every.avi"), 30.0)
    for result in results:
        every.publish(result)
    every.close()
    assert _shown(every.path) == list(range(31))
