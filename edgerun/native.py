"""Background Python in the shadow of native inference calls.

CPython runs one thread's Python at a time (the GIL). A runtime's inference call
(TFLite ``invoke``, ONNX Runtime ``run``) releases the GIL for its whole native
duration and takes it back when it returns. A background thread that runs Python
in short bursts between system calls (paho's per-message work on the MQTT link:
a publish is two ``send`` calls, a PUBACK three ``recv`` calls) takes the GIL
back within microseconds after each call, usually before a thread that waits for
it has been scheduled. So an inference call that returns in the middle of such a
burst waits for the burst to end, or for the interpreter's switch interval (5 ms)
to force a hand-over: the convoy effect. On 2 vCPUs this put 300-490 waits into
1,500 MobileNet calls and 10-20% on their p99 (docs/performance.md).

``NativeCalls`` lets the two take turns instead. The backends mark every
inference call (``enter`` before it, ``leave`` after it: about 1 us, and one
attribute test while no background user ``watch``es; the MQTT link watches while
it runs). A background thread calls ``wait_turn`` before a burst: it returns at
once while a call is in its turn (the GIL is free then) or when none has run for
``idle_after_s`` (nothing to disturb), and otherwise sleeps, GIL released, until
the next call starts or ``max_wait_s`` passes (so background work is delayed,
never starved). During the burst, ``time_left`` says how much of ``share`` of a
typical call's duration (a moving average over every model's calls) is left
since the latest call began, so the burst ends before the call is expected back.

Invariant: the foreground never waits for background work. ``enter`` and
``leave`` hold one lock for a few attribute updates (as ``wait_turn`` does), and
``enter`` sets an event when a background thread waits; only ``wait_turn``
sleeps, and only its caller. One instance per process (``native_calls``): there
is one GIL per process. Limits: the moving average is shared by the models of a
process, so with a slow and a fast model the fast one's calls may return inside
a turn; a model's first (warm-up) call raises the average for a few dozen calls.
When a first user starts watching, the average starts afresh.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["MAX_WAIT_S", "NativeCalls", "native_calls"]

#: The longest a background user defers one piece of work to inference calls (``wait_turn``).
MAX_WAIT_S = 0.05


class NativeCalls:
    """Foreground native calls, and turns for background Python between them.

    Args:
        share: fraction of a typical call's duration that background work may
            take once the call has started.
        idle_after_s: with no call for this long, the foreground counts as idle
            and background work goes ahead at once.
        min_call_s: calls shorter than this (typically) leave no room for a
            burst; background work then goes ahead at once too, as it would
            without turns (waiting for such a call would start every burst just
            before the call returns).
        clock: seconds, monotonic (``time.perf_counter``; tests give their own).
    """

    def __init__(
        self,
        *,
        share: float = 0.5,
        idle_after_s: float = 0.05,
        min_call_s: float = 0.001,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.idle_after_s = idle_after_s
        self.min_call_s = min_call_s
        self._clock = clock
        self._lock = threading.Lock()
        self._wakeup = threading.Event()  # set by enter() while a background thread waits
        self._running = 0  # foreground calls in progress
        self._opened = 0.0  # clock when the latest call began
        self._last = -math.inf  # clock when the last call ended
        self._typical = 0.0  # moving average of a call's duration, s
        self._waiting = 0  # background threads in wait_turn
        self._watchers = 0  # users of turns; with none, enter and leave do nothing

    def watch(self) -> None:
        """A background user starts taking turns: from now on calls are tracked
        (afresh: what was measured while nobody watched may be another model's)."""
        with self._lock:
            if not self._watchers:
                self._typical, self._last = 0.0, -math.inf
            self._watchers += 1

    def unwatch(self) -> None:
        """That user has stopped (``watch`` and ``unwatch`` pair up)."""
        with self._lock:
            self._watchers -= 1

    # -- the foreground (inference threads) ------------------------------------
    def enter(self) -> float:
        """A native call is about to start; returns its start time, for ``leave``
        (0 while nobody watches: then the pair costs one attribute test)."""
        if not self._watchers:
            return 0.0
        now = self._clock()
        with self._lock:
            self._running += 1
            self._opened = now  # the latest call's start: overlapping calls (several pipelines) each open a turn
        if self._waiting:
            self._wakeup.set()
        return now

    def leave(self, started: float) -> None:
        """The call that ``enter`` returned ``started`` for has returned."""
        if not started:
            return
        now = self._clock()
        took = now - started
        with self._lock:
            self._running -= 1
            self._last = now
            self._typical = took if self._typical == 0.0 else self._typical + 0.1 * (took - self._typical)

    # -- background threads ----------------------------------------------------
    def wait_turn(self, max_wait_s: float = MAX_WAIT_S) -> None:
        """Return when ``time_left`` is positive, or after ``max_wait_s`` (the GIL is
        released while waiting): background work may be delayed, never starved."""
        now = self._clock()
        deadline = now + max_wait_s
        while now < deadline:
            with self._lock:
                if self._left(now) > 0:
                    return
                until = deadline if self._running else min(deadline, self._last + self.idle_after_s)
                self._waiting += 1
                self._wakeup.clear()  # under the lock: an enter() after this sees _waiting and sets it
            try:
                self._wakeup.wait(until - now)
            finally:
                with self._lock:
                    self._waiting -= 1
            now = self._clock()

    def time_left(self) -> float:
        """Seconds of background work that fit now without delaying an inference call.

        While a call runs: what is left of ``share`` of a typical call since the
        latest call began (negative once spent). Between two calls: 0. With no call for
        ``idle_after_s``, or calls too short to work beside: infinity.
        """
        return self._left(self._clock())

    def _left(self, now: float) -> float:
        if self._typical < self.min_call_s:
            return math.inf
        if self._running:
            return self._opened + self.share * self._typical - now
        if now - self._last >= self.idle_after_s:
            return math.inf
        return 0.0

    @property
    def typical_s(self) -> float:
        """The moving average of a native call's duration (0 before the first)."""
        return self._typical


native_calls = NativeCalls()
