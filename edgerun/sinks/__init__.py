"""Sinks take results; ``open_sink`` picks one from a string.

| string                         | sink                                   |
| ------------------------------ | -------------------------------------- |
| ``stdout``                     | a table on standard output             |
| ``jsonl``                      | JSON Lines on standard output          |
| ``FILE.jsonl``                 | JSON Lines appended to a file          |
| ``FILE.csv``                   | CSV appended to a file                 |
| ``FILE.mp4`` / ``.avi`` / ...  | annotated video                        |
| ``DIR/``                       | annotated images in a directory        |

Annotated sinks draw on the frame, so they need frames that are images
(``first_drawing_sink``): a caller whose source yields none refuses them up front,
as it refuses a sink whose file is one of the source's (``sink_onto_input``) or one of the model's, the
file that runs of a Coral pair included (``sink_onto_model``).
A daemon's retried pipeline gives each sink each input's result once (``once_per_input``).
"""

from __future__ import annotations

from collections.abc import MutableSet, Sequence
from typing import Any

from edgerun.sinks.base import Result, Sink

__all__ = [
    "Result",
    "Sink",
    "first_drawing_sink",
    "images_into_source",
    "inside",
    "once_per_input",
    "open_sink",
    "sink_kind",
    "sink_onto_input",
    "sink_onto_model",
    "video_rate",
]


#: Sinks on standard output, by name (lower case): no file of theirs can be an input's.
_STDOUT_SINKS = {"stdout": "table", "jsonl": "jsonl", "json": "jsonl"}


def sink_kind(spec: str) -> str:
    """What ``spec`` names: ``table``, ``jsonl`` (standard output), ``jsonl-file``, ``csv``, ``video`` or
    ``images``; nothing is opened or created, so a config check can ask it.

    Raises:
        ConfigError: ``spec`` names no sink.
    """
    from edgerun.errors import ConfigError
    from edgerun.sinks.annotate import AnnotatedVideoSink

    lower = spec.lower()
    if lower in _STDOUT_SINKS:
        return _STDOUT_SINKS[lower]
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl-file"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(tuple(AnnotatedVideoSink.FOURCC)):
        return "video"
    if spec.endswith("/"):
        return "images"
    raise ConfigError(
        f"unknown sink {spec!r}: use stdout, jsonl, FILE.jsonl, FILE.csv, a video file (.mp4, .avi) or DIR/"
    )


def first_drawing_sink(specs: Sequence[str]) -> str | None:
    """The first of ``specs`` that names an annotated sink (a video file or ``DIR/``), which needs image
    frames; None when there is none."""
    return next((spec for spec in specs if sink_kind(spec) in ("video", "images")), None)


