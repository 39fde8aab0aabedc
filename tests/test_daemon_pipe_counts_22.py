"""The line a daemon logs when a named pipe's writer closes counts bad rows and failed windows apart.

It gave the summary's errors as the bad rows: windows the model failed (rows of four channels into a
three-channel model, which only the window shows on a pipe) were logged as bad rows, and none as failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_daemon import _in_process_daemon
from tests.test_daemon_named_pipe import MODEL, SAMPLES, _said, _write
from tests.test_sync import wait_until


def test_a_pipe_writer_s_end_line_counts_bad_rows_and_failed_windows_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    rows = (SAMPLES / "normal.csv").read_text().splitlines()[1:257]  # one window of readings, no header
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"vibration": str(MODEL)},
        {"accel": {"source": str(fifo), "model": "vibration", "sinks": [str(tmp_path / "out.jsonl")]}},
    )
    daemon.start()
    try:
        # first writer: one good window and two bad rows among its rows
        _write(fifo, "t,x,y,z\n" + "\n".join([*rows[:100], "1,2", "0.1,x,0,0", *rows[100:]]) + "\n")
        wait_until(lambda: _said(caplog, "waiting for the next writer"), 30, "the first writer's end")
        # second writer: a fourth channel on every row, which no bad row shows: the window fails at the model
        _write(fifo, "t,x,y,z,w\n" + "\n".join(f"{r},0.5" for r in rows) + "\n")
        wait_until(lambda: _said(caplog, "more failed"), 30, "the second writer's end")
    finally:
        daemon.stop()
    ends = [r.getMessage() for r in caplog.records if "waiting for the next writer" in r.getMessage()]
    assert "closed after 1 windows and 2 bad rows;" in ends[0], ends  # the bad rows, as before
    assert "closed after 0 windows (1 more failed) and 0 bad rows;" in ends[1], ends  # was "and 1 bad rows"
