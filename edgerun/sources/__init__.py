"""Sources yield frames and know nothing of models; ``open_source`` picks one from a URI-like string.

| string                                   | source                                   |
| ---------------------------------------- | ---------------------------------------- |
| ``camera:0``, ``/dev/video0``            | ``CameraSource`` (live)                  |
| ``rtsp://...``, ``http(s)://...``        | ``StreamSource`` (live, reconnecting)    |
| ``mqtt://host:port/topic``               | ``MqttSource`` (live)                    |
| ``-``, ``stdin``, ``*.csv``, ``*.jsonl`` | ``SensorSource`` (windows of readings)   |
| ``*.mp4``, ``*.avi``, ``*.mkv``, ...     | ``VideoFileSource``                      |
| anything else: file, glob, directory     | ``FileSource`` (images and ``.npy``)     |

Only image and array files can be given several at a time (several strings, a
glob that matches several files): a video, sensor file, camera, stream or MQTT
source among several is refused before anything runs, rather than read as an
image that does not decode. A glob that matches one file opens it as if named.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from edgerun.sources.base import Frame, LatestBuffer, LiveSource, Source

__all__ = [
    "Frame",
    "LatestBuffer",
    "LiveSource",
    "Source",
    "SourceOptions",
    "check_fits",
    "open_configured",
    "open_source",
]


class SourceOptions(Protocol):
    """The source options ``edgerun run`` takes as flags and a daemon pipeline as config keys, by the same names."""

    @property
    def hop(self) -> int | None: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def camera_fps(self) -> float | None: ...
    @property
    def queue(self) -> int | None: ...
    @property
    def decode_threads(self) -> int: ...


def check_fits(source: Source, model: Any) -> None:
    """Refuse, before anything runs, a model that cannot take ``source``'s frames.

    Only a sensor source can be checked ahead (its windows' shape and channel count,
    ``SensorSource.check_model``); an image or video frame is fitted by the model's
    preprocessing, and a message's shape is known only when it arrives.
    """
    from edgerun.sources.sensor import SensorSource

    if isinstance(source, SensorSource):
        source.check_model(model)


def open_configured(
    specs: str | Sequence[str], options: SourceOptions, window: int | None, stop: threading.Event | None = None
) -> Source:
    """``open_source`` with the options of ``edgerun run`` or of a daemon pipeline (one place to add one)."""
    return open_source(
        specs,
        window=window,
        hop=options.hop,
        width=options.width,
        height=options.height,
        fps=options.camera_fps,
        queue=options.queue,
        decode_threads=options.decode_threads,
        stop=stop,
    )


def open_source(
    specs: str | Sequence[str],
    *,
    window: int | None = None,
    hop: int | None = None,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    queue: int | None = None,
    decode_threads: int = 1,
    stop: threading.Event | None = None,
) -> Source:
    """Open the source named by ``specs`` (several paths, or a glob matching several, make one file source).

    ``stop`` ends a stream's first connection retries early (a daemon stopping meanwhile).

    Raises:
        SourceError: the source cannot be opened.
        ConfigError: the string or options are malformed, or a source that must
            be the only one (a video, a sensor file...) is among several.
    """
    from edgerun.errors import ConfigError
    from edgerun.sources.files import FileSource
    from edgerun.sources.sensor import SensorSource
    from edgerun.sources.video import CameraSource, StreamSource, VideoFileSource

    items = [specs] if isinstance(specs, str) else list(specs)
    if not items:
        raise ConfigError("no source given")
    first = items[0]
    if len(items) == 1:
        kind = _only_source_kind(first)
        if kind == _CAMERA:
            return CameraSource(first, width=width, height=height, fps=fps, queue=queue or 2)
        if kind == _STREAM:
            return StreamSource(first, queue=queue or 2, decode_threads=decode_threads, stop=stop)
        if kind == _MQTT:
            from edgerun.sources.mqtt import MqttSource

            return MqttSource(first, queue=queue or 8)
    paths = FileSource.expand(items)  # a glob that matches one file names that file
    if len(paths) == 1:
        path = paths[0]
        kind = _only_source_kind(path)
        if kind in (_STDIN, _SENSOR):
            if window is None:
                raise ConfigError(f"a sensor source needs a window length (rows per inference): {path}")
            return SensorSource(path, window=window, hop=hop)
        if kind == _VIDEO:
            return VideoFileSource(path, decode_threads=decode_threads)
        return FileSource(items)
    for path in paths:
        kind = _only_source_kind(path)
        if kind is not None:
            given = f"{first} matches {len(paths)} files" if len(items) == 1 else f"{len(items)} sources were given"
            raise ConfigError(
                f"{given}, and {path} is {kind}: only images and .npy arrays can be given several at a time; "
                f"{kind} must be the only source"
            )
    return FileSource(items)


# What a source string names where it must be the only source, as messages say it.
_CAMERA, _STREAM, _MQTT = "a camera", "a stream", "an MQTT source"
_STDIN, _SENSOR, _VIDEO = "standard input", "a sensor file", "a video file"


def _only_source_kind(spec: str) -> str | None:
    """What ``spec`` names, where it must be the only source (``_CAMERA``...); None for an image or array file."""
    from edgerun.sources.sensor import is_sensor_spec
    from edgerun.sources.video import VIDEO_SUFFIXES

    if spec.startswith(("camera:", "/dev/video")):
        return _CAMERA
    if spec.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return _STREAM
    if spec.startswith(("mqtt://", "mqtts://")):
        return _MQTT
    if is_sensor_spec(spec):
        return _STDIN if spec in ("-", "stdin") else _SENSOR
    if Path(spec).suffix.lower() in VIDEO_SUFFIXES:
        return _VIDEO
    return None
