"""Annotated output: each frame with its best label and score drawn on it, as images or a video.

Only frames that are images can be drawn on. A frame that is not one (a
``.npy`` array among image files, a sensor window) is not written, and that is
never silent: each such frame is one WARNING line naming the sink and the input
(a failed frame, already reported as an error, only at DEBUG). ``edgerun run``
refuses an annotated sink for a sensor source before it starts, since none of
its frames could be written.

Neither sink overwrites what an earlier run wrote (a daemon pipeline restarted
after its camera came back, a second ``edgerun run``): images are numbered on
from the highest number already in the folder, and a video file that exists is
left alone for the next free name (``out-1.mp4``), as the text sinks append.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgerun.errors import ConfigError, InputError
from edgerun.opencv import opencv
from edgerun.processing.image import decode_image
from edgerun.sinks.base import Result
from edgerun.sinks.text import top1

log = logging.getLogger(__name__)

__all__ = ["AnnotatedImageSink", "AnnotatedVideoSink"]


def _image(result: Result) -> np.ndarray | None:
    """The frame as a BGR image, decoding image bytes if needed; None for non-image frames.

    Bytes that do not decode (an empty file, an image over the pixel limit) are no
    image either: that frame already failed in preparing and was reported, so one
    bad file never stops the sink and the frames after it.
    """
    cv2 = opencv()

    data = result.frame.data
    if isinstance(data, (bytes, bytearray)):
        try:
            image = decode_image(bytes(data), result.frame.source_id)
        except InputError:
            return None
    elif isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim in (2, 3):
        image = data
    else:
        return None
    if image is None:
        return None
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


def _not_drawn(sink: str, result: Result) -> None:
    """Say that ``result``'s frame was not written to ``sink``: a warning, unless it already failed."""
    if result.ok:
        log.warning("%s: %s has no image to draw on; not written", sink, result.frame.source_id)
    else:  # its error was reported with the run's other failures
        log.debug("%s: %s failed and has no image to draw on; not written", sink, result.frame.source_id)


def annotate(image: np.ndarray, result: Result) -> np.ndarray:
    """A copy of ``image`` with the label and score (or the error) written in its top-left corner."""
    cv2 = opencv()

    out = image.copy()
    if result.ok:
        label, score = top1(result.record["output"])
        text = f"{label} {score:.2f}" if score is not None else label
        colour = (0, 255, 0)
    else:
        text, colour = "error", (0, 0, 255)
    scale = max(0.3, min(out.shape[:2]) / 400.0)
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (w + 6, h + base + 6), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out


class AnnotatedImageSink:
    """Writes ``<number>.jpg`` per frame into a directory: the frame's index, after the numbers already there."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            taken = [int(p.stem) for p in self.directory.glob("*.jpg") if p.stem.isdigit()]
        except OSError as exc:
            raise ConfigError(f"cannot create {directory}: {exc.strerror}") from exc
        self._first = max(taken) + 1 if taken else 0
        if taken:
            log.warning("%s holds images up to %06d.jpg: this run's are numbered on from there", directory, max(taken))
        self.written = 0

    def publish(self, result: Result) -> None:
        """Draw and write one image (a frame that is not an image is skipped with a warning)."""
        cv2 = opencv()

        image = _image(result)
        if image is None:
            _not_drawn(f"{self.directory}/", result)
            return
        path = self.directory / f"{self._first + result.frame.index:06d}.jpg"
        if not cv2.imwrite(str(path), annotate(image, result)):
            raise ConfigError(f"cannot write {path}")
        self.written += 1

    def close(self) -> None:
        """Nothing buffered."""


def _free_name(path: str) -> str:
    """``path``, or where a file is there already, the first free ``<stem>-<n><suffix>`` beside it."""
    if not os.path.lexists(path):
        return path
    stem, suffix = os.path.splitext(path)
    n = 1
    while os.path.lexists(f"{stem}-{n}{suffix}"):
        n += 1
    log.warning("%s exists: this run's annotated video goes to %s-%d%s", path, stem, n, suffix)
    return f"{stem}-{n}{suffix}"


def _errno_of(folder: str) -> int:
    """Why files cannot be made in ``folder``: ENOENT, ENOTDIR or EACCES."""
    import errno

    if not os.path.exists(folder):
        return errno.ENOENT
    return errno.ENOTDIR if not os.path.isdir(folder) else errno.EACCES


class AnnotatedVideoSink:
    """Writes annotated frames into one video file (size from the first frame)."""

    FOURCC: ClassVar[dict[str, str]] = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".mov": "mp4v"}

    def __init__(self, path: str, fps: float = 25.0) -> None:
        self.path = path
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in self.FOURCC:
            raise ConfigError(f"annotated video must end in {', '.join(sorted(self.FOURCC))}: {path}")
        folder = os.path.dirname(path) or "."
        if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            # as the text sinks say it, and now: the writer itself opens at the first frame and gives no reason
            why = "Is a directory" if os.path.isdir(path) else os.strerror(_errno_of(folder))
            raise ConfigError(f"cannot write {path}: {why}")
        self._fourcc = self.FOURCC[suffix]
        self._fps = fps
        self._writer: Any = None
        self.written = 0

    def publish(self, result: Result) -> None:
        """Draw and append one frame (a frame that is not an image is skipped with a warning)."""
        cv2 = opencv()

        image = _image(result)
        if image is None:
            _not_drawn(self.path, result)
            return
        if self._writer is None:
            h, w = image.shape[:2]
            self._size = (w, h)
            self.path = _free_name(self.path)
            fourcc = cv2.VideoWriter.fourcc(*self._fourcc)
            self._writer = cv2.VideoWriter(self.path, fourcc, self._fps, (w, h))
            if not self._writer.isOpened():
                raise ConfigError(f"cannot write video {self.path}")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(annotate(image, result))
        self.written += 1

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
