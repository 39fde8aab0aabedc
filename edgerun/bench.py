"""Benchmarking one model on one delegate: load time, latency percentiles, throughput, peak RSS.

Each (model, delegate) is measured in a fresh child process (``spawn``), so its
peak RSS is its own and one model's allocations do not slow the next. On Linux that
peak is the child's ``VmHWM``: ``getrusage``'s ``ru_maxrss`` survives ``exec`` and so
starts at the RSS of the process that spawned the child. The bench's own bookkeeping
(8 bytes a timed run, and the sorted copy the percentiles take) is left out of it.

The input timed is the one the model would get: a batch of one, and a dynamic height and width
from the card's ``preprocess.size`` (``timed_shapes``). A dynamic dimension that nothing sizes is
refused (``UnsizedInputError``), not timed as 1: a 1x1 image made a 37 ms convolution net read
0.007 ms. ``BenchResult.input_shapes`` says what was timed.

A percentile is only a tail estimate when some runs lie above it: p95 needs at least
20 runs, p99 at least 100. With fewer the figure is still the interpolated percentile
of the runs made, and ``BenchResult.sparse`` names it, so that the output can say so.

The child and Ctrl-C: the child starts with SIGINT held, so a Ctrl-C while it imports
cannot end it with a traceback; it takes SIGINT once it can answer. Ctrl-C during the
timed runs stops them, and the figures of the runs made come back as
``BenchInterrupted.partial``. Ctrl-C may stop the parent's wait for the child's reply,
never its reading of one (see ``_receive``). A child that dies without answering (a
crash, the OOM killer) is an ``EdgerunError`` naming the signal, never a wait for ever;
a child whose parent has gone stops at its next progress tick.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from edgerun.errors import BackendUnavailableError, DelegateError, EdgerunError, InputError
from edgerun.signals import exit_in_words

if TYPE_CHECKING:
    from edgerun.backends import TensorSpec
    from edgerun.card import ModelCard

__all__ = [
    "MIN_RUNS",
    "BenchInterrupted",
    "BenchResult",
    "UnsizedInputError",
    "bench_in_process",
    "bench_isolated",
    "delegates_for_all",
    "missing_ratios",
    "percentile",
    "ratio_gaps",
    "sparse_percentiles",
    "speed_ratios",
    "timed_shapes",
]

#: Seconds between progress lines, and between checks that the spawning process still waits.
TICK_S = 0.5
#: Seconds the parent waits, after Ctrl-C, for the child's figures of the runs it made.
GRACE_S = 5.0


@dataclass(frozen=True)
class BenchResult:
    """Figures for one model on one delegate; times in ms, RSS in MiB."""

    model: str
    path: str
    format: str
    precision: str | None
    delegate: str
    threads: int | None
    """The CPU threads the runtime was given: ``--threads``, else what ``edgerun.load`` picks for this file."""
    runs: int
    """The timed runs the figures come from (fewer than asked when ``interrupted``)."""
    load_ms: float
    first_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    """Timed runs (one inference of a batch of one each) per second of the timed loop's wall time."""
    peak_rss_mb: float
    """The benchmarking process's peak resident set, MiB, less the bench's own timing arrays."""
    sparse: tuple[str, ...] = ()
    """The percentiles (``"p95"``, ``"p99"``) taken over too few runs to have any run above them."""
    interrupted: bool = False
    """Ctrl-C stopped the timed runs: the figures are from the ``runs`` made before it."""
    input_shapes: tuple[tuple[int, ...], ...] = ()
    """The shape of each input tensor timed, in the model's order (see ``timed_shapes``)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> BenchResult:
        """The inverse of ``to_dict`` (a child's reply)."""
        shapes = tuple(tuple(shape) for shape in fields.get("input_shapes", ()))
        return cls(**{**fields, "sparse": tuple(fields["sparse"]), "input_shapes": shapes})


class UnsizedInputError(InputError):
    """Raised when a model input has a dynamic dimension past the batch that nothing sizes: timed as 1 (a 1x1
    image), the figure would be of an input the model never gets."""


class BenchInterrupted(KeyboardInterrupt):
    """Raised when Ctrl-C (SIGINT) stops a benchmark.

    Attributes:
        partial: the figures of the timed runs made before it, or None when it came
            before the first one (while loading or warming up).
    """

    def __init__(self, partial: BenchResult | None = None) -> None:
        super().__init__("interrupted")
        self.partial = partial


#: The fewest runs for which a percentile has at least one run above it.
MIN_RUNS = {"p95": 20, "p99": 100}


def percentile(samples: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples`` (``edgerun.telemetry.metrics.percentiles``)."""
    from edgerun.telemetry.metrics import percentiles

    return percentiles(samples, (q,))[0]


def sparse_percentiles(runs: int) -> tuple[str, ...]:
    """The percentiles that ``runs`` samples are too few to estimate (see ``MIN_RUNS``)."""
    return tuple(name for name, least in MIN_RUNS.items() if runs < least)


def timed_shapes(inputs: Sequence[TensorSpec], card: ModelCard) -> list[tuple[int, ...]]:
    """The shape of each input as a benchmark times it: the one the model would really get.

    A dimension the model fixes is its own; a dynamic first dimension (the batch) is 1; a dynamic
    height and width are the card's ``preprocess.size``, placed as the tensor's layout has them
    (the card's ``layout``, which loading checked against the tensor). That is the size
    ``predict`` resizes images to: a card's preprocessing serves a model of one input only.

    Raises:
        UnsizedInputError: a dynamic dimension that nothing sizes, naming the input and what would.
    """
    from edgerun.card import image_layout

    preprocess = card.preprocess if len(inputs) == 1 else None
    shapes = []
    for spec in inputs:
        dims = list(spec.shape)
        if dims and dims[0] is None:
            dims[0] = 1
        layout = image_layout(spec)
        if layout is not None and preprocess is not None and preprocess.size is not None:
            rows, cols = (1, 2) if layout[0] == "NHWC" else (2, 3)
            dims[rows], dims[cols] = preprocess.size
        if None in dims:
            raise UnsizedInputError(_unsized(spec, card, image=layout is not None and len(inputs) == 1))
        shapes.append(tuple(int(d) for d in dims if d is not None))
    return shapes


def _unsized(spec: TensorSpec, card: ModelCard, *, image: bool) -> str:
    """Why ``spec`` cannot be timed, and what would size it (one line)."""
    if image:
        where = (
            "no card gives them"
            if card.inferred
            else "its card has no preprocess section"
            if card.preprocess is None
            else "its card's preprocess gives no size"
        )
        return (
            f"input {spec.describe()} has no fixed height and width, and {where}; give it a card whose preprocess "
            "has size: [height, width] (bench times the input the model would get, not a 1x1 image)"
        )
    return (
        f"input {spec.describe()} has a dynamic dimension that nothing sizes (a card's preprocess size gives "
        "one image input's height and width only); bench times the input the model would get: give it a "
        "model with that dimension fixed"
    )


def _memory_kb() -> tuple[int | None, int]:
    """This process's (current, peak) resident set in KiB; current is None where only the peak is known.

    The peak is this process's own, not the spawning process's (see the module docstring).
    """
    current = peak = None
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    current = int(line.split()[1])  # kB
                elif line.startswith(b"VmHWM:"):
                    peak = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if peak is None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, KiB elsewhere
    return current, peak


def _peak_rss_mb() -> float:
    """This process's peak resident set in MiB: its own, not the spawning process's."""
    return _memory_kb()[1] / 1024


class _Progress:
    """One line on a terminal, drawn again in place: what is being measured and how far it has got."""

    def __init__(self, stream: TextIO | None, path: str, delegate: str) -> None:
        self._stream = stream
        self._name = Path(path).name
        self.delegate = delegate
        self._drawn = False

    def show(self, text: str) -> None:
        if self._stream is None:
            return
        line = f"{self._name} on {self.delegate}: {text}"
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        width = (columns or 80) - 1  # a line that wraps could not be drawn again in place
        try:
            self._stream.write(f"\r\x1b[K{line[:width]}")
            self._stream.flush()
            self._drawn = True
        except (OSError, ValueError):  # the terminal went away: measure on without it
            self._stream = None

    def clear(self) -> None:
        if self._drawn:
            self.clear_line()

    def clear_line(self) -> None:
        """Blank the terminal's current line, drawn by this object or not."""
        if self._stream is not None:
            try:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
            except (OSError, ValueError):
                pass
        self._drawn = False


class _ParentGone(Exception):
    """The process that spawned the child has ended: nobody waits for the figures."""


def bench_in_process(
    path: str,
    delegate: str,
    runs: int,
    threads: int | None,
    *,
    progress: TextIO | None = None,
    parent: int | None = None,
    **load_kwargs: Any,
) -> BenchResult:
    """Load ``path`` on ``delegate`` and time ``runs`` inferences of a synthetic input of ``timed_shapes``.

    The first run is timed on its own (``first_ms``), then a few warm-up runs are made
    untimed; the percentiles, mean and throughput are over the ``runs`` after them.

    Args:
        path: the model file.
        delegate: ``auto``, ``fastest`` or a delegate name.
        runs: timed inferences.
        threads: CPU threads; None for what ``edgerun.load`` picks (the result says which).
        progress: a terminal to show how far the runs have got on, or None.
        parent: the spawning process's pid: when it has gone, stop (a spawned child's own use).
        load_kwargs: more ``edgerun.load`` arguments.

    Raises:
        UnsizedInputError: an input has a dynamic dimension that nothing sizes.
        EdgerunError: the model cannot be loaded or run.
        BenchInterrupted: Ctrl-C; ``partial`` has the figures of the timed runs made.
    """
    import edgerun
    from edgerun.accel.select import synthetic_inputs
    from edgerun.model import default_threads

    threads = threads or default_threads(Path(path))  # as edgerun.load would pick: the figure says what ran
    shown = _Progress(progress, path, delegate)
    try:
        shown.show("loading")
        t0 = time.perf_counter()
        model = edgerun.load(path, delegate=delegate, threads=threads, warmup=False, **load_kwargs)
        load_ms = (time.perf_counter() - t0) * 1e3
        with model:
            shown.delegate = model.delegate
            shown.show("warming up")
            shapes = timed_shapes(model.inputs, model.card)
            inputs = synthetic_inputs(model.backend, shapes=shapes)
            t0 = time.perf_counter_ns()
            model.run(*inputs)
            first_ms = (time.perf_counter_ns() - t0) / 1e6
            for _ in range(min(10, max(2, runs // 20))):
                model.run(*inputs)

            def tick(done: int) -> None:
                if parent is not None and os.getppid() != parent:
                    raise _ParentGone
                shown.show(f"{done:,}/{runs:,} runs")

            rss_before, peak_before = _memory_kb()
            samples = np.zeros(runs, dtype=np.float64)
            samples.fill(0.0)  # its pages are touched now, not inside the timed runs
            rss_with_samples = _memory_kb()[0]
            done, wall = _timed(model.run, inputs, samples, tick)
            peak_after = _memory_kb()[1]
            # The timing array is the bench's, not the model's: it is resident throughout the
            # timed runs, so their peak less its pages is what the model held.
            own = (rss_with_samples - rss_before) if rss_before is not None and rss_with_samples is not None else 0
            peak_kb = max(peak_before, peak_after - max(own, 0))
            timed = samples[:done]
            result = BenchResult(
                model=model.name,
                path=str(path),
                format=model.format,
                precision=model.card.precision,
                delegate=model.delegate,
                threads=threads,
                runs=done,
                load_ms=load_ms,
                first_ms=first_ms,
                p50_ms=percentile(timed, 50),
                p95_ms=percentile(timed, 95),
                p99_ms=percentile(timed, 99),
                mean_ms=float(timed.mean()),
                throughput_per_s=done / wall,
                peak_rss_mb=peak_kb / 1024,
                sparse=sparse_percentiles(done),
                interrupted=done < runs,
                input_shapes=tuple(shapes),
            )
    except KeyboardInterrupt:  # while loading or warming up: no run timed yet
        raise BenchInterrupted(None) from None
    finally:
        shown.clear()
    if result.interrupted:
        raise BenchInterrupted(result)
    return result


def _timed(
    run: Callable[..., Any], inputs: list[np.ndarray], samples: np.ndarray, tick: Callable[[int], None]
) -> tuple[int, float]:
    """Time ``len(samples)`` calls of ``run(*inputs)`` into ``samples`` (ms); (runs made, wall seconds).

    The wall time runs from the first call to the end of the last one made, less the progress
    display's own time: a Ctrl-C's cut run, and printing progress, are not the model's (one run of
    3.45 ms read 137 runs a second, not 290).

    Ctrl-C ends it early: the runs made so far count, unless there are none.
    """
    step = int(TICK_S * 1e9)
    next_tick = 0
    done = 0
    start = last = time.perf_counter_ns()
    shown_ns = 0  # spent in ``tick`` between runs (not after the last one, which the wall time leaves out)
    pending = 0  # the latest tick's, counted once a run follows it
    try:
        for i in range(len(samples)):
            shown_ns, pending = shown_ns + pending, 0
            t = time.perf_counter_ns()
            run(*inputs)
            last = time.perf_counter_ns()
            samples[i] = (last - t) / 1e6
            done = i + 1
            if last >= next_tick:
                tick(done)
                shown = time.perf_counter_ns()
                pending, next_tick = shown - last, shown + step
    except KeyboardInterrupt:
        if done == 0:
            raise
    return done, max(last - start - shown_ns, 1) / 1e9


#: The signals that stop a benchmark and keep its figures: Ctrl-C, and SIGTERM (``timeout``, systemd), which
#: reaches the child too where the whole process group or cgroup is signalled.
_STOPS = (signal.SIGINT, signal.SIGTERM)


def _take_stop(signum: int, frame: Any) -> None:
    """The child's SIGINT and SIGTERM handler: stop what is running, once; a second signal must not cut the
    reply."""
    for stop in _STOPS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt


def _child(
    conn: Any,
    path: str,
    delegate: str,
    runs: int,
    threads: int | None,
    progress: bool,
    parent: int,
    load_kwargs: dict[str, Any],
) -> None:
    """The spawned process: benchmark, send one reply, end. SIGINT and SIGTERM arrive held (see
    ``_stops_held``)."""
    reply: dict[str, Any]
    try:
        for stop in _STOPS:
            if signal.getsignal(stop) != signal.SIG_IGN:  # ignored: started in the background, as we were
                signal.signal(stop, _take_stop)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_STOPS))  # a stop held till now lands here
        stream = sys.stderr if progress else None
        result = bench_in_process(path, delegate, runs, threads, progress=stream, parent=parent, **load_kwargs)
        reply = {"ok": result.to_dict()}
    except BenchInterrupted as exc:
        reply = {"interrupted": exc.partial.to_dict() if exc.partial else None}
    except KeyboardInterrupt:
        reply = {"interrupted": None}
    except UnsizedInputError as exc:  # the model's, not the delegate's: the parent tries no other delegate
        reply = {"unsized": str(exc)}
    except EdgerunError as exc:
        reply = {"error": str(exc)}
    except MemoryError:
        reply = {"error": "out of memory"}
    except _ParentGone:
        return
    try:
        conn.send(reply)
    except (OSError, KeyboardInterrupt):
        pass
    finally:
        conn.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # replied: the parent's ``_stop`` may end it at once, silently


@contextmanager
def _stops_held() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread while a child is spawned: the child starts with them blocked
    too, until its handlers are set (``_child``).

    A Ctrl-C or SIGTERM meanwhile waits, and is raised here in the parent as the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    from multiprocessing import resource_tracker

    # Started by the first spawn, the tracker unblocks SIGINT as it returns: start it before the block.
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOPS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def bench_isolated(
    path: str, delegate: str, runs: int, threads: int | None, *, progress: bool = False, **load_kwargs: Any
) -> BenchResult:
    """``bench_in_process`` in a fresh child process.

    Args:
        progress: show how far the runs have got on this process's stderr (a terminal).

    Raises:
        UnsizedInputError: an input has a dynamic dimension that nothing sizes (``timed_shapes``).
        EdgerunError: the model failed (the child's own error), or the child ended
            without a reply (a crash, the OOM killer): the message names how it ended.
        BenchInterrupted: Ctrl-C; ``partial`` has the child's figures of the runs it made.
    """
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    args = (sender, path, delegate, runs, threads, progress, os.getpid(), load_kwargs)
    child = ctx.Process(target=_child, args=args, name="edgerun-bench", daemon=True)
    wait = 10.0  # for a child that has replied to end on its own
    got: list[dict[str, Any]] = []  # the child's reply, once read whole
    try:
        with _stops_held():
            child.start()
        sender.close()  # the child holds the only writing end: its end is an EOF here
        try:
            _receive(receiver, got)
        except EOFError:
            child.join(wait)
            raise EdgerunError(
                f"the benchmark process ended without a result ({exit_in_words(child.exitcode)})"
            ) from None
    except KeyboardInterrupt:
        wait = 0.0
        raise BenchInterrupted(_partial(receiver, child, got)) from None
    finally:
        sender.close()
        _stop(child, wait)
        receiver.close()
        if progress:  # a child cut short left its progress line: the next line must start clean
            _Progress(sys.stderr, path, delegate).clear_line()
    reply = got[0]
    if "unsized" in reply:
        raise UnsizedInputError(reply["unsized"])
    if "error" in reply:
        raise EdgerunError(reply["error"])
    if "interrupted" in reply:  # a SIGINT that reached the child alone
        raise BenchInterrupted(BenchResult.from_dict(reply["interrupted"]) if reply["interrupted"] else None)
    return BenchResult.from_dict(reply["ok"])


def _receive(receiver: Any, got: list[dict[str, Any]]) -> None:
    """Wait for the child's reply, then read it whole into ``got``.

    Ctrl-C (or SIGTERM, which ``edgerun bench`` takes as one) may end the wait (a
    KeyboardInterrupt with nothing read), never the read: raised between a message's length
    and its body, it lost the reply, and ``_partial`` took the body for a length (a loaded
    machine, its parent scheduled only once the child had answered the same Ctrl-C, lost the
    figures of the runs made). So while the reply is read such a signal is only noted, and
    raised again once the reply is in ``got``.
    """
    receiver.poll(None)  # the reply, or the child's end (EOF)
    if threading.current_thread() is not threading.main_thread():
        got.append(receiver.recv())  # signal handlers run on the main thread only: none raises here
        return
    handlers = {stop: signal.getsignal(stop) for stop in _STOPS}
    noted: list[int] = []
    for stop, handler in handlers.items():
        if handler is not None:  # None: not set from Python, left as it is
            signal.signal(stop, lambda signum, frame: noted.append(signum))  # raises one that came before
    try:
        got.append(receiver.recv())
    finally:
        for stop, handler in handlers.items():
            if handler is not None:
                signal.signal(stop, handler)
        for signum in dict.fromkeys(noted):  # to the handler it came for: KeyboardInterrupt, or nothing if ignored
            signal.raise_signal(signum)


def _partial(receiver: Any, child: Any, got: list[dict[str, Any]]) -> BenchResult | None:
    """After Ctrl-C: the child's figures of the runs it made, if it sends them within ``GRACE_S``.

    ``got`` holds the reply when Ctrl-C came as it was read: then there is nothing to wait for.
    """
    if not got and child.pid is not None:
        # a Ctrl-C typed, or a SIGTERM to the process group, reached the child already; a signal to this
        # process alone did not. SIGTERM, not SIGINT: a child started in the background ignores SIGINT
        with contextlib.suppress(OSError):
            os.kill(child.pid, signal.SIGTERM)
        with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):  # a second Ctrl-C: stop waiting
            if receiver.poll(GRACE_S):
                _receive(receiver, got)
    if not got:
        return None
    fields = got[0].get("interrupted") or got[0].get("ok")  # "ok": it finished as Ctrl-C came
    return BenchResult.from_dict(fields) if fields else None


def _stop(child: Any, wait: float) -> None:
    """End ``child``: give it ``wait`` seconds to end on its own, then SIGTERM, then SIGKILL."""
    if child.pid is None:
        return
    child.join(wait)
    if child.is_alive():
        child.terminate()
        child.join(2.0)
    if child.is_alive():
        child.kill()
        child.join()


def speed_ratios(results: list[BenchResult]) -> list[dict[str, Any]]:
    """FP32-over-INT8 p50 ratios for variants of one model run alike.

    Variants pair when they have the same card name and format and ran on the same
    delegate with the same threads; interrupted results are left out.
    """
    groups: dict[tuple[str, str, str, int], dict[str, BenchResult]] = {}
    for r in results:
        if r.precision and not r.interrupted:
            groups.setdefault((r.model, r.format, r.delegate, r.threads or 0), {})[r.precision] = r
    ratios = []
    for (model, fmt, delegate, threads), by_precision in sorted(groups.items()):
        if "fp32" in by_precision and "int8" in by_precision:
            fp32, int8 = by_precision["fp32"], by_precision["int8"]
            if int8.p50_ms <= 0:  # a clock too coarse to time it: no finite ratio
                continue
            ratios.append(
                {
                    "model": model,
                    "format": fmt,
                    "delegate": delegate,
                    "threads": threads,
                    "fp32_p50_ms": fp32.p50_ms,
                    "int8_p50_ms": int8.p50_ms,
                    "int8_speedup": fp32.p50_ms / int8.p50_ms,
                }
            )
    return ratios


def ratio_gaps(results: list[BenchResult]) -> list[str]:
    """Why a model measured in both FP32 and INT8 got no ratio: one line each (``missing_ratios``'s reasons)."""
    return [gap["reason"] for gap in missing_ratios(results)]


def missing_ratios(results: list[BenchResult]) -> list[dict[str, Any]]:
    """The INT8/FP32 ratios that ``results`` call for and ``speed_ratios`` cannot give, each with why.

    A card name measured in both precisions calls for a ratio. It gets none:

    - ``formats``: the two precisions were measured in different formats only (FP32 as
      ONNX, INT8 as TFLite), and a ratio compares variants of one format; one record
      for the card name, its ``format`` None;
    - ``not_alike``: in one format, with no delegate and thread count in common;
    - ``interrupted``: in one format, one of the two stopped by Ctrl-C (whose figures
      ratios leave out);
    - ``untimed``: run alike, but INT8's p50 is 0 ms, a clock too coarse to time it.

    Each record has ``model``, ``format``, ``why`` (one of those) and ``reason``, the
    one line that says it; a format with a ratio gets none, whatever else it ran.
    """
    ratioed = {(r["model"], r["format"]) for r in speed_ratios(results)}
    ran: dict[tuple[str, str], dict[str, set[tuple[str, int]]]] = {}  # uninterrupted runs, by precision
    cut: dict[tuple[str, str], set[str]] = {}  # the precisions a Ctrl-C stopped
    for r in results:
        if r.precision in ("fp32", "int8"):
            key = (r.model, r.format)
            if r.interrupted:
                cut.setdefault(key, set()).add(r.precision)
            else:
                ran.setdefault(key, {}).setdefault(r.precision, set()).add((r.delegate, r.threads or 0))
    gaps: list[tuple[str, str, str, str]] = []  # (model, format, why, reason)
    measured: dict[str, dict[str, set[str]]] = {}  # card name -> precision -> formats, interrupted or not
    for model, fmt in sorted(ran.keys() | cut.keys()):
        precisions = ran.get((model, fmt), {}).keys() | cut.get((model, fmt), set())
        for precision in precisions:
            measured.setdefault(model, {}).setdefault(precision, set()).add(fmt)
        if len(precisions) < 2 or (model, fmt) in ratioed:
            continue
        both = ran.get((model, fmt), {})
        name = f"{model} {fmt}"
        if "fp32" not in both or "int8" not in both:
            stopped = " and ".join(p.upper() for p in ("fp32", "int8") if p not in both)
            reason = f"the {stopped} run{'s were' if ' and ' in stopped else ' was'} interrupted"
            gaps.append((model, fmt, "interrupted", f"no INT8/FP32 ratio for {name}: {reason}"))
        elif alike := both["fp32"] & both["int8"]:
            gaps.append(
                (
                    model,
                    fmt,
                    "untimed",
                    f"no INT8/FP32 ratio for {name}: run alike on {_alike(alike)}, INT8's p50 is 0 ms "
                    "(a clock too coarse to time it)",
                )
            )
        else:
            gaps.append(
                (
                    model,
                    fmt,
                    "not_alike",
                    f"no INT8/FP32 ratio for {name}: FP32 ran on {_alike(both['fp32'])}, "
                    f"INT8 on {_alike(both['int8'])}; give --delegate and --threads to run both alike",
                )
            )
    for model, formats in measured.items():
        if "fp32" in formats and "int8" in formats and not formats["fp32"] & formats["int8"]:
            gaps.append(
                (
                    model,
                    "",
                    "formats",
                    f"no INT8/FP32 ratio for {model}: FP32 was measured as {' and '.join(sorted(formats['fp32']))}, "
                    f"INT8 as {' and '.join(sorted(formats['int8']))}, and a ratio compares variants of one "
                    "format: bench an FP32 and an INT8 file of the same format",
                )
            )
    return [
        {"model": model, "format": fmt or None, "why": why, "reason": reason}
        for model, fmt, why, reason in sorted(gaps)
    ]


def _alike(ran: set[tuple[str, int]]) -> str:
    return " and ".join(f"{d} with {t} thread{'s' if t != 1 else ''}" for d, t in sorted(ran))


def delegates_for_all(path: Path, probe_root: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """``--delegate all``: the delegates that can run ``path`` here, in rank order, and those skipped, with why.

    Usable is what ``edgerun devices`` calls usable: the device and runtimes have it
    (``DelegateSpec.needs``) and its delegate library loads (``RuntimeFacts.library_error``: an Edge
    TPU without libedgetpu is present and runs nothing); and here there must be a file for it too
    (a Coral pair's other half). A delegate the device or runtimes lack is left out without a word
    (``devices`` lists those); one they have that cannot run this file is skipped, with why.

    Raises:
        BackendUnavailableError: the runtime of the model's format is missing.
        DelegateError: no delegate can run it here (each one's reason in the message).
    """
    from edgerun.accel.delegates import CATALOGUE, why_unusable
    from edgerun.accel.probe import probe
    from edgerun.accel.runtimes import discover
    from edgerun.accel.select import find_candidates
    from edgerun.backends import detect_format

    fmt = detect_format(path)
    device, runtime = probe(probe_root or "/"), discover(formats=(fmt,))
    candidates, unavailable = find_candidates(path, fmt, "auto", device, runtime)
    usable: list[str] = []
    reasons = {a.delegate: a.reason for a in unavailable}
    for spec, _ in candidates:
        if why := why_unusable(spec, device, runtime):  # the verdict of ``edgerun devices``
            reasons[spec.name] = why
        else:
            usable.append(spec.name)
    if not usable:
        if missing := runtime.why_missing("onnxruntime" if fmt == "onnx" else "tflite"):
            raise BackendUnavailableError(f"cannot run {path.name} ({fmt}): {missing}")
        why = "; ".join(f"{s.name}: {reasons[s.name]}" for s in CATALOGUE if s.name in reasons and s.format == fmt)
        raise DelegateError(f"no delegate can run {path.name} here: {why or 'none serves ' + fmt}")
    # the present: what the device and runtimes have (every candidate among them); the others go unsaid
    present = [s.name for s in CATALOGUE if s.format == fmt and s.needs(device, runtime) is None]
    return usable, [(name, reasons[name]) for name in present if name in reasons]
