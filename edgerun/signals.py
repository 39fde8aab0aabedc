"""Signals (SIGTERM, SIGINT, SIGHUP) turned into calls made on a thread of their own.

A Python signal handler runs on the main thread, between two bytecodes of whatever that
thread was doing. A handler that takes a lock (``Event.set``, a source's ``close``)
deadlocks when the main thread held that same lock at that moment: every ``Event.wait``
holds its event's lock for a few bytecodes on the way in and out, so a daemon waiting in
short steps (a systemd watchdog of 20 ms) froze, now and then, on the SIGTERM that was to
stop it.

Here the handler does nothing itself. CPython's C-level handler writes the signal's number
to a wakeup fd (``signal.set_wakeup_fd``), taking no Python lock; a watcher thread reads it
and makes the call, where taking a lock is safe.

A SIGINT ignored on the way in stays ignored (``kept_ignored``): a shell without job control (a
script, a CI step) starts ``cmd &`` with SIGINT ignored (POSIX), so that the Ctrl-C meant for the
job in the foreground reaches no background one, and a program keeps it so (CPython itself installs
no ``KeyboardInterrupt`` handler then). SIGTERM, and any other signal, is handled whatever it was.

``exit_in_words`` says how a child process ended (an isolated worker, a benchmark process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

log = logging.getLogger(__name__)

__all__ = ["exit_in_words", "handled", "kept_ignored", "sigterm_as_interrupt"]

Action = Callable[[signal.Signals], None]

#: The signals left ignored where they are ignored already: a background job's SIGINT (see above).
_KEEP_IGNORED = frozenset({signal.SIGINT})


def kept_ignored(sig: signal.Signals) -> bool:
    """Whether ``sig`` is to be left as it is, not handled: a SIGINT set to ``SIG_IGN`` (a background
    job's, inherited). Ask before setting a handler of one's own."""
    return sig in _KEEP_IGNORED and signal.getsignal(sig) == signal.SIG_IGN


@contextlib.contextmanager
def handled(actions: Mapping[signal.Signals, Action]) -> Iterator[None]:
    """While inside, each signal of ``actions`` calls its action (with the signal) on a watcher
    thread; on the way out the previous handlers and wakeup fd are put back. A SIGINT ignored on the
    way in stays ignored (``kept_ignored``): its action is never called.

    Call from the main thread (``signal.signal`` refuses any other). An action that raises is
    logged; later signals still reach theirs.
    """
    kept = [sig for sig in actions if kept_ignored(sig)]
    if kept:
        log.debug("%s is ignored (a background job's): left so", ", ".join(s.name for s in kept))
        actions = {sig: action for sig, action in actions.items() if sig not in kept}
    read, write = os.pipe()
    os.set_blocking(write, False)  # set_wakeup_fd refuses a blocking one: a signal storm must never block
    try:
        previous_fd = signal.set_wakeup_fd(write)  # ValueError off the main thread: nothing started yet
    except BaseException:
        os.close(read)
        os.close(write)
        raise
    previous = {sig: signal.signal(sig, _wake_only) for sig in actions}
    watcher = threading.Thread(
        target=_watch, args=(read, {int(sig): a for sig, a in actions.items()}), name="signals", daemon=True
    )
    watcher.start()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write)  # the watcher reads the end of the pipe and returns
        watcher.join()
        os.close(read)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``KeyboardInterrupt`` on the main thread, as Ctrl-C does.

    For work done on the main thread itself (``bench``'s timed runs), where only an exception raised
    by the handler ends it: without it SIGTERM ends the process with no word (exit 143), the figures
    measured so far lost. Raising takes no lock, so this handler may do it (see above).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: none is needed, but one must be set for the wakeup fd to be written."""


def _watch(fd: int, actions: dict[int, Action]) -> None:
    while data := os.read(fd, 64):  # b"" once the write end is closed
        for number in data:
            action = actions.get(number)
            if action is None:  # another signal with a Python handler also writes its number here
                continue
            sig = signal.Signals(number)
            try:
                action(sig)
            except Exception:
                log.exception("handling %s failed", sig.name)


def exit_in_words(code: int | None) -> str:
    """How a child process ended, from its ``exitcode``: ``exit code 1``, ``killed by SIGKILL``
    (``killed by signal 99`` for a number this platform does not name), or ``no exit status``
    for one not reaped yet."""
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
