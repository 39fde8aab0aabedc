"""A daemon pipeline on a named pipe reads it again for each new writer (it used to end with the first)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_daemon import _in_process_daemon
from tests.test_sync import wait_until

MODEL = ROOT / "models/vibration/vibration_int8.tflite"
SAMPLES = ROOT / "models/vibration/samples"


def _write(fifo: Path, text: str, wait_s: float = 30) -> None:
    """One writer: opens the pipe once a reader has it open (failing after ``wait_s``), writes ``text``, closes it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has the pipe open
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise AssertionError(f"no reader opened {fifo} within {wait_s} s") from exc
            time.sleep(0.05)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w", encoding="utf-8") as writer:
        writer.write(text)


def _labels(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(line)["output"][0]["label"] for line in out.read_text().splitlines()]


def _said(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """Whether a log line has ``text``: a writer opening the pipe before its reader saw the last one close
    would continue that writer's rows (as for any reader of a pipe), so the tests wait for it."""
    return any(text in r.getMessage() for r in list(caplog.records))


def test_a_daemon_pipeline_on_a_named_pipe_reads_each_writer_in_turn_and_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    normal = (SAMPLES / "normal.csv").read_text().splitlines(keepends=True)[:513]  # header and two windows
    fault = (SAMPLES / "bearing_fault.csv").read_text().splitlines(keepends=True)[:257]  # header and one window
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"vibration": str(MODEL)},
        {"accel": {"source": str(fifo), "model": "vibration", "sinks": [str(out)], "restart_s": 30}},
    )
    daemon.start()
    try:
        _write(fifo, "".join(normal))
        wait_until(lambda: _said(caplog, "waiting for the next writer"), 30, "the first writer's end")
        assert len(_labels(out)) == 2
        _write(fifo, "".join(fault))  # a restart_s of 30 s would outlast the wait: the pipe is read again at once
        wait_until(lambda: len(_labels(out)) == 3, 30, "the second writer's window")
        assert _labels(out) == ["normal", "normal", "bearing_fault"]
        assert daemon.runners["accel"].state == "running"
    finally:
        daemon.stop()
    assert daemon.runners["accel"].state == "stopped"
    assert not daemon.runners["accel"].thread.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "the writer of" in m and "closed after 2 windows and 0 bad rows; waiting for the next writer" in m
        for m in messages
    )
    assert not any("retrying" in m for m in messages)


def test_a_writer_that_closes_before_one_window_is_a_warning_and_the_pipe_is_read_again_after_restart_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    rows = (SAMPLES / "normal.csv").read_text().splitlines(keepends=True)
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"vibration": str(MODEL)},
        {"accel": {"source": str(fifo), "model": "vibration", "sinks": [str(out)], "restart_s": 0.2}},
    )
    daemon.start()
    try:
        _write(fifo, "".join(rows[:50]))  # the header and 49 rows: less than one window of 256
        wait_until(lambda: _said(caplog, "retrying in 0.2 s"), 30, "the short writer's warning")
        _write(fifo, "".join(rows[:257]))  # the next writer, read after restart_s
        wait_until(lambda: len(_labels(out)) == 1, 30, "the second writer's window")
    finally:
        daemon.stop()
    assert _labels(out) == ["normal"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "retrying in 0.2 s" in warnings[0], warnings
