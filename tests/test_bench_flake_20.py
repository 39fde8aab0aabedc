"""Ctrl-C as the bench reads a child's reply: the figures come back whole, never half-read and lost.

``test_a_benchmark_process_that_dies_is_one_line_and_the_next_model_is_still_measured`` failed
now and then under load: a Ctrl-C sent to the whole group reached the child, which answered,
before the parent was scheduled; the parent then read the reply's length, took its
KeyboardInterrupt before the body, and the read that followed took the body for a length. No
row came out. Here the SIGINT comes at that very moment every time: right after the length.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from edgerun.bench import BenchInterrupted, bench_isolated
from tests.conftest import DIGITS


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process, as in ``edgerun bench`` on a terminal."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_ctrl_c_between_a_replys_length_and_its_body_keeps_the_figures(
    python_sigint: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = Connection._recv  # type: ignore[attr-defined]
    sent: list[int] = []

    def ctrl_c_after_the_length(self: Connection, size: int, *args: Any) -> Any:
        buf = read(self, size, *args)
        if size == 4 and not sent:  # the reply's length is read, its body still in the pipe
            sent.append(size)
            signal.raise_signal(signal.SIGINT)  # what a parent scheduled late meets as it returns from the read
        return buf

    monkeypatch.setattr(Connection, "_recv", ctrl_c_after_the_length)
    stopped: BenchInterrupted | None = None
    try:
        bench_isolated(str(DIGITS / "digits_int8.tflite"), "cpu", 50, 1)
    except BenchInterrupted as exc:
        stopped = exc
    except KeyboardInterrupt:  # a bare one would end the whole pytest run
        pytest.fail("a KeyboardInterrupt came out of bench_isolated, not a BenchInterrupted")
    assert sent, "the reply was never read"
    assert stopped is not None, "the Ctrl-C was lost: the benchmark went on as if none had come"
    # once None: the body had been read as the next message's length ("Ran out of input")
    assert stopped.partial is not None
    assert stopped.partial.runs == 50 and stopped.partial.path.endswith("digits_int8.tflite")
