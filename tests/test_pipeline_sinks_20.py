"""Sinks that fail or block, and a stdout that refuses output, in real runs.

* A stdout that refuses output (``/dev/full``, a full disk) is one ``edgerun: error:`` line naming
  stdout, exit 1, never a traceback; a stdout sink on a full disk leaves whole lines only.
* A sink that fails gets nothing more, and every other sink still gets every result computed.
* A stop (SIGINT, SIGTERM, ``Pipeline.stop``) ends a run whose sink is blocked in a write (a named
  pipe or stdout whose reader never reads) ``SINK_STOP_GRACE_S`` after it: one WARNING naming the
  sink, the summary, exit 1.
* A run's summary gives the exact percentiles while its samples fit the ring.

Real processes, real named pipes and pipes (made small with ``F_SETPIPE_SZ``, so that a few records
fill them), a real tmpfs for the full disk, the real digits model.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.errors import PipelineError, SourceError
from edgerun.pipeline import SINK_STOP_GRACE_S, Pipeline, Summary
from edgerun.sinks.base import Result
from edgerun.sinks.text import JsonlSink, TableSink
from edgerun.sources.files import FileSource
from edgerun.telemetry.metrics import LatencyStats, Metrics
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli
from tests.test_sync import wait_until

MODEL = DIGITS / "digits_fp32.onnx"
PIPE_SIZE = 4096  # the smallest a pipe can be made: a dozen JSON records fill it
FULL_STDOUT = "edgerun: error: cannot write stdout: No space left on device\n"
#: How long a test waits for a stopped run to end: the grace, and room for a loaded machine.
EXIT_WAIT_S = SINK_STOP_GRACE_S + 30
IN_PROCESS_GRACE_S = 1.0  # a Pipeline built here waits this long for a blocked sink (the CLI: SINK_STOP_GRACE_S)
SHORT_GRACE_S = 0.3  # where a sink only stalls: each of its writes takes three times as long


class KeepingSink:
    """A real Sink that keeps what it is given, failing (as a full disk does) at the ``fail_at``-th."""

    def __init__(self, *, inline: bool = False, fail_at: int | None = None) -> None:
        self.inline = inline
        self.fail_at = fail_at
        self.results: list[Result] = []
        self.closed = 0

    def publish(self, result: Result) -> None:
        if self.fail_at is not None and len(self.results) + 1 == self.fail_at:
            raise SourceError("disk full")
        self.results.append(result)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 400 digit images: enough records to fill a 64 KiB disk or a small pipe many times."""
    folder = tmp_path_factory.mktemp("images")
    digits = sorted(SAMPLES.glob("digit_*.png"))
    for i in range(400):
        shutil.copyfile(digits[i % len(digits)], folder / f"d{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def model() -> Iterator[edgerun.Model]:
    with edgerun.load(str(MODEL)) as m:
        yield m


def _edgerun(*args: str, stdout: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgerun", *args], cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True
    )


def _waiting(fd: int) -> int:
    """Bytes written into a pipe and not read yet."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def _small(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


@contextmanager
def _never_read_fifo(path: Path) -> Iterator[int]:
    """A named pipe at ``path`` with a reader that never reads (its descriptor, to look at); closed after."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _small(fd)
        yield fd
    finally:
        os.close(fd)


def _full(fd: int) -> Callable[[], bool]:
    return lambda: _waiting(fd) > PIPE_SIZE - 1024  # no room left for the next record: the writer blocks


def _ended(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """The exit code and stderr of a process that must end by itself within ``EXIT_WAIT_S``."""
    try:
        _, stderr = proc.communicate(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {EXIT_WAIT_S:.0f} s after the stop")
    return proc.returncode, stderr


# -- a stdout that refuses output (#2) -----------------------------------------------------------------------


def _to_full_stdout(*args: str) -> subprocess.CompletedProcess[str]:
    """``edgerun ARGS`` with its stdout on ``/dev/full`` (every write: ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "edgerun", *args],
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )


def test_a_run_s_json_summary_to_a_full_stdout_is_one_error_line_naming_stdout(tmp_path: Path) -> None:
    csv = tmp_path / "ok.csv"
    done = _to_full_stdout("run", str(MODEL), "--source", str(SAMPLES / "digit_1.png"), "--sink", str(csv), "--json")
    assert (done.returncode, done.stderr) == (1, FULL_STDOUT)
    assert len(csv.read_text().splitlines()) == 2  # the sink still got its record


@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "table"])
def test_predict_to_a_full_stdout_is_one_error_line_naming_stdout(output: list[str]) -> None:
    done = _to_full_stdout("predict", str(MODEL), str(SAMPLES / "digit_1.png"), *output)
    assert (done.returncode, done.stderr) == (1, FULL_STDOUT)


@pytest.mark.parametrize("unbuffered", [True, False], ids=["line-by-line", "8-KiB-at-a-time"])
def test_a_stdout_sink_on_a_full_disk_names_stdout_and_leaves_only_whole_lines(
    images: Path, small_disk: Callable[[int], Path], unbuffered: bool
) -> None:
    out = small_disk(64 * 1024) / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | (
        {"PYTHONUNBUFFERED": "1"} if unbuffered else {}
    )
    with open(out, "w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", str(images), "--sink", "jsonl"],
            cwd=ROOT,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
        )
    assert (done.returncode, done.stderr) == (
        1,
        "edgerun: error: sink: " + FULL_STDOUT.removeprefix("edgerun: error: "),
    )
    text = out.read_text()
    assert text.endswith("\n") and len(text) > 32 * 1024, text[-200:]
    records = [json.loads(line) for line in text.splitlines()]  # none torn
    assert [r["input"] for r in records] == [str(p) for p in sorted(images.iterdir())][: len(records)]


# -- a sink that fails (#4) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [False, True], ids=["sink-thread", "inline"])
def test_a_sink_that_fails_leaves_every_other_sink_every_result_computed(
    images: Path, model: edgerun.Model, inline: bool
) -> None:
    failing, healthy = KeepingSink(inline=inline, fail_at=3), KeepingSink(inline=inline)
    pipeline = Pipeline(FileSource([str(images)]), model, [failing, healthy])  # the failing sink first
    with pytest.raises(PipelineError, match=r"^sink: disk full$"):
        pipeline.run()
    assert len(failing.results) == 2 and failing.closed == healthy.closed == 1
    assert pipeline.summary.frames >= 3
    assert len(healthy.results) == pipeline.summary.frames  # every result computed, the failed sink's third too
    assert [r.frame.source_id for r in healthy.results] == [str(p) for p in sorted(images.iterdir())][
        : pipeline.summary.frames
    ]


def test_a_file_sink_on_a_full_device_leaves_the_next_sink_every_result_computed(
    tmp_path: Path, images: Path, model: edgerun.Model
) -> None:
    full = tmp_path / "full.jsonl"
    full.symlink_to("/dev/full")
    healthy = KeepingSink()
    pipeline = Pipeline(FileSource([str(images)]), model, [JsonlSink(str(full)), healthy])
    with pytest.raises(PipelineError, match=r"^sink: cannot write .*full\.jsonl: No space left on device$"):
        pipeline.run()
    assert pipeline.summary.frames >= 1 and len(healthy.results) == pipeline.summary.frames
    assert healthy.closed == 1


def test_a_run_whose_first_sink_fills_its_disk_writes_every_result_computed_to_the_second(
    tmp_path: Path, images: Path, small_disk: Callable[[int], Path]
) -> None:
    full, good = small_disk(64 * 1024) / "f.jsonl", tmp_path / "good.csv"
    done = run_cli("run", str(MODEL), "--source", str(images), "--sink", str(full), "--sink", str(good))
    assert done.returncode == 1 and done.stderr.startswith(f"edgerun: error: sink: cannot write {full}: No space")
    written = len(full.read_text().splitlines())
    assert 100 < written < 400
    # each result computed: the one the full disk refused, and those in flight behind it
    assert len(good.read_text().splitlines()) - 1 > written


# -- a stop while a sink is blocked in a write (#3) -----------------------------------------------------------


def test_a_signal_ends_a_run_whose_named_pipe_sink_is_never_read(tmp_path: Path, images: Path) -> None:
    sig = signal.SIGINT  # the command's one handler takes SIGINT and SIGTERM alike; the tests below send SIGTERM
    fifo = tmp_path / "st.jsonl"
    with _never_read_fifo(fifo) as reader:
        proc = _edgerun("run", str(MODEL), "--source", str(images), "--sink", str(fifo), stdout=subprocess.DEVNULL)
        try:
            wait_until(_full(reader), 60, "the named pipe to fill")
            proc.send_signal(sig)
            code, stderr = _ended(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert code == 1, stderr
    lines = stderr.splitlines()
    assert lines[0] == (
        f"WARNING edgerun.pipeline: pipeline: the sink {fifo} has taken nothing for {SINK_STOP_GRACE_S:.0f} s "
        "after the stop (blocked in a write); stopped without it, its output not flushed"
    ), stderr
    assert lines[1].startswith("# digits 1.0.0 on cpu: "), stderr
    assert lines[1].endswith(f"; stopped by {sig.name}; not flushed: {fifo}"), stderr
    assert "Traceback" not in stderr and "error" not in stderr, stderr


def _sigterm_once_stdout_is_full(*args: str) -> tuple[int, str]:
    """``edgerun ARGS`` with a stdout pipe nobody reads, sent SIGTERM once the pipe is full: its exit code
    and stderr (it must end by itself)."""
    read, write = os.pipe()
    _small(read)
    try:
        proc = _edgerun(*args, stdout=write)
        os.close(write)
        write = -1
        try:
            wait_until(_full(read), 60, "the pipe to fill")
            proc.send_signal(signal.SIGTERM)
            return _ended(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_sigterm_ends_a_run_whose_stdout_is_never_read_with_the_summary_on_stderr(images: Path) -> None:
    code, stderr = _sigterm_once_stdout_is_full("run", str(MODEL), "--source", str(images), "--json")
    assert code == 1, stderr
    assert "WARNING edgerun.pipeline: pipeline: the sink stdout has taken nothing" in stderr, stderr
    # the JSON summary cannot go to a stdout that takes nothing: the text summary goes to stderr
    assert "; stopped by SIGTERM; not flushed: stdout" in stderr and "#   total p50" in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_sigterm_ends_a_batch_predict_whose_stdout_is_never_read_with_the_summary_on_stderr(images: Path) -> None:
    code, stderr = _sigterm_once_stdout_is_full("predict", str(MODEL), str(images), "--no-progress", "--json")
    assert code == 130, stderr  # stopped by a signal, as before
    assert "WARNING edgerun.pipeline: pipeline: the sink stdout has taken nothing" in stderr, stderr
    assert " failed in " in stderr and "; not flushed: stdout" in stderr, stderr  # not into the full pipe, not as JSON
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("inline", [False, True], ids=["sink-thread", "inline"])
def test_stop_ends_a_pipeline_whose_sink_is_blocked_closing_the_others(
    tmp_path: Path, images: Path, model: edgerun.Model, inline: bool, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "st.jsonl"
    with _never_read_fifo(fifo) as reader:
        blocked, other = JsonlSink(str(fifo)), KeepingSink(inline=inline)
        blocked.inline = inline  # a line to stdout is inline: a blocked stdout holds up the inference thread
        pipeline = Pipeline(FileSource([str(images)]), model, [other, blocked], sink_stop_grace_s=IN_PROCESS_GRACE_S)
        outcome: list[Summary | BaseException] = []

        def run() -> None:
            try:
                outcome.append(pipeline.run())
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(_full(reader), 60, "the named pipe to fill")
        pipeline.stop("stopped mid-run")
        thread.join(EXIT_WAIT_S)
        assert not thread.is_alive(), f"run() still running {EXIT_WAIT_S:.0f} s after the stop"
    (summary,) = outcome
    assert isinstance(summary, Summary), summary
    assert summary.unflushed == [str(fifo)] and summary.stopped_by == "stopped mid-run"
    assert other.closed == 1 and len(other.results) == summary.frames  # the first sink got the stuck result too
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"pipeline: the sink {fifo} has taken nothing for {IN_PROCESS_GRACE_S:.0f} s after the stop (blocked in a "
        "write); stopped without it, its output not flushed"
    ]


# -- the summary's percentiles (#7) ---------------------------------------------------------------------------


def test_a_one_frame_run_gives_that_frame_s_latency_as_every_percentile() -> None:
    done = run_cli("run", str(MODEL), "--source", str(SAMPLES / "digit_1.png"), "--sink", "jsonl", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    for stage, s in summary["stages_ms"].items():
        assert s["p50"] == s["p95"] == s["p99"] == s["max"] == s["mean"], (stage, s)


def test_the_percentiles_since_start_are_exact_while_the_samples_fit_the_ring() -> None:
    metrics = Metrics()
    values = [0.5, 1.0, 2.0, 3.0, 40.0]
    for v in values:
        metrics.record("m", "1", "cpu", {"infer": v})
    infer = metrics.totals()["m@1"]["stages_ms"]["infer"]
    p50, p95, p99 = (round(float(p), 4) for p in np.percentile(values, (50, 95, 99)))
    assert infer == {"p50": p50, "p95": p95, "p99": p99, "max": 40.0, "mean": 9.3}


def test_the_percentiles_are_exact_up_to_the_ring_s_4096_samples_and_from_the_histogram_beyond() -> None:
    values = np.random.default_rng(0).lognormal(0.0, 0.5, 4097)
    stats = LatencyStats()
    for v in values[:4096]:
        stats.add(float(v), 0.0)
    s = stats.summary_total()
    exact = [round(float(p), 4) for p in np.percentile(values[:4096], (50, 95, 99))]
    assert s is not None and [s["p50"], s["p95"], s["p99"]] == exact
    assert s["max"] == round(float(values[:4096].max()), 4)
    stats.add(float(values[4096]), 0.0)  # one more than the ring holds: the histogram's figures, within its 10%
    s = stats.summary_total()
    exact = [float(p) for p in np.percentile(values, (50, 95, 99))]
    assert s is not None and s["p50"] <= s["p95"] <= s["p99"] <= s["max"] == round(float(values.max()), 4)
    assert all(abs(got / want - 1) < 0.06 for got, want in zip((s["p50"], s["p95"], s["p99"]), exact, strict=True))


class _NotebookStream(io.TextIOBase):
    """What a notebook kernel puts in ``sys.stdout`` (ipykernel's OutStream): text goes to the cell, while
    ``fileno()`` is the kernel process's own standard output."""

    def __init__(self, fileno: int) -> None:
        self.text: list[str] = []
        self._fileno = fileno

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text.append(text)
        return len(text)

    def fileno(self) -> int:
        return self._fileno


def test_stdout_sinks_write_through_a_stand_in_for_stdout_even_one_with_a_descriptor(
    model: edgerun.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    read, write = os.pipe()
    try:
        stream = _NotebookStream(write)
        monkeypatch.setattr(sys, "stdout", stream)
        sinks = [JsonlSink(), TableSink()]
        Pipeline(FileSource([str(SAMPLES / "digit_1.png")]), model, sinks).run()
        monkeypatch.undo()
        os.set_blocking(read, False)
        with contextlib.suppress(BlockingIOError):
            assert os.read(read, 4096) == b"", "written to the descriptor, not to the cell"
    finally:
        os.close(read)
        os.close(write)
    text = "".join(stream.text)
    assert '"input": ' in text and "digit_1.png" in text  # the JSON line and the table's, in the cell
    assert len(text.splitlines()) == 2


class _SlowSink(KeepingSink):
    """A sink whose writes stall for ``stall_s`` each (storage writing back, an NFS failover)."""

    def __init__(self, stall_s: float) -> None:
        super().__init__()
        self.stall_s = stall_s

    def publish(self, result: Result) -> None:
        threading.Event().wait(self.stall_s)
        super().publish(result)


@pytest.mark.parametrize("ended_by", ["max frames", "a failed sink"])
def test_the_run_s_own_stop_waits_for_a_slow_sink_however_long_it_takes(
    images: Path, model: edgerun.Model, ended_by: str
) -> None:
    slow = _SlowSink(3 * SHORT_GRACE_S)
    failing = KeepingSink(fail_at=1)
    sinks = [slow, failing] if ended_by == "a failed sink" else [slow]
    pipeline = Pipeline(FileSource([str(images)]), model, sinks, max_frames=2, sink_stop_grace_s=SHORT_GRACE_S)
    try:
        summary = pipeline.run()
    except PipelineError:  # the failed sink's error, once the slow one has every result
        summary = pipeline.summary
    assert summary.unflushed == []  # not left behind: only a signal (or a shutdown) bounds the wait
    assert len(slow.results) == summary.frames == 2 and slow.closed == 1


def test_results_after_a_sink_failed_still_reach_on_result_where_the_others_go_on(
    images: Path, model: edgerun.Model
) -> None:
    failing, healthy = KeepingSink(fail_at=1), KeepingSink()
    seen: list[Result] = []
    pipeline = Pipeline(FileSource([str(images)]), model, [failing, healthy], on_result=seen.append)
    with pytest.raises(PipelineError):
        pipeline.run()
    # the CLI's on_result names each failed input on stderr: it goes on for what the healthy sink gets
    assert len(healthy.results) >= 1 and seen == healthy.results
