"""A stopped run over a quiet sensor stream leaves no reading thread and no open pipe behind.

A run reading a named pipe or standard input whose writer is quiet is stopped by
``close()`` (SIGINT, SIGTERM, a daemon's reload): the source polls its descriptor
every 0.2 s, so the reading thread ends and the pipe is closed, where a thread
blocked in ``read()`` would stay, with its descriptor, until the next byte came:
one more of each for every reload of a daemon. The poll is ``poll``, not
``select``, which refused a descriptor numbered 1024 or more: in a process that
held that many files open, a pipe's run failed at its first read. Real named
pipes, real writer processes, the real vibration model, a real daemon reloaded
from its config file.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import edgerun
from edgerun.pipeline import Pipeline, Summary
from edgerun.sources.sensor import SensorSource
from tests.conftest import ROOT
from tests.test_sync import wait_until

MODEL = ROOT / "models/vibration/vibration_int8.tflite"
NORMAL = ROOT / "models/vibration/samples/normal.csv"  # t,x,y,z: a header, then 2048 rows
WINDOW = 256  # the vibration model's rows per window
LEFT = "still waiting for input"  # what the pipeline says when it leaves a reader behind

#: A writer process: opens the pipe (waiting for its reader), writes its argument, says so in a file
#: and stays, the pipe open and quiet, until it is ended.
_WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, sys.argv[2].encode())
open(sys.argv[3], "w").close()
time.sleep(600)
"""


def _rows(windows: int) -> str:
    """The header and ``windows`` windows of the normal sample."""
    return "".join(NORMAL.read_text().splitlines(keepends=True)[: 1 + windows * WINDOW])


@contextmanager
def _quiet_writer(fifo: Path, text: str) -> Iterator[Path]:
    """A writer process that writes ``text`` to ``fifo`` once a reader opens it, then keeps it open and writes
    nothing more; yields the file that appears once it has written."""
    written = fifo.with_name(fifo.name + ".written")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(fifo), text, str(written)])
    try:
        yield written
    finally:
        proc.kill()
        proc.wait(30)


def _held(path: Path) -> int:
    """How many of this process's descriptors are open on ``path``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used, gone by now
            count += os.readlink(f"/proc/self/fd/{name}") == str(path)
    return count


def _readers() -> set[threading.Thread]:
    """The pipelines' reading threads alive in this process."""
    return {t for t in threading.enumerate() if t.name.startswith("pipeline-read") and t.is_alive()}


def _said(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in list(caplog.records))


