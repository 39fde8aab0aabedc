"""``edgerun run MODEL --source SRC``: a real-time pipeline until the source ends or the user stops it."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edgerun.cli.common import (
    add_model_options,
    add_mqtt_options,
    check_ota,
    check_stdout_open,
    check_sync,
    elapsed_text,
    load_kwargs,
    make_sync,
    model_loader,
    mqtt_figures,
    mqtt_line,
    print_json,
    rate_text,
    report_failure,
    require_at_least_one,
    require_not_empty,
    require_positive,
    require_within,
    run_pipeline,
    start_ota,
)

HELP = "run a pipeline from a source (files, video, camera, stream, sensor CSV, MQTT) into sinks"


def register(sub: Any) -> None:
    """Add the ``run`` sub-command."""
    p = sub.add_parser(
        "run",
        help=HELP,
        description=HELP + ". Stops at the end of the source, after --max-frames, or on Ctrl-C/SIGTERM "
        "(finishing what is in flight); then prints a summary.",
    )
    p.add_argument("model", help="an .onnx or .tflite file")
    p.add_argument(
        "--source",
        required=True,
        nargs="+",
        metavar="SRC",
        help="images/dir/glob, video file, camera:0 or /dev/video0, rtsp:// or http:// stream, "
        "sensor .csv/.jsonl or - (stdin), mqtt://host:port/topic",
    )
    p.add_argument(
        "--sink",
        action="append",
        default=None,
        metavar="SINK",
        help="stdout (default), jsonl, FILE.jsonl, FILE.csv, FILE.mp4 (annotated video), DIR/ "
        "(annotated images); repeatable",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        metavar="F",
        help="target frames per second (live sources skip frames, files are paced)",
    )
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="ROWS",
        help="sensor sources: rows per inference (default: the model's input length)",
    )
    p.add_argument("--hop", type=int, default=None, metavar="ROWS", help="sensor sources: rows between windows")
    p.add_argument("--width", type=int, default=None, help="camera: requested frame width")
    p.add_argument("--height", type=int, default=None, help="camera: requested frame height")
    p.add_argument("--camera-fps", type=float, default=None, help="camera: requested capture rate")
    p.add_argument(
        "--queue", type=int, default=None, metavar="N", help="live sources: frames kept (default 2; 8 for MQTT)"
    )
    p.add_argument(
        "--decode-threads",
        type=int,
        default=1,
        metavar="N",
        help="video files and streams: decoding threads (default 1, leaving the other cores to the model; "
        "0: the decoder's choice, one per core)",
    )
    p.add_argument(
        "--prepare-workers",
        type=int,
        default=1,
        metavar="N",
        help="image files and MQTT messages: threads decoding them in parallel (default 1, the lowest latency "
        "per frame; more for throughput on large images)",
    )
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="frames per inference call")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_options(p)
    add_mqtt_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, open the source and sinks, run, print the summary."""
    import edgerun
    from edgerun import signals
    from edgerun.errors import ConfigError
    from edgerun.limits import BATCH_SIZE_MAX, FPS_MAX, FPS_MIN, MAX_FRAMES_MAX, PREPARE_WORKERS_MAX
    from edgerun.ota.slot import ModelSlot
    from edgerun.pipeline import Summary
    from edgerun.sinks import sink_kind
    from edgerun.sources import open_configured
    from edgerun.sources.sensor import check_windows_wanted, window_for

    require_not_empty("--source", *args.source)
    require_at_least_one(args, "max_frames", "batch_size", "queue", "window", "hop", "prepare_workers")
    mqtt = check_sync(args)  # before the model loads: a mistyped URL is the only line
    if args.json or any(sink_kind(spec) in ("table", "jsonl") for spec in args.sink or ["stdout"]):
        check_stdout_open("run writes its results there (--sink FILE writes them to a file)")
    check_ota(args, mqtt)
    if mqtt is not None:  # an MQTT source hearing this device's own records would feed them back as inputs
        from edgerun.sources.mqtt import check_not_own_records
        from edgerun.sync.topics import Topics

        settings, device_id = mqtt
        topics = Topics(settings.topic_prefix, device_id)
        for spec in args.source:
            check_not_own_records(spec, (settings.host, settings.port), topics)
    require_positive(args, "fps", "camera_fps")  # nan passes a `<= 0` test; inf means nothing as a rate
    if args.decode_threads < 0:
        raise ConfigError(f"--decode-threads must be 0 (the decoder's choice) or more, got {args.decode_threads}")
    # The config's bounds for a daemon pipeline's keys, and a lowest rate (1e-300 fps is a wait no clock holds).
    require_within(
        args,
        fps=(FPS_MIN, FPS_MAX),
        camera_fps=(FPS_MIN, FPS_MAX),
        width=(16, 8192),
        height=(16, 8192),
        queue=(1, 1024),
        decode_threads=(0, 64),
        batch_size=(1, BATCH_SIZE_MAX),
        prepare_workers=(1, PREPARE_WORKERS_MAX),
        max_frames=(1, MAX_FRAMES_MAX),  # the pipeline's bound, which it checks only once the model is loaded
        window=(1, sys.maxsize),  # a sensor window is a deque's maxlen: a C ssize_t (once an OverflowError)
    )
    # else ignored without a word (or a window "that does not fit" an image model)
    given = [f"--{key}" for key in ("window", "hop") if getattr(args, key) is not None]
    check_windows_wanted(given, args.source, f"--source {' '.join(args.source)}")
    if args.ota_key:  # serve the store's active version: an update received over the air survives restarts
        from edgerun.ota.serving import serve_from_store
        from edgerun.ota.store import ModelStore
        from edgerun.state import claim_state_dir, state_dir

        claim_state_dir(state_dir(args.state_dir))  # held to the end: the store is this process's alone
        store = ModelStore(state_dir(args.state_dir) / "models", args.ota_keep)
        model = serve_from_store(Path(args.model), store, model_loader(args))
    else:
        model = edgerun.load(args.model, **load_kwargs(args))
    slot = ModelSlot(model)
    early = _StopBeforeRun()
    with model, signals.handled(dict.fromkeys((signal.SIGINT, signal.SIGTERM), early)):
        window = window_for(model, args.window)  # --window was refused already for a source of another kind
        # a stream's or a camera's first attempts end at a stop
        source = open_configured(args.source, args, window, early.stopped)
        if early.reason is not None:  # stopped while the source opened: the run ends as one stopped at its start
            source.close()
            summary, sync, results = Summary(stopped_by=early.reason), None, None
        else:
            summary, sync, results = _run_on(args, mqtt, slot, source, early)
    model = slot.primary
    published = mqtt_figures(sync, results)
    # a sink left blocked on stdout after the stop holds it: the summary goes to stderr, as without --json
    if args.json and "stdout" not in summary.unflushed:
        record = {"model": model.name, "version": model.version, "delegate": model.delegate, **summary.to_dict()}
        print_json(record if published is None else {**record, "mqtt": published})
    else:
        _print_summary(model, summary, published)
    return 1 if summary.errors or summary.unflushed else 0  # a sink left behind: its output is not all there


