"""An annotated video from a live source that declares no rate (an MQTT topic), without ``--fps``, plays in real
time: the writer runs at ``LIVE_FPS`` and each frame is written once per slot it covers, by its capture time, a
gap held ``MAX_HOLD_S`` at most. File sources and declared rates still get every frame once, at their rate.

Real models (``models/digits``), real OpenCV writing real files read back with ``cv2.VideoCapture``, a real
broker, a real small filesystem (a tmpfs). Results are made as ``edgerun predict`` makes them (the model's
prediction, ``result_record``), with the capture times set.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.publish as mqtt_publish
import pytest

import edgerun
from edgerun.errors import PipelineError
from edgerun.pipeline import Pipeline
from edgerun.sinks import open_sink, video_rate
from edgerun.sinks.annotate import LIVE_FPS, MAX_HOLD_S, AnnotatedVideoSink, PacedRate, annotate
from edgerun.sinks.base import Result, result_record
from edgerun.sources import open_source
from edgerun.sources.base import Frame
from edgerun.sources.mqtt import MqttSource
from tests.conftest import DIGITS, SAMPLES, Broker

MODEL = str(DIGITS / "digits_int8.tflite")
#: A capture time as a live source stamps one (``time.time()``): large, so slots are counted as they would be.
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def model() -> edgerun.Model:
    return edgerun.load(MODEL)


def _digit(n: int) -> bytes:
    return (SAMPLES / f"digit_{n}.png").read_bytes()


def _result(model: edgerun.Model, data: bytes, ts: float, index: int) -> Result:
    """The result of one MQTT message taken at ``ts``, as the pipeline makes it."""
    frame = Frame(data, ts, f"cam/{index}", index)
    prediction = model.predict(frame.data, name=frame.source_id)
    return Result(frame, result_record(model, frame.source_id, prediction.output, prediction.latency_ms))


def _live_sink(path: Path) -> AnnotatedVideoSink:
    """The video sink ``edgerun run --source mqtt://... --sink PATH`` opens (no ``--fps``)."""
    source = MqttSource("mqtt://127.0.0.1:1/cam/#")  # never started: only its rate is asked
    sink = open_sink(str(path), fps=video_rate(None, source))
    assert isinstance(sink, AnnotatedVideoSink)
    return sink


def _read(path: Path) -> tuple[int, float, list[np.ndarray]]:
    """The frame count ``path`` declares, its rate, and its frames as they decode."""
    cap = cv2.VideoCapture(str(path))
    try:
        declared, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
        frames = []
        while True:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(image)
    finally:
        cap.release()
    return declared, fps, frames


def _which(frames: list[np.ndarray], results: list[Result]) -> list[int]:
    """For each decoded frame, the index of the result whose annotated frame it is nearest to."""
    drawn = [
        annotate(np.asarray(cv2.imdecode(np.frombuffer(r.frame.data, np.uint8), cv2.IMREAD_COLOR)), r) for r in results
    ]
    return [int(np.argmin([np.abs(f.astype(int) - d.astype(int)).mean() for d in drawn])) for f in frames]


def _publish(sink: AnnotatedVideoSink, results: list[Result]) -> None:
    """Each result to ``sink``, then close it (as the pipeline does, after a failure too)."""
    try:
        for result in results:
            sink.publish(result)
    finally:
        sink.close()


# -- which rate ----------------------------------------------------------------------------------


def test_only_a_live_source_that_declares_no_rate_gets_a_paced_video_rate(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 7.0, (32, 32))
    for n in range(3):
        writer.write(cv2.imread(str(SAMPLES / f"digit_{n}.png")))
    writer.release()
    topic = MqttSource("mqtt://127.0.0.1:1/cam/#")
    live = video_rate(None, topic)
    assert isinstance(live, PacedRate) and live == LIVE_FPS == 10.0
    given = video_rate(3.0, topic)  # --fps: frames are taken at that rate, each written once
    assert given == 3.0 and not isinstance(given, PacedRate)
    video, folder = open_source(str(clip)), open_source(str(SAMPLES))
    try:
        assert video_rate(None, video) == 7.0 and not isinstance(video_rate(None, video), PacedRate)
        assert video_rate(None, folder) == 25.0 and not isinstance(video_rate(None, folder), PacedRate)
    finally:
        video.close()
        folder.close()


# -- pacing by capture time ----------------------------------------------------------------------


def test_six_frames_half_a_second_apart_make_a_video_of_their_real_length_at_ten_frames_a_second(
    tmp_path: Path, model: edgerun.Model
) -> None:
    results = [_result(model, _digit(n), T0 + 0.5 * n, n) for n in range(6)]
    sink = _live_sink(tmp_path / "out.avi")
    _publish(sink, results)
    declared, fps, frames = _read(tmp_path / "out.avi")
    # each frame for the five tenths of a second until the next; the last, captured long before the close
    # (T0), for MAX_HOLD_S: 7.5 s (once: 6 frames at 25/s)
    assert fps == 10.0 and declared == len(frames) == sink.written == 25 + 50
    assert _which(frames, results) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [4] * 5 + [5] * 50


def test_an_mp4_from_a_live_source_is_paced_too_and_its_finished_file_holds_every_repeat(
    tmp_path: Path, model: edgerun.Model
) -> None:
    results = [_result(model, _digit(n), T0 + 0.5 * n, n) for n in range(6)]
    sink = _live_sink(tmp_path / "out.mp4")
    _publish(sink, results)  # close() checks the file declares `written` frames: repeats counted
    declared, fps, frames = _read(tmp_path / "out.mp4")
    assert fps == 10.0 and declared == len(frames) == sink.written == 25 + 50


