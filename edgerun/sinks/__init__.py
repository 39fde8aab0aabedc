"""Sinks take results; ``open_sink`` picks one from a string.

| string                         | sink                                   |
| ------------------------------ | -------------------------------------- |
| ``stdout``                     | a table on standard output             |
| ``jsonl``                      | JSON Lines on standard output          |
| ``FILE.jsonl``                 | JSON Lines appended to a file          |
| ``FILE.csv``                   | CSV appended to a file                 |
| ``FILE.mp4`` / ``.avi`` / ...  | annotated video                        |
| ``DIR/``                       | annotated images in a directory        |
"""

from __future__ import annotations

from edgerun.sinks.base import Result, Sink

__all__ = ["Result", "Sink", "open_sink"]


def open_sink(spec: str, *, fps: float = 25.0) -> Sink:
    """The sink named by ``spec``."""
    from edgerun.errors import ConfigError
    from edgerun.sinks.annotate import AnnotatedImageSink, AnnotatedVideoSink
    from edgerun.sinks.text import CsvSink, JsonlSink, TableSink

    lower = spec.lower()
    if lower == "stdout":
        return TableSink()
    if lower in ("jsonl", "json"):
        return JsonlSink()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return JsonlSink(spec)
    if lower.endswith(".csv"):
        return CsvSink(spec)
    if lower.endswith(tuple(AnnotatedVideoSink.FOURCC)):
        return AnnotatedVideoSink(spec, fps=fps)
    if spec.endswith("/"):
        return AnnotatedImageSink(spec)
    raise ConfigError(
        f"unknown sink {spec!r}: use stdout, jsonl, FILE.jsonl, FILE.csv, a video file (.mp4, .avi) or DIR/"
    )
