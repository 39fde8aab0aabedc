"""Sources yield frames and know nothing of models; ``open_source`` picks one from a URI-like string.

| string                                   | source                                   |
| ---------------------------------------- | ---------------------------------------- |
| ``camera:0``, ``/dev/video0``            | ``CameraSource`` (live)                  |
| ``rtsp://...``, ``http(s)://...``        | ``StreamSource`` (live, reconnecting)    |
| ``mqtt://host:port/topic``               | ``MqttSource`` (live)                    |
| ``-``, ``stdin``, ``*.csv``, ``*.jsonl`` | ``SensorSource`` (windows of readings)   |
| ``*.mp4``, ``*.avi``, ``*.mkv``, ...     | ``VideoFileSource``                      |
| anything else: file, glob, directory     | ``FileSource`` (images and ``.npy``)     |
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from edgerun.sources.base import Frame, LatestBuffer, LiveSource, Source

__all__ = ["Frame", "LatestBuffer", "LiveSource", "Source", "SourceOptions", "open_configured", "open_source"]


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
    """Open the source named by ``specs`` (several paths make one file source).

    Raises:
        SourceError: the source cannot be opened.
        ConfigError: the string or options are malformed.
    """
    from edgerun.errors import ConfigError
    from edgerun.sources.files import FileSource
    from edgerun.sources.sensor import SensorSource, is_sensor_spec
    from edgerun.sources.video import VIDEO_SUFFIXES, CameraSource, StreamSource, VideoFileSource

    items = [specs] if isinstance(specs, str) else list(specs)
    if not items:
        raise ConfigError("no source given")
    first = items[0]
    suffix = Path(first).suffix.lower()
    if len(items) == 1:
        if first.startswith("camera:") or first.startswith("/dev/video"):
            return CameraSource(first, width=width, height=height, fps=fps, queue=queue or 2)
        if first.startswith(("rtsp://", "rtsps://", "http://", "https://")):
            return StreamSource(first, queue=queue or 2, decode_threads=decode_threads)
        if first.startswith(("mqtt://", "mqtts://")):
            from edgerun.sources.mqtt import MqttSource

            return MqttSource(first, queue=queue or 8)
        if is_sensor_spec(first):
            if window is None:
                raise ConfigError(f"a sensor source needs a window length (rows per inference): {first}")
            return SensorSource(first, window=window, hop=hop)
        if suffix in VIDEO_SUFFIXES:
            return VideoFileSource(first, decode_threads=decode_threads)
    return FileSource(items)