def test_of_several_frames_within_one_tenth_of_a_second_only_the_newest_is_written(
    tmp_path: Path, model: edgerun.Model
) -> None:
    stamps = [0.0, 0.03, 0.06, 0.5, 0.52, 0.8]
    results = [_result(model, _digit(n), T0 + ts, n) for n, ts in enumerate(stamps)]
    sink = _live_sink(tmp_path / "out.avi")
    _publish(sink, results)
    declared, fps, frames = _read(tmp_path / "out.avi")
    assert fps == 10.0 and declared == len(frames) == sink.written == 8 + 50
    assert _which(frames, results) == [2] * 5 + [4] * 3 + [5] * 50


def test_a_long_silence_is_held_five_seconds_at_most_with_one_warning(
    tmp_path: Path, model: edgerun.Model, caplog: pytest.LogCaptureFixture
) -> None:
    stamps = [0.0, 1.0, 3601.0, 3602.0, 7300.0]  # silent for an hour, twice
    results = [_result(model, _digit(n), T0 + ts, n) for n, ts in enumerate(stamps)]
    sink = _live_sink(tmp_path / "out.avi")
    _publish(sink, results)
    declared, fps, frames = _read(tmp_path / "out.avi")
    held = round(MAX_HOLD_S * LIVE_FPS)
    assert held == 50
    assert fps == 10.0 and declared == len(frames) == sink.written == 10 + held + 10 + held + held
    assert _which(frames, results) == [0] * 10 + [1] * held + [2] * 10 + [3] * held + [4] * held
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no frame for 3600.0 s after cam/1: a frame is shown 5 s at most" in warnings[0]


def test_a_clock_set_back_does_not_fold_the_rest_of_the_video_into_one_frame(
    tmp_path: Path, model: edgerun.Model
) -> None:
    stamps = [100.0, 100.5, 40.0, 40.5, 41.0]  # NTP stepped the clock back a minute after the second frame
    results = [_result(model, _digit(n), T0 + ts, n) for n, ts in enumerate(stamps)]
    sink = _live_sink(tmp_path / "out.avi")
    _publish(sink, results)
    declared, fps, frames = _read(tmp_path / "out.avi")
    assert fps == 10.0 and declared == len(frames) == sink.written == 16 + 50
    assert _which(frames, results) == [0] * 5 + [1] + [2] * 5 + [3] * 5 + [4] * 50


def test_repeats_that_fill_the_disk_stop_the_run_with_the_reason(
    small_disk: Callable[[int], Path], model: edgerun.Model
) -> None:
    disk = small_disk(4 * 1024 * 1024)
    noise = np.random.default_rng(23).integers(0, 256, (480, 640, 3), np.uint8)  # some 200 KB a JPEG frame
    data = cv2.imencode(".png", noise)[1].tobytes()
    results = [_result(model, data, T0 + ts, n) for n, ts in enumerate([0.0, 5.0, 10.0])]  # 3 frames: 700 KB
    sink = _live_sink(disk / "out.avi")
    with pytest.raises(PipelineError, match=r"cannot write .*out\.avi: No space left on device"):
        _publish(sink, results)  # 101 frames written: 20 MB


# -- through a real pipeline, beside file sources -----------------------------------------------


def test_a_live_topic_is_paced_by_capture_time_through_the_pipeline_and_a_folder_of_files_is_not(
    tmp_path: Path, model: edgerun.Model, own_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    source = MqttSource(f"{own_broker.url}/cam/#")
    sink = open_sink(str(tmp_path / "live.avi"), fps=video_rate(None, source))
    results: list[Result] = []
    pipeline = Pipeline(source, model, [sink], on_result=results.append)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # the failure is the finding
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not any("MQTT source subscribed to cam/#" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline and thread.is_alive(), failure
        time.sleep(0.05)
    start, sent = time.monotonic(), []
    for n in range(6):  # half a second apart, as a sender giving 2 frames a second
        time.sleep(max(0.0, start + 0.5 * n - time.monotonic()))
        sent.append(time.monotonic())
        mqtt_publish.single(f"cam/{n}", _digit(n), hostname="127.0.0.1", port=own_broker.port)
    deadline = time.monotonic() + 30
    while len(results) < 6 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop("test over")
    thread.join(timeout=30)
    assert not failure and len(results) == 6, failure
    stamps = [r.frame.ts for r in results]  # the capture times the sink paced by
    last = math.floor((stamps[-1] - stamps[0]) * LIVE_FPS + 1e-3)
    closed = math.floor((time.time() - stamps[0]) * LIVE_FPS + 1e-3)  # the sink closed before now
    declared, fps, frames = _read(tmp_path / "live.avi")
    # 2.5 s of frames, and the last one from its capture to the close (one slot at least, MAX_HOLD_S at most)
    assert fps == 10.0 and declared == len(frames) and last + 1 <= declared <= last + min(max(1, closed - last), 50)
    # real time: the 2.5 s the sender took, and the last frame (once 6 frames at 25/s, a quarter of a second)
    assert 2.0 <= len(frames) / fps <= sent[-1] - sent[0] + 2.0

    # the same images from a folder: every file once, at 25 frames a second (no capture time to pace by)
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(6):
        (folder / f"digit_{n}.png").write_bytes(_digit(n))
    files = open_source(str(folder))
    video = open_sink(str(tmp_path / "files.avi"), fps=video_rate(None, files))
    Pipeline(files, model, [video]).run()
    declared, fps, frames = _read(tmp_path / "files.avi")
    assert fps == 25.0 and declared == len(frames) == 6
