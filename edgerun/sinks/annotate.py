"""Annotated output: each frame with its best label and score drawn on it, as images or a video.

Only frames that are images can be drawn on: uint8 arrays of HxW or HxWx1 (gray), HxWx3 (BGR)
or HxWx4 (BGRA) pixels, as preprocessing reads them, or image bytes; each is written as BGR, so
a video gets every one of them (OpenCV's writer drops a frame of another channel count without a
word). A frame that is not one (a ``.npy`` array among image files, a sensor window, an HxWx2
array) is not written, and that is never silent: each such frame is one WARNING line naming the
sink and the input (a failed frame, already reported as an error, only at DEBUG). ``edgerun run``
refuses an annotated sink for a sensor source before it starts, since none of its frames could be
written.

A sink that cannot write stops the run with the reason, as the text sinks do. An image is encoded
here and written with ``os.write``, so the reason is the system's (``No space left on device``).
It is written to a hidden temporary file beside its name (``.000017.<random>.tmp.jpg``) and renamed
onto the name once whole (``atomic_output``), so a name never holds part of an image: a failed write
removes the temporary file, and one a killed process left (SIGKILL, the OOM killer) is neither
numbered nor read as an input, and the next sink on the folder removes it once it is
``STALE_AFTER_S`` old (younger, it may be another writer's, about to be renamed). Nothing is
fsynced, as no per-result file is: a kill loses nothing the kernel took, but a power cut may leave
the images of the last half minute or so (the kernel's writeback delay) missing, empty or short:
ext4's ``auto_da_alloc`` writes the data before a rename is committed only for a rename over an
existing file, and these names are new. An fsync per frame would cost a flash write (tens of
milliseconds on an SD card) for every frame.

OpenCV's video writer reports no failed write at all: it buffers 256 KiB and drops what the disk
refuses, leaving a file that does not play. So the video sink looks at its file every
``CHECK_EVERY`` frames (one ``stat``): one that stopped growing where its disk has less than
``LOW_ROOM`` bytes left, or at the process's file-size limit, stops the run; and when it closes, the
finished file is opened again and must hold every frame written (and, on a disk left full, its last
frame must decode).

What OpenCV's video writer cannot take is said, not met as a writer that does not open: a rate outside
``VIDEO_FPS_MIN`` to ``VIDEO_FPS_MAX`` is brought inside it when the sink opens, with one WARNING (every
frame is still written; only the speed it plays at differs), and a first frame of a size the container's codec
does not take (``VIDEO_SIDES``) stops the run with the sides it does take. OpenCV's FFmpeg writer leaves out
the last column of a frame of odd width and the last row of one of odd height; the sink says so in one WARNING.
OpenCV is handed the file's absolute path, so FFmpeg never reads a relative name's ``12:30`` or ``file:`` as a
URL scheme; a file the writer left empty when it failed is removed, so the next run does not move on to
``out-1.mp4``.

A video from a live source that declares no rate (an MQTT topic; a camera or stream that declares none)
with no ``--fps`` would play at whatever rate it is written at, not in the time its frames were taken
(a topic giving 2 frames a second, written at 25, played 12 times too fast). ``video_rate`` gives such a
source a ``PacedRate`` (``LIVE_FPS``), and the sink paces its frames by their capture time (``Frame.ts``):
the writer runs at that fixed rate, and each frame is written once for every 1/``LIVE_FPS`` slot from its
own until the next frame's (repeated over a gap), so the video plays in real time. The last frame is written
at ``close`` for the slots from its own to the close's (the wall clock, as ``Frame.ts`` is; one at least), so
its time is kept too. A frame stamped before the one waiting (the clock set back) takes the next slot, and
the pacing goes on from it. A frame is held ``MAX_HOLD_S`` at most (a source silent for an hour must not
write an hour of copies): a longer gap plays as ``MAX_HOLD_S``, said in one WARNING (not for the last frame,
after which nothing plays). Of several frames in one slot only the newest is written, by design: a video at
``LIVE_FPS`` shows one frame a slot, writing them all would play a faster source slower than real time, and
the rate is fixed when the writer opens, at the first frame, before the source's own is known; ``--fps``
at the source's rate writes each frame once instead (the frames left out are still inferred and reach the
other sinks). Every other video (file sources, a declared rate, ``--fps``) gets every frame once, at its
rate. ``written`` counts the frames handed to the writer, repeats included.

The label is drawn as OpenCV's Hershey fonts can draw it (``_drawable``: printable ASCII on one line), and
shortened with ``...`` where the frame is too narrow for it, so the score is always whole.

The image sink makes its folder, and by default the folders above it that are not there (a daemon
pipeline's ``DIR/``); with ``parents=False`` only its own, refusing one whose parent is not there (a
mistyped name must not make a tree). A folder it cannot list or write in is refused when it opens, before
any input runs (``cannot write out/: Permission denied``), as the file sinks refuse theirs: writing is tried
with a temporary image, removed at once (``_refuse_unwritable``). The video sink refuses a file whose folder
is not there when it opens, as the text sinks do: the writer itself opens at the first frame, and makes no
folder.

Neither sink overwrites what an earlier run wrote (a daemon pipeline restarted
after its camera came back, a second ``edgerun run``): images are numbered on
from the highest number already in the folder, and a video file that exists is
left alone for the next free name (``out-1.mp4``), as the text sinks append.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import resource
import time
import unicodedata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgerun.errors import ConfigError, InputError, PipelineError
from edgerun.files import atomic_output, write_all
from edgerun.opencv import opencv
from edgerun.processing.image import decode_image
from edgerun.sinks.base import Result
from edgerun.sinks.text import top1

log = logging.getLogger(__name__)

__all__ = ["AnnotatedImageSink", "AnnotatedVideoSink", "PacedRate"]


def _image(result: Result) -> np.ndarray | None:
    """The frame as a BGR image, decoding image bytes if needed; None for non-image frames.

    Bytes that do not decode (an empty file, an image over the pixel limit) are no
    image either: that frame already failed in preparing and was reported, so one
    bad file never stops the sink and the frames after it. Nor is an array of
    another shape (HxWx2, HxWx5, empty), which preprocessing refuses the same way.
    """
    data = result.frame.data
    if isinstance(data, (bytes, bytearray)):
        try:
            image = decode_image(bytes(data), result.frame.source_id)
        except InputError:
            return None
    elif isinstance(data, np.ndarray) and data.dtype == np.uint8:
        image = data
    else:
        return None
    return _bgr(image)


def _bgr(image: np.ndarray) -> np.ndarray | None:
    """``image`` as HxWx3 BGR: gray (HxW, HxWx1) and BGRA (HxWx4) converted as preprocessing reads
    them, BGR as it is; None for any other shape."""
    if image.size == 0 or image.ndim not in (2, 3):
        return None
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 3:  # a video's frames: nothing more to do
        return image
    cv2 = opencv()
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return None


def _not_drawn(sink: str, result: Result) -> None:
    """Say that ``result``'s frame was not written to ``sink``: a warning, unless it already failed."""
    if result.ok:
        log.warning("%s: %s has no image to draw on; not written", sink, result.frame.source_id)
    else:  # its error was reported with the run's other failures
        log.debug("%s: %s failed and has no image to draw on; not written", sink, result.frame.source_id)


