"""Video files, cameras and network streams, all through OpenCV's ``VideoCapture``.

* a video file is pulled frame by frame (never drops); one that ends before the
  frame count its container declares (truncated or corrupt) ends with an error
  frame saying so, so the run counts the lost input instead of calling it the end;
* a camera (``camera:0``, ``/dev/video0``) is captured on its own thread into a
  latest-frames buffer, with the requested width, height and FPS; its first
  opening is a bounded number of attempts (a camera that enumerates late). A
  failed read (a USB hiccup, the camera unplugged) releases the device and opens
  it again, with the same settings, after a wait that grows as a stream's does
  (below), in as many attempts; frame indexes go on across reopenings, and a
  camera that does not come back ends the source with an error naming it;
* a network stream (``rtsp://``, ``http://`` MJPEG) likewise. One that drops is
  reconnected after a wait that doubles with each drop, from the retry delay up
  to ``RECONNECT_MAX_S``, and starts again from the retry delay once a connection
  gave frames for ``RECONNECT_RESET_S``; each connection is a bounded number of
  attempts. A stream that declares its length (a video file served over HTTP, a
  recording over RTSP) is a recording: once it gave all its frames, that is the
  end of input, not a drop (reconnecting would play it again). One that drops
  before is reconnected likewise, and the new connection decodes and passes over
  the frames already given (no seek: OpenCV's lands on the exact frame for some
  containers only), so no frame is given twice. A recording's last frame read is held back until the next
  read succeeds: a connection that drops can end in a frame decoded from part of
  its data, which the next connection reads again whole. Where a connection stops
  at the frame an earlier one stopped at, the recording ends there (truncated or
  corrupt, or its declared count is wrong): one error frame says so, as for a
  video file, and the capture ends.
  Each attempt to connect runs on a thread of its own (``_Opening``), since OpenCV
  offers no way to interrupt ``VideoCapture``'s open: a stop made meanwhile (a
  daemon's, ``edgerun run``'s on a signal) ends the wait for it within
  ``STOP_POLL_S``, not at the open's own timeout (10 s), and leaves the attempt
  behind; what it opens, if it ever does, is released there. So does each attempt
  to open a camera, whose first read waits as long on a device that gives no frame.

``open_capture`` is the hardware boundary: tests give the camera source a
function that opens a video file instead of a device.

Decoder threads: FFmpeg's own default is one decoding thread per core, which on
a small board takes the cores the model's inference runs on (measured on 2 vCPUs
with a 720p video: 8-10% fewer frames per second through a 1-thread MobileNet
INT8 pipeline). Video files and streams therefore decode on ``decode_threads``
threads, 1 unless asked otherwise; 0 leaves the choice to the decoder.

Frame memory: each source decodes into the arrays of frames that nothing refers
to any more (``FrameBuffers``), instead of a fresh 2.7 MB array for each 720p
frame (measured on 2 vCPUs, Zen 5: 2-10% more frames per second through a
1-thread TFLite MobileNet INT8 pipeline, docs/performance.md).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from edgerun.errors import SourceError
from edgerun.opencv import opencv
from edgerun.sources.base import Frame, LatestBuffer, LiveSource, connect_with_retries

log = logging.getLogger(__name__)

__all__ = ["CameraSource", "FrameBuffers", "StreamSource", "VideoFileSource", "VIDEO_SUFFIXES", "open_decoder"]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mjpeg"})

OpenCapture = Callable[[Any], Any]

#: Seconds: the longest wait before reconnecting a stream that keeps dropping.
RECONNECT_MAX_S = 30.0
#: Seconds: a connection that gave frames this long was a working stream; the next drop waits the retry delay.
RECONNECT_RESET_S = 30.0
#: Seconds: how often the wait for a stream's or a camera's opening attempt looks at a stop.
STOP_POLL_S = 0.05

T = TypeVar("T")

# Arrays are used again only where CPython's reference count can tell that no one else holds one: not on
# another interpreter (PyPy has no ``sys.getrefcount``), nor in a build without the GIL, where another
# thread's reference may be on its way while the count is read.
_POOLING = hasattr(sys, "getrefcount") and bool(getattr(sys, "_is_gil_enabled", lambda: True)())


class _ReconnectWait:
    """The wait before a live source's next reconnection, in seconds (a stream's, a camera's).

    The retry delay, doubled after each drop up to ``RECONNECT_MAX_S``; a connection
    that gave frames for ``RECONNECT_RESET_S`` was a working one, and the drop that
    ends it waits the retry delay again.
    """

    def __init__(self, delay_s: float) -> None:
        self._delay = self._next = delay_s
        self._since = time.monotonic()  # the current connection's start

    def after_drop(self) -> float:
        """The wait before reconnecting after the drop that just happened; the next drop's is twice as long."""
        if time.monotonic() - self._since >= RECONNECT_RESET_S:
            self._next = self._delay
        wait, self._next = self._next, min(self._next * 2, RECONNECT_MAX_S)
        return wait

    def connected(self) -> None:
        """A new connection starts now."""
        self._since = time.monotonic()


