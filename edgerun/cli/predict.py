"""``edgerun predict MODEL INPUT...``: run a model over image and .npy files, in batches, resumable."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
from contextlib import AbstractContextManager, nullcontext
from types import FrameType
from typing import IO, Any, NamedTuple, cast

from edgerun.cli.common import (
    add_model_options,
    add_mqtt_options,
    check_stdout_open,
    check_sync,
    elapsed_text,
    load_kwargs,
    mqtt_figures,
    mqtt_line,
    rate_text,
    report_failure,
    require_at_least_one,
    require_not_empty,
    require_within,
    run_pipeline,
    start_sync,
)
from edgerun.errors import ConfigError, EdgerunError

HELP = "run a model over images, .npy arrays or directories of them"


def register(sub: Any) -> None:
    """Add the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict",
        help=HELP,
        description=HELP + ". Exit 0 when every input succeeds, 1 when any failed (the others are still "
        "processed), 2 for usage errors, 130 when SIGINT or SIGTERM stopped it.",
    )
    p.add_argument("model", help="an .onnx or .tflite file (its card is read from beside it)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, .npy files, directories (walked) or globs")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="classes to list (default: the card's)")
    p.add_argument("--json", action="store_true", help="one JSON object per input per line on stdout")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="inputs per inference call (a real batch where the model's batch dimension is dynamic)",
    )
    p.add_argument(
        "--prepare-workers",
        type=int,
        default=None,
        metavar="N",
        help="image files: threads decoding them in parallel (default: one per CPU core, up to 4)",
    )
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE.jsonl",
        help="also append every record to this JSON Lines file (a .csv or video file name is refused)",
    )
    p.add_argument("--resume", action="store_true", help="skip the inputs already recorded in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    add_model_options(p)
    add_mqtt_options(p, ota=False)  # a batch run takes no model updates: `edgerun run` and the daemon do
    p.set_defaults(run=run)


#: How every record of ``JsonlSink`` begins: a torn last line that does not is not ours to cut.
_RECORD_START = b'{"input": '


class Recorded(NamedTuple):
    """What a JSON Lines output already holds: the inputs recorded, and the models (name, version) that ran;
    ``torn_at`` is where a line torn by a kill begins (None where there is none), cut off by ``cut_torn_line``
    once the run is known to go ahead."""

    inputs: frozenset[str]
    models: frozenset[tuple[str, str]]
    torn_at: int | None = None
    #: the file as read, from ``torn_at`` on (the torn line): cut only if it is still so
    torn: bytes = b""


def recorded_inputs(path: str) -> Recorded:
    """Inputs already in a JSON Lines output, and its models; nothing in the file is changed here.

    Every complete line must be an edgerun record, and the unterminated tail, if any, the
    beginning of one. Only a regular file is read: a device (``/dev/zero``) or a named pipe
    would be read without end, or not at all.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return Recorded(frozenset(), frozenset())
    except OSError as exc:
        raise ConfigError(f"cannot resume from {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise ConfigError(f"cannot resume from {path}: it is not a regular file (--resume reads what --output holds)")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            done = set()
            models = set()
            for number, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), start=1):
                try:
                    record = json.loads(line)
                    if not isinstance(record["input"], str):
                        raise TypeError("an input is a path")
                    done.add(record["input"])
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{path} line {number} is not an edgerun record; cannot resume from it") from None
                if isinstance(record.get("model"), str) and isinstance(record.get("version"), str):
                    models.add((record["model"], record["version"]))
            tail = data[end:]
            if tail and not (tail.startswith(_RECORD_START) or _RECORD_START.startswith(tail)):
                raise ConfigError(f"{path} ends in a line that is not an edgerun record; cannot resume from it")
    except OSError as exc:  # removed or made unreadable since
        raise ConfigError(f"cannot resume from {path}: {exc.strerror or exc}") from exc
    return Recorded(frozenset(done), frozenset(models), end if tail else None, tail)


def _moved(recorded: frozenset[str]) -> bool:
    """Whether recorded inputs, none of which is among this run's, look recorded from another folder: some are
    relative paths and none of those names a file from here. Where they do, the run is over new inputs (a
    file that collects one batch after another), and nothing is wrong."""
    relative = [path for path in recorded if not os.path.isabs(path)]
    return bool(relative) and not any(os.path.exists(path) for path in relative)


def cut_torn_line(path: str, recorded: Recorded) -> None:
    """Cut off the line a killed run was writing (``recorded.torn_at``), once nothing refuses the run: a run
    refused before it starts (another model's file, a model that does not load) leaves the file as it was."""
    if recorded.torn_at is None:
        return
    try:
        with open(path, "rb+") as fh:  # the model loaded meanwhile: the file must still end in that torn line
            fh.seek(recorded.torn_at)
            if fh.read() != recorded.torn:  # read to the end: anything appended, or cut, differs
                raise ConfigError(f"{path} changed while the model loaded; cannot resume from it (run again)")
            fh.truncate(recorded.torn_at)
    except OSError as exc:
        raise ConfigError(f"cannot resume from {path}: {exc.strerror or exc}") from exc


def check_output_name(path: str | None) -> None:
    """Refuse an ``--output`` whose name says another format than the JSON Lines written into it.

    A ``.csv`` file (or a video file, or ``DIR/``) would get JSON Lines under that name, and a
    CSV file that ``edgerun run --sink`` wrote would get JSON lines among its rows. A name of
    no known kind (``notes.txt``, ``/dev/stdout``) is written as JSON Lines, as asked.

    Raises:
        ConfigError: naming the file and what to call it instead; raised before anything runs.
    """
    from edgerun.sinks import sink_kind

    if path is None:
        return
    try:
        kind = sink_kind(path)
    except ConfigError:  # no kind of sink: a plain file name
        return
    what = {"csv": "a CSV file", "video": "a video file", "images": "a folder"}.get(kind)
    if what is not None:
        hint = " (edgerun run MODEL --source INPUT --sink FILE.csv writes CSV)" if kind == "csv" else ""
        raise ConfigError(
            f"--output {path} names {what}, but predict writes JSON Lines: name it FILE.jsonl, FILE.ndjson or FILE.json"
            + hint
        )


def check_same_model(path: str, recorded: Recorded, model: Any) -> None:
    """Refuse to resume a file that holds another model's results (another name, or another version).

    Its inputs would count as done, and the file would end up holding two models' answers
    with nothing to tell which input got which.

    Raises:
        ConfigError: naming the model the file holds and the one given.
    """
    other = sorted(m for m in recorded.models if m != (model.name, model.version))
    if other:
        name, version = other[0]
        raise ConfigError(
            f"{path} holds results of {name} {version}, not of {model.name} {model.version}: cannot resume "
            f"from it with this model (give it another --output)"
        )


def run(args: argparse.Namespace) -> int:
    """Load the model, then stream every input through a pipeline into the sinks."""
    import edgerun
    from edgerun.card import replace
    from edgerun.limits import BATCH_SIZE_MAX, PREPARE_WORKERS_MAX
    from edgerun.sinks import sink_onto_input, sink_onto_model
    from edgerun.sinks.text import JsonlSink, TableSink
    from edgerun.sources import gives_images
    from edgerun.sources.files import FileSource

    require_not_empty("an INPUT", *args.inputs)
    require_not_empty("--output", args.output)
    check_output_name(args.output)
    require_at_least_one(args, "top_k", "batch_size", "prepare_workers")
    require_within(args, batch_size=(1, BATCH_SIZE_MAX), prepare_workers=(1, PREPARE_WORKERS_MAX))
    mqtt = check_sync(args)  # before the model loads: a mistyped URL is the only line
    check_stdout_open("predict writes its results there, with --output too")
    if args.resume and not args.output:
        raise ConfigError("--resume needs --output FILE.jsonl (the file it resumes from)")
    recorded = recorded_inputs(args.output) if args.resume else Recorded(frozenset(), frozenset())
    skip = recorded.inputs
    model = edgerun.load(args.model, **load_kwargs(args))
    check_same_model(args.output, recorded, model)
    if args.top_k is not None:
        model.card = replace(model.card, postprocess=replace(model.card.postprocess, top_k=args.top_k))
    source = FileSource(args.inputs, skip=skip)
    if args.output and (clash := sink_onto_input([args.output], [ref.path for ref in source.refs])):
        raise ConfigError(f"--output {args.output} is the input {clash[1]}: writing it would damage the input")
    if args.output and (onto := sink_onto_model([args.output], model)):
        raise ConfigError(f"--output {args.output} is the {onto[2]} {onto[1]}: writing it would damage the model")
    if args.resume:
        cut_torn_line(args.output, recorded)  # nothing refused the run: the torn line goes
    # opened before the header: one it cannot write (a missing folder) is refused before anything runs
    output = JsonlSink(os.fspath(args.output)) if args.output else None
    if skip and not source.skipped and _moved(skip):
        print(
            f"edgerun: warning: none of the {len(skip)} input(s) recorded in {args.output} is among these inputs; "
            "a relative path is taken from the current folder, so run from the folder of the run that recorded them",
            file=sys.stderr,
            flush=True,
        )
    if not args.json:
        from edgerun.sinks.text import write_stdout  # at once, before any record; a refusal names stdout

        write_stdout(
            f"# {model.name} {model.version} ({model.format}) on {model.delegate}"
            + (f"; resuming, {source.skipped} input(s) already done" if source.skipped else "")
            + "\n"
        )
    if gives_images(source):
        model.warm_images()  # before a pipeline's threads start, and out of the first image's figures
    direct = len(source.refs) <= _DIRECT_MAX and args.batch_size == 1 and not args.mqtt
    bar = None if direct else progress_bar(len(source.refs), no_progress=args.no_progress, as_json=args.json)
    # around the bar only where both share the terminal: a pipe (``| less``) is written as without a bar
    table_out = cast(IO[str], _AroundBar(sys.stdout)) if bar is not None and _on_terminal(sys.stdout) else sys.stdout
    sinks: list[Any] = [JsonlSink() if args.json else TableSink(table_out)]
    if output is not None:
        sinks.append(output)
    if direct:
        with model, _DirectStop(source) as stop:
            return _run_direct(model, source, sinks, stop, as_json=args.json, output=args.output)

    def on_result(result: Any) -> None:
        if bar is None:
            report_failure(result)
            return
        with bar.external_write_mode(file=sys.stderr):  # the error line where the bar was, then the bar again
            report_failure(result)
        bar.update(1)

    from edgerun.pipeline import Pipeline
    from edgerun.telemetry.metrics import Metrics

    metrics = Metrics()
    try:
        with model, _logging_above(bar):  # from the link's start: its first WARNING comes at once
            sync = start_sync(args, mqtt, metrics, [model])
            results = sync.results_sink() if sync is not None and args.publish_results else None
            if results is not None:
                sinks.append(results)
            pipeline = Pipeline(
                source,
                model,
                sinks,
                metrics=metrics,
                batch_size=args.batch_size,
                prepare_workers=args.prepare_workers or batch_prepare_workers(),
                on_result=on_result,
            )
            summary = run_pipeline(pipeline, sync)
    finally:
        if bar is not None:
            bar.close()
    # a sink left blocked on stdout after the stop holds it: the summary goes to stderr, even with --json
    blocked = "stdout" in summary.unflushed
    if blocked or not args.json:
        out = sys.stderr if blocked else sys.stdout
        left = len(source.refs) - summary.ok - summary.errors
        print(
            summary_line(summary.ok, summary.errors, summary.elapsed_s)
            + stop_note(summary.stopped_by, left, args.output)
            + (f"; not flushed: {', '.join(summary.unflushed)}" if summary.unflushed else ""),
            file=out,
        )
        if (published := mqtt_figures(sync, results)) is not None:
            print(mqtt_line(published), file=out)
    if summary.stopped_by != "end of input":
        return 130
    return 1 if summary.errors else 0


def batch_prepare_workers() -> int:
    """Prepare workers for a batch run when none are asked for: one per CPU core, up to four.

    OpenCV releases the GIL while it decodes, so the workers decode on every core:
    on two cores, 1080p JPEGs through MobileNet INT8 went from 72 to 109 images/s
    with two workers (docs/pipelines.md). A batch run is about throughput; `edgerun
    run` and the daemon keep one worker, which keeps each frame's latency lowest.
    """
    return max(1, min(4, os.cpu_count() or 1))


#: Up to this many inputs run in the calling thread: starting the pipeline's threads (and
#: importing them) would be most of a one-image run.
_DIRECT_MAX = 4


class _DirectStop:
    """SIGINT and SIGTERM during a direct run (``_run_direct``), which reads on the main thread: the first
    closes the source, so the run ends as a pipeline's does (the input under way processed and its records
    written, the summary printed, exit 130), a pipe being read (``/dev/stdin``) within ``POLL_S``. A second
    one raises ``KeyboardInterrupt`` (``interrupted``, 130), for a read no close reaches (a mount that hangs).

    The handlers run on the main thread between two bytecodes: they only set flags (``FileSource.close``
    does) or raise, taking no lock (see ``edgerun.signals``). An ignored SIGINT (a background job's) stays
    ignored. Before, either signal raised ``KeyboardInterrupt`` at once: the records so far, then
    ``edgerun: error: interrupted``, and no summary.
    """

    def __init__(self, source: Any) -> None:
        self._source = source
        #: the first signal's name (``SIGINT``, ``SIGTERM``); None while none came
        self.reason: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> _DirectStop:
        from edgerun.signals import kept_ignored

        sigs = [sig for sig in (signal.SIGTERM, signal.SIGINT) if not kept_ignored(sig)]
        self._previous = {sig: signal.signal(sig, self._take) for sig in sigs}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _take(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        self._source.close()


def _run_direct(
    model: Any, source: Any, sinks: list[Any], stop: _DirectStop, *, as_json: bool, output: str | None
) -> int:
    """A handful of inputs, one after the other, with the records, errors and summary a pipeline gives."""
    import time

    from edgerun.sinks.base import Result, error_record, result_record

    start = time.perf_counter()
    ok = failed = 0
    for frame in source.frames():  # a stop closes the source: the frames end
        if frame.error is None:
            try:
                prediction = model.predict(frame.data, name=frame.source_id)
                record = result_record(model, frame.source_id, prediction.output, prediction.latency_ms)
            except EdgerunError as exc:
                record = error_record(frame, str(exc))
        else:
            record = error_record(frame, frame.error)
        result = Result(frame, record)
        ok += result.ok
        failed += not result.ok
        report_failure(result)
        for sink in sinks:
            sink.publish(result)
    for sink in sinks:
        sink.close()
    stopped_by = stop.reason or "end of input"
    if not as_json:
        left = len(source.refs) - ok - failed
        print(summary_line(ok, failed, time.perf_counter() - start) + stop_note(stopped_by, left, output))
    if stop.reason is not None:
        return 130
    return 1 if failed else 0


def summary_line(ok: int, failed: int, elapsed_s: float) -> str:
    """The last line of a text run: ``# 5 ok, 1 failed in 3.21 ms (1560 inputs/s)``, the rate counting the
    inputs that succeeded and left out where none did."""
    rate = rate_text(ok / elapsed_s if elapsed_s > 0 else 0.0, "inputs/s")
    return f"# {ok} ok, {failed} failed in {elapsed_text(elapsed_s)}" + (f" ({rate})" if rate else "")


def stop_note(stopped_by: str, left: int, output: str | None) -> str:
    """What the summary line of a run a signal stopped adds (nothing for one whose input ended):
    ``; stopped by SIGINT``, then the inputs ``left`` with no record, and, where they were written to
    ``output``, how to do them: ``; 2 input(s) not done (run again with --resume to do them)``."""
    if stopped_by == "end of input":
        return ""
    note = f"; stopped by {stopped_by}"
    if left > 0:
        note += f"; {left} input(s) not done" + (" (run again with --resume to do them)" if output else "")
    return note


def progress_bar(total: int, *, no_progress: bool, as_json: bool, stream: IO[str] | None = None) -> Any:
    """A progress bar on ``stream`` (stderr) when it is a terminal; None otherwise.

    None as well with ``--no-progress``, with ``--json`` (its output is records, for a
    program: no bar beside them even on a terminal), or for a single input.
    """
    stream = stream or sys.stderr
    if no_progress or as_json or total < 2 or not _on_terminal(stream):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="input", file=stream, dynamic_ncols=True, leave=False)


def _on_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is a terminal (False for none, or a closed one)."""
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False


def _logging_above(bar: Any) -> AbstractContextManager[Any]:
    """Log lines (the MQTT link's WARNINGs, say) written above the bar, which is cleared and drawn again
    under them: through the root logger's console handler they started where the bar's text ends."""
    if bar is None:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


class _AroundBar:
    """A text stream whose writes clear the progress bar first and draw it again after.

    Standard output and the bar's standard error share one terminal: a result line
    written through the bar would start where the bar's text ends. For a terminal only:
    each write holds tqdm's lock while it waits, and on a pipe nobody reads (``| less``)
    it waits for ever, the bar's ``close`` after a stop (Ctrl-C) waiting behind it.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self._stream):
            written = self._stream.write(text)
            self._stream.flush()  # before the bar is drawn again
        return written

    def flush(self) -> None:
        self._stream.flush()