class _StopBeforeRun:
    """SIGINT and SIGTERM from the source's opening to the run's start (``run_pipeline`` handles them
    from there), taken on a thread of ``edgerun.signals``: a stream's connection retries end at once
    (``stopped``), and a pipeline made meanwhile is stopped before it runs, so the run ends as one
    stopped at its start, with its summary (``stopped by SIGTERM``) and exit 0, not with no word
    (SIGTERM's default ends the process: 143) or as ``interrupted`` (Ctrl-C's ``KeyboardInterrupt``: 130).
    A SIGINT ignored when the command started (a background job's) stays ignored (``edgerun.signals``)."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        #: the first signal's name (``SIGINT``, ``SIGTERM``); None while none came
        self.reason: str | None = None
        self._pipeline: Any = None

    def __call__(self, sig: signal.Signals) -> None:
        if self.reason is None:
            self.reason = sig.name
        self.stopped.set()
        if self._pipeline is not None:
            self._pipeline.stop(self.reason)

    def attach(self, pipeline: Any) -> None:
        """``pipeline`` is the run: stopped now if a signal came already, else by one that comes."""
        self._pipeline = pipeline
        if self.reason is not None:
            pipeline.stop(self.reason)


def _run_on(args: argparse.Namespace, mqtt: Any, slot: Any, source: Any, early: _StopBeforeRun) -> tuple[Any, Any, Any]:
    """Check the opened source, open the sinks, MQTT (``mqtt``: ``check_sync``'s) and OTA, and run: the
    summary, the sync and the results sink (None where there is none)."""
    from edgerun.errors import ConfigError
    from edgerun.pipeline import Pipeline
    from edgerun.sinks import first_drawing_sink, images_into_source, open_sink, sink_onto_model, video_rate
    from edgerun.sources import check_fits, gives_images
    from edgerun.sources.sensor import SensorSource
    from edgerun.telemetry.metrics import Metrics

    model = slot.primary
    specs = args.sink or ["stdout"]
    drawn = first_drawing_sink(specs)
    check_fits(source, model)  # a model that cannot take these windows or frames: one line, not one per frame
    _refuse_sinks_onto_the_source(specs, source)
    if onto := sink_onto_model(specs, model):
        raise ConfigError(f"--sink {onto[0]} is the {onto[2]} {onto[1]}: writing it would damage the model")
    if into := images_into_source(specs, args.source):
        raise ConfigError(f"--sink {into[0]} is {into[1]}")
    if isinstance(source, SensorSource) and drawn is not None:  # before any sink creates its file or folder
        raise ConfigError(
            f"--sink {drawn}: an annotated sink needs image frames, and the sensor source {source.uri} "
            "gives windows of readings, with no image to draw on (use stdout, jsonl, FILE.jsonl or FILE.csv)"
        )
    if gives_images(source):
        model.warm_images()  # OpenCV's import out of the first frame's figures
    sinks = [open_sink(s, fps=video_rate(args.fps, source), parents=False) for s in specs]
    metrics = Metrics()
    sync = make_sync(args, mqtt, metrics, [model])
    # OTA subscribes before the link connects: what the broker kept for the device while it was offline
    # (commands too, never retained) comes right after CONNACK, and the link drops a message no handler
    # is registered for. An OTA that fails to start ends the run in one line before the link connects,
    # so that nothing kept for the device is taken and lost.
    ota = start_ota(args, sync, slot, metrics)
    if sync is not None:
        sync.start()
    results = sync.results_sink() if sync is not None and args.publish_results else None
    if results is not None:
        sinks.append(results)
    pipeline = Pipeline(
        source,
        slot,
        sinks,
        metrics=metrics,
        fps=args.fps,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        prepare_workers=args.prepare_workers,
        on_result=report_failure,
    )
    early.attach(pipeline)  # a signal since the source opened stops it before it runs
    return run_pipeline(pipeline, sync, ota, early.stopped), sync, results


def _refuse_sinks_onto_the_source(specs: list[str], source: Any) -> None:
    """Refuse a sink file that is one of the source's files (writing it would change or truncate the
    input), and one sink file named twice."""
    from edgerun.errors import ConfigError
    from edgerun.sinks import repeated_sink, sink_onto_input

    clash = sink_onto_input(specs, [ref.path for ref in source.refs] if hasattr(source, "refs") else [source.uri])
    if clash is not None:
        raise ConfigError(f"--sink {clash[0]} is the source file {clash[1]}: writing it would damage the input")
    again = repeated_sink(specs)
    if again is not None:
        raise ConfigError(
            f"--sink {again[0]} names the file of --sink {again[1]} again: each record would be written twice"
        )


def _print_summary(model: Any, summary: Any, published: dict[str, Any] | None = None) -> None:
    out = sys.stderr  # stdout may be carrying JSON Lines records
    rate = rate_text(summary.fps, "fps")  # the frames that succeeded; none: no rate
    print(
        f"# {model.name} {model.version} on {model.delegate}: {summary.frames} frames ({summary.ok} ok, "
        f"{summary.errors} failed, {summary.dropped} dropped, {summary.skipped} skipped) in "
        f"{elapsed_text(summary.elapsed_s)}{f', {rate}' if rate else ''}; stopped by {summary.stopped_by}"
        + (f"; not flushed: {', '.join(summary.unflushed)}" if summary.unflushed else ""),
        file=out,
    )
    for stage in ("pre", "infer", "post", "total"):
        s = summary.stages_ms.get(stage)
        if s:
            print(
                f"#   {stage:<5} p50 {s['p50']:.3f}  p95 {s['p95']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f} ms",
                file=out,
            )
    if published is not None:
        print(mqtt_line(published), file=out)