class _Opening(Generic[T]):
    """One attempt to open a stream or a camera, made on a thread of its own, which a stop does not wait for.

    ``cv2.VideoCapture`` cannot be interrupted: an attempt on a server that accepts
    and never answers blocks until the open timeout, and a camera that opens but
    gives no frame blocks its first read as long (V4L2's select timeout). Run on the
    caller's thread, it held a stop (SIGTERM to ``edgerun run``, a daemon's) that
    long. An attempt given up on is left to end on its own; what it opens then is
    released there (``release``).
    """

    def __init__(self, call: Callable[[], T], release: Callable[[T], None], name: str) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._given_up = False
        self._result: T | None = None
        self._error: Exception | None = None
        self._name = name
        threading.Thread(target=self._open, args=(call, release), name=f"open {name}", daemon=True).start()

    def _open(self, call: Callable[[], T], release: Callable[[T], None]) -> None:
        result: T | None = None
        error: Exception | None = None
        try:
            result = call()
        except Exception as exc:  # raised again on the caller's thread
            error = exc
        with self._lock:
            given_up = self._given_up
            self._result, self._error = result, error
            self._done.set()
        if given_up and result is not None:  # no one takes it: the connection or device stays open until collected
            release(result)
            log.debug("%s: an attempt given up on at a stop ended; what it opened is released", self._name)

    def wait(self, stop: threading.Event) -> tuple[bool, T | None]:
        """``(True, result)`` once the attempt ended (what ``call`` returned); ``(False, None)`` where ``stop``
        was set first, and the attempt is given up on.

        Raises:
            Exception: what ``call`` raised.
        """
        while not self._done.wait(STOP_POLL_S):
            if stop.is_set():
                with self._lock:
                    if not self._done.is_set():
                        self._given_up = True
                        return False, None
        if self._error is not None:
            raise self._error
        return True, self._result


def _release_capture(cap: Any) -> None:
    cap.release()


