"""A stop that leaves a blocked sink behind, and the rate of a paced run, in real runs.

* After a stop, a sink blocked in a write (a named pipe or stdout whose reader never reads) is left
  behind; the result it was stuck on still reaches every sink after it, so each other sink holds
  exactly the results the summary counts, in the source's order, whatever the order of the sinks.
* A paced run (``fps``, ``--fps``) reports a rate of at most the pace, and close to it: each frame
  it took holds a slot of ``1 / fps`` s, its last one included. An unpaced run's time is its wall time.

Real named pipes and pipes (made small with ``F_SETPIPE_SZ``, so that a few records fill them), a
real CSV file, real processes sent a real SIGTERM, the real digits model over real images.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import edgerun
from edgerun.pipeline import SINK_STOP_GRACE_S, Pipeline, Summary
from edgerun.sinks.text import CsvSink, JsonlSink
from edgerun.sources.files import FileSource
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli
from tests.test_sync import wait_until

MODEL = DIGITS / "digits_int8.onnx"
PIPE_SIZE = 4096  # the smallest a pipe can be made: a dozen JSON records fill it
EXIT_WAIT_S = SINK_STOP_GRACE_S + 30  # how long a stopped run may take to end: the grace, and room for a loaded machine
IN_PROCESS_GRACE_S = 1.0  # a Pipeline built here waits this long for a blocked sink (the CLI: SINK_STOP_GRACE_S)
#: A rate within this of the pace is "close to it": the slot of each frame is the pace's, and only a
#: machine too slow to keep it (a loaded CI runner) makes it lower.
CLOSE = 0.8


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 400 digit images: enough records to fill a small pipe many times."""
    folder = tmp_path_factory.mktemp("images")
    digits = sorted(SAMPLES.glob("digit_*.png"))
    for i in range(400):
        shutil.copyfile(digits[i % len(digits)], folder / f"d{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def model() -> Iterator[edgerun.Model]:
    with edgerun.load(str(MODEL)) as m:
        yield m


def _waiting(fd: int) -> int:
    """Bytes written into a pipe and not read yet."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def _full(fd: int) -> bool:
    return _waiting(fd) > PIPE_SIZE - 1024  # no room left for the next record: the writer blocks


@contextmanager
def _never_read_fifo(path: Path) -> Iterator[int]:
    """A named pipe at ``path`` with a reader that never reads (its descriptor, to look at); closed after."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        yield fd
    finally:
        os.close(fd)


def _rows(path: Path) -> list[list[str]]:
    """The CSV file's rows under its header."""
    with open(path, newline="") as f:
        header, *rows = csv.reader(f)
    assert header == list(CsvSink.COLUMNS)
    return rows


def _in_order(rows: list[list[str]], images: Path) -> bool:
    """The rows are the folder's first inputs, in its order, each once."""
    files = sorted(str(p) for p in images.iterdir())
    return [r[0] for r in rows] == files[: len(rows)]


# -- a sink left blocked after a stop ------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [False, True], ids=["sink-thread", "inline"])
def test_a_file_sink_after_a_sink_left_blocked_holds_every_result_the_summary_counts(
    tmp_path: Path, images: Path, model: edgerun.Model, inline: bool
) -> None:
    fifo, table = tmp_path / "st.jsonl", tmp_path / "blk.csv"
    with _never_read_fifo(fifo) as reader:
        blocked, after = JsonlSink(str(fifo)), CsvSink(str(table))
        # inline: a line to stdout is, and blocks the inference thread, which then delivers to both
        blocked.inline = after.inline = inline  # type: ignore[attr-defined]  # CsvSink has none: not inline
        pipeline = Pipeline(FileSource([str(images)]), model, [blocked, after], sink_stop_grace_s=IN_PROCESS_GRACE_S)
        outcome: list[Summary | BaseException] = []

        def run() -> None:
            try:
                outcome.append(pipeline.run())
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(lambda: _full(reader), 60, "the named pipe to fill")
        pipeline.stop("stopped mid-run")
        thread.join(EXIT_WAIT_S)
        assert not thread.is_alive(), f"run() still running {EXIT_WAIT_S:.0f} s after the stop"
        (summary,) = outcome
        assert isinstance(summary, Summary), summary
        assert summary.unflushed == [str(fifo)]
        rows = _rows(table)  # read while the left thread is still blocked: run() closed the file already
    assert summary.frames > 0 and len(rows) == summary.frames  # the result the blocked sink is stuck on too
    assert sum(not r[7] for r in rows) == summary.ok and sum(bool(r[7]) for r in rows) == summary.errors
    assert _in_order(rows, images)


def _sigterm_once_stdout_is_full(*args: str) -> tuple[int, str]:
    """``edgerun ARGS`` with a stdout pipe nobody reads, sent SIGTERM once the pipe is full: its exit code
    and stderr (it must end by itself)."""
    read, write = os.pipe()
    try:
        fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True
        )
        os.close(write)
        write = -1
        try:
            wait_until(lambda: _full(read), 60, "the pipe to fill")
            proc.send_signal(signal.SIGTERM)
            try:
                _, stderr = proc.communicate(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {EXIT_WAIT_S:.0f} s after SIGTERM")
            return proc.returncode, stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


@pytest.mark.parametrize("stdout_first", [True, False], ids=["stdout-first", "stdout-last"])
def test_sigterm_with_stdout_blocked_leaves_the_csv_sink_the_summary_s_count_in_either_order(
    tmp_path: Path, images: Path, stdout_first: bool
) -> None:
    table = tmp_path / "blk.csv"
    sinks = ["--sink", "jsonl", "--sink", str(table)]
    if not stdout_first:
        sinks = sinks[2:] + sinks[:2]
    code, stderr = _sigterm_once_stdout_is_full("run", str(MODEL), "--source", str(images), *sinks)
    assert code == 1, stderr  # a sink left behind: its output is not all there
    found = re.search(
        r": (\d+) frames \((\d+) ok, (\d+) failed, .*; stopped by SIGTERM; not flushed: stdout$", stderr, re.M
    )
    assert found is not None, stderr
    frames, ok, failed = map(int, found.groups())
    rows = _rows(table)
    assert frames > 0 and len(rows) == frames, stderr
    assert sum(not r[7] for r in rows) == ok and sum(bool(r[7]) for r in rows) == failed
    assert _in_order(rows, images)


# -- the rate of a paced run ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fps", "max_frames"), [(4.0, 4), (5.0, None)], ids=["max-frames", "end-of-input"])
def test_a_paced_run_s_rate_is_at_most_the_pace_and_close_to_it(
    model: edgerun.Model, fps: float, max_frames: int | None, tmp_path: Path
) -> None:
    inputs = sorted(str(p) for p in SAMPLES.glob("digit_*.png"))[:5]
    pipeline = Pipeline(FileSource(inputs), model, [CsvSink(str(tmp_path / "r.csv"))], fps=fps, max_frames=max_frames)
    summary = pipeline.run()
    assert summary.ok == summary.frames == (max_frames or len(inputs))
    assert CLOSE * fps <= summary.fps <= fps * (1 + 1e-9), summary.to_dict()  # 4 frames at 4 a second: 1.0 s
    assert summary.elapsed_s >= summary.frames / fps * (1 - 1e-9)  # each frame's slot, the last one's too


def test_a_paced_run_stopped_in_the_middle_of_a_slot_reports_no_more_than_the_pace(
    model: edgerun.Model, images: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline(FileSource([str(images)]), model, [CsvSink(str(tmp_path / "r.csv"))], fps=2.0)
    threading.Timer(0.7, pipeline.stop, args=("stopped mid-run",)).start()  # frames at 0, 0.5 s; the third waits
    summary = pipeline.run()
    assert summary.stopped_by == "stopped mid-run" and summary.ok >= 1
    assert summary.fps <= 2.0 * (1 + 1e-9), summary.to_dict()


def test_an_unpaced_run_s_time_is_its_wall_time(model: edgerun.Model, tmp_path: Path) -> None:
    inputs = sorted(str(p) for p in SAMPLES.glob("digit_*.png"))
    pipeline = Pipeline(FileSource(inputs), model, [CsvSink(str(tmp_path / "r.csv"))])
    t0 = time.monotonic()
    summary = pipeline.run()
    wall = time.monotonic() - t0
    assert summary.ok == len(inputs)
    assert 0 < summary.elapsed_s <= wall and summary.fps == summary.ok / summary.elapsed_s


def test_the_cli_s_paced_run_prints_and_reports_a_rate_of_at_most_the_pace() -> None:
    args = ("run", str(MODEL), "--source", str(SAMPLES), "--fps", "2", "--max-frames", "4", "--sink", "jsonl")
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["frames"] == summary["ok"] == 4
    assert CLOSE * 2 <= summary["fps"] <= 2.0 * (1 + 1e-9), summary  # was 2.66: 4 frames in the 1.5 s of 3 gaps
    assert summary["elapsed_s"] >= 2.0 * (1 - 1e-9)
    text = run_cli(*args)
    assert text.returncode == 0, text.stderr
    found = re.search(r"4 frames \(4 ok, .*\) in ([\d.]+) s, ([\d.]+) fps; stopped by max frames", text.stderr)
    assert found is not None, text.stderr
    assert float(found[2]) <= 2.0 and float(found[1]) >= 2.0, text.stderr


class _Failing:
    """A sink whose first publish fails (a full disk, say)."""

    def publish(self, result: object) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


class _Blocking:
    """A sink whose first publish blocks until ``go`` is set (a pipe nobody reads)."""

    def __init__(self) -> None:
        self.blocked, self.go = threading.Event(), threading.Event()

    def publish(self, result: object) -> None:
        self.blocked.set()
        self.go.wait(30)

    def close(self) -> None:
        pass


class _Counting:
    """A sink that keeps what it is given, and what it is given once closed."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.after_close: list[str] = []
        self.closed = False

    def publish(self, result: object) -> None:
        (self.after_close if self.closed else self.got).append(result.frame.source_id)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.closed = True


def test_a_sink_left_blocked_in_the_loop_where_an_earlier_one_failed_gets_the_later_ones_no_second_copy(
    images: Path, model: edgerun.Model
) -> None:
    """The first result: sink A fails (the sinks still up are a new list), B blocks; a stop leaves B, and
    run() gives C the result B is stuck on. When B's write returns, its thread delivered the same result to
    C again, into a closed sink: it loops over the list A's failure replaced, which the leaving could not clear."""
    failing, blocking, counting = _Failing(), _Blocking(), _Counting()
    sinks: list[Any] = [failing, blocking, counting]
    pipeline = Pipeline(FileSource([str(images)]), model, sinks, sink_stop_grace_s=0.3)
    stopper = threading.Thread(target=lambda: (blocking.blocked.wait(30), pipeline.stop("SIGTERM")))
    stopper.start()
    with pytest.raises(Exception, match="No space left on device"):
        pipeline.run()
    stopper.join(30)
    first = counting.got[:]
    assert len(first) == 1 and counting.closed  # the result B holds, given by run(), then closed
    blocking.go.set()  # B's write returns: its thread goes on, and must give C nothing more
    time.sleep(0.5)
    assert counting.got == first and counting.after_close == []
