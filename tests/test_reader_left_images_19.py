"""A stopped run over image inputs that include a quiet named pipe leaves no reading thread and no open pipe.

An image or ``.npy`` input that is a named pipe (matched by a glob among the inputs, named directly,
``/dev/stdin``) was read with a blocking ``open()`` and ``read()``: where no one wrote it, or its
writer went quiet without closing it, the reader waited there, where no ``close()`` reaches, and
the pipeline left it behind 2 s after a stop (SIGINT, SIGTERM, a daemon's reload) with one
WARNING. The thread and its descriptor stayed until a writer came, and then took that writer's
bytes and threw them away: one more of each for every run and every reload. Such an input is now
opened without waiting for a writer and polled every 0.2 s, so a stop ends its reading and closes
the pipe; one that is written is read to its end, in pieces, as before, and a pipe fed for ever is
refused past a bound. Real named pipes, real writer processes, the real digits model, a real
daemon reloaded from its config file, the real command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import edgerun
from edgerun.errors import UnusableInput
from edgerun.inputs import read_input
from edgerun.pipeline import Pipeline, Summary
from edgerun.sinks.base import Result
from edgerun.sources.files import FileSource
from tests.conftest import DIGITS, ROOT, SAMPLES
from tests.test_pipeline import ListSink
from tests.test_reader_left_19 import LEFT, _held, _quiet_writer, _readers, _Run, _said, reloadable_daemon
from tests.test_sync import wait_until

MODEL = DIGITS / "digits_int8.onnx"
#: The start of a 28x28 PGM image, its pixels never sent.
HALF_AN_IMAGE = "P5\n28 28\n255\n"

#: A writer process: opens the pipe (waiting for its reader), says so in a file, waits for a second file
#: to appear, then writes a file's bytes in pieces of the given size, each flushed on its own, and closes.
_WRITER = """
import os, sys, time
fifo, data, opened, go, piece = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3], sys.argv[4], int(sys.argv[5])
fd = os.open(fifo, os.O_WRONLY)
open(opened, "w").close()
for _ in range(6000):
    if os.path.exists(go):
        break
    time.sleep(0.1)
for start in range(0, len(data), piece):
    os.write(fd, data[start : start + piece])
    time.sleep(0.002)
