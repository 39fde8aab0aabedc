"""The pipeline with the real digits models: backpressure, drop-oldest, batching, failures."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import edgerun
from edgerun.errors import PipelineError, SourceError
from edgerun.pipeline import Pipeline
from edgerun.sinks.annotate import AnnotatedImageSink, AnnotatedVideoSink
from edgerun.sinks.base import Result
from edgerun.sources import open_source
from edgerun.sources.base import Frame, LatestBuffer, LiveSource
from edgerun.sources.files import FileSource
from edgerun.sources.video import VideoFileSource
from tests.conftest import DIGITS, SAMPLES
from tests.test_sources import make_video


class ListSink:
    """A real Sink that keeps results, optionally slowly, optionally failing at the n-th.

    ``inline``: published from the inference thread (as standard output is) rather than a sink thread.
    """

    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None, inline: bool = False) -> None:
        self.inline = inline
        self.results: list[Result] = []
        self.delay_s = delay_s
        self.fail_at = fail_at
        self.closed = 0

    def publish(self, result: Result) -> None:
        if self.fail_at is not None and len(self.results) + 1 == self.fail_at:
            raise SourceError("disk full")  # any EdgerunError a sink can meet
        time.sleep(self.delay_s)
        self.results.append(result)

    def close(self) -> None:
        self.closed += 1


class CountingSource:
    """A real Source over files that counts how far reading has run ahead."""

    live = False
    decoded = False
    dropped = 0

    def __init__(self, paths: list[str]) -> None:
        self.inner = FileSource(paths)
        self.uri = self.inner.uri
        self.read = 0

    def frames(self) -> Iterator[Frame]:
        for frame in self.inner.frames():
            self.read += 1
            yield frame

    def close(self) -> None:
        self.inner.close()


class BurstSource(LiveSource):
    """A live source that pushes ``n`` frames as fast as it can, then ends (like a short camera burst)."""

    def __init__(self, n: int, queue: int = 2) -> None:
        super().__init__("burst", queue)
        self.n = n
        self.image = (SAMPLES / "digit_4.png").read_bytes()

    def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
        for i in range(self.n):
            buffer.put(Frame(self.image, time.time(), f"burst#{i}", i))


@pytest.fixture(params=[False, True], ids=["sink-thread", "inline-sinks"])
def inline(request: pytest.FixtureRequest) -> bool:
    """Run a test with results published from a sink thread, and from the inference thread."""
    return bool(request.param)


@pytest.fixture(params=[1, 3], ids=["1-worker", "3-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """Run a test with one prepare worker, and with three decoding in parallel."""
    return int(request.param)


@pytest.fixture(scope="module")
def model() -> edgerun.Model:
    return edgerun.load(DIGITS / "digits_int8.tflite")


def _copies(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        target = tmp_path / f"img_{i:04d}_{i % 10}.png"
        target.write_bytes((SAMPLES / f"digit_{i % 10}.png").read_bytes())
        paths.append(str(target))
    return paths


def _small_queues(
    source: CountingSource, model: edgerun.Model, sink: ListSink, workers: int, on_result: Callable[[Result], None]
) -> Pipeline:
    """A pipeline with queues of two frames, so that backpressure and stops meet full queues."""
    return Pipeline(source, model, [sink], queue_size=2, prepare_workers=workers, on_result=on_result)


def test_files_are_never_dropped_and_reading_waits_for_a_slow_sink(
    tmp_path: Path, model: edgerun.Model, inline: bool, workers: int
) -> None:
    source = CountingSource(_copies(tmp_path, 40))
    leads = []
    sink = ListSink(delay_s=0.005, inline=inline)

    def lead(_: Result) -> None:
        leads.append(source.read - len(sink.results))

    summary = _small_queues(source, model, sink, workers, lead).run()
    assert summary.frames == summary.ok == 40 and summary.dropped == 0
    assert [r.record["output"][0]["label"] for r in sink.results] == [str(i % 10) for i in range(40)]
    # bounded queues: reading never ran more than the queues' capacity ahead of the sink
    # (to and from the workers: at most 2 frames per stage, or one per lane; the output queue 2;
    # in hand: the reader, each worker, the inference thread and the sink)
    per_stage = max(2, workers)
    assert max(leads) <= per_stage + per_stage + 2 + (1 + workers + 1 + 1)


def test_a_live_source_keeps_the_newest_frames_and_counts_drops_on_a_slow_model(model: edgerun.Model) -> None:
    source = BurstSource(300, queue=2)
    sink = ListSink(delay_s=0.002)
    summary = Pipeline(source, model, [sink], queue_size=1).run()
    assert summary.dropped > 0
    assert summary.frames + summary.dropped == 300
    indices = [r.frame.index for r in sink.results]
    assert indices == sorted(indices) and indices[-1] == 299  # the newest frame always makes it
    assert summary.to_dict()["dropped"] == summary.dropped


def test_a_bad_frame_is_counted_and_the_run_goes_on(
    tmp_path: Path, model: edgerun.Model, inline: bool, workers: int
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    paths = [str(SAMPLES / "digit_1.png"), str(bad), str(tmp_path / "missing.png"), str(SAMPLES / "digit_2.png")]
    sink = ListSink(inline=inline)
    summary = Pipeline(FileSource(paths), model, [sink], prepare_workers=workers).run()
    assert (summary.frames, summary.ok, summary.errors) == (4, 2, 2)
    assert [r.ok for r in sink.results] == [True, False, False, True]
    assert "not a decodable image" in sink.results[1].record["error"]


def test_a_failing_sink_stops_the_run_with_the_stage_named_and_sinks_are_closed(
    model: edgerun.Model, inline: bool, workers: int
) -> None:
    first, second = ListSink(inline=inline), ListSink(fail_at=3, inline=inline)
    pipeline = Pipeline(FileSource([str(SAMPLES)]), model, [first, second], prepare_workers=workers)
    with pytest.raises(PipelineError, match="sink: disk full"):
        pipeline.run()
    assert first.closed == second.closed == 1
    assert len(second.results) == 2


def test_a_source_that_fails_midway_stops_the_run_naming_the_source(model: edgerun.Model) -> None:
    class Failing(BurstSource):
        def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
            buffer.put(Frame(self.image, time.time(), "x#0", 0))
            raise SourceError("camera unplugged")

    sink = ListSink()
    with pytest.raises(PipelineError, match="source burst: camera unplugged"):
        Pipeline(Failing(1, queue=4), model, [sink]).run()
    assert len(sink.results) == 1  # what was read before the failure was still processed


def test_stop_finishes_what_is_in_flight_and_flushes(
    tmp_path: Path, model: edgerun.Model, inline: bool, workers: int
) -> None:
    source = CountingSource(_copies(tmp_path, 200))
    sink = ListSink(delay_s=0.002, inline=inline)
    pipeline = _small_queues(source, model, sink, workers, lambda _: pipeline.stop("SIGTERM"))
    summary = pipeline.run()
    assert summary.stopped_by == "SIGTERM"
    assert 0 < summary.frames < 200
    assert summary.frames == source.read  # everything read was processed, nothing lost in a queue
    assert sink.closed == 1


@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_int8.onnx", "digits_int8.tflite"])
def test_batching_gives_the_same_results_as_one_by_one(tmp_path: Path, name: str) -> None:
    paths = _copies(tmp_path, 23)
    with edgerun.load(DIGITS / name) as m:
        single, batched = ListSink(), ListSink()
        Pipeline(FileSource(paths), m, [single]).run()
        Pipeline(FileSource(paths), m, [batched], batch_size=8).run()
    assert [r.record["output"] for r in single.results] == [r.record["output"] for r in batched.results]
    assert [r.record["input"] for r in batched.results] == paths


def test_fps_paces_a_file_source(model: edgerun.Model) -> None:
    start = time.monotonic()
    summary = Pipeline(FileSource([str(SAMPLES)]), model, [ListSink()], fps=100).run()
    assert summary.frames == 11
    assert time.monotonic() - start >= 0.09  # 11 frames at 100 fps take at least 10 intervals


def test_max_frames_stops_the_run(model: edgerun.Model) -> None:
    sink = ListSink()
    summary = Pipeline(FileSource([str(SAMPLES)]), model, [sink], max_frames=4).run()
    assert summary.frames == 4 and summary.stopped_by == "max frames"


def test_metrics_see_every_inference_with_its_stages(model: edgerun.Model) -> None:
    pipeline = Pipeline(FileSource([str(SAMPLES)]), model, [ListSink()])
    pipeline.run()
    snap = pipeline.metrics.snapshot()
    entry = snap["models"]["digits"]
    assert entry["count"] == 11 and entry["errors"] == 0 and entry["delegate"] == "xnnpack"
    assert set(entry["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(entry["stages_ms"]) == {"pre", "infer", "post"}
    assert all(v > 0 for v in entry["stages_ms"].values())


def test_a_decoded_source_runs_no_prepare_thread_and_gives_the_same_results_in_order(
    tmp_path: Path, model: edgerun.Model
) -> None:
    source = open_source(str(make_video(tmp_path / "v.avi", frames=20)))
    assert source.decoded  # frames arrive decoded: the pipeline runs no prepare thread of its own
    expected = [model.predict(frame.data).output for frame in open_source(source.uri).frames()]
    sink = ListSink()
    threads: set[str] = set()
    summary = Pipeline(
        source, model, [sink], on_result=lambda _: threads.update(t.name for t in threading.enumerate())
    ).run()
    assert summary.ok == 20 and [r.frame.index for r in sink.results] == list(range(20))
    assert [r.record["output"] for r in sink.results] == expected
    assert "pipeline-read" in threads and not any(name.startswith("pipeline-prepare") for name in threads)


class GatedSource:
    """A real decoded Source that hands out frame 1 only once result 0 reached the sink, then frames 2-5 at once."""

    live = False
    decoded = True
    dropped = 0
    uri = "gated"

    def __init__(self, sink: GatedSink) -> None:
        self.sink = sink
        self.images = [cv2.imread(str(SAMPLES / f"digit_{i}.png")) for i in range(6)]

    def frames(self) -> Iterator[Frame]:
        for i, image in enumerate(self.images):
            if i == 1:
                assert self.sink.first.wait(10), "result 0 never reached the sink"
            yield Frame(image, time.time(), f"gated#{i}", i)
        self.sink.release.set()  # frame 5 is in the inference queue

    def close(self) -> None:
        pass


class GatedSink(ListSink):
    """An inline sink that holds the inference thread at result 0 until the source lets it go."""

    def __init__(self) -> None:
        super().__init__(inline=True)
        self.first, self.release = threading.Event(), threading.Event()

    def publish(self, result: Result) -> None:
        super().publish(result)
        if len(self.results) == 1:
            self.first.set()
            assert self.release.wait(10), "the source never finished"


def test_a_starved_inference_thread_prepares_decoded_frames_itself_and_a_busy_one_gets_them_prepared(
    model: edgerun.Model,
) -> None:
    """Decoding (the reader) is the slower stage on a fast accelerator: the reader only reads while
    inference waits for frames, and prepares them too while inference has frames waiting."""
    prepared_by: dict[str, str] = {}

    def watch(frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code is edgerun.Model.prepare.__code__:
            prepared_by[frame.f_locals["name"]] = threading.current_thread().name

    sink = GatedSink()
    source = GatedSource(sink)
    expected = [model.predict(image).output for image in source.images]
    threading.setprofile(watch)  # the pipeline's threads start after this, with it
    try:
        summary = Pipeline(source, model, [sink]).run()
    finally:
        threading.setprofile(None)
    assert summary.ok == 6 and [r.record["output"] for r in sink.results] == expected
    # 0: nothing else to do. 1: the inference thread holds 0 in the sink, its queue is empty.
    # 2-5: frame 1 waits in the queue, so the reader prepares them.
    assert prepared_by == {
        **{f"gated#{i}": "pipeline-infer" for i in (0, 1)},
        **{f"gated#{i}": "pipeline-read" for i in range(2, 6)},
    }


def test_several_prepare_workers_decode_in_parallel_and_results_keep_the_source_order(
    tmp_path: Path, model: edgerun.Model
) -> None:
    # large noise images (slow to decode) among small ones: workers finish out of turn
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        target = tmp_path / f"img_{i:02d}.png"
        if i % 5 == 1:
            cv2.imwrite(str(target), rng.integers(0, 256, (700, 700), dtype=np.uint8))
        else:
            target.write_bytes((SAMPLES / f"digit_{i % 10}.png").read_bytes())
        paths.append(str(target))
    one, three = ListSink(), ListSink()
    Pipeline(FileSource(paths), model, [one], prepare_workers=1).run()
    threads: set[str] = set()
    summary = Pipeline(
        FileSource(paths),
        model,
        [three],
        prepare_workers=3,
        on_result=lambda _: threads.update(t.name for t in threading.enumerate()),
    ).run()
    assert summary.ok == 24
    assert [r.record["input"] for r in three.results] == paths
    assert [r.record["output"] for r in three.results] == [r.record["output"] for r in one.results]
    assert {"pipeline-prepare-0", "pipeline-prepare-1", "pipeline-prepare-2"} <= threads


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"prepare_workers": 0}, "prepare workers must be a whole number from 1 to 64, got 0"),
        ({"queue_size": 0}, "queue size must be a whole number from 1 to 1024, got 0"),  # once: run() hung
        ({"max_frames": 0}, "max frames must be a whole number from 1"),  # once: one frame ran anyway
        ({"batch_size": 2.5}, "batch size must be a whole number from 1 to 256, got 2.5"),
        ({"fps": "5"}, "fps must be a positive number, got '5'"),  # once: a raw TypeError
        ({"fps": 1e-300}, "fps must be from 0.0001 to 1000, got 1e-300"),  # once: OverflowError in the reader
        ({"source": str(SAMPLES)}, "source must be a Source"),  # once: the reader died, run() hung
        ({"model": None}, "model must be an edgerun Model"),
        ({"sinks": None}, "sinks must be a list of sinks"),
        ({"sinks": ["stdout"]}, "a sink needs publish() and close()"),  # once: found after reading the source
    ],
)
def test_arguments_a_run_could_only_fail_or_hang_on_are_refused_up_front(
    model: edgerun.Model, change: dict[str, Any], words: str
) -> None:
    args: dict[str, Any] = {"source": FileSource([str(SAMPLES)]), "model": model, "sinks": [ListSink()], **change}
    with pytest.raises(PipelineError, match=re.escape(words)):
        Pipeline(args.pop("source"), args.pop("model"), args.pop("sinks"), **args)


def test_inline_sinks_are_published_from_the_inference_thread_with_the_same_results(
    tmp_path: Path, model: edgerun.Model
) -> None:
    paths = _copies(tmp_path, 30)

    def publishing_threads(sinks: list[ListSink]) -> set[str]:
        names: set[str] = set()
        Pipeline(FileSource(paths), model, sinks, on_result=lambda _: names.add(threading.current_thread().name)).run()
        return names

    inline, threaded = ListSink(inline=True), ListSink()
    assert publishing_threads([inline]) == {"pipeline-infer"}
    assert publishing_threads([threaded]) == {"pipeline-sink"}
    assert len(inline.results) == 30
    assert [(r.record["input"], r.record["output"]) for r in inline.results] == [
        (r.record["input"], r.record["output"]) for r in threaded.results
    ]
    mixed = [ListSink(inline=True), ListSink()]  # one sink that needs its own thread puts every sink there
    assert publishing_threads(mixed) == {"pipeline-sink"} and len(mixed[0].results) == 30


def test_an_inline_sink_whose_reader_went_away_ends_the_run_with_broken_pipe(model: edgerun.Model) -> None:
    class ClosedStdout(ListSink):
        def publish(self, result: Result) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    sink = ClosedStdout(inline=True)
    with pytest.raises(BrokenPipeError):
        Pipeline(FileSource([str(SAMPLES)]), model, [sink]).run()
    assert sink.closed == 1


def damaged_video(path: Path, damage: str, frames: int = 30) -> Path:
    """An MJPG video of ``frames`` noisy frames, then ``damage``d: "truncated" (its first half of bytes),
    "corrupt" (5,000 bytes of 0xff in its middle) or "none"."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):  # noise compresses badly: the file is large enough to cut mid-stream
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if damage == "truncated":
        del data[middle:]
    elif damage == "corrupt":
        data[middle : middle + 5000] = b"\xff" * 5000
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_video_that_ends_before_its_declared_frame_count_ends_with_an_error_frame(
    tmp_path: Path, model: edgerun.Model, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    video = damaged_video(tmp_path / "in.avi", damage)
    sink = ListSink()
    summary = Pipeline(VideoFileSource(str(video)), model, [sink]).run()
    assert summary.errors == 1 and 0 < summary.ok < 30 and summary.stopped_by == "end of input"
    last = sink.results[-1]
    message = f"{video}: decoding stopped at frame {summary.ok} of 30 (truncated or corrupt video)"
    assert last.record == {"input": f"{video}#{summary.ok}", "error": message}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the error frame is the report


def test_a_whole_video_and_a_damaged_one_stopped_early_report_no_lost_input(
    tmp_path: Path, model: edgerun.Model, caplog: pytest.LogCaptureFixture
) -> None:
    whole = Pipeline(VideoFileSource(str(damaged_video(tmp_path / "whole.avi", "none"))), model, [ListSink()]).run()
    assert whole.frames == whole.ok == 30 and whole.errors == 0
    cut = damaged_video(tmp_path / "cut.avi", "truncated")
    early = Pipeline(VideoFileSource(str(cut)), model, [ListSink()], max_frames=3).run()
    assert early.frames == early.ok == 3 and early.errors == 0  # it stopped before the damage: nothing lost
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_frame_with_no_image_is_not_drawn_and_each_annotated_sink_warns_about_it(
    tmp_path: Path, model: edgerun.Model, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")  # a failed frame: reported as an error already, so no warning
    video = AnnotatedVideoSink(str(tmp_path / "out.avi"))
    images = AnnotatedImageSink(str(tmp_path / "imgs") + "/")
    summary = Pipeline(FileSource([str(SAMPLES), str(bad)]), model, [video, images]).run()
    assert summary.ok == 11 and summary.errors == 1
    npy = str(SAMPLES / "digit_7.npy")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [  # sinks are published in order, from one thread
        f"{tmp_path / 'out.avi'}: {npy} has no image to draw on; not written",
        f"{tmp_path / 'imgs'}/: {npy} has no image to draw on; not written",
    ]
    assert video.written == images.written == 10
    assert int(cv2.VideoCapture(str(tmp_path / "out.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    assert len(list((tmp_path / "imgs").glob("*.jpg"))) == 10


def test_a_second_run_into_the_same_annotated_sinks_keeps_what_the_first_wrote(
    tmp_path: Path, model: edgerun.Model, caplog: pytest.LogCaptureFixture
) -> None:
    """As a daemon pipeline restarted after its camera came back, or a second ``edgerun run``, does."""
    video, folder = tmp_path / "out.avi", tmp_path / "imgs"
    three = [str(SAMPLES / f"digit_{d}.png") for d in (1, 2, 3)]
    Pipeline(FileSource(three), model, [AnnotatedVideoSink(str(video)), AnnotatedImageSink(str(folder))]).run()
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    first_video = video.read_bytes()
    again = AnnotatedVideoSink(str(video))
    Pipeline(FileSource(three[:2]), model, [again, AnnotatedImageSink(str(folder))]).run()
    assert video.read_bytes() == first_video
    assert again.path == str(tmp_path / "out-1.avi")
    assert int(cv2.VideoCapture(again.path).get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert sorted(first) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.jpg" for i in range(5)]
    assert all((folder / name).read_bytes() == data for name, data in first.items())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{video} exists: this run's annotated video goes to {tmp_path / 'out-1.avi'}" in warnings
    assert f"{folder} holds images up to 000002.jpg: this run's are numbered on from there" in warnings


def _slow_digits(folder: Path, matmuls: int = 10) -> Path:
    """A real ONNX model that answers as the digits model's card expects, slowly: each call also
    multiplies a 1024x1024 matrix that depends on the input ``matmuls`` times (about 0.2 s on one
    thread here), as a MobileNet-sized model does on a small board."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 1024
    rng = np.random.default_rng(0)
    constants = [
        numpy_helper.from_array((rng.random((n, n), dtype=np.float32) / n).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w_out"),
        numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([n, n], np.int64), "big_shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["mean"], keepdims=0),
        helper.make_node("Expand", ["mean", "big_shape"], ["m0"]),  # from the input: never folded at load
    ]
    nodes += [helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]) for i in range(matmuls)]
    nodes += [
        helper.make_node("ReduceMean", [f"m{matmuls}"], ["busy"], keepdims=0),
        helper.make_node("Mul", ["busy", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["flat", "w_out"], ["raw"]),
        helper.make_node("Add", ["raw", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        constants,
    )
    path = folder / "slow.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    (folder / "slow.onnx.card.yaml").write_text((DIGITS / "digits_fp32.onnx.card.yaml").read_text())
    return path


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[edgerun.Model]:
    with edgerun.load(_slow_digits(tmp_path_factory.mktemp("slow")), threads=1) as m:
        yield m


def test_a_source_that_fails_still_gets_the_results_of_what_a_slow_model_had_in_flight(
    slow_model: edgerun.Model,
) -> None:
    class ThreeThenUnplugged(BurstSource):
        def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
            for i in range(3):
                buffer.put(Frame(self.image, time.time(), f"x#{i}", i))
            raise SourceError("camera unplugged")

    sink = ListSink()  # published from the sink thread, which waited on an empty queue while inference ran
    pipeline = Pipeline(ThreeThenUnplugged(3, queue=4), slow_model, [sink])
    with pytest.raises(PipelineError, match="source burst: camera unplugged"):
        pipeline.run()
    assert [r.frame.index for r in sink.results] == [0, 1, 2]
    assert pipeline.summary.frames == 3


def test_with_batches_results_keep_the_source_order_failed_frames_included(
    tmp_path: Path, slow_model: edgerun.Model
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    paths = [str(SAMPLES / f"digit_{d}.png") for d in range(6)]
    paths[2:2] = [str(bad)]
    paths[5:5] = [str(tmp_path / "missing.png")]
    sink = ListSink()
    # the first call runs one frame; meanwhile the rest queue up and go in batches with the failed ones among them
    summary = Pipeline(FileSource(paths), slow_model, [sink], batch_size=4).run()
    assert (summary.frames, summary.errors) == (8, 2)
    assert [r.record["input"] for r in sink.results] == paths
    assert [r.ok for r in sink.results] == [True, True, False, True, True, False, True, True]


def test_a_stop_ends_the_wait_for_the_next_paced_frame(model: edgerun.Model) -> None:
    pipeline: Pipeline
    pipeline = Pipeline(
        FileSource([str(SAMPLES)]), model, [ListSink()], fps=0.001, on_result=lambda _: pipeline.stop("SIGTERM")
    )
    summaries: list[Any] = []
    runner = threading.Thread(target=lambda: summaries.append(pipeline.run()), daemon=True)
    runner.start()
    runner.join(timeout=30)  # the next frame is due in 1,000 s
    assert not runner.is_alive()
    assert summaries[0].stopped_by == "SIGTERM"
    assert summaries[0].frames == 2  # the frame read while waiting is still processed


def test_an_interrupt_in_run_stops_every_stage_before_the_sinks_close(model: edgerun.Model) -> None:
    import os
    import signal

    class Endless(BurstSource):
        def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
            i = 0
            while not stop.is_set():
                buffer.put(Frame(self.image, time.time(), f"x#{i}", i))
                i += 1
                time.sleep(0.001)

    class InterruptingSink(ListSink):
        late = 0

        def publish(self, result: Result) -> None:
            if self.closed:
                self.late += 1
            super().publish(result)
            if len(self.results) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the main thread, inside run()

    sink = InterruptingSink()
    source = Endless(0, queue=4)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(source, model, [sink]).run()
    alive = [t.name for t in threading.enumerate() if t.name.startswith(("pipeline-", "capture burst"))]
    assert alive == []
    assert sink.closed == 1 and sink.late == 0


def test_every_frame_the_source_drops_is_counted_once_in_the_metrics(model: edgerun.Model) -> None:
    class DroppingWhileRead(BurstSource):
        """Its capture drops a frame between any two looks at the count, as a busy camera can."""

        looks = 0

        @property
        def dropped(self) -> int:
            self.looks += 1
            return self.looks

    source = DroppingWhileRead(20, queue=32)
    pipeline = Pipeline(source, model, [ListSink()])
    summary = pipeline.run()
    counted = pipeline.metrics.totals()[f"{model.name}@{model.version}"]["dropped"]
    assert counted == summary.dropped