class _Run:
    """``Pipeline.run()`` on a thread of its own, its summary or exception kept."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.outcome: list[Summary | BaseException] = []
        self.thread = threading.Thread(target=self._run, name="test-run", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome.append(self.pipeline.run())
        except BaseException as exc:
            self.outcome.append(exc)

    def stop(self) -> Summary | BaseException:
        self.pipeline.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the run did not end after the stop"
        return self.outcome[0]


@pytest.fixture(scope="module")
def vibration() -> Iterator[edgerun.Model]:
    with edgerun.load(str(MODEL)) as model:
        yield model


@pytest.mark.parametrize(
    "text",
    ["", _rows(1), "0.0,0.1,0.2"],
    ids=["never-writes", "one-window-then-quiet", "half-a-row-then-quiet"],
)
def test_stopping_a_run_whose_pipe_writer_is_quiet_ends_its_reader_and_closes_the_pipe(
    tmp_path: Path, vibration: edgerun.Model, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    before = _readers()
    with _quiet_writer(fifo, text) as written:
        run = _Run(Pipeline(SensorSource(str(fifo), window=WINDOW), vibration, []))
        try:
            wait_until(written.exists, 30, "the writer to open the pipe and write")
            wait_until(lambda: run.pipeline.summary.frames == (1 if text.count("\n") > WINDOW else 0), 30, "a window")
            assert _held(fifo) == 1 and len(_readers() - before) == 1  # the run reads the pipe, and waits
        finally:
            outcome = run.stop()
        assert isinstance(outcome, Summary), outcome
        assert outcome.stopped_by == "stopped"
        wait_until(lambda: not (_readers() - before), 10, "the reading thread's end")
        assert _held(fifo) == 0, "the pipe is still open"
    assert not _said(caplog, LEFT)


def test_a_pipe_read_by_a_process_holding_over_1024_descriptors_gives_its_windows_and_stops(
    tmp_path: Path, vibration: edgerun.Model
) -> None:
    # select() refuses descriptors from 1024 (FD_SETSIZE): the run failed at its first read
    # ("filedescriptor out of range in select()"), a daemon's pipeline retried it for ever.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1536
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"this process may open {hard} files at most")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    fillers: list[int] = []
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    before = _readers()
    try:
        while not fillers or fillers[-1] < 1100:  # the next descriptor opened, the pipe's, is numbered past 1100
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        with _quiet_writer(fifo, _rows(2)) as written:
            run = _Run(Pipeline(SensorSource(str(fifo), window=WINDOW), vibration, []))
            try:
                wait_until(lambda: written.exists() or bool(run.outcome), 30, "the writer to open the pipe")
                wait_until(lambda: run.pipeline.summary.frames == 2 or bool(run.outcome), 30, "two windows")
                assert not run.outcome, f"the run ended: {run.outcome[0]}"
            finally:
                outcome = run.stop()
            assert isinstance(outcome, Summary), outcome
            assert (outcome.ok, outcome.errors, outcome.stopped_by) == (2, 0, "stopped")
            wait_until(lambda: not (_readers() - before), 10, "the reading thread's end")
            assert _held(fifo) == 0
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def reloadable_daemon(
    tmp_path: Path, model_name: str, model: Path | str, pipeline: str, source: str, out: Path
) -> tuple[Any, Callable[[float], None]]:
    """A ``Daemon`` (not started) with one pipeline from ``source`` into ``out``, configured in a file,
    and a function that rewrites that file with a new ``restart_s`` and reloads it (the pipeline restarts)."""
    from edgerun.config import load_config
    from edgerun.daemon import Daemon

    config = tmp_path / "edgerun.yaml"
    text = f"models:\n  {model_name}:\n    path: {model}\napi:\n  enabled: false\nstate_dir: {tmp_path / 'state'}\n"
    text += f"pipelines:\n  {pipeline}:\n    source: '{source}'\n    model: {model_name}\n    sinks: [{out}]\n"
    text += "    restart_s: {restart}\n"
    config.write_text(text.format(restart=1))
    daemon = Daemon(load_config(config), config)

    def restart_after(seconds: float) -> None:
        config.write_text(text.format(restart=seconds))
        daemon.reload()

    return daemon, restart_after


def test_reloading_a_daemon_again_and_again_over_a_quiet_pipe_leaves_no_reader_or_descriptor_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    daemon, restart_after = reloadable_daemon(tmp_path, "vibration", MODEL, "accel", str(fifo), out)
    before = _readers()
    daemon.start()
    try:
        with _quiet_writer(fifo, _rows(1)) as written:
            wait_until(written.exists, 30, "the writer to open the pipe and write")
            wait_until(lambda: out.exists() and '"normal"' in out.read_text(), 30, "the window written")
            for reload in range(2, 7):  # each a new restart_s: the pipeline is restarted on its pipe
                runner = daemon.runners["accel"]
                wait_until(lambda: _held(fifo) == 1, 30, "the pipeline reading the pipe")
                assert runner.state == "running"
                assert len(_readers() - before) == 1
                restart_after(reload)
                assert daemon.runners["accel"] is not runner and not runner.thread.is_alive()
                wait_until(lambda: len(_readers() - before) <= 1 and _held(fifo) <= 1, 10, "one reader, one pipe")
    finally:
        daemon.stop()
    wait_until(lambda: not (_readers() - before), 10, "every reading thread's end")
    assert _held(fifo) == 0
    assert not _said(caplog, LEFT) and not _said(caplog, "still stopping")
    restarted = [r for r in caplog.records if r.getMessage() == "SIGHUP: pipeline accel restarted"]
    assert len(restarted) == 5


def _cli_run(source: str, **popen: Any) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", source, "--sink", "jsonl"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The process's first line on stdout (a result), read on a thread so the wait is bounded."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline() if proc.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(60)
    assert lines and lines[0], "no result came"
    return lines[0]


def _stopped_by_sigterm(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the process's stderr once it exited 0 with its summary."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "1 frames (1 ok, 0 failed" in stderr and "stopped by SIGTERM" in stderr, stderr
    assert LEFT not in stderr and "Traceback" not in stderr, stderr
    return stderr


def test_sigterm_ends_a_run_on_standard_input_whose_sender_went_quiet_with_its_summary() -> None:
    read, write = os.pipe()  # the write end kept open, and quiet after one window
    proc = _cli_run("-", stdin=read)
    os.close(read)
    try:
        os.write(write, _rows(1).encode())
        assert '"normal"' in _first_line(proc)
        _stopped_by_sigterm(proc)
    finally:
        os.close(write)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_sigterm_ends_a_run_on_a_named_pipe_whose_writer_went_quiet_with_its_summary(tmp_path: Path) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    proc = _cli_run(str(fifo))
    try:
        with _quiet_writer(fifo, _rows(1)):
            assert '"normal"' in _first_line(proc)
            _stopped_by_sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_a_run_on_standard_input_reads_every_window_its_sender_writes_slowly() -> None:
    # The poll loop keeps what arrives between two polls: rows cut anywhere, sent a piece at a time.
    text = _rows(2)
    proc = _cli_run("-", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for start in range(0, len(text), 4001):  # pieces that cut rows, and windows, in the middle
            proc.stdin.write(text[start : start + 4001])
            proc.stdin.flush()
            time.sleep(0.05)  # each piece read on its own
        stdout, stderr = proc.communicate(timeout=60)  # closes standard input: its end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert len(stdout.splitlines()) == 2 and all('"normal"' in line for line in stdout.splitlines()), stdout
