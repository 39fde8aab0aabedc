"""``edgerun bench``'s throughput is runs over the time the runs took: the progress display's own time between
runs, and after the last one, is not the model's (one run of 3.45 ms read 137 runs a second, not 290)."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest

from edgerun import bench
from edgerun.bench import _timed


class _Clock:
    """A clock that moves only when told: each model run takes 2 ms, each progress display 200 ms."""

    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def perf_counter_ns(self) -> int:
        return self.ns

    def advance(self, ms: float) -> None:
        self.ns += int(ms * 1e6)


def test_the_timed_wall_is_the_runs_time_and_leaves_out_the_progress_display(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter_ns=clock.perf_counter_ns))
    shown: list[int] = []
    samples = np.zeros(3)

    def tick(done: int) -> None:
        shown.append(done)
        clock.advance(200)

    done, wall = _timed(lambda: clock.advance(2), [], samples, tick)
    assert done == 3
    assert shown[0] == 1  # the display ran between runs, so the wall had its time to leave out
    assert wall == pytest.approx(0.006)  # three 2 ms runs; counting the display read 0.206 s or more
    assert samples.tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_the_real_clocks_wall_leaves_out_a_displays_second() -> None:
    """The same on the real clock: the display sleeps a whole second after the first run, which the wall
    would hold if it were counted; the runs themselves are three busy 2 ms."""

    def busy() -> None:
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    samples = np.zeros(3)
    done, wall = _timed(busy, [], samples, lambda _: time.sleep(1.0))
    assert done == 3
    assert samples.sum() / 1e3 <= wall < 1.0  # never shorter than the runs; never holding the display's second
