"""edgerun.signals: a signal's action runs on a thread of its own, never inside the handler."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from edgerun import signals
from tests.conftest import ROOT


def test_an_action_that_needs_a_lock_the_main_thread_holds_runs_once_it_is_released() -> None:
    # Run apart: were the action called inside the handler, on the main thread holding the lock,
    # the process would freeze (as the daemon did on SIGTERM inside Event.wait); here that is a timeout.
    script = textwrap.dedent(
        """
        import os, signal, threading, time
        from edgerun import signals

        lock = threading.Lock()
        calls = []

        def action(sig):
            with lock:
                calls.append((sig.name, threading.current_thread() is threading.main_thread()))

        with signals.handled({signal.SIGTERM: action}):
            with lock:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)  # the Python-level handler runs here, on this thread, the lock held
                assert calls == []
            deadline = time.monotonic() + 20
            while not calls and time.monotonic() < deadline:
                time.sleep(0.01)
        print(calls)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('SIGTERM', False)]"


def _wait_for(condition: threading.Event) -> None:
    assert condition.wait(20)


@pytest.mark.logs_errors
def test_each_signal_reaches_its_own_action_and_a_failing_action_stops_none_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    hup = threading.Event()

    def fail(sig: signal.Signals) -> None:
        raise RuntimeError("the action broke")

    def record(sig: signal.Signals) -> None:
        seen.append(sig.name)
        hup.set()

    with (
        caplog.at_level(logging.ERROR, logger="edgerun.signals"),
        signals.handled({signal.SIGUSR1: fail, signal.SIGHUP: record}),
    ):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGHUP)
        _wait_for(hup)
    assert seen == ["SIGHUP"]
    assert "handling SIGUSR1 failed" in caplog.text
    assert "the action broke" in caplog.text


def test_the_previous_handlers_and_wakeup_fd_are_put_back() -> None:
    def own(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGUSR2, own)
    read, write = os.pipe()
    os.set_blocking(write, False)
    wakeup_before = signal.set_wakeup_fd(write)
    try:
        with signals.handled({signal.SIGUSR2: lambda sig: None}):
            assert signal.getsignal(signal.SIGUSR2) is not own
        assert signal.getsignal(signal.SIGUSR2) is own
        assert signal.set_wakeup_fd(write) == write  # ours again after the block
    finally:
        signal.set_wakeup_fd(wakeup_before)
        signal.signal(signal.SIGUSR2, before)
        os.close(read)
        os.close(write)


def test_a_signal_with_no_action_here_is_left_to_its_own_handler() -> None:
    mine = threading.Event()
    others: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: others.append(signum))
    try:
        with signals.handled({signal.SIGUSR1: lambda sig: mine.set()}):
            os.kill(os.getpid(), signal.SIGUSR2)  # also writes its number to the wakeup fd
            os.kill(os.getpid(), signal.SIGUSR1)
            _wait_for(mine)
        assert others == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_off_the_main_thread_it_is_refused_and_leaves_no_thread_or_pipe_behind() -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            with signals.handled({signal.SIGUSR1: lambda sig: None}):
                pass
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert threading.active_count() == threads_before
    assert len(os.listdir("/proc/self/fd")) == fds_before