class FrameBuffers:
    """Reads a capture's frames into the arrays of earlier frames that nothing refers to any more.

    An array is used again only when this pool holds its one reference (CPython's
    reference count, compared with that of an object the pool alone holds, read the
    same way, since what ``sys.getrefcount`` counts differs between Python versions):
    a frame still queued, kept by a sink or by the caller, or seen through a view (a
    view holds its base) is never written over. A weak reference or a raw pointer
    (``ctypes.data``, ``__array_interface__``) to a frame let go does not hold it:
    it may show a later frame's pixels. An array someone made read-only before
    letting it go leaves the pool. The pool keeps at most ``size`` arrays, of one
    shape: a frame of another size (a stream reconnected at another resolution)
    starts it again. It holds no more than the frames in flight at the busiest
    moment held anyway, and it goes with its source. Without CPython's reference
    counts to rely on (``_POOLING``), every frame is a new array.
    """

    def __init__(self, size: int = 16) -> None:
        self._arrays: list[Any] = []
        self._size = size if _POOLING else 0
        self._probe = [object()]  # held by this list alone

    def read(self, cap: Any) -> Any:
        """The next frame of ``cap`` (``cap.read()``), or None where it gives none."""
        spare = self._spare() if self._size else None
        ok, image = cap.read(spare) if spare is not None else cap.read()
        if not ok or image is None:
            return None
        if image is not spare and self._size:  # a new array: OpenCV allocated it (none was free, or the size changed)
            if self._arrays and self._arrays[0].shape != image.shape:
                self._arrays.clear()
            if len(self._arrays) < self._size:
                self._arrays.append(image)
        return image

    def _spare(self) -> Any:
        arrays, probe = self._arrays, self._probe
        alone = sys.getrefcount(probe[0])  # asked as for the arrays below: the list's reference alone
        for i in range(len(arrays)):
            if sys.getrefcount(arrays[i]) == alone:
                if arrays[i].flags.writeable:
                    return arrays[i]
                del arrays[i]  # made read-only by its last holder: OpenCV would refuse to write into it
                return None
        return None


def open_decoder(uri: str, api: int, decode_threads: int, timeout_s: float | None = None) -> Any:
    """``cv2.VideoCapture`` on ``decode_threads`` FFmpeg decoding threads (0: the decoder's choice).

    The setting is FFmpeg's: it applies where OpenCV has the FFmpeg backend and
    knows the property. A local file that FFmpeg cannot open with it is handed to
    the other backends without it; a stream that does not answer is not tried a
    second time (its retries are the caller's). ``timeout_s`` bounds opening and
    each read (FFmpeg's own default is 30 s: a camera that accepts the connection
    and never answers held a daemon's stop that long for each attempt).
    """
    cv2 = opencv()
    ffmpeg = getattr(cv2, "CAP_FFMPEG", None)
    params: list[int] = []
    if decode_threads > 0 and hasattr(cv2, "CAP_PROP_N_THREADS"):
        params += [cv2.CAP_PROP_N_THREADS, decode_threads]
    if timeout_s is not None and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        msec = max(1, round(timeout_s * 1000))
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, msec, cv2.CAP_PROP_READ_TIMEOUT_MSEC, msec]
    if params and ffmpeg is not None and cv2.videoio_registry.hasBackend(ffmpeg):
        cap = cv2.VideoCapture(uri, ffmpeg, params)
        if cap.isOpened() or not Path(uri).is_file():
            return cap
        cap.release()
    return cv2.VideoCapture(uri, api)


class VideoFileSource:
    """Frames of a video file, decoded in order; never drops.

    When decoding stops before the frame count the container declares
    (``CAP_PROP_FRAME_COUNT``, used only where it is positive: some containers
    give 0 or nothing), the file is truncated or corrupt: that is yielded as one
    error frame, as a sensor file's bad row is, so the run reports it (the CLI
    prints it, the daemon logs it) and does not count the video as read to its end.
    """

    live = False
    decoded = True
    dropped = 0

    def __init__(self, path: str, *, decode_threads: int = 1) -> None:
        self.uri = path
        if not Path(path).is_file():
            raise SourceError(f"video not found: {path}")
        try:  # OpenCV says nothing of why it opened nothing: a file this user may not read is not an unknown format
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            raise SourceError(f"cannot open video {path}: {exc.strerror or exc}") from exc
        cv2 = opencv()
        self._cap = open_decoder(path, cv2.CAP_ANY, decode_threads)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open video {path}: no decoder accepts it")
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"cannot decode video {path}: no frame could be read")
        self._first = first
        self.fps = _declared_fps(self._cap)
        declared = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(declared) if math.isfinite(declared) and declared > 0 else None
        self._closed = False
        self._started = False

    def frames(self) -> Iterator[Frame]:
        """Every frame, as BGR uint8 arrays; then an error frame if the file ended early."""
        index, image, self._first = 0, self._first, None
        buffers = FrameBuffers()
        self._started = True  # before looking at _closed: close() checks them the other way round
        try:
            if self._closed:
                return
            while image is not None and not self._closed:
                yield Frame(image, time.time(), f"{self.uri}#{index}", index)
                index += 1
                image = buffers.read(self._cap)
            if image is None and self.declared_frames is not None and index < self.declared_frames:
                message = (
                    f"{self.uri}: decoding stopped at frame {index} of {self.declared_frames} "
                    "(truncated or corrupt video)"
                )
                yield Frame(None, time.time(), f"{self.uri}#{index}", index, error=message)
        finally:
            self._cap.release()

    def close(self) -> None:
        """Stop after the current frame; a source never read lets go of its file now."""
        self._closed = True
        if not self._started:
            self._cap.release()  # frames() never ran, so its own release never will


