"""A live source's frames wait in its own latest-frames buffer, not in the pipeline's queues: on a slow
model the pipeline took up to 8 more frames of a camera at each stage before inference, each older than the
newest, so ``--queue 1`` barely bounded how stale a result was (total p50 65 ms against 71 ms with 8)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import edgerun
from edgerun.pipeline import LIVE_QUEUE, Pipeline
from edgerun.sinks.base import Result
from edgerun.sources.base import Frame, LatestBuffer
from tests.conftest import DIGITS
from tests.test_pipeline import BurstSource, CountingSource, ListSink, _copies


class SteadySource(BurstSource):
    """A live source giving a frame every ``period_s`` (a fast camera), then ending."""

    def __init__(self, n: int, period_s: float) -> None:
        super().__init__(n, queue=1)
        self.period_s = period_s

    def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
        for i in range(self.n):
            if stop.wait(self.period_s):
                return
            buffer.put(Frame(self.image, time.time(), f"cam#{i}", i))


class TimedSink(ListSink):
    """Notes when each result was published."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s=delay_s, inline=True)  # published by the inference thread: a slow model, in effect
        self.published: list[float] = []

    def publish(self, result: Result) -> None:
        self.published.append(time.time())
        super().publish(result)


def test_a_result_of_a_live_source_waits_behind_only_the_few_frames_the_pipeline_holds() -> None:
    """How stale a result is, counted in results: those published after its frame was captured and before it.
    A pure ordering of events, so a slow machine changes the count little."""
    model = edgerun.load(DIGITS / "digits_int8.tflite")
    sink = TimedSink(delay_s=0.03)
    summary = Pipeline(SteadySource(150, period_s=0.002), model, [sink], queue_size=8).run()  # the default queue
    behind = [
        sum(result.frame.ts < t < published for t in sink.published)
        for result, published in zip(sink.results, sink.published)
    ]
    held = LIVE_QUEUE + 1 + LIVE_QUEUE  # the prepare queue, its worker, the inference queue
    assert max(behind) <= held + 2  # the reader's frame and one of slack; once up to 8 + 1 + 8 + 1 = 18
    assert summary.dropped > 0 and summary.frames + summary.dropped == 150


def test_a_file_source_still_queues_as_many_frames_as_asked(tmp_path: Path) -> None:
    """Files are never dropped: the queues keep the model fed as before (backpressure, not freshness)."""
    model = edgerun.load(DIGITS / "digits_int8.tflite")
    source = CountingSource(_copies(tmp_path, 40))
    leads: list[int] = []
    sink = ListSink(delay_s=0.005, inline=True)
    Pipeline(
        source, model, [sink], queue_size=8, on_result=lambda _: leads.append(source.read - len(sink.results))
    ).run()
    assert len(sink.results) == 40
    assert max(leads) > LIVE_QUEUE + 1 + LIVE_QUEUE + 1 + 2  # the file source's queues hold 8 frames each