os.close(fd)
"""


@contextmanager
def _writer(
    fifo: Path, data: Path, marks: Path, *, piece: int = 4096, at_once: bool = False
) -> Iterator[tuple[Path, Path]]:
    """A writer process that writes ``data`` into ``fifo`` once its reader has opened it and the second file
    yielded exists (at once where ``at_once``); yields (the file it makes in ``marks`` once it has opened the
    pipe, that second file)."""
    opened, go = marks / (fifo.name + ".opened"), marks / (fifo.name + ".go")
    if at_once:
        go.touch()
    command = [sys.executable, "-c", _WRITER, str(fifo), str(data), str(opened), str(go), str(piece)]
    proc = subprocess.Popen(command)
    try:
        yield opened, go
    finally:
        proc.kill()
        proc.wait(30)


def _release(fifo: Path) -> None:
    """A writer that comes and goes at once: it ends the wait of a reader blocked in ``open()`` on ``fifo``
    (the code before this fix), so that a failing test leaves no thread behind; nothing where none waits."""
    with contextlib.suppress(OSError):  # ENXIO: no reader has the pipe open
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of a good image (a 3) and a named pipe sorted after it: (the folder, the pipe)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLES / "digit_3.png", folder / "a.png")
    os.mkfifo(folder / "z.png")
    return folder, folder / "z.png"


def _labels(results: list[Result]) -> list[str]:
    return [r.record["output"][0]["label"] if r.ok else r.record["error"] for r in results]


@pytest.fixture(scope="module")
def digits() -> Iterator[edgerun.Model]:
    with edgerun.load(str(MODEL)) as model:
        yield model


@pytest.mark.parametrize(
    "text", [None, "", HALF_AN_IMAGE], ids=["no-writer", "writer-opens-and-is-quiet", "half-an-image-then-quiet"]
)
def test_stopping_a_run_whose_image_pipe_is_quiet_ends_its_reader_and_closes_the_pipe(
    tmp_path: Path, digits: edgerun.Model, caplog: pytest.LogCaptureFixture, text: str | None
) -> None:
    folder, fifo = _inputs(tmp_path)
    before = _readers()
    sink = ListSink()
    try:
        with contextlib.ExitStack() as stack:
            written = None if text is None else stack.enter_context(_quiet_writer(fifo, text))
            run = _Run(Pipeline(FileSource([f"{folder}/*"]), digits, [sink]))
            try:
                wait_until(lambda: run.pipeline.summary.frames == 1, 30, "the image before the pipe")
                if written is not None:
                    wait_until(written.exists, 30, "the writer to open the pipe and write")
                wait_until(lambda: _held(fifo) == 1, 30, "the reader to hold the pipe (not to wait in open())")
                assert len(_readers() - before) == 1
            finally:
                outcome = run.stop()
            assert isinstance(outcome, Summary), outcome
            assert (outcome.ok, outcome.errors, outcome.stopped_by) == (1, 0, "stopped")
            wait_until(lambda: not (_readers() - before), 10, "the reading thread's end")
            assert _held(fifo) == 0, "the pipe is still open"
    finally:
        _release(fifo)
    assert _labels(sink.results) == ["3"]
    assert not _said(caplog, LEFT)


def test_runs_started_and_stopped_again_and_again_over_an_image_pipe_leave_nothing_behind_and_lose_no_image(
    tmp_path: Path, digits: edgerun.Model, caplog: pytest.LogCaptureFixture
) -> None:
    # A reader left blocked in read() by an earlier run took the next writer's bytes and threw them away.
    folder, fifo = _inputs(tmp_path)
    before = _readers()
    try:
        with _writer(fifo, SAMPLES / "digit_7.png", tmp_path) as (opened, go):
            for n in range(5):
                run = _Run(Pipeline(FileSource([f"{folder}/*"]), digits, []))
                try:
                    wait_until(lambda r=run: r.pipeline.summary.frames == 1, 30, f"run {n}'s image before the pipe")
                    wait_until(lambda: opened.exists() and _held(fifo) == 1, 30, f"run {n} to hold the pipe")
                    assert len(_readers() - before) == 1
                finally:
                    outcome = run.stop()
                assert isinstance(outcome, Summary) and (outcome.ok, outcome.errors) == (1, 0), outcome
                wait_until(lambda: not (_readers() - before), 10, f"the end of run {n}'s reading thread")
                assert _held(fifo) == 0
            sink = ListSink()
            run = _Run(Pipeline(FileSource([f"{folder}/*"]), digits, [sink]))
            wait_until(lambda: _held(fifo) == 1, 30, "the last run to hold the pipe")
            go.touch()  # the writer, quiet through five runs, writes its image now, and closes the pipe
            run.thread.join(30)
            assert run.outcome, "the last run did not end at the pipe's end"
    finally:
        _release(fifo)
    outcome = run.outcome[0]
    assert isinstance(outcome, Summary) and outcome.stopped_by == "end of input", outcome
    assert _labels(sink.results) == ["3", "7"]
    assert not (_readers() - before) and _held(fifo) == 0
    assert not _said(caplog, LEFT)


def test_reloading_a_daemon_again_and_again_over_a_quiet_image_pipe_leaves_no_reader_or_descriptor_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, fifo = _inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    daemon, restart_after = reloadable_daemon(tmp_path, "digits", MODEL, "images", f"{folder}/*", out)
    before = _readers()
    daemon.start()
    try:
        with _quiet_writer(fifo, "") as written:
            wait_until(written.exists, 30, "the writer to open the pipe")
            for reload in range(2, 7):  # each a new restart_s: the pipeline is restarted on its inputs
                runner = daemon.runners["images"]
                wait_until(lambda r=runner: r.state == "running" and _held(fifo) >= 1, 30, "the pipeline on the pipe")
                assert len(_readers() - before) == 1, "a reader of an earlier pipeline is still there"
                wait_until(lambda: _held(fifo) == 1, 30, "the pipeline reading the pipe")
                restart_after(reload)
                assert daemon.runners["images"] is not runner and not runner.thread.is_alive()
                wait_until(lambda: len(_readers() - before) <= 1 and _held(fifo) <= 1, 10, "one reader, one pipe")
    finally:
        daemon.stop()
        _release(fifo)
    wait_until(lambda: not (_readers() - before), 10, "every reading thread's end")
    assert _held(fifo) == 0
    assert '"3"' in out.read_text()
    assert not _said(caplog, LEFT) and not _said(caplog, "still stopping")
    restarted = [r for r in caplog.records if r.getMessage() == "SIGHUP: pipeline images restarted"]
    assert len(restarted) == 5


def test_images_and_arrays_written_into_named_pipes_in_pieces_are_read_whole_and_classified(
    tmp_path: Path, digits: edgerun.Model
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLES / "digit_3.png", folder / "a.png")
    big = tmp_path / "seven.bmp"  # 1.2 MB uncompressed: many reads of a pipe's 64 KiB
    seven = cv2.imread(str(SAMPLES / "digit_7.png"), cv2.IMREAD_GRAYSCALE)
    assert cv2.imwrite(str(big), cv2.resize(seven, (640, 640), interpolation=cv2.INTER_NEAREST))
    for name in ("b.png", "c.npy", "d.bmp"):
        os.mkfifo(folder / name)
    sink = ListSink()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_writer(folder / "b.png", SAMPLES / "digit_7.png", tmp_path, piece=50, at_once=True))
        stack.enter_context(_writer(folder / "c.npy", SAMPLES / "digit_7.npy", tmp_path, piece=50, at_once=True))
        stack.enter_context(_writer(folder / "d.bmp", big, tmp_path, piece=100_000, at_once=True))
        run = _Run(Pipeline(FileSource([f"{folder}/*"]), digits, [sink]))
        run.thread.join(60)
        assert run.outcome, "the run did not end at its inputs' end"
    outcome = run.outcome[0]
    assert isinstance(outcome, Summary) and outcome.stopped_by == "end of input", outcome
    assert [r.record.get("error") for r in sink.results] == [None] * 4
    assert _labels(sink.results) == ["3", "7", "7", "7"]
    assert sink.results[3].record["output"] == digits.predict(str(big)).output  # as the same file on disk


def test_a_library_caller_with_no_stop_flag_reads_a_pipe_to_its_end(tmp_path: Path) -> None:
    fifo = tmp_path / "seven.npy"
    os.mkfifo(fifo)
    with _writer(fifo, SAMPLES / "digit_7.npy", tmp_path, piece=10, at_once=True):
        got = read_input(fifo)  # waits for the writer to open, then for every piece
    assert isinstance(got, np.ndarray)
    assert np.array_equal(got, np.load(SAMPLES / "digit_7.npy"))


def test_a_stop_flag_ends_a_read_of_a_pipe_no_one_writes_and_closes_it(tmp_path: Path) -> None:
    fifo = tmp_path / "never.png"
    os.mkfifo(fifo)
    stop = threading.Event()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            read_input(fifo, stopped=stop.is_set)
        except BaseException as exc:
            failure.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: _held(fifo) == 1, 30, "the read to open the pipe")
        stop.set()
        reader.join(10)
        assert not reader.is_alive(), "the read went on after the stop"
    finally:
        _release(fifo)
    assert _held(fifo) == 0
    assert len(failure) == 1 and isinstance(failure[0], UnusableInput), failure
    assert str(failure[0]) == f"{fifo}: stopped before the end of its input"


def _predict(*inputs: str, **popen: Any) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "edgerun", "predict", str(MODEL), *inputs]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == str(path):
                return True
    return False


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, then the process's output once it exited (killed after a bounded wait)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_sigterm_ends_a_run_on_images_and_a_quiet_pipe_at_once_with_its_summary(tmp_path: Path) -> None:
    folder, fifo = _inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", f"{folder}/*", "--sink", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with _quiet_writer(fifo, HALF_AN_IMAGE) as written:
            wait_until(lambda: written.exists() or proc.poll() is not None, 60, "the writer to open the pipe")
            wait_until(lambda: (out.exists() and bool(out.read_text())) or proc.poll() is not None, 60, "a result")
            wait_until(lambda: proc.poll() is not None or _holds(proc.pid, fifo), 30, "the run to hold the pipe")
            _, stderr = _finish(proc)
    finally:
        _release(fifo)
    assert proc.returncode == 0, stderr
    assert "1 frames (1 ok, 0 failed" in stderr and "stopped by SIGTERM" in stderr, stderr
    assert LEFT not in stderr and "Traceback" not in stderr, stderr
    assert [json.loads(line)["output"][0]["label"] for line in out.read_text().splitlines()] == ["3"]


def test_sigterm_ends_predict_waiting_on_a_pipe_among_many_images_with_its_summary(tmp_path: Path) -> None:
    folder, fifo = _inputs(tmp_path)
    for n in range(5):  # more inputs than predict runs without a pipeline
        shutil.copy(SAMPLES / "digit_7.png", folder / f"b{n}.png")
    proc = _predict(f"{folder}/*")
    try:
        wait_until(lambda: proc.poll() is not None or _holds(proc.pid, fifo), 60, "predict to hold the pipe")
        stdout, stderr = _finish(proc)
    finally:
        _release(fifo)
    assert proc.returncode == 130, stderr
    assert "# 6 ok, 0 failed" in stdout, stdout
    assert LEFT not in stderr and "Traceback" not in stderr, stderr


def test_sigterm_ends_predict_on_a_pipe_alone_as_ctrl_c_does(tmp_path: Path) -> None:
    # One input runs on the main thread, without a pipeline: it waits in poll(), holding the pipe.
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    proc = _predict(str(fifo))
    try:
        wait_until(lambda: proc.poll() is not None or _holds(proc.pid, fifo), 60, "predict to hold the pipe")
        stdout, stderr = _finish(proc)
    finally:
        _release(fifo)
    assert proc.returncode == 130, stderr
    assert stderr == ""  # the stop ends the run as a pipeline's does: its summary, not "interrupted"
    summary = stdout.splitlines()[-1]
    assert summary.startswith("# 0 ok, 0 failed in ") and summary.endswith("; stopped by SIGTERM; 1 input(s) not done")


def test_a_pipe_fed_for_ever_is_refused_past_the_bound_and_closed() -> None:
    # Read whole, as a pipe was, it filled the memory. The bound follows OpenCV's pixel limit: 8 bytes a pixel.
    proc = _predict("/dev/stdin", stdin=subprocess.PIPE, env={**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "4096"})
    stdin = proc.stdin
    assert stdin is not None
    sent = 0

    def feed() -> None:  # up to 64 MiB, the pipe then kept open (the code before this fix read it all, then waited)
        nonlocal sent
        with contextlib.suppress(BrokenPipeError):
            while sent < 64 << 20:
                stdin.write("0" * 65536)
                stdin.flush()
                sent += 65536

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        feeder.join(30)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, stderr
    assert "/dev/stdin: more than 32,768 bytes, 8 for each of the 4,096 pixels" in stderr, stderr
    assert "# 0 ok, 1 failed" in stdout
    assert sent < 64 << 20
