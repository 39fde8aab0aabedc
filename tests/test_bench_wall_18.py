"""``edgerun bench``'s throughput is runs over the time the runs took: the progress display's own time between
runs, and after the last one, is not the model's (one run of 3.45 ms read 137 runs a second, not 290)."""

from __future__ import annotations

import time

import numpy as np

from edgerun.bench import _timed


def _busy(ms: float) -> None:
    """A stand-in for a model call: the CPU held for ``ms``."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def test_the_timed_wall_leaves_out_the_progress_display() -> None:
    samples = np.zeros(3)
    done, wall = _timed(lambda: _busy(2.0), [], samples, lambda _: time.sleep(0.2))
    assert done == 3
    assert 3 / wall > 100  # about 500 a second: three 2 ms runs; once 3 / 0.206 s, 14.6 a second
    assert wall >= samples.sum() / 1e3  # never shorter than the runs themselves
