"""The bounded, ordered hand-over between a pipeline's threads.

A ``Channel`` is a bounded FIFO between one producing and one consuming thread;
``Lanes`` are one or more channels used in turn, so that several workers between
two threads keep the order of what passes through. ``put`` and ``get`` wait as
long as it takes, giving up only when the run is aborted.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

__all__ = ["END", "NOTHING", "Channel", "Lanes", "get", "put"]

END = object()  # the end of a stream, passed down every lane
NOTHING = object()  # what a get that found nothing returns


class Channel:
    """A bounded FIFO between one producing and one consuming thread.

    Unlike ``queue.Queue``, a producer blocked on a full channel is woken only once
    the channel is half empty, not for every item taken: a reader that runs ahead
    then refills it in a burst. Waking a blocked thread costs the waker a system
    call (~20 us on a VM, with the GIL held), and with ``queue.Queue`` the
    busiest stage paid one per frame for the reader behind it. A waiting consumer
    is still woken for every item (latency).
    """

    __slots__ = ("_getters", "_items", "_lock", "_low", "_not_empty", "_not_full", "_putters", "_size")

    def __init__(self, size: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._size = size
        self._low = size // 2
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._getters = 0
        self._putters = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, timeout: float) -> bool:
        """Append, waiting up to ``timeout`` s for room; False if there was none."""
        with self._lock:
            items = self._items
            if len(items) >= self._size:
                self._putters += 1
                try:
                    while len(items) >= self._size:
                        if not self._not_full.wait(timeout) and len(items) >= self._size:
                            return False
                finally:
                    self._putters -= 1
            items.append(item)
            if self._getters:
                self._not_empty.notify()
        return True

    def get(self, timeout: float | None) -> Any:
        """The oldest item, waiting up to ``timeout`` s (None: not at all); ``NOTHING`` if none came."""
        with self._lock:
            items = self._items
            if not items:
                if timeout is None:
                    return NOTHING
                self._getters += 1
                try:
                    while not items:
                        if not self._not_empty.wait(timeout) and not items:
                            return NOTHING
                finally:
                    self._getters -= 1
            item = items.popleft()
            if self._putters and len(items) <= self._low:
                self._not_full.notify()
        return item


class Lanes:
    """Bounded queues used in turn: what goes in in order comes out in the same order.

    One lane is a plain bounded queue. With several, each prepare worker owns one
    lane in and one lane out; the reader deals frames to them in turn and the
    inference thread collects them in the same turn, so the order of results is
    the order of the source however the workers interleave. One thread puts and
    one thread gets (per ``Lanes``), so the two turn counters need no lock.
    """

    def __init__(self, lanes: int, size: int, abort: threading.Event) -> None:
        self.channels = [Channel(size) for _ in range(lanes)]
        self._abort = abort
        self._put_at = 0
        self._get_at = 0

    def put(self, item: Any) -> bool:
        """Put into the next lane, with backpressure; False only when the run is aborted."""
        if not put(self.channels[self._put_at], item, self._abort):
            return False
        self._put_at = (self._put_at + 1) % len(self.channels)
        return True

    def empty(self) -> bool:
        """True when the lane the next item goes into holds nothing (its consumer has nothing waiting there)."""
        return not self.channels[self._put_at]

    def end(self) -> None:
        """Put the end marker into every lane (each worker, or the one consumer, needs its own)."""
        for channel in self.channels:
            put(channel, END, self._abort)

    def get(self) -> Any:
        """Take from the next lane: the next item in order, or ``END``."""
        item = get(self.channels[self._get_at], self._abort)
        if item is not END:
            self._get_at = (self._get_at + 1) % len(self.channels)
        return item

    def get_nowait(self) -> Any:
        """The next item in order if it is ready, else ``NOTHING``."""
        item = self.channels[self._get_at].get(None)
        if item is not END and item is not NOTHING:
            self._get_at = (self._get_at + 1) % len(self.channels)
        return item


def put(channel: Channel, item: Any, abort: threading.Event) -> bool:
    """Put with backpressure; gives up only when the run is aborted."""
    while not channel.put(item, 0.1):
        if abort.is_set():
            return False
    return True


def get(channel: Channel, abort: threading.Event) -> Any:
    """Get, waiting as long as it takes; ``END`` once the run is aborted and nothing is left."""
    while (item := channel.get(0.1)) is NOTHING:
        if abort.is_set():
            return END
    return item