def _declared_fps(cap: Any) -> float:
    """The frame rate a capture declares; 0 when it declares none (or 0, NaN, a negative value)."""
    fps = float(cap.get(opencv().CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and fps > 0 else 0.0


def _parse_camera(spec: str) -> int | str:
    if spec.startswith("camera:"):
        rest = spec[len("camera:") :]
        if not (rest.isascii() and rest.isdigit()):  # '²' is a digit to isdigit, and not to int
            raise SourceError(
                f"camera index must be a non-negative whole number (camera:0 is /dev/video0), got {spec!r}"
            )
        return int(rest)
    return spec


def _open_v4l2(device: int | str) -> Any:
    cv2 = opencv()
    backend = getattr(cv2, "CAP_V4L2", cv2.CAP_ANY)
    return cv2.VideoCapture(device, backend)


class CameraSource(LiveSource):
    """A local camera through OpenCV (V4L2 on Linux), captured on its own thread, opened again when it stops.

    A failed read (a select timeout, a USB hiccup, the camera unplugged) is a drop:
    the device is released and opened again with the requested width, height and
    FPS, after a wait that grows as a stream's does (``_ReconnectWait``), in at
    most ``retries`` attempts ``retry_delay_s * n`` apart (``connect_with_retries``).
    Frame indexes go on across reopenings. A camera that does not come back in
    those attempts ends the source with a ``SourceError`` naming it.

    The first opening, here, is the same ``retries`` attempts: a USB camera that
    enumerates a second or two after a service starts (a board booting) is still
    found; one absent or busy on every attempt is a ``SourceError`` before a run
    starts (``camera camera:0 unreachable after 3 attempts: not found: no
    /dev/video0``, after 1 + 2 s with the defaults). ``stop`` (a daemon's, or
    ``edgerun run``'s on a signal) ends those attempts early: the source then
    gives no frames, and the caller discards it.
    """

    decoded = True

    def __init__(
        self,
        spec: str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        queue: int = 2,
        retries: int = 3,
        retry_delay_s: float = 1.0,
        open_capture: OpenCapture = _open_v4l2,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(spec, queue)
        self._device = _parse_camera(spec)
        self._open = open_capture
        self._size_fps = (width, height, fps)
        self._retries = retries
        self._delay = retry_delay_s
        # opened here, so a camera that is not there is an error before a run starts; ``stop`` ends the
        # attempts early: None then, and the caller discards the source
        stopped = stop or self._stop
        opened = connect_with_retries(
            f"camera {spec}", self._attempt(stopped), retries=retries, delay_s=retry_delay_s, stop=stopped
        )
        self._cap: Any = None
        self._first: Any = None
        if opened is not None:
            self._cap, self._first = opened
        self.fps = (_declared_fps(self._cap) if self._cap is not None else 0.0) or fps or 0.0
        #: times the camera was opened again after it stopped giving frames
        self.reconnects = 0

    def _attempt(self, stop: threading.Event) -> Callable[[], tuple[Any, Any] | None]:
        """One attempt to open the camera (``_open_device``) on a thread of its own (``_Opening``): None where
        ``stop`` was set before it or during it, which ``connect_with_retries`` passes on."""

        def attempt() -> tuple[Any, Any] | None:
            if stop.is_set():
                return None
            return _Opening(self._open_device, lambda opened: opened[0].release(), f"camera {self.uri}").wait(stop)[1]

        return attempt

    def _open_device(self) -> tuple[Any, Any]:
        """The open capture, set to the requested size and rate, and its first frame.

        Raises:
            OSError: the device cannot be opened or gives no frame; the text says which.
        """
        device = self._device
        node = f"/dev/video{device}" if isinstance(device, int) else device
        cap = self._open(device)
        if cap is None or not cap.isOpened():
            if not Path(node).exists():
                raise OSError(f"not found: no {node}")
            raise OSError(f"cannot be opened: busy, or no permission on {node}")
        cv2 = opencv()
        for prop, value in zip((cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS), self._size_fps):
            if value:
                cap.set(prop, float(value))
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise OSError("opened but gives no frames (busy or unsupported format)")
        return cap, first

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()

    def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
        index, image, self._first = 0, self._first, None
        cap = self._cap
        if cap is None:  # stopped while the first opening was retried
            return
        first = index  # this opening's first frame
        waits = _ReconnectWait(self._delay)
        buffers = FrameBuffers()
        try:
            while not stop.is_set():
                if image is not None:
                    buffer.put(Frame(image, time.time(), f"{self.uri}#{index}", index))
                    index += 1
                    image = buffers.read(cap)
                    continue
                cap.release()
                wait = waits.after_drop()
                log.warning(
                    "camera %s stopped giving frames after %d frames; opening it again in %.3g s",
                    self.uri,
                    index - first,
                    wait,
                )
                if stop.wait(wait):
                    break
                opened = connect_with_retries(
                    f"camera {self.uri}", self._attempt(stop), retries=self._retries, delay_s=self._delay, stop=stop
                )
                if opened is None:  # closed meanwhile
                    break
                cap, image = opened
                self.reconnects += 1
                waits.connected()
                first = index
        finally:
            cap.release()


class StreamSource(LiveSource):
    """A network stream (RTSP, HTTP MJPEG) through OpenCV's FFmpeg backend, reconnecting on drops.

    A recording (a stream that declares its frame count) gives each frame once,
    one frame after reading it: a reconnection passes over the frames given and
    goes on from the last one read (a connection's last frame may be decoded from
    part of its data), and a recording that stops at the same frame on two
    connections ends with an error frame (``decoding stopped at frame N of M on two
    connections``).
    """

    decoded = True

    def __init__(
        self,
        url: str,
        *,
        queue: int = 2,
        retries: int = 3,
        retry_delay_s: float = 1.0,
        decode_threads: int = 1,
        timeout_s: float = 10.0,
        open_capture: OpenCapture | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(url, queue)
        self._decode_threads = decode_threads
        self._timeout = timeout_s
        self._open = open_capture or self._open_ffmpeg
        self._retries = retries
        self._delay = retry_delay_s
        # the first connection is made here, so a stream that cannot be reached is an error before a run
        # starts; ``stop`` (a daemon's) ends its retries early: None then, and the caller discards the source
        self._cap = self._connect(stop or self._stop)
        #: the rate the stream declares, in frames per second; 0 when it declares none
        self.fps = _declared_fps(self._cap) if self._cap is not None else 0.0
        #: the frames a recording declares (a served file); None for a live stream, which declares none
        self.declared_frames = _declared_frames(self._cap) if self._cap is not None else None
        self.reconnects = 0
        #: a recording came to its end (all its frames, or where it stops for good): its end of input,
        #: which a daemon does not play again, as it does not read a finished file again
        self.ended = False

    def _open_ffmpeg(self, url: str) -> Any:
        cv2 = opencv()
        return open_decoder(url, getattr(cv2, "CAP_FFMPEG", cv2.CAP_ANY), self._decode_threads, self._timeout)

    def _connect(self, stop: threading.Event) -> Any:
        """An open capture; None when ``stop`` was set while waiting to retry or during an attempt."""

        def attempt() -> Any:
            if stop.is_set():  # stopped before this attempt: none is made
                return None
            ended, cap = _Opening(lambda: self._open(self.uri), _release_capture, f"stream {self.uri}").wait(stop)
            if not ended:  # stopped meanwhile: connect_with_retries passes this None on
                return None
            if cap is None or not cap.isOpened():
                raise OSError("not opened")
            return cap

        what = f"stream {self.uri}"
        return connect_with_retries(what, attempt, retries=self._retries, delay_s=self._delay, stop=stop)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()

    def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
        index = 0  # frames read so far, across connections; in a recording, the position in it
        cap = self._cap
        if cap is None:  # stopped while the first connection was retried
            return
        declared = self.declared_frames
        waits = _ReconnectWait(self._delay)
        first = index  # this connection's first frame
        # A recording's last frame read is held until the next read succeeds: a connection that drops can
        # end in a frame decoded from part of its data, and the next connection then reads that frame whole.
        held: Frame | None = None
        skip = 0  # frames of a recording this connection still passes over: they were given before
        furthest = -1  # the furthest frame of a recording any connection stopped at
        buffers = FrameBuffers()
        try:
            while not stop.is_set():
                if skip:
                    if cap.grab():  # decoded and passed over, never given again
                        skip -= 1
                        if not skip:
                            log.info("stream %s: passed again the %d frames given before the drop", self.uri, index)
                        continue
                else:
                    image = buffers.read(cap)
                    if image is not None:
                        frame = Frame(image, time.time(), f"{self.uri}#{index}", index)
                        index += 1
                        if declared is None:
                            buffer.put(frame)
                        else:
                            if held is not None:
                                buffer.put(held)
                            held = frame
                        continue
                cap.release()
                if stop.is_set():
                    break
                wait = waits.after_drop()
                if declared is None:
                    got = index - first
                    log.warning("stream %s dropped after %d frames; reconnecting in %.3g s", self.uri, got, wait)
                else:
                    at = index - skip  # where this connection stopped
                    if held is not None and (index >= declared or at == furthest):
                        buffer.put(held)  # the last frame there is: as a video file's, given as decoded
                    if index >= declared:
                        log.info(
                            "stream %s ended after its %d frames (a recording, not a live stream)", self.uri, index
                        )
                        self.ended = True
                        break
                    if at == furthest:
                        # two connections stopped at this frame: the recording ends here (a network that drops
                        # a connection does not do it twice at one frame), and playing it again would not help
                        message = (
                            f"{self.uri}: decoding stopped at frame {at} of {declared} on two connections "
                            "(truncated or corrupt recording)"
                        )
                        buffer.put(Frame(None, time.time(), f"{self.uri}#{at}", at, error=message))
                        self.ended = True
                        break
                    furthest = max(furthest, at)
                    if held is not None:  # read again by the next connection
                        held, index = None, index - 1
                    log.warning(
                        "stream %s dropped at frame %d of the %d its recording declares; reconnecting in %.3g s "
                        "to go on from frame %d",
                        self.uri,
                        at,
                        declared,
                        wait,
                        index,
                    )
                if stop.wait(wait):
                    break
                cap = self._connect(stop)
                if cap is None:
                    break
                self.reconnects += 1
                waits.connected()
                first = index
                skip = index if declared is not None else 0  # a recording starts again from its first frame
        finally:
            if cap is not None:
                cap.release()


def _declared_frames(cap: Any) -> int | None:
    """The frame count a capture declares; None where it declares none (a live stream gives 0, a negative
    number or NaN)."""
    count = float(cap.get(opencv().CAP_PROP_FRAME_COUNT) or 0.0)
    return int(count) if math.isfinite(count) and count > 0 else None