def annotate(image: np.ndarray, result: Result) -> np.ndarray:
    """A copy of ``image`` with the label and score (or the error) written in its top-left corner.

    The label is drawn as ``_drawable`` makes it, and shortened with ``...`` where it and the score are
    wider than the frame, so the score is always drawn whole (in a smaller font on a frame too narrow for it).
    """
    cv2 = opencv()

    out = image.copy()
    if result.ok:
        label, score = top1(result.record["output"])
        tail = f" {score:.2f}" if score is not None else ""
        colour = (0, 255, 0)
    else:
        label, tail, colour = "error", "", (0, 0, 255)
    height, width = out.shape[:2]
    text, scale, thickness, (w, h), base = _layout(label, tail, width, max(0.3, min(height, width) / 400.0))
    cv2.rectangle(out, (0, 0), (w + 2 * MARGIN, h + base + 2 * MARGIN), (0, 0, 0), thickness=-1)
    cv2.putText(out, text, (MARGIN, h + MARGIN), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out


#: Pixels between the drawn text and the edges of its black box.
MARGIN = 3
#: What stands for the end of a label cut short to fit the frame (OpenCV's fonts have no ellipsis character).
ELLIPSIS = "..."


@functools.lru_cache(maxsize=4096)
def _layout(label: str, tail: str, width: int, scale: float) -> tuple[str, float, int, tuple[int, int], int]:
    """What ``annotate`` draws on a frame ``width`` pixels wide: (text, scale, thickness, (w, h) of the text,
    baseline). ``tail`` (the score) is kept whole, at a smaller ``scale`` where it alone is wider than the
    frame; the label gets the room left, cut short with ``ELLIPSIS`` (or left out where not even that fits).

    Cached: a video's frames are one size and its labels and scores few, so most frames only look it up.
    """
    cv2 = opencv()
    font = cv2.FONT_HERSHEY_SIMPLEX

    def size(text: str, scale: float, thickness: int) -> tuple[tuple[int, int], int]:
        return cv2.getTextSize(text, font, scale, thickness)

    room = max(1, width - 2 * MARGIN)
    thickness = max(1, round(scale * 2))
    text = _drawable(label)
    whole = size(text + tail, scale, thickness)
    if whole[0][0] <= room:
        return text + tail, scale, thickness, *whole
    tail_w = size(tail.lstrip(), scale, thickness)[0][0]
    if tail_w > room:  # a frame narrower than the score: the score alone, as large as fits
        scale, thickness, text, tail = scale * room / tail_w, 1, "", tail.lstrip()
    elif not text:
        tail = tail.lstrip()
    else:  # the longest start of the label that fits before the score, with the ellipsis
        lo, hi = 0, len(text) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size(text[:mid].rstrip() + ELLIPSIS + tail, scale, thickness)[0][0] <= room:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0 and size(ELLIPSIS + tail, scale, thickness)[0][0] > room:
            text, tail = "", tail.lstrip()
        else:
            text = text[:lo].rstrip() + ELLIPSIS
    return text + tail, scale, thickness, *size(text + tail, scale, thickness)


@functools.lru_cache(maxsize=1024)
def _drawable(label: str) -> str:
    """``label`` as OpenCV's Hershey fonts can draw it (printable ASCII only), one line: accents dropped
    (``é`` as ``e``, compatibility forms as their ASCII letters), control, format and separator characters
    (a line break, a NUL) as a space, and every other character outside ASCII as ``?``. Only the drawing:
    the text sinks write the label as it is."""
    out = []
    for ch in unicodedata.normalize("NFKD", label):
        if ch.isascii():
            out.append(ch if ch.isprintable() else " ")
        elif unicodedata.combining(ch):
            continue
        else:
            out.append(" " if unicodedata.category(ch)[0] in "CZ" else "?")
    return "".join(out)


class AnnotatedImageSink:
    """Writes ``<number>.jpg`` per frame into a directory: the frame's index, after the numbers already there.

    The directory is made when the sink opens where it is not there. With ``parents`` (the default: a daemon
    pipeline's ``DIR/``, whose folders its config names on purpose and which is made with them, see
    ``edgerun.config``) the folders above it that are not there are made too. Without, only the directory
    itself is: one whose parent is not there is refused (``ConfigError``), as the file sinks refuse a file
    whose folder is not there, since a mistyped name (``/nonexistent/d/``) would make a whole tree of folders,
    as root one at the file system's root. A directory this process cannot list (its numbers unknown) or make
    files in is refused too (``ConfigError``), before the first frame rather than at it.
    """

    def __init__(self, directory: str, *, parents: bool = True) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=parents, exist_ok=True)
        except FileNotFoundError as exc:  # only without ``parents``: a folder above the directory is not there
            raise ConfigError(
                f"cannot create {directory}: its folder {self.directory.parent} is not there "
                "(only the last folder of a DIR/ sink is made)"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot create {directory}: {exc.strerror}") from exc
        try:  # not ``Path.glob``, which reads a folder it may not list as an empty one: numbered from 0, over images
            names = [self.directory / n for n in os.listdir(self.directory) if n.endswith(".jpg")]
        except OSError as exc:
            raise ConfigError(f"cannot read {directory}: {exc.strerror}") from exc
        # a temporary image (``.000017.<random>.tmp.jpg``) has no number: never counted, and its name is never one
        taken = [int(p.stem) for p in names if p.stem.isascii() and p.stem.isdigit()]
        self._first = max(taken) + 1 if taken else 0
        _refuse_unwritable(directory, self.directory, self._first)
        if taken:
            log.warning("%s holds images up to %06d.jpg: this run's are numbered on from there", directory, max(taken))
        _remove_left_over(directory, [p for p in names if TEMPORARY.fullmatch(p.name)])
        self.written = 0

    def publish(self, result: Result) -> None:
        """Draw and write one image (a frame that is not an image is skipped with a warning)."""
        cv2 = opencv()

        image = _image(result)
        if image is None:
            _not_drawn(f"{self.directory}/", result)
            return
        path = self.directory / f"{self._first + result.frame.index:06d}.jpg"
        ok, encoded = cv2.imencode(".jpg", annotate(image, result))
        if not ok:
            raise PipelineError(f"cannot write {path}: OpenCV could not encode it as JPEG")
        try:
            _write_whole(path, encoded.tobytes())
        except OSError as exc:
            raise PipelineError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.written += 1

    def close(self) -> None:
        """Nothing buffered."""


#: The name of a temporary image beside ``000017.jpg``, as ``atomic_output`` makes it: ``.000017.<8 hex>.tmp.jpg``.
TEMPORARY = re.compile(r"\.[0-9]+\.[0-9a-f]{8}\.tmp\.jpg", re.ASCII)
#: Seconds: a temporary image older than this was left by a process killed while writing it. A younger one may
#: be another writer's (a second pipeline on the folder), renamed a moment later; writing one takes milliseconds.
STALE_AFTER_S = 60.0


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` as the file ``path``, or ``OSError``: written to a hidden temporary file beside it and
    renamed onto it once whole, without an fsync (see the module docstring), so a name only ever holds a
    whole image; a failed write leaves no temporary file. The file is made as ``open`` makes one (its
    mode as the umask allows, not ``mkstemp``'s owner-only one)."""
    with atomic_output(path, durable=False) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)


def _refuse_unwritable(directory: str, folder: Path, number: int) -> None:
    """Refuse ``folder`` (``ConfigError``, ``cannot write DIR/: Permission denied``) where no image can be made
    in it, when the sink opens and before any input runs, as the file sinks refuse a file they cannot open.

    Found by making the temporary image the frame numbered ``number`` would be written through
    (``.000017.<random>.tmp.jpg``, as ``_write_whole`` names it) and removing it at once: nothing the user
    would see as a stray file, and a process killed between the two leaves a name that is never counted and
    that the next sink removes (``TEMPORARY``). A real file, not ``os.access``: that asks for the real uid,
    not the effective one, and answers yes where the create itself is refused (root on an NFS export that
    squashes root, an AppArmor profile, no inode left); it does heed ACLs and a read-only file system.
    """
    probe = folder / f".{number:06d}.{os.urandom(4).hex()}.tmp.jpg"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise ConfigError(f"cannot write {directory}: {exc.strerror or exc}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):  # made a moment ago by this process, in a folder it may write
        probe.unlink()


def _remove_left_over(directory: str, temporary: list[Path]) -> None:
    """Delete the temporary images (``TEMPORARY``) in ``directory`` that a killed process left, with one
    INFO line; one that cannot be deleted is left with one WARNING line (it is never counted either)."""
    now, removed, kept = time.time(), 0, ""
    for path in temporary:
        try:
            if now - path.lstat().st_mtime < STALE_AFTER_S:  # maybe being written now
                continue
            path.unlink()
        except FileNotFoundError:  # removed meanwhile
            continue
        except OSError as exc:
            kept = kept or (exc.strerror or str(exc))
            continue
        removed += 1
    if removed:
        what = "image" if removed == 1 else "images"
        log.info("%s: removed %d temporary %s left by a process killed while writing them", directory, removed, what)
    if kept:
        log.warning(
            "%s: cannot remove temporary images left by a process killed while writing them: %s", directory, kept
        )


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
    """Why files cannot be made in ``folder``: ENOENT, ENOTDIR, EROFS (a read-only file system) or EACCES."""
    if not os.path.exists(folder):
        return errno.ENOENT
    if not os.path.isdir(folder):
        return errno.ENOTDIR
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return errno.EROFS
    return errno.EACCES


#: Frames per second a video is written at, at least and at most. OpenCV hands FFmpeg the rate as a fraction
#: within 0.001 of it, and has none for 0.001 or less (the writer does not open). Above 1000, an AVI file loses
#: frames (of 100 written at 2000, 32 decode) and a Matroska one, whose timestamps are milliseconds, declares
#: more frames than it holds (102 for 100).
VIDEO_FPS_MIN = 0.002
VIDEO_FPS_MAX = 1000.0

#: The frame sides, in pixels, each container's codec takes (least, most): MPEG-4 part 2 (``mp4v``) has 13 bits
#: for a side and no 1-pixel one; FFmpeg's MJPEG in Matroska none under 2 or above 65500; OpenCV's AVI writer
#: any that JPEG holds (16 bits). Beyond these OpenCV's writer does not open (an AVI's frames do not decode).
VIDEO_SIDES: dict[str, tuple[int, int]] = {
    ".mp4": (2, 8191),
    ".m4v": (2, 8191),
    ".mov": (2, 8191),
    ".mkv": (2, 65500),
    ".avi": (1, 65535),
}


def _video_rate(path: str, fps: float) -> float:
    """``fps`` as a video at ``path`` can be written: within ``VIDEO_FPS_MIN`` to ``VIDEO_FPS_MAX``, with
    one WARNING where it is not (the frames are all written; only the speed they play at differs)."""
    if not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"cannot write {path}: a video's rate must be a positive number of frames per second")
    rate = min(max(fps, VIDEO_FPS_MIN), VIDEO_FPS_MAX)
    if rate != fps:
        log.warning(
            "%s: OpenCV writes videos at %g to %g frames per second: this one plays at %g, not %g",
            path,
            VIDEO_FPS_MIN,
            VIDEO_FPS_MAX,
            rate,
            fps,
        )
    return rate


def _size_refused(path: str, suffix: str, w: int, h: int) -> str | None:
    """Why a video at ``path`` cannot hold frames of ``w`` x ``h`` pixels; None where it can."""
    least, most = VIDEO_SIDES[suffix]
    if least <= min(w, h) and max(w, h) <= most:
        return None
    takers = sorted(s for s, (lo, hi) in VIDEO_SIDES.items() if lo <= min(w, h) and max(w, h) <= hi)
    instead = f" (write {' or '.join(takers)})" if takers else ""
    return f"cannot write {path}: a {suffix} video takes {least} to {most} pixels a side, not {w}x{h}{instead}"


#: The video sink looks at its file every this many frames (one ``stat``; a ``statvfs`` when it did not grow).
CHECK_EVERY = 32
#: Bytes: a video file that stopped growing with less room than this left for it (free space on its disk, or
#: what the file-size limit allows) cannot be written. OpenCV's FFmpeg writer flushes 256 KiB at a time, so a
#: file may rightly not grow for many frames; a refused write fills the disk to its last block (ENOSPC) or the
#: file to the limit (EFBIG) first, so less than this is left once one was refused.
LOW_ROOM = 64 * 1024


def _no_room(path: str, size: int) -> str | None:
    """Why a file of ``size`` bytes at ``path`` cannot grow: ``No space left on device`` where its disk has
    less than ``LOW_ROOM`` bytes free (for this user: root may use ext4's reserved blocks), ``File too large``
    where the process's file-size limit (``ulimit -f``) is less than that away; None while there is room."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit - size < LOW_ROOM:
        return os.strerror(errno.EFBIG)
    try:
        disk = os.statvfs(os.path.dirname(path) or ".")
    except OSError:  # the folder went away: the check that follows (or the next one) says so
        return None
    free = (disk.f_bfree if os.geteuid() == 0 else disk.f_bavail) * disk.f_frsize
    return os.strerror(errno.ENOSPC) if free < LOW_ROOM else None


#: Frames per second a video from a live source that declares no rate is written at (without ``--fps``): its
#: frames are paced by their capture time into slots of 1/``LIVE_FPS`` seconds (see the module docstring).
#: Ten a second shows what such a source gives (an MQTT topic: a few frames a second) in real time to within
#: a tenth of a second, at little cost: a repeated frame compresses to almost nothing.
LIVE_FPS = 10.0
#: Seconds a paced video holds one frame at most: a longer gap between two frames (a source silent for an hour)
#: plays as this long, with one WARNING, rather than as copies of the last frame for the whole of it.
MAX_HOLD_S = 5.0
#: Slots: a timestamp within this much of a slot's start is in that slot (``ts`` of 1.7e9 seconds holds
#: about 0.2 us: 0.5 s apart reads as 4.9999999 slots of 0.1 s).
_SLOT_SLACK = 1e-3


class PacedRate(float):
    """A video rate at which the video sink paces frames by their capture time (``Frame.ts``) rather than
    writing each once: ``edgerun.sinks.video_rate``'s for a live source that declares no rate, with no
    ``--fps``. It passes through ``open_sink(spec, fps=...)`` as any rate does."""


class AnnotatedVideoSink:
    """Writes annotated frames into one video file (size from the first frame).

    ``written`` counts the frames handed to the writer (a paced video's repeats included); a file that
    cannot hold them all (a full disk, the file-size limit) stops the run with the reason (see the module
    docstring). At a ``PacedRate`` frames are paced by their capture time; at any other rate each frame
    is written once.
    """

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
        self._suffix = suffix
        self._fourcc = self.FOURCC[suffix]
        self._paced = isinstance(fps, PacedRate)
        self._fps = _video_rate(path, fps)
        self._file = os.path.abspath(path)  # what OpenCV is given: FFmpeg reads `12:30.mp4` as a URL scheme
        self._writer: Any = None
        self._size_seen = 0  # the file's size at the last check, in bytes
        self._failed = False
        self.written = 0
        # paced only: the frame waiting to be written (image and result), its slot, and where slot 0 starts
        self._pending: tuple[np.ndarray, Result] | None = None
        self._slot = 0
        self._t0 = 0.0
        self._gap_said = False

    def publish(self, result: Result) -> None:
        """Draw and append one frame (a frame that is not an image is skipped with a warning); at a
        ``PacedRate``, held until the next frame says how many slots it covers."""
        cv2 = opencv()

        image = _image(result)
        if image is None:
            _not_drawn(self.path, result)
            return
        if self._writer is None:
            self._open(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        if self._paced:
            self._pace(image, result)
        else:
            self._put(annotate(image, result))

    def _put(self, frame: np.ndarray, times: int = 1) -> None:
        """Hand ``frame`` to the writer ``times`` times, counting each and checking the file every
        ``CHECK_EVERY`` frames."""
        for _ in range(times):
            self._writer.write(frame)
            self.written += 1
            if self.written % CHECK_EVERY == 0:
                self._check_growing()

    def _pace(self, image: np.ndarray, result: Result) -> None:
        """Take a paced frame: the one waiting is written once for each slot from its own to this one's (at most
        ``MAX_HOLD_S`` of them), and this one waits; one in the waiting one's slot replaces it (the newest: a
        slot shows one frame, see the module docstring)."""
        ts = result.frame.ts
        if self._pending is None:  # the first frame starts slot 0
            self._t0, self._slot, self._pending = ts, 0, (image, result)
            return
        slot = math.floor((ts - self._t0) * self._fps + _SLOT_SLACK)
        if slot < self._slot:  # the clock was set back: the grid moves with it, this frame in the next slot
            self._t0 -= (self._slot + 1 - slot) / self._fps
            slot = self._slot + 1
        if slot == self._slot:
            self._pending = (image, result)
            return
        held, most = slot - self._slot, max(1, round(MAX_HOLD_S * self._fps))
        if held > most:
            if not self._gap_said:
                self._gap_said = True
                log.warning(
                    "%s: no frame for %.1f s after %s: a frame is shown %g s at most, so this gap and any longer "
                    "one play shorter than they were (said once)",
                    self.path,
                    held / self._fps,
                    self._pending[1].frame.source_id,
                    most / self._fps,
                )
            self._t0 += (held - most) / self._fps  # the video goes on from here, that much behind the clock
            held, slot = most, self._slot + most
        waiting, self._pending = self._pending, (image, result)
        self._slot = slot
        self._put(annotate(*waiting), held)

    def _last_held(self) -> int:
        """The slots a paced video's last frame is written for, at ``close``: from its own slot to the one the
        video ends in, now (``Frame.ts`` is wall-clock time), as a next frame arriving now would end it; one at
        least (the close came within its slot, or the clock was set back), ``MAX_HOLD_S`` at most (a source
        silent for a while before the stop), without the gap's warning: nothing plays after it."""
        now = math.floor((time.time() - self._t0) * self._fps + _SLOT_SLACK)
        return min(max(1, now - self._slot), max(1, round(MAX_HOLD_S * self._fps)))

    def _open(self, w: int, h: int) -> None:
        """Open the writer for frames of ``w`` x ``h`` pixels (the first frame's), at the next free name.

        Raises:
            ConfigError: the container takes no frame of that size, or OpenCV's writer does not open (with
                the reason where there is one: the folder, a full disk); no file is left behind.
        """
        cv2 = opencv()

        why = _size_refused(self.path, self._suffix, w, h)
        if why is not None:
            self._failed = True
            raise ConfigError(why)
        self._size = (w, h)
        self.path = _free_name(self.path)
        self._file = os.path.abspath(self.path)
        self._writer = cv2.VideoWriter(self._file, cv2.VideoWriter.fourcc(*self._fourcc), self._fps, self._size)
        if self._writer.isOpened():
            if self._paced:
                log.info(
                    "%s: the source declares no rate: frames are paced by their capture time at %g frames per "
                    "second, each repeated until the next (for %g s at most)",
                    self.path,
                    self._fps,
                    MAX_HOLD_S,
                )
            if (w % 2 or h % 2) and self._writer.getBackendName() == "FFMPEG":
                # OpenCV's FFmpeg writer takes even sides only, and leaves out the last column or row without a word
                log.warning(
                    "%s: OpenCV's video writer takes frames of even sides only: these %dx%d frames are written "
                    "as %dx%d (their last %s left out)",
                    self.path,
                    w,
                    h,
                    w - w % 2,
                    h - h % 2,
                    "column and row" if w % 2 and h % 2 else "column" if w % 2 else "row",
                )
            return
        self._failed = True  # close() releases it, with nothing to check
        with contextlib.suppress(OSError):  # the name was free: whatever is there now, the writer left
            os.unlink(self._file)
        folder = os.path.dirname(self._file)
        if not os.access(folder, os.W_OK | os.X_OK):
            reason = os.strerror(_errno_of(folder))
        else:
            reason = _no_room(self._file, 0) or (
                f"OpenCV's {self._fourcc} writer does not open for {w}x{h} frames at {self._fps:g} frames per second"
            )
        raise ConfigError(f"cannot write {self.path}: {reason}")

    def _fail(self, why: str) -> PipelineError:
        self._failed = True  # close() releases the writer and checks no further
        return PipelineError(f"cannot write {self.path}: {why}")

    def _check_growing(self) -> None:
        """Raise ``PipelineError`` when the file stopped growing and has no room to grow into."""
        try:
            size = os.stat(self._file).st_size
        except OSError as exc:  # deleted under the writer: what it writes goes nowhere anyone can read
            raise self._fail(exc.strerror or str(exc)) from exc
        if size > self._size_seen:
            self._size_seen = size
            return
        why = _no_room(self._file, size)
        if why is not None:
            raise self._fail(why)

    def close(self) -> None:
        """Finish the file (a paced video's waiting frame written first, for its time: ``_last_held``), and
        check that it holds every frame written.

        Raises:
            PipelineError: the finished file does not (a full disk, the file-size limit).
        """
        if self._writer is None:
            return
        try:
            if self._pending is not None and not self._failed:  # a paced video's last frame, for its time
                waiting, self._pending = self._pending, None
                self._put(annotate(*waiting), self._last_held())
        finally:
            writer, self._writer = self._writer, None
            writer.release()
            try:
                if not self._failed:
                    self._check_finished()
            finally:
                if self._failed:  # a file the disk took nothing of would only push the next run to `out-1.mp4`
                    with contextlib.suppress(OSError):
                        if os.stat(self._file).st_size == 0:
                            os.unlink(self._file)

    def _check_finished(self) -> None:
        """Open the released file again: it must declare every frame written, and where its disk is left
        full (or it is at the size limit) its last frame must decode, since its tail is what would be missing."""
        cv2 = opencv()

        try:
            size = os.stat(self._file).st_size
        except OSError as exc:
            raise self._fail(exc.strerror or str(exc)) from exc
        why = _no_room(self._file, size)
        cap = cv2.VideoCapture(self._file)
        try:
            if not cap.isOpened() and why is None:  # an OpenCV that writes, and reads no video back: not checkable
                return
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            whole = frames == self.written
            if whole and why is not None:  # opening reads the header, and a header written first can be whole
                whole = bool(cap.set(cv2.CAP_PROP_POS_FRAMES, self.written - 1)) and cap.read()[0]
        finally:
            cap.release()
        if not whole:
            raise self._fail(why or f"the finished file holds {max(frames, 0)} of the {self.written} frames written")
