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


def open_configured(specs: str | Sequence[str], options: SourceOptions, window: int | None) -> Source:
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
) -> Source:
    """Open the source named by ``specs`` (several paths, or a glob matching several, make one file source).

    Raises:
        SourceError: the source cannot be opened.
        ConfigError: the string or options are malformed, or a source that must
            be the only one (a video, a sensor file...) is among several.
    """
    from edgerun.errors import ConfigError
    from edgerun.sources.files import FileSource
    from edgerun.sources.sensor import SensorSource, is_sensor_spec
    from edgerun.sources.video import VIDEO_SUFFIXES, CameraSource, StreamSource, VideoFileSource

    items = [specs] if isinstance(specs, str) else list(specs)
    if not items:
        raise ConfigError("no source given")
    first = items[0]
    if len(items) == 1:
        if first.startswith("camera:") or first.startswith("/dev/video"):
            return CameraSource(first, width=width, height=height, fps=fps, queue=queue or 2)
        if first.startswith(_STREAM_SCHEMES):
            return StreamSource(first, queue=queue or 2, decode_threads=decode_threads)
        if first.startswith(_MQTT_SCHEMES):
            from edgerun.sources.mqtt import MqttSource

            return MqttSource(first, queue=queue or 8)
    paths = FileSource.expand(items)  # a glob that matches one file names that file
    if len(paths) == 1:
        path = paths[0]
        if is_sensor_spec(path):
            if window is None:
                raise ConfigError(f"a sensor source needs a window length (rows per inference): {path}")
            return SensorSource(path, window=window, hop=hop)
        if Path(path).suffix.lower() in VIDEO_SUFFIXES:
            return VideoFileSource(path, decode_threads=decode_threads)
        return FileSource(items)
    for path in paths:
        kind = _only_source_kind(path, VIDEO_SUFFIXES, is_sensor_spec(path))
        if kind is not None:
            given = f"{first} matches {len(paths)} files" if len(items) == 1 else f"{len(items)} sources were given"
            raise ConfigError(
                f"{given}, and {path} is {kind}: only images and .npy arrays can be given several at a time; "
                f"{kind} must be the only source"
            )
    return FileSource(items)


_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_MQTT_SCHEMES = ("mqtt://", "mqtts://")


def _only_source_kind(path: str, video_suffixes: frozenset[str], sensor: bool) -> str | None:
    """What ``path`` is, where it must be the only source (``"a video file"``...); None for an image or array."""
    if sensor:
        return "standard input" if path in ("-", "stdin") else "a sensor file"
    if Path(path).suffix.lower() in video_suffixes:
        return "a video file"
    if path.startswith("camera:") or path.startswith("/dev/video"):
        return "a camera"
    if path.startswith(_STREAM_SCHEMES):
        return "a stream"
    if path.startswith(_MQTT_SCHEMES):
        return "an MQTT source"
    return None
