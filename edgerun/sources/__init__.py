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

import glob
import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from edgerun.sources.base import Frame, LatestBuffer, LiveSource, Source

if TYPE_CHECKING:
    from edgerun.inputs import InputRef

__all__ = [
    "Frame",
    "LatestBuffer",
    "LiveSource",
    "Source",
    "SourceOptions",
    "check_fits",
    "gives_images",
    "missing_path",
    "names_files",
    "open_configured",
    "open_source",
    "without_frames",
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

    A sensor source is checked for its windows' shape and channel count
    (``SensorSource.check_model``). A video, camera or stream gives decoded images: a
    model with no image preprocessing takes them only where its input tensor has an
    image's shape (``_image_shaped``); a sensor model, say, would fail every frame. An
    image file is fitted by the model's preprocessing, whatever its input's shape: a
    model with none is refused a file source all of whose inputs are images by their
    suffix (``_only_images``: a folder, a glob, files named one by one), which would
    fail one by one; one ``.npy`` array among them, or a file of another suffix, and
    each input is tried as before. A message's shape is known only when it arrives. A
    pipe given alone (a named pipe with no ``.csv``/``.jsonl`` name, ``/dev/stdin``) is
    an image file read whole (``_lone_pipe``): for a model with no image preprocessing
    it is refused with the name a sensor pipe needs.

    Raises:
        ConfigError: naming the model's input tensor and the source.
    """
    from edgerun.errors import ConfigError
    from edgerun.sources.sensor import SensorSource

    if isinstance(source, SensorSource):
        source.check_model(model)
        return
    spec = model.inputs[0]
    if source.decoded and not model.takes_images and not _image_shaped(spec.shape):
        raise ConfigError(
            f"{model.name} takes no images: its input tensor {spec.describe()} has no image preprocessing "
            f"(its card has no preprocess section), and {source.uri} gives video frames"
        )
    if not model.takes_images and (pipe := _lone_pipe(source)) is not None:
        raise ConfigError(
            f"{pipe} is a pipe, read whole as one image, and {model.name} takes no images (its input tensor "
            f"{spec.describe()} has no image preprocessing): name a pipe of sensor readings .csv or .jsonl "
            "(mkfifo accel.csv), or give standard input as -"
        )
    if not model.takes_images and (images := _only_images(source)):
        raise ConfigError(
            f"{model.name} takes no images: its input tensor {spec.describe()} has no image preprocessing (its "
            f"card has no preprocess section), and {source.uri} gives only images ({images:,} file"
            f"{'s' if images != 1 else ''}): give it .npy arrays, or give the model a card with a preprocess section"
        )


def _lone_pipe(source: Source) -> str | None:
    """The path of ``source``'s only input where that is a pipe read as an image (not a ``.npy`` array): a named
    pipe, ``/dev/stdin`` fed by one; None otherwise. Only looked at (``stat``), never opened."""
    refs: Sequence[InputRef] = getattr(source, "refs", ())
    if len(refs) != 1 or refs[0].error is not None or refs[0].path.lower().endswith(".npy"):
        return None
    path = refs[0].path
    try:
        return path if stat.S_ISFIFO(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        return None


def _only_images(source: Source) -> int:
    """How many image files ``source`` reads where those are all its inputs, else 0: the inputs a file source
    walked once as it opened (``FileSource.refs``), told by suffix. An input that yields no file (a missing one,
    a folder without usable files) is left out of the count: it fails on its own, image or not."""
    from edgerun.processing.image import IMAGE_SUFFIXES

    images = 0
    for ref in getattr(source, "refs", ()):
        if ref.error is None:
            if os.path.splitext(ref.path)[1].lower() not in IMAGE_SUFFIXES:
                return 0  # an array, or a file read as an image only if it proves to be one
            images += 1
    return images


def gives_images(source: Source) -> bool:
    """Whether ``source`` is known to give images: video frames (a video, a camera, a stream), or image files
    among its files (``.npy`` arrays are not). An MQTT topic's messages are known only when they arrive."""
    from edgerun.sources.sensor import SensorSource

    if isinstance(source, SensorSource):
        return False
    if source.decoded:
        return True
    refs = getattr(source, "refs", ())
    return any(not ref.path.lower().endswith(".npy") for ref in refs)


class _Without:
    """A source whose frames named in ``done`` are read and left out (see ``without_frames``)."""

    def __init__(self, source: Source, done: frozenset[str]) -> None:
        self._source, self._done = source, done

    def __getattr__(self, name: str) -> Any:  # uri, live, decoded, dropped, fps, close: the source's own
        return getattr(self._source, name)

    def frames(self) -> Iterator[Frame]:
        return (frame for frame in self._source.frames() if frame.source_id not in self._done)


def without_frames(source: Source, done: frozenset[str]) -> Source:
    """``source`` without the frames whose ``source_id`` is in ``done``: a video or sensor file read
    again after a failure, whose frames up to there were delivered (they are decoded again, not run).
    Image files are left out unread instead (``FileSource``'s ``skip``)."""
    return cast(Source, _Without(source, done))


def _image_shaped(shape: tuple[int | None, ...]) -> bool:
    """Whether a tensor of ``shape`` can hold a decoded colour image as it is: ``[N, H, W, 3]``, or ``[H, W, 3]``
    with no batch dimension (a first dimension of 1 or N is a batch: ``[1, 256, 3]`` is a sensor window)."""
    if not shape or shape[-1] not in (3, None):
        return False
    return len(shape) == 4 or (len(shape) == 3 and shape[0] not in (1, None))


def open_configured(
    specs: str | Sequence[str],
    options: SourceOptions,
    window: int | None,
    stop: threading.Event | None = None,
    skip: frozenset[str] = frozenset(),
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
        skip=skip,
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
    skip: frozenset[str] = frozenset(),
) -> Source:
    """Open the source named by ``specs`` (several paths, or a glob matching several, make one file source).

    ``stop`` ends a camera's or a stream's first connection retries early (a daemon stopping meanwhile). ``skip``
    names image and array files a file source leaves out (done already: a retried daemon pipeline).

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
            return CameraSource(first, width=width, height=height, fps=fps, queue=queue or 2, stop=stop)
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
        return FileSource(items, skip=skip)
    for path in paths:
        kind = _only_source_kind(path, by_content=False)  # a text file among images is one failed input
        if kind is not None:
            given = f"{first} matches {len(paths)} files" if len(items) == 1 else f"{len(items)} sources were given"
            raise ConfigError(
                f"{given}, and {path} is {kind}: only images and .npy arrays can be given several at a time; "
                f"{kind} must be the only source"
            )
    return FileSource(items, skip=skip)


def names_files(spec: str) -> bool:
    """Whether the source string ``spec`` names files (an image or array file, a glob, a folder, a video
    or a sensor file), not a camera, a stream, an MQTT topic, standard input or another URL (``rtmp://``)."""
    return "://" not in spec and _only_source_kind(spec) in (None, _SENSOR, _VIDEO)


def missing_path(spec: str) -> bool:
    """Whether the source string ``spec`` names one file or folder (no glob) that is not there (yet): a
    daemon pipeline's inbox not made yet, a sensor file a logger has not created. A glob matching nothing
    is not one: it is a pattern, reported as its own failed input. A path escaped as a config escapes one
    under a folder named with ``[``, ``*`` or ``?`` (``c[[]1]/inbox``) is the one path it names."""
    if not names_files(spec):
        return False
    literal = _ESCAPED.sub(r"\1", spec)
    if glob.has_magic(spec) and glob.escape(literal) != spec:  # a pattern of its own
        return False
    return not os.path.lexists(literal)


#: A character ``glob.escape`` put in brackets (``[[]``, ``[*]``, ``[?]``).
_ESCAPED = re.compile(r"\[([\[*?])\]")


# What a source string names where it must be the only source, as messages say it.
_CAMERA, _STREAM, _MQTT = "a camera", "a stream", "an MQTT source"
_STDIN, _SENSOR, _VIDEO = "standard input", "a sensor file", "a video file"


def _only_source_kind(spec: str, *, by_content: bool = True) -> str | None:
    """What ``spec`` names, where it must be the only source (``_CAMERA``...); None for an image or array file.
    ``by_content``: a file with no sensor suffix is a sensor file where its head holds readings
    (``is_sensor_spec``); among several files it is not looked into, and fails as the image it is named as."""
    from edgerun.sources.sensor import is_sensor_spec
    from edgerun.sources.video import VIDEO_SUFFIXES

    if spec.startswith(("camera:", "/dev/video")):
        return _CAMERA
    if spec.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return _STREAM
    if spec.startswith(("mqtt://", "mqtts://")):
        return _MQTT
    if is_sensor_spec(spec, by_content=by_content):
        return _STDIN if spec in ("-", "stdin") else _SENSOR
    if Path(spec).suffix.lower() in VIDEO_SUFFIXES:
        return _VIDEO
    return None
