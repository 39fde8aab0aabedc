"""A real-time pipeline: source -> preprocess -> inference -> postprocess -> sinks.

Threads joined by bounded queues::

    reader ──q──> prepare x N ──q──> infer+post ──q──> sinks

so that on two cores decoding and preprocessing of the next frames overlap the
inference of the current one (OpenCV and both runtimes release the GIL while
they work). Encoded images (files, MQTT messages) are decoded by
``prepare_workers`` threads: one by default, which keeps each frame's latency
lowest; several decode in parallel for throughput (``edgerun predict`` uses one
per core). The reader deals frames to them in turn and the inference thread
takes them back in the same turn (``edgerun.lanes``), so results keep the source's order.
Where the source's frames arrive decoded (video, camera, stream, sensor windows:
``Source.decoded``), reading is the heavy part and preparing a
frame (a resize) is light, so the prepare workers are left out: one thread and one
queue hop fewer per frame, which on two cores was 12-15% more frames per second on a
720p video. Such a frame is prepared by whichever of the two threads would otherwise
wait: by the reader while the inference thread has frames queued, and by the
inference thread when its queue is empty (decoding is the slower stage, as with a fast
accelerator; measured 10-15% more frames per second there). Bounded queues
are the backpressure: a file source is read no faster than the model consumes it
and never drops; a live source keeps only its newest frames in its own buffer and
counts what it drops. Where every sink is cheap enough to run on the inference
thread (``inline``, as standard output is), results go to the sinks from there and
the sink thread is left out too: on two cores that hop cost more than it saved
(digits over 1,000 JPEGs in-process: 1.01-1.03x of a plain loop with the sink
thread, 1.12-1.14x without).

Invariants:
* a frame that fails (unreadable, corrupt, wrong shape) becomes an error result
  that is counted and reported, and the run goes on; one whose run fails because
  of a stop (its model closed, its worker stopped) is reported, and not counted
  against the model in its metrics (``Pipeline._by_the_stop``);
* a stage that fails unexpectedly stops the run: the source is closed, what is in
  flight is finished and flushed, and ``run()`` raises ``PipelineError`` naming
  the stage (or the ``BrokenPipeError`` itself when the reader of a sink's
  stream went away, as under ``| head``, which callers end on quietly);
* a sink that fails gets nothing more; every other sink still gets every result
  computed (what was in flight), and the run then fails with that sink's error;
* ``stop()`` (from SIGINT/SIGTERM) closes the source; everything already read is
  still processed and every sink is closed (flushed) exactly once, by the thread
  that published to it. A sink blocked in a write that takes nothing for
  ``SINK_STOP_GRACE_S`` after such a stop (a signal, a shutdown; not the run's own
  stop at ``max_frames`` or a failure) is left behind with its thread (one WARNING;
  ``Summary.unflushed`` names it), so a signal always ends the run; every other sink still
  gets the result it was stuck on, and so holds every result the summary counts;
* a frame holds the model it was given (``ModelSlot.hold``) from the moment it is
  prepared until its result or error is out, and lets go of it on every path (a frame
  discarded by a failed run too): a model swapped out meanwhile (an update, a rollback,
  a reload) finishes these frames and, run in a worker process (``isolation: process``),
  stops that worker after the last of them instead of starting one again for each.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from edgerun import lanes
from edgerun.errors import EdgerunError, InferenceError, PipelineError, UnusableInput
from edgerun.lanes import END, NOTHING, Lanes
from edgerun.limits import BATCH_SIZE_MAX, FPS_MAX, FPS_MIN, MAX_FRAMES_MAX, PREPARE_WORKERS_MAX
from edgerun.model import Model
from edgerun.ota.slot import ModelSlot
from edgerun.sinks.base import Result, Sink, error_record, result_record
from edgerun.sources.base import Frame, Source
from edgerun.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "Summary"]

#: How long after a stop the pipeline waits for a reader blocked in the source (``Pipeline._leave_reader``).
READ_STOP_GRACE_S = 2.0

#: How long after a stop the pipeline waits for a sink that takes nothing more, blocked in a write (a named pipe
#: or standard output whose reader stopped reading, storage that hangs), before it ends without it
#: (``Pipeline._leave_sink``).
SINK_STOP_GRACE_S = 10.0


class _Item(msgspec.Struct):
    frame: Frame
    arrived: float  # monotonic time the reader took it
    model: Model | None = None  # chosen once per frame, so a hot swap never mixes two models
    held: bool = False  # the frame holds ``model`` (``ModelSlot.hold``) until its result is out
    tensor: np.ndarray | None = None
    pre_ms: float = 0.0
    error: str | None = None
    #: the error is the model's to answer for (counted in its metrics, which OTA probation judges); not where the
    #: input was unusable whatever the model (unreadable, not an image, not numbers: ``UnusableInput``), nor where
    #: the run failed because of a stop (``Pipeline._by_the_stop``)
    model_error: bool = True


#: Frames of a live source that each queue before inference holds, at most: enough to keep the model busy.
LIVE_QUEUE = 2


def _let_go(item: _Item) -> None:
    """The end of the frame's hold on its model (once; nothing if it holds none)."""
    if item.held:
        item.held = False
        item.model.let_go()  # type: ignore[union-attr]  # held only once a model was given


