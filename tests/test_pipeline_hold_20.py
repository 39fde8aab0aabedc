"""A pipeline's frames hold their model: one swapped out while frames prepared on it are in flight
finishes them on its worker, stops that worker after the last, and no frame keeps a hold it took.

The models are the real digits models, each in a real worker process (``isolation: process``);
the slot is swapped as an OTA activation, a rollback or a reload swaps it. Each worker start is
counted from the isolation module's own log line (``worker process N runs FILE on DELEGATE``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import pytest

from edgerun.card import replace
from edgerun.errors import PipelineError, SourceError
from edgerun.isolation import load_isolated
from edgerun.model import Model
from edgerun.ota.slot import ModelSlot
from edgerun.pipeline import Pipeline
from edgerun.sinks.base import Result
from edgerun.sources.base import Frame
from tests.conftest import DIGITS, SAMPLES
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow

WORKER = re.compile(r"worker process (\d+) runs (\S+) on ")
IN_FLIGHT = 4  # frames prepared on the old model and queued for inference when the swap comes


class PhasedSource:
    """A real Source (encoded images, or decoded ones) that hands out its frames in phases: the
    next phase only once its gate is set, ended early by ``close()`` as a file source is."""

    live = False
    dropped = 0
    uri = "phased"

    def __init__(self, decoded: bool, phases: list[list[Any]], gates: list[threading.Event]) -> None:
        self.decoded = decoded
        self.phases, self.gates = phases, gates
        self.closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        index = 0
        for n, phase in enumerate(self.phases):
            if n:
                gate = self.gates[n - 1]
                while not (gate.wait(0.05) or self.closed.is_set()):
                    pass
                if self.closed.is_set():
                    return
            for data in phase:
                if isinstance(data, Frame):  # an input the source itself could not read
                    yield Frame(None, time.time(), f"phased#{index}", index, error=data.error)
                else:
                    yield Frame(data, time.time(), f"phased#{index}", index)
                index += 1

    def close(self) -> None:
        self.closed.set()


class PausingSink:
    """A real inline sink (results published from the inference thread) that pauses at its first
    result until resumed, then fails (``fail``) or goes on, stopping the run at result ``stop_at``."""

    inline = True

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.paused, self.resume = threading.Event(), threading.Event()
        self.fail = False
        self.stop_at: int | None = None
        self.pipeline: Pipeline | None = None

    def publish(self, result: Result) -> None:
        if not self.results:
            self.paused.set()
            assert self.resume.wait(60), "the test never resumed the sink"
            if self.fail:
                raise SourceError("disk full")  # any EdgerunError a sink can meet
        self.results.append(result)
        if self.stop_at is not None and len(self.results) == self.stop_at and self.pipeline is not None:
            self.pipeline.stop("stopped mid-run")

    def close(self) -> None:
        pass


def _image(digit: int, decoded: bool) -> Any:
    path = SAMPLES / f"digit_{digit}.png"
    return cv2.imread(str(path)) if decoded else path.read_bytes()


@pytest.fixture(params=["1-worker", "3-workers", "decoded"])
def kind(request: pytest.FixtureRequest) -> str:
    """Frames decoded by one prepare worker, by three in parallel, or arriving decoded (prepared
    by the reader while inference has frames waiting, else by the inference thread)."""
    return str(request.param)


@pytest.fixture
def models(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Model, Model]]:
    """The old model (digits_int8.onnx, 1.0.0) and the one it is swapped for (digits_fp32.onnx, 2.0.0)."""
    caplog.set_level(logging.INFO, logger="edgerun.isolation")
    old = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    new = load_isolated(DIGITS / "digits_fp32.onnx", delegates=["cpu"], card=replace(old.card, version="2.0.0"))
    try:
        yield old, new
    finally:
        new.close()
        old.close()


def _starts(caplog: pytest.LogCaptureFixture, file: str) -> list[str]:
    """The workers started for ``file``, as the isolation module logs each start."""
    records = caplog.get_records("setup") + caplog.get_records("call")  # the models are loaded in the setup
    return [m[1] for r in records if (m := WORKER.match(r.getMessage())) and m[2] == file]


def _queued_for_inference(pipeline: Pipeline) -> int:
    return sum(len(channel) for channel in pipeline._q_inf.channels)


def _settle_retirement() -> None:
    """Wait for the stop a retirement started at once (a retired model no request holds), if any."""
    for thread in threading.enumerate():
        if thread.name == "edgerun-worker-stop":
            thread.join(30)


def _start(pipeline: Pipeline) -> tuple[threading.Thread, list[BaseException]]:
    failed: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="test-pipeline")
    thread.start()
    return thread, failed


@dataclass
class SwappedRun:
    """A pipeline run through a swap, the sink still paused (``sink.resume`` goes on)."""

    pipeline: Pipeline
    sink: PausingSink
    source: PhasedSource
    thread: threading.Thread
    failed: list[BaseException]  # what run() raised
    survived: bool  # the old worker lived through the swap, not restarted

    def finish(self) -> None:
        self.sink.resume.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the run never ended"


def _swap_with_frames_in_flight(
    kind: str, models: tuple[Model, Model], phases: list[list[Any]], **options: Any
) -> SwappedRun:
    """Run ``phases`` through a pipeline on the old model: result 0 out, the sink paused, the second
    phase prepared and queued, swap."""
    old, new = models
    slot = ModelSlot(old)
    sink = PausingSink()
    swapped = threading.Event()
    source = PhasedSource(kind == "decoded", phases, [sink.paused, swapped])
    workers = 3 if kind == "3-workers" else 1
    pipeline = Pipeline(source, slot, [sink], prepare_workers=workers, queue_size=8, **options)
    sink.pipeline = pipeline
    worker = old.backend.process
    thread, failed = _start(pipeline)
    wait_until(sink.paused.is_set, 60, "result 0 at the sink")
    wait_until(lambda: _queued_for_inference(pipeline) == len(phases[1]), 60, "the frames in flight queued")
    assert slot.swap(new) is old and old.backend.retired
    _settle_retirement()
    survived = worker.is_alive() and old.backend.process is worker
    swapped.set()
    return SwappedRun(pipeline, sink, source, thread, failed, survived)


def test_frames_prepared_on_a_swapped_out_model_finish_on_its_worker_which_stops_after_the_last(
    kind: str, models: tuple[Model, Model], caplog: pytest.LogCaptureFixture
) -> None:
    old, new = models
    worker = old.backend.process
    phases = [
        [_image(0, kind == "decoded")],
        [_image(d, kind == "decoded") for d in range(1, 1 + IN_FLIGHT)],
        [_image(d, kind == "decoded") for d in range(5, 10)],
    ]
    run = _swap_with_frames_in_flight(kind, models, phases)
    run.finish()
    assert not run.failed and run.pipeline.summary.ok == 10
    labels = [r.record["output"][0]["label"] for r in run.sink.results]
    assert labels == [str(d) for d in range(10)]
    versions = [r.record["version"] for r in run.sink.results]
    # a decoded frame waiting unprepared (the reader prepares only while inference has one queued) is
    # prepared after the swap, on the new model
    on_old = [0, 2, 3, 4] if kind == "decoded" else [0, 1, 2, 3, 4]
    assert versions == ["1.0.0" if i in on_old else "2.0.0" for i in range(10)]
    assert _starts(caplog, "digits_int8.onnx") == [str(worker.pid)], "a worker was started again for old frames"
    assert run.survived, "the old worker was stopped at the swap, with frames prepared on it still in flight"
    wait_until(lambda: not worker.is_alive(), 30, "the old worker to stop after its last frame")
    assert worker.exitcode == 0  # told to stop, not killed
    assert new.backend.process.is_alive() and _starts(caplog, "digits_fp32.onnx") == [str(new.backend.process.pid)]


def test_a_run_with_failing_frames_stopped_mid_run_through_a_swap_leaves_no_model_held(
    kind: str, models: tuple[Model, Model], caplog: pytest.LogCaptureFixture
) -> None:
    """Frames that fail (unreadable by the source, not an image) and a stop in the middle, in
    batches: every frame lets go of its model, so both workers stop once their models are retired."""
    old, new = models
    decoded = kind == "decoded"
    bad: list[Any] = [Frame(None, 0.0, "", 0, error="unreadable"), b"not an image"]
    phases = [
        [_image(0, decoded)],
        [_image(1, decoded), bad[0], bad[1], _image(2, decoded)],
        [_image(3, decoded), bad[1], bad[0], _image(4, decoded)] * 4,
    ]
    run = _swap_with_frames_in_flight(kind, models, phases, batch_size=4)
    run.sink.stop_at = 8  # in the third phase: what was read by then is still processed
    run.finish()
    assert not run.failed and run.source.closed.is_set()
    summary = run.pipeline.summary
    assert summary.stopped_by == "stopped mid-run" and summary.frames >= 8 and summary.errors >= 3
    assert any(r.record.get("version") == "2.0.0" for r in run.sink.results)  # the new model ran frames too
    assert run.survived, "the old worker was stopped at the swap, with frames prepared on it still in flight"
    worker = old.backend.process
    wait_until(lambda: not worker.is_alive(), 30, "the old worker to stop: no frame holds its model")
    assert _starts(caplog, "digits_int8.onnx") == [str(worker.pid)]
    new_worker = new.backend.process
    new.retire()  # no longer served either (the slot's name removed)
    wait_until(lambda: not new_worker.is_alive(), 30, "the new worker to stop: no frame holds its model")
    assert new_worker.exitcode == 0


def test_a_run_whose_sink_fails_with_frames_in_flight_lets_go_of_every_one(
    kind: str, models: tuple[Model, Model], caplog: pytest.LogCaptureFixture
) -> None:
    """A failed sink aborts the run with frames prepared on the old model still queued: discarded,
    they let go of it all the same."""
    decoded = kind == "decoded"
    phases = [[_image(0, decoded)], [_image(d, decoded) for d in range(1, 1 + IN_FLIGHT)], [_image(9, decoded)]]
    run = _swap_with_frames_in_flight(kind, models, phases, batch_size=4)
    run.sink.fail = True
    run.finish()
    assert len(run.failed) == 1 and isinstance(run.failed[0], PipelineError)
    assert "disk full" in str(run.failed[0]) and not run.sink.results
    _both_workers_stop(run, models, caplog, "a discarded frame")


class BrokenPath(os.PathLike[str]):
    """An input whose path cannot be had: preparing it fails as a bug in preparing would."""

    def __fspath__(self) -> str:
        raise RuntimeError("no path for you")


@pytest.mark.logs_errors  # the preprocess stage's failure, logged as a bug is
def test_a_run_whose_inference_thread_fails_lets_go_of_the_frames_it_left_queued(
    models: tuple[Model, Model], caplog: pytest.LogCaptureFixture
) -> None:
    """Decoded frames: the inference thread prepares the first frame queued after the pause itself
    (the reader prepared the rest, on the old model), fails on it and gives up; the frames it left
    queued are never run, and let go of the old model all the same."""
    phases = [[_image(0, True)], [BrokenPath(), *(_image(d, True) for d in range(2, 5))], [_image(9, True)]]
    run = _swap_with_frames_in_flight("decoded", models, phases)
    run.finish()
    assert len(run.failed) == 1 and isinstance(run.failed[0], PipelineError)
    assert str(run.failed[0]) == "preprocess: no path for you" and len(run.sink.results) == 1
    _both_workers_stop(run, models, caplog, "a frame left queued")


def _both_workers_stop(run: Any, models: tuple[Model, Model], caplog: pytest.LogCaptureFixture, frames: str) -> None:
    """After a failed run through a swap: the old worker outlived the swap, then stopped (started once), and
    the new one stops once retired: none of ``frames`` (discarded, left queued) keeps a hold on either."""
    old, new = models
    assert run.survived, "the old worker was stopped at the swap, with frames prepared on it still in flight"
    worker = old.backend.process
    wait_until(lambda: not worker.is_alive(), 30, f"the old worker to stop: no {frames} holds its model")
    assert worker.exitcode == 0 and _starts(caplog, "digits_int8.onnx") == [str(worker.pid)]
    new_worker = new.backend.process
    new.retire()
    wait_until(lambda: not new_worker.is_alive(), 30, f"the new worker to stop: no {frames} holds its model")
