"""The Source seam: anything that yields frames, knowing nothing of models.

File sources (images, video files, sensor files) are *pulled*: the pipeline
asks for the next frame when it has room, so they never drop, and a slow model
slows the reading (backpressure). Live sources (cameras, streams, MQTT) are
*pushed* by the world: a capture thread puts every frame into a
``LatestBuffer``, which keeps the newest frames and counts what it drops, so a
slow model never stalls the capture.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from edgerun.errors import SourceError

log = logging.getLogger(__name__)

__all__ = ["Frame", "LatestBuffer", "LiveSource", "Source", "connect_with_retries"]

T = TypeVar("T")


class Frame(msgspec.Struct, frozen=True):
    """One unit of input.

    Attributes:
        data: encoded image bytes, a decoded image (uint8 HxWxC, BGR) or a numeric array.
        ts: wall-clock time of capture or reading (unix seconds).
        source_id: where it came from (a path, ``camera:0#17``, ``file.csv@4096``).
        index: position in the source, from 0.
        error: set instead of usable ``data`` when this one input could not be read.
    """

    data: Any
    ts: float
    source_id: str
    index: int
    error: str | None = None


@runtime_checkable
class Source(Protocol):
    """Yields frames until its input ends (or, for live sources, until closed)."""

    uri: str
    live: bool
    #: Frames arrive decoded (video, camera, stream, sensor windows): reading is the heavy
    #: part, so the pipeline runs no prepare thread: the reading thread prepares a frame
    #: while inference has frames queued, the inference thread when it has none. False
    #: where frames are encoded bytes or paths that preparing decodes (files, MQTT messages).
    decoded: bool

    @property
    def dropped(self) -> int:
        """Frames discarded because the consumer was slower than the source."""
        ...

    def frames(self) -> Iterator[Frame]:
        """The frames, in order."""
        ...

    def close(self) -> None:
        """Stop producing; ``frames()`` ends after what is buffered."""
        ...


class LatestBuffer:
    """A bounded buffer that keeps the newest items: a put into a full buffer drops the oldest."""

    def __init__(self, capacity: int = 2) -> None:
        self._items: collections.deque[Frame] = collections.deque()
        self._capacity = max(1, capacity)
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: Frame) -> None:
        """Add ``item``, dropping the oldest one if the buffer is full; never blocks."""
        with self._cond:
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest buffered item; None once closed and empty (or on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more puts; ``get`` drains what is left, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed


class LiveSource:
    """Base for pushed sources: subclasses implement ``_capture(buffer, stop)`` on a thread.

    The capture thread's fatal error (a camera unplugged beyond its retries, a
    broker that refuses the subscription) is kept and raised from ``frames()``
    once the buffer is drained, so the pipeline stops with that message.
    """

    live = True

    def __init__(self, uri: str, queue: int = 2) -> None:
        self.uri = uri
        self._buffer = LatestBuffer(queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def dropped(self) -> int:
        """Frames the buffer discarded for newer ones."""
        return self._buffer.dropped

    def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._capture(self._buffer, self._stop)
        except BaseException as exc:  # kept and re-raised in the consumer's thread
            self._error = exc
        finally:
            self._buffer.close()

    def start(self) -> None:
        """Start capturing (``frames()`` does it on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"capture {self.uri}", daemon=True)
            self._thread.start()

    def frames(self) -> Iterator[Frame]:
        """Buffered frames, newest kept, until closed or the capture ends."""
        self.start()
        while True:
            frame = self._buffer.get()
            if frame is None:
                break
            yield frame
        if self._error is not None:
            raise self._error

    def _release(self) -> None:
        """Let go of what ``__init__`` opened (a capture), for a source closed before it ran; idempotent."""

    def close(self) -> None:
        """Stop the capture thread and let ``frames()`` finish; a source that never ran lets go of its device."""
        self._stop.set()
        if self._thread is None:
            self._release()  # no capture thread will: a camera would stay busy until garbage collection
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._buffer.close()


def connect_with_retries(
    what: str, attempt: Callable[[], T], *, retries: int, delay_s: float, stop: threading.Event
) -> T | None:
    """``attempt()``'s result, tried up to ``retries`` times; None when ``stop`` is set meanwhile.

    A live source's connection (a stream, a broker) is tried at most ``retries``
    times, ``delay_s * n`` apart after the n-th failure, each failure logged;
    nothing is waited for after the last one. A source closed during a wait or
    an attempt ends without an error: the caller stopped it.

    Args:
        what: the peer, as messages name it (``stream rtsp://cam/1``, ``MQTT broker host:1883``).
        attempt: connects, or raises ``OSError`` whose text says why not.

    Raises:
        SourceError: every attempt failed; the message names ``what`` and the last reason.
    """
    last = "no answer"
    for n in range(1, retries + 1):
        try:
            return attempt()
        except OSError as exc:  # DNS, refused, unreachable, timed out, not opened
            last = exc.strerror or str(exc) or type(exc).__name__
        log.warning("%s: attempt %d of %d failed: %s", what, n, retries, last)
        if n < retries and stop.wait(delay_s * n):
            return None
    if stop.is_set():  # closed while the last attempt ran: a stop, not a failure
        return None
    raise SourceError(f"{what} unreachable after {retries} attempt{'' if retries == 1 else 's'}: {last}")