class Summary(msgspec.Struct):
    """What a run did. Latencies in ms per stage, of the run's own frames (every model version that served
    them: ``Metrics.totals_since``), rates per second.

    ``elapsed_s`` is the run's wall time; a paced run's (``fps``) runs on to when its next frame would
    have been due, where that is later: each frame it took holds a slot of ``1 / fps`` s, its last one
    included, so its ``fps`` is at most the pace (4 frames at 2 a second: 2.0 s, 2.0 fps; the wall
    time from the first to the last holds 3 intervals, 1.5 s). A run stopped in the middle of that
    slot counts it whole. ``unflushed`` names the sinks (``stdout``, a file) the run ended without,
    blocked in a write after the stop: their output is not complete (``Pipeline._leave_sink``).
    """

    frames: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    stages_ms: dict[str, Any] = msgspec.field(default_factory=dict)
    stopped_by: str = "end of input"
    unflushed: list[str] = msgspec.field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames that succeeded per second of the run's wall time; 0.0 where none did (a rate of failures is
        no throughput) or no time was measured."""
        return self.ok / self.elapsed_s if self.ok > 0 and self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "frames": self.frames,
            "ok": self.ok,
            "errors": self.errors,
            "dropped": self.dropped,
            "skipped": self.skipped,
            "elapsed_s": self.elapsed_s,  # unrounded: a quick run's 0.0004 s is no 0.0
            "fps": self.fps,
            "stages_ms": self.stages_ms,
            "stopped_by": self.stopped_by,
            "unflushed": list(self.unflushed),
        }


def _sink_name(sink: Any) -> str:
    """How a sink is named in a warning and in ``Summary.unflushed``: ``stdout``, its file or folder."""
    for attr in ("name", "path", "directory"):
        value = getattr(sink, attr, None)
        if (isinstance(value, str) and value) or hasattr(value, "__fspath__"):
            return str(value)
    return type(sink).__name__


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PipelineError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def _check_arguments(
    source: Any,
    model: Any,
    sinks: Any,
    fps: Any,
    max_frames: Any,
    batch_size: Any,
    queue_size: Any,
    prepare_workers: Any,
) -> None:
    """Refuse, before any thread starts, what a run could only fail on later (or hang on)."""
    if not all(hasattr(source, a) for a in ("frames", "close", "live", "uri")):
        raise PipelineError(f"source must be a Source (see edgerun.sources.open_source), got {type(source).__name__}")
    if not isinstance(model, (Model, ModelSlot)):
        raise PipelineError(f"model must be an edgerun Model (edgerun.load), got {type(model).__name__}")
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Sequence):
        raise PipelineError(f"sinks must be a list of sinks, got {type(sinks).__name__}")
    for sink in sinks:
        if not (callable(getattr(sink, "publish", None)) and callable(getattr(sink, "close", None))):
            raise PipelineError(f"a sink needs publish() and close() (see edgerun.sinks.open_sink), got {sink!r}")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0)
    ):
        raise PipelineError(f"fps must be a positive number, got {fps!r}")
    if fps is not None and not FPS_MIN <= fps <= FPS_MAX:
        raise PipelineError(f"fps must be from {FPS_MIN:g} to {FPS_MAX:g}, got {fps!r}")
    if max_frames is not None:
        _whole("max frames", max_frames, 1, MAX_FRAMES_MAX)
    _whole("batch size", batch_size, 1, BATCH_SIZE_MAX)
    _whole("queue size", queue_size, 1, 1024)
    _whole("prepare workers", prepare_workers, 1, PREPARE_WORKERS_MAX)


class Pipeline:
    """Runs one model over one source into sinks. Use once: ``run()`` then discard.

    ``others_go_on``: when a sink fails, every other sink still gets every result computed (the
    default: a run that ends there loses nothing it computed), or, False, every sink stops at the
    result the failed one refused (a caller that runs the rest again, as the daemon's retry does
    with the inputs ``on_result`` has not seen; the sinks before the failed one took that result, so
    the retry leaves it out for them: ``edgerun.sinks.once_per_input``). ``sink_stop_grace_s``:
    how long after a stop a sink blocked in a write is waited for (``SINK_STOP_GRACE_S``).
    """

    def __init__(
        self,
        source: Source,
        model: Model | ModelSlot,
        sinks: Sequence[Sink],
        *,
        metrics: Metrics | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        batch_size: int = 1,
        queue_size: int = 8,
        prepare_workers: int = 1,
        on_result: Callable[[Result], None] | None = None,
        others_go_on: bool = True,
        sink_stop_grace_s: float = SINK_STOP_GRACE_S,
    ) -> None:
        _check_arguments(source, model, sinks, fps, max_frames, batch_size, queue_size, prepare_workers)
        self.source = source
        self.slot = model if isinstance(model, ModelSlot) else ModelSlot(model)
        self.sinks = list(sinks)
        self.metrics = metrics or Metrics()
        self._interval = 1.0 / fps if fps else 0.0
        self._due = 0.0  # a paced run: monotonic time its next frame is due, the end of its last frame's slot
        self._max_frames = max_frames
        self._batch = batch_size
        self._prepare_on_reader = bool(getattr(source, "decoded", False))
        self._inline = all(getattr(sink, "inline", False) for sink in self.sinks)
        self._sink_failed = False  # no sink can take results any more (each failed, or the run left them)
        self._sinks_up = list(self.sinks)  # the sinks that have not failed: each result goes to all of them
        self._unclosed = list(self.sinks)  # each closed once, by the thread that takes it from here
        self._close_lock = threading.Lock()  # taken per sink closed, never per frame
        self._in_sink: Sink | None = None  # the sink the delivering thread is in (publish or close), if any
        self._in_flight: Result | None = None  # the result it is delivering; None once it closes the sinks
        self._mark: tuple[int, Sink | None, int] = (-1, None, -1)  # the delivery's progress, as last seen
        self._mark_at = 0.0
        self._left_sink: Sink | None = None  # the sink left blocked in a write after a stop
        #: what the left sink held up (``_leave_sink``): the result in flight and the sinks after it, still owed it
        self._owed: tuple[Result | None, list[Sink]] = (None, [])
        self._on_result_owed: Callable[[Result], None] | None = None  # ``on_result`` for that result, where it goes on
        self._taken: list[Sink] = []  # the sinks taken from the delivering thread when it was left, closed by run()
        self._on_result = on_result
        self._others_go_on = others_go_on
        self._sink_grace = sink_stop_grace_s
        self._stop = threading.Event()
        self._abort = threading.Event()
        # frames read here and decoded elsewhere: prepared by one worker, or several in parallel
        self._workers = 0 if self._prepare_on_reader else prepare_workers
        n_lanes = max(1, self._workers)
        # A live source keeps its newest frames in its own buffer (``--queue``), the newest replacing the oldest;
        # queued here as well they would only age: 8 more frames of a camera behind a slow model
        # (a batch of a live source still fills: inference takes the frames that wait, and waits for none)
        inner = min(queue_size, max(LIVE_QUEUE, batch_size)) if source.live else queue_size
        lane_size = -(-inner // n_lanes)  # the lanes of a stage hold about that many frames (one a lane at least)
        self._q_pre = Lanes(n_lanes, lane_size, self._abort)
        self._q_inf = Lanes(n_lanes, lane_size, self._abort)
        self._q_out = Lanes(1, queue_size * max(1, batch_size), self._abort)
        self._onward = self._q_inf if self._prepare_on_reader else self._q_pre  # the reader's next stage
        self._failure: tuple[str, BaseException] | None = None
        self._lock = threading.Lock()
        self._stopped_at = math.inf  # monotonic time of the first stop()
        self._asked_at: float | None = None  # monotonic time of the first stop() asked from outside
        self._reading_since: float | None = None  # while the reader waits in the source for a frame
        self._reader_left = False  # the reader, stuck in a read after the stop, was left behind
        self._reading_lock = threading.Lock()  # the reader's way out of a read against its leaving
        self.summary = Summary()

    @property
    def model(self) -> Model:
        """The model serving now (the slot's primary)."""
        return self.slot.primary

    # -- control -------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Stop reading; what is in flight is finished. Safe from any thread, but not from a signal
        handler itself, which may run while its own thread holds a lock this takes: the command line
        calls it through ``edgerun.signals``.

        Asked from outside (SIGINT, SIGTERM, a daemon's shutdown), a stop also bounds the wait for a
        sink blocked in a write (``SINK_STOP_GRACE_S``); the run's own stops (``--max-frames``, a failed
        stage) wait for its sinks however long they take, so that a slow disk still gets all of it."""
        if self._asked_at is None:
            self._asked_at = time.monotonic()
        self._halt(reason)

    def _halt(self, reason: str) -> None:
        """Stop reading (the run's own stop: the end of ``--max-frames``, a failed stage)."""
        if not self._stop.is_set():
            self.summary.stopped_by = reason
            self._stopped_at = time.monotonic()
            self._stop.set()
            self.source.close()

    def _fail(self, stage: str, exc: BaseException, *, abort: bool = True) -> None:
        """Record the first failure and stop reading. ``abort`` also tells every stage to give up
        waiting: needed where a consumer died (a producer would block on it for good), not where the
        source did (the reader is the head of the chain: what it handed on is finished and flushed)."""
        with self._lock:
            if self._failure is None:
                self._failure = (stage, exc)
        if isinstance(exc, BrokenPipeError):
            log.debug("pipeline stage %s: the reader went away", stage)
        elif isinstance(exc, (EdgerunError, OSError)):  # bad input, a full disk: not bugs; run() raises it
            log.debug("pipeline stage %s failed: %s", stage, exc)
        else:
            log.error("pipeline stage %s failed: %s", stage, exc, exc_info=True)
        if abort:
            self._abort.set()
        self._halt(f"{stage} failed")

    # -- stages --------------------------------------------------------------
    def _read(self) -> None:
        taken = 0
        next_due = 0.0
        live = self.source.live
        dropped_seen = 0
        onward = self._onward  # prepared here, or by the prepare workers
        try:
            frames = iter(self.source.frames())  # in the try: a source that fails to start is that stage's failure
            while True:
                self._reading_since = time.monotonic()
                frame = next(frames, None)
                with self._reading_lock:  # a frame read as the reader is left behind is not handed on
                    self._reading_since = None
                    if frame is None or self._reader_left:
                        break
                now = time.monotonic()
                if self._interval:
                    if now < next_due:
                        if live:
                            self.summary.skipped += 1  # frame skipping to hold the target rate
                            continue
                        self._stop.wait(next_due - now)  # a stop ends the wait; the frame read is still handed on
                        now = time.monotonic()
                    next_due = max(next_due + self._interval, now) if next_due else now + self._interval
                    self._due = next_due  # this frame's slot runs to there (``Summary.elapsed_s``)
                dropped = self.source.dropped  # read once: the capture thread may drop more meanwhile
                if dropped != dropped_seen:
                    self._count_dropped(dropped - dropped_seen)
                    dropped_seen = dropped
                item = _Item(frame, now)
                if self._prepare_on_reader and not onward.empty() and not self._prepare_guarded(item):
                    return
                if not onward.put(item):
                    _let_go(item)  # the run was aborted: a frame prepared here goes no further
                    return
                taken += 1
                if self._max_frames is not None and taken >= self._max_frames:
                    self._halt("max frames")
                    break
                if self._stop.is_set() and not live:
                    break  # checked after handing the frame on: a frame read is a frame processed
        except BaseException as exc:
            self._fail(f"source {self.source.uri}", exc, abort=False)
        finally:
            self.summary.dropped = dropped = self.source.dropped
            if dropped != dropped_seen:
                self._count_dropped(dropped - dropped_seen)
            onward.end()

    def _count_dropped(self, n: int) -> None:
        m = self.slot.primary
        self.metrics.dropped(m.name, m.version, m.delegate, n)

    def _prepare(self, lane: int) -> None:
        """One prepare worker: frames from its lane in, prepared frames to its lane out."""
        take, onward = self._q_pre.channels[lane], self._q_inf.channels[lane]
        try:
            while (item := lanes.get(take, self._abort)) is not END:
                self._prepare_one(item)
                if not lanes.put(onward, item, self._abort):
                    _let_go(item)  # the run was aborted: this frame goes no further
                    return
        except BaseException as exc:
            self._fail("preprocess", exc)
        finally:
            lanes.put(onward, END, self._abort)

    def _prepare_one(self, item: _Item) -> None:
        """Give the frame its model, held until its result is out (``_let_go``), and prepare it."""
        item.model = model = self.slot.hold()  # for an in-process model, a count of nothing: no lock taken
        item.held = True
        if item.frame.error is None:
            t0 = time.perf_counter()
            try:
                item.tensor = model.prepare(item.frame.data, item.frame.source_id)
            except EdgerunError as exc:
                item.error = str(exc)
                item.model_error = not isinstance(exc, UnusableInput)
            except BaseException:  # a bug: the stage fails, and the frame with it
                _let_go(item)
                raise
            item.pre_ms = (time.perf_counter() - t0) * 1e3
        else:
            item.error = item.frame.error  # the source could not give this input (a bad file, row or message)
            item.model_error = False

    def _prepare_guarded(self, item: _Item) -> bool:
        """Prepare a decoded frame on the reader or the inference thread; False if preparing failed
        (a bug, reported as the preprocess stage's, not as the source's or inference's)."""
        try:
            self._prepare_one(item)
        except BaseException as exc:
            self._fail("preprocess", exc)
            return False
        return True

    def _infer(self) -> None:
        try:
            ended = False
            while not ended:
                batch: list[_Item] = []  # in the source's order, failed frames included
                good = 0
                try:
                    item = self._q_inf.get()
                    while item is not END:
                        if item.model is None and not self._prepare_guarded(item):  # handed on as read
                            return
                        batch.append(item)
                        good += item.error is None
                        if good >= self._batch:
                            break
                        item = self._q_inf.get_nowait()  # take what is already waiting, never wait to fill a batch
                        if item is NOTHING:
                            break
                    ended = item is END
                    self._run_in_order(batch)
                finally:
                    for done in batch:  # each let go once its result is out; still held only where the run failed
                        if done.held:
                            _let_go(done)
        except BaseException as exc:
            self._fail("inference", exc)
        finally:
            if self._inline:
                self._close_sinks()  # the sinks' last word, on the thread that published to them
            else:
                self._q_out.end()

    def _run_in_order(self, batch: list[_Item]) -> None:
        """Results in the order the frames came: each stretch of frames that share a model (a hot swap
        can fall inside a batch) is one call, and a failed frame's error goes out in its place."""
        stretch: list[_Item] = []
        for item in batch:
            if stretch and (item.error is not None or item.model is not stretch[0].model):
                self._run_batch(stretch)
                stretch = []
            if item.error is not None:
                self._emit_error(item)
            else:
                stretch.append(item)
        if stretch:
            self._run_batch(stretch)

    def _run_batch(self, batch: list[_Item]) -> None:
        model = batch[0].model
        assert model is not None
        t0 = time.perf_counter()
        rows: list[tuple[_Item, list[np.ndarray], int, float]] = []
        # one call where the tensors stack: a model whose dimensions past the batch are dynamic too takes
        # inputs of several sizes, which go one by one (``np.concatenate`` refused them, and failed the run)
        if len(batch) > 1 and model.batchable and len({i.tensor.shape for i in batch}) == 1:  # type: ignore[union-attr]
            try:
                outputs = model.run(np.concatenate([i.tensor for i in batch]))
                share = (time.perf_counter() - t0) * 1e3 / len(batch)
                rows = [(item, outputs, r, share) for r, item in enumerate(batch)]
            except EdgerunError:
                rows = []  # one bad tensor spoils the batch: fall back to one by one
        if not rows:
            for item in batch:
                t1 = time.perf_counter()
                try:
                    outputs = model.run(item.tensor)  # type: ignore[arg-type]
                except EdgerunError as exc:
                    item.error = f"{item.frame.source_id}: {exc}"  # named, as a failed prepare's error is
                    item.model_error = not self._by_the_stop(model, exc)
                    self._emit_error(item)
                    continue
                rows.append((item, outputs, 0, (time.perf_counter() - t1) * 1e3))
        for item, outputs, row, infer_ms in rows:
            t2 = time.perf_counter()
            try:
                output = model.postprocess(outputs, row)
            except EdgerunError as exc:  # a card whose labels do not count this output's classes: the model's
                item.error = f"{item.frame.source_id}: {exc}"
                item.model_error = not isinstance(exc, UnusableInput)
                self._emit_error(item)
                continue
            post_ms = (time.perf_counter() - t2) * 1e3
            _let_go(item)  # done with the model: a sink that takes its time keeps no worker for it
            total_ms = (time.monotonic() - item.arrived) * 1e3
            self.metrics.record(
                model.name,
                model.version,
                model.delegate,
                {"pre": item.pre_ms, "infer": infer_ms, "post": post_ms, "total": total_ms},
            )
            record = result_record(model, item.frame.source_id, output, item.pre_ms + infer_ms + post_ms)
            if not self._emit(Result(item.frame, record)):
                return

    def _by_the_stop(self, model: Model, exc: EdgerunError) -> bool:
        """Whether a frame's failed run is the stop's doing rather than the model's, so not counted against it
        (OTA probation rolls back an update with errors): an ``InferenceError`` once a stop was asked from
        outside (a signal, a shutdown, a library caller's ``stop``, whose model may be closed as it stops:
        ``the model is closed``), or once the model's worker was stopped (``IsolatedBackend.stop``, which the
        daemon's stop does just before it stops the pipelines: ``not started again once the stop began``,
        ``killed``). A failure of the runtime itself in those frames cannot be told apart from these, and
        goes uncounted too: a few frames, the ones in flight. Looked at only when a frame fails."""
        if not isinstance(exc, InferenceError):  # an input that does not fit is the same at a stop
            return False
        return self._asked_at is not None or bool(getattr(model.backend, "stopping", False))

    def _emit_error(self, item: _Item) -> None:
        _let_go(item)
        if item.model_error:
            m = item.model or self.slot.primary
            self.metrics.error(m.name, m.version, m.delegate)
        self._emit(Result(item.frame, error_record(item.frame, item.error or "")))

    def _emit(self, result: Result) -> bool:
        """Hand one result on: to the sink thread, or to the sinks themselves when they are inline.

        False once results can no longer be delivered (the run was aborted, or every sink failed).
        """
        if not self._inline:
            return self._q_out.put(result)
        if self._sink_failed:
            return False
        try:
            self._deliver_one(result)
        except BaseException as exc:  # ``on_result`` failed
            self._sink_failed = True
            self._fail("sink", exc)
            return False
        return True

    def _deliver_one(self, result: Result) -> None:
        self._in_flight = result  # should a sink block on it after a stop, the others still get it (``_leave_sink``)
        self.summary.frames += 1
        if result.ok:
            self.summary.ok += 1
        else:
            self.summary.errors += 1
        for sink in self._sinks_up:
            if self._left_sink is not None:  # a sink was left blocked after a stop: run() gives the rest their due
                break  # (the list looped over may be one ``_sink_down`` replaced, which ``_leave_sink`` cannot clear)
            self._in_sink = sink
            try:
                sink.publish(result)
            except BaseException as exc:  # that sink is down; the others still get this result and the rest
                self._sink_down(sink, exc)
                if self._sink_failed:  # every sink stops here (``others_go_on`` False), or none is left
                    break
        self._in_sink = None
        on_result = self._on_result  # read once: a stop that leaves a sink behind clears it from another thread
        if on_result is not None:
            on_result(result)

    def _sink_down(self, sink: Sink, exc: BaseException) -> None:
        """A sink failed: it gets nothing more, while every other sink still gets every result
        computed (the source is closed, what is in flight finished); the run then fails with the
        first failure; ``on_result`` goes on for the results they get (a failed input is still
        reported). With ``others_go_on`` False every sink stops here, and ``on_result`` is no longer
        called: the daemon leaves the inputs it saw out of a retry, and this one is not on every sink."""
        self._sinks_up = [s for s in self._sinks_up if s is not sink] if self._others_go_on else []
        if not self._others_go_on:  # the result it refused is not on every sink: the caller runs it again
            self._on_result = None
        self._sink_failed = not self._sinks_up
        if self._failure is not None and not isinstance(exc, BrokenPipeError):  # not the error run() raises
            log.warning("pipeline: the sink %s failed too: %s", _sink_name(sink), exc)
        self._fail("sink", exc, abort=self._sink_failed)

    def _deliver(self) -> None:
        try:
            while (result := self._q_out.get()) is not END:
                self._deliver_one(result)
                if self._sink_failed:
                    break
        except BaseException as exc:  # ``on_result`` failed
            self._sink_failed = True
            self._fail("sink", exc)
        finally:
            if self._sink_failed:  # keep draining so upstream stages can finish
                while self._q_out.get() is not END:
                    pass
            self._close_sinks()  # the sinks' last word, on the thread that published to them

    def _close_sinks(self) -> None:
        """Close each sink not closed yet (every one, failed ones too), on the delivering thread: a
        close that blocks (a flush to a pipe nobody reads) is waited for as a publish is."""
        self._in_flight = None  # every result is out: a close left blocked holds none up
        while True:
            with self._close_lock:
                if not self._unclosed:
                    break
                sink = self._unclosed.pop(0)
            self._in_sink = sink
            try:
                sink.close()
            except Exception as exc:  # every sink gets closed even if one fails
                self._fail("sink close", exc)
        self._in_sink = None

    def _close_left_over(self, busy: Sink | None) -> None:
        """On the caller's thread, close the sinks the delivering thread did not (it was left behind, or
        interrupted), all but ``busy``, the one it is still in: that one it closes, if its write returns.
        Those taken from it when it was left (``_leave_sink``) first get the result it was stuck on."""
        rest = self._taken + self._take_unclosed(busy)
        self._deliver_owed()
        for sink in rest:
            try:
                sink.close()
            except Exception as exc:  # every sink gets closed even if one fails
                self._fail("sink close", exc)

    def _take_unclosed(self, busy: Sink | None) -> list[Sink]:
        """The sinks not closed yet, all but ``busy``, taken from the delivering thread: the caller closes them."""
        with self._close_lock:
            taken = [s for s in self._unclosed if s is not busy]
            self._unclosed[:] = [s for s in self._unclosed if s is busy]
        return taken

    def _deliver_owed(self) -> None:
        """On the caller's thread, the result the left sink is stuck on, to the sinks after it (in their order,
        after every result before it): they hold every result the summary counts, as if nothing had blocked."""
        result, owed = self._owed
        if result is None:
            return
        for sink in owed:
            try:
                sink.publish(result)
            except BaseException as exc:  # as in ``_deliver_one``: that sink is down; the others still get it
                self._sink_down(sink, exc)
                if not self._others_go_on:
                    return
        if self._on_result_owed is not None:
            try:
                self._on_result_owed(result)
            except BaseException as exc:
                self._fail("sink", exc)

    # -- running -------------------------------------------------------------
    def _leave_reader(self) -> bool:
        """After a stop, stop waiting for a reader that has been waiting in the source for a frame
        for ``READ_STOP_GRACE_S``: storage that hangs (a network mount gone), a camera whose
        driver hangs, a library user's source that blocks. No ``close()`` reaches a thread blocked
        in ``read()`` or ``open()``, and SIGINT or SIGTERM would otherwise be ignored until the
        read returned. The stages after it get the end of input in its place; everything read
        before is finished and flushed. The thread left behind, and what it has open, stay until
        its read returns (perhaps never): one more for each such run, each restart of a daemon's
        pipeline included. A pipe is never left: a sensor stream (standard input, a named pipe)
        and an image or ``.npy`` input that is a named pipe or ``/dev/stdin`` are polled
        (``edgerun.inputs.stream_chunks``) and end within 0.2 s of ``close()``, their pipe closed.
        A live source's reader waits on the source's buffer, which ``close()`` ends once it has
        waited up to 5 s for the capture thread; a camera hung in ``cap.read()`` keeps that thread
        (see docs/pipelines.md)."""
        with self._reading_lock:
            since = self._reading_since
            if since is None or time.monotonic() - max(since, self._stopped_at) < READ_STOP_GRACE_S:
                return False
            self._reader_left = True
        log.warning(
            "pipeline: the source %s is still waiting for input %.0f s after the stop; stopped without it",
            self.source.uri,
            READ_STOP_GRACE_S,
        )
        self._onward.end()
        return True

    def _leave_sink(self) -> bool:
        """After a stop, stop waiting for the thread that delivers results (the sink thread, or the
        inference thread where every sink is inline) once it has been in one sink's ``publish`` or
        ``close``, with no result delivered, for ``SINK_STOP_GRACE_S``: a named pipe or standard
        output whose reader stopped reading, storage that hangs. No ``close()`` reaches a thread
        blocked in ``write()``, and SIGINT or SIGTERM would otherwise be ignored until the reader
        read again. A sink that is slow but moving is waited for. The run ends without it: one
        WARNING, its name in ``Summary.unflushed``; the stages before it give up (abort), and the
        other sinks are taken from it: ``run()`` gives them the result it is stuck on, where it is in
        a ``publish`` (they come after that sink, so they lack it, while the summary counts it), then
        closes them. The thread left behind, and that sink, stay until its write returns (perhaps
        never): it then delivers nothing more and closes that sink."""
        sink = self._in_sink
        frames, unclosed = self.summary.frames, len(self._unclosed)
        now = time.monotonic()
        seen_frames, seen_sink, seen_unclosed = self._mark
        if frames != seen_frames or sink is not seen_sink or unclosed != seen_unclosed:
            self._mark, self._mark_at = (frames, sink, unclosed), now
            return False
        if sink is None or now - max(self._mark_at, self._asked_at or now) < self._sink_grace:
            return False
        self._left_sink = sink
        self._sink_failed = True  # a result it hands on, should its write return, goes nowhere
        up, result = self._sinks_up, self._in_flight  # in a close: None, no result held up
        owed = up[up.index(sink) + 1 :] if result is not None and sink in up else []
        up.clear()  # in place: the loop it is in goes on to no other sink (``run()`` does, with its result)
        self._owed = (result, owed)
        if self._others_go_on:  # ``on_result`` goes on for the results the other sinks get
            self._on_result_owed = self._on_result
        self._on_result = None
        self._taken = self._take_unclosed(sink)  # closed by run(), not by that thread should its write return
        self._abort.set()  # the stages before it give up waiting on it
        log.warning(
            "pipeline: the sink %s has taken nothing for %.0f s after the stop (blocked in a write); stopped "
            "without it, its output not flushed",
            _sink_name(sink),
            self._sink_grace,
        )
        return True

    def _wait(self, threads: list[threading.Thread]) -> None:
        """Join every stage, leaving a reader or a sink blocked after a stop (``_leave_reader``, ``_leave_sink``)."""
        reader, delivering = threads[0], threads[-1]  # the sink thread, or inference where the sinks are inline
        for t in threads:
            while t.is_alive():
                if t is reader and self._leave_reader():
                    break
                if self._left_sink is None and self._asked_at is not None and delivering.is_alive():
                    self._leave_sink()
                if t is delivering and self._left_sink is not None:
                    break
                t.join(timeout=0.2)
        if self._reader_left:
            self._abort.set()  # the reader, should its read ever return, hands nothing on

    def _let_go_queued(self) -> None:
        """Let go of the models of the frames a failed or aborted run left in its queues, never to be run."""
        for stage in (self._q_pre, self._q_inf):
            for channel in stage.channels:
                while (item := channel.get(None)) is not NOTHING:
                    if item is not END:
                        _let_go(item)

    def run(self) -> Summary:
        """Run until the source ends, ``stop()`` is called or a stage fails; then flush sinks.

        Raises:
            PipelineError: a stage failed (the source, a sink, or a bug); the
                summary up to that point is in ``self.summary``.
        """
        start = time.monotonic()
        mark = self.metrics.mark()  # the summary's latencies are this run's frames', every version's
        stages: list[tuple[str, Callable[[], None]]] = [("read", self._read)]
        stages += [(f"prepare-{n}", functools.partial(self._prepare, n)) for n in range(self._workers)]
        stages.append(("infer", self._infer))
        if not self._inline:
            stages.append(("sink", self._deliver))
        threads = [threading.Thread(target=target, name=f"pipeline-{name}", daemon=True) for name, target in stages]
        for t in threads:
            t.start()
        try:
            try:
                self._wait(threads)
            except BaseException:  # KeyboardInterrupt in a library caller: the stages stop before the sinks close
                self._abort.set()
                self.stop("interrupted")
                for t in threads:
                    t.join(timeout=5.0)
                raise
        finally:
            self._let_go_queued()
            # the sinks closed by the delivering thread as it ended; any it did not (left behind, or
            # interrupted) are closed here, all but the one it is still in
            self._close_left_over(self._in_sink if threads[-1].is_alive() else None)
            if self._left_sink is not None:
                self.summary.unflushed = [_sink_name(self._left_sink)]
            # a paced run took its last frame's slot too: N frames are N intervals, never N - 1 (``Summary``)
            self.summary.elapsed_s = max(time.monotonic(), self._due) - start
            self.summary.stages_ms = self.metrics.totals_since(mark, self.slot.name)
        if self._failure is not None:
            stage, cause = self._failure
            if isinstance(cause, BrokenPipeError):
                raise cause  # the reader of stdout went away (`| head`): the caller ends quietly
            raise PipelineError(f"{stage}: {cause}") from cause
        return self.summary