def sink_onto_input(specs: Sequence[str], inputs: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``specs`` whose file is one of ``inputs`` (a source's files), with that input: writing it
    would change (or truncate) the input; None when there is none. A file of another kind is never the sink's."""
    import os

    from edgerun.files import same_file

    for spec in specs:
        if spec.lower() in _STDOUT_SINKS or spec.endswith("/") or not os.path.exists(spec):
            continue
        suffix = os.path.splitext(spec)[1].lower()  # only an input of the sink's kind can be its file
        clash = next((p for p in inputs if os.path.splitext(p)[1].lower() == suffix and same_file(spec, p)), None)
        if clash is not None:
            return spec, clash
    return None


def images_into_source(specs: Sequence[str], sources: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``specs`` that is an annotated-images folder (``DIR/``) inside a source folder (or that folder
    itself, a source not there yet included), or whose images a glob source lists, with what is wrong in words
    (``--sink X is ...``); None when there is none. Its images would be inputs of the next run over the folder
    (a folder is walked at any depth; a glob lists the drawings, ``000000.jpg`` on, where its pattern takes
    them), each run reading the last one's drawings. Files named one by one are read again, not what is
    beside them."""
    import glob
    import os

    from edgerun.globbing import glob_lists
    from edgerun.sources import missing_path

    # a source not there yet (a daemon waits for it) is a folder once a DIR/ sink in it is made
    folders = [source for source in sources if os.path.isdir(source) or missing_path(source)]
    patterns = [source for source in sources if glob.has_magic(source)]
    for spec in specs:
        if not spec.endswith("/"):
            continue
        for source in folders:
            if inside(spec, source):
                return spec, (
                    f"inside the source folder {source}: the next run over it would take its annotated images "
                    "for inputs (write them outside the folder)"
                )
        for pattern in patterns:  # the folder may not be there yet: the sink makes it
            if glob_lists(os.path.join(spec, "000000.jpg"), pattern, once_made=True):
                return spec, (
                    f"where the source {pattern} lists its annotated images: the next run would take them for "
                    "inputs (write them where the pattern lists nothing)"
                )
    return None


def sink_onto_model(specs: Sequence[str], model: Any) -> tuple[str, str, str] | None:
    """The first of ``specs`` whose file is one of ``model``'s files, with that file and which it is; None when
    there is none. Records appended to one leave a model that no longer loads.

    ``model``'s files: the model file given, its card, and each file its delegates run (``model.selection``:
    the one that runs, and those the others tried or would try). For a Coral pair that is the other file of
    the pair too (``edgerun.accel.select.candidate_files``): the compiled ``X_edgetpu.tflite`` that runs on the
    Edge TPU for ``X.tflite``, or the CPU twin ``X.tflite`` that runs for ``X_edgetpu.tflite``. A sink is
    compared by the file it opens, under any name (a link to the model file too), not by its suffix.
    """
    import os
    from pathlib import Path

    from edgerun.card import cpu_twin
    from edgerun.files import same_file

    selection = getattr(model, "selection", None)
    run = [] if selection is None else [selection.path, *(attempt.path for attempt in selection.attempts)]
    files = [
        (model.path, "model file"),
        (model.card_path, "card"),
        *((path, "Edge TPU model file" if cpu_twin(Path(path)) else "CPU model file") for path in run),
    ]
    written = [spec for spec in specs if spec.lower() not in _STDOUT_SINKS and not spec.endswith("/")]
    for path, what in files:
        if path is None:
            continue
        clash = next((spec for spec in written if same_file(spec, os.fspath(path))), None)
        if clash is not None:
            return clash, os.fspath(path), what
    return None


def repeated_sink(specs: Sequence[str]) -> tuple[str, str] | None:
    """The first of ``specs`` that names the file or folder an earlier one names, with that one (every
    record would be written twice, or two writers would number the same images); None when none does.
    Standard output is not a file here: a table and JSON Lines on it are two views a user may want."""
    from edgerun.files import same_file

    seen: list[tuple[str, str]] = []
    for spec in specs:
        if spec.lower() in _STDOUT_SINKS:
            continue
        here = _where(spec)
        earlier = next((s for s, w in seen if w == here or same_file(s, spec)), None)
        if earlier is not None:
            return spec, earlier
        seen.append((spec, here))
    return None


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or in it, where links lead (``_where``: as written, normalised, below a
    folder that is not there yet)."""
    import os

    return (_where(path) + os.sep).startswith(_where(folder).rstrip(os.sep) + os.sep)


def _where(path: str) -> str:
    """Where ``path`` leads, links resolved as the system resolves them; as written (normalised) where the
    working folder of a relative name was deleted."""
    import os

    try:
        return os.path.realpath(path)
    except OSError:
        return os.path.normpath(path)


def video_rate(fps: float | None, source: Any) -> float:
    """The rate an annotated video plays at: the rate frames are taken (the pipeline's ``fps``),
    else the source's own (``source.fps``, 0 when it declares none), else for a live source (``source.live``:
    an MQTT topic, a camera or stream that declares no rate) ``PacedRate(LIVE_FPS)``, 10 frames per second
    at which the video sink paces frames by their capture time, else (files) 25 frames per second. The video
    sink brings a rate OpenCV cannot write within the range it can, with a warning
    (``edgerun.sinks.annotate.VIDEO_FPS_MIN`` to ``VIDEO_FPS_MAX``)."""
    rate = fps or getattr(source, "fps", 0.0)
    if rate:
        return rate
    if getattr(source, "live", False):
        from edgerun.sinks.annotate import LIVE_FPS, PacedRate

        return PacedRate(LIVE_FPS)
    return 25.0


def open_sink(spec: str, *, fps: float = 25.0, parents: bool = True) -> Sink:
    """The sink named by ``spec`` (see ``sink_kind``). ``parents``: a ``DIR/`` sink is made with the folders
    above it that are not there (a daemon's, made as its config says); False, only ``DIR`` itself, in a
    folder that is there (the command line's: a mistyped path makes no tree).

    Raises:
        ConfigError: ``spec`` names no sink, or a file or ``DIR/`` this process cannot write (a folder that is
            not there, one it may not write in: ``cannot write ro/: Permission denied``), before any input runs.
    """
    from edgerun.sinks.annotate import AnnotatedImageSink, AnnotatedVideoSink
    from edgerun.sinks.text import CsvSink, JsonlSink, TableSink

    kind = sink_kind(spec)
    if kind == "table":
        return TableSink()
    if kind == "jsonl":
        return JsonlSink()
    if kind == "jsonl-file":
        return JsonlSink(spec)
    if kind == "csv":
        return CsvSink(spec)
    if kind == "video":
        return AnnotatedVideoSink(spec, fps=fps)
    return AnnotatedImageSink(spec, parents=parents)


class _Once:
    """A sink that leaves out the results of the inputs in ``held`` and adds to it each it takes (see
    ``once_per_input``)."""

    def __init__(self, sink: Sink, held: MutableSet[str]) -> None:
        self._sink, self._held = sink, held

    def __getattr__(self, name: str) -> Any:  # inline, name, path: the sink's own
        return getattr(self._sink, name)

    def publish(self, result: Result) -> None:
        source_id = result.frame.source_id
        if source_id not in self._held:
            self._sink.publish(result)
            self._held.add(source_id)  # only once it took it: a sink that refused it gets it again

    def close(self) -> None:
        self._sink.close()


def once_per_input(sink: Sink, held: MutableSet[str]) -> Sink:
    """``sink`` without the results of the inputs it holds already: ``held`` names them (``source_id``), and
    each result ``sink`` takes is added to it. A daemon pipeline over files keeps one such set per sink across
    its retries: a sink that failed stopped every sink at the result it refused, which the sinks before it
    took, and the retry runs that input again for the others (``_PipelineRunner`` in ``edgerun.daemon``)."""
    return _Once(sink, held)
