"""A SIGINT ignored when edgerun started stays ignored, on every path; SIGTERM still stops it.

A shell without job control (a script, a CI step) starts ``cmd &`` with SIGINT ignored (POSIX), and a
program keeps it so (CPython installs no ``KeyboardInterrupt`` handler then). ``predict`` over four
inputs or fewer did; ``predict`` through a pipeline (five inputs or more, a folder), ``run`` (while its
source opened, and while it ran) and the daemon put a handler in its place, so that the SIGINT meant
for the foreground job stopped them (``stopped by SIGINT``: exit 130, or 0 for ``run``).

Real processes (``python -m edgerun``) started as a background job is (SIGINT ignored), the committed
models and samples; a pipe nobody writes holds a run in a read while the signals come. Each test first
reads in Linux's /proc that the process ignores SIGINT at that point (the kernel then drops a SIGINT as
it is sent), and catches SIGTERM: a SIGINT that was caught, then a SIGTERM, could reach two threads
and be taken in either order.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES, free_port, start_daemon, stop_process
from tests.test_daemon import _ready, http
from tests.test_stream_stop_connecting import _Camera
from tests.test_sync import wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")

#: A hang guard, not a speed limit: how long a test waits for something that must come (or end).
PATIENCE_S = 60.0
MODEL = DIGITS / "digits_int8.onnx"
IMAGES = [str(SAMPLES / f"digit_{d}.png") for d in range(4)]
VIBRATION = ROOT / "models" / "vibration"
ROWS = (VIBRATION / "samples" / "misalignment.csv").read_text().splitlines()  # a header, then 256 rows a window


def _as_a_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell with no job control starts `cmd &`


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgerun", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_as_a_background_job,
    )


def _ended(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of a process that must end by itself within ``PATIENCE_S``
    (its output is a few lines, which the pipes hold)."""
    try:
        proc.wait(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {PATIENCE_S:.0f} s later")
    assert proc.stdout is not None and proc.stderr is not None
    return proc.returncode, proc.stdout.read().decode(), proc.stderr.read().decode()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes a test starts: killed if a failed test left one running, their pipes closed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _disposition(pid: int, sig: signal.Signals) -> str:
    """``ignored``, ``caught`` (a handler) or ``default``: ``sig`` in ``pid``'s masks in Linux's /proc."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    bit = 1 << (sig - 1)
    if int(fields["SigIgn"], 16) & bit:
        return "ignored"
    return "caught" if int(fields["SigCgt"], 16) & bit else "default"


def _signal(proc: subprocess.Popen[Any], *sigs: signal.Signals) -> None:
    """Send ``sigs`` in turn to ``proc``, which ignores SIGINT (was: caught it) and catches SIGTERM."""
    assert _disposition(proc.pid, signal.SIGINT) == "ignored"
    assert _disposition(proc.pid, signal.SIGTERM) == "caught"
    for sig in sigs:
        proc.send_signal(sig)


def _summary(err: str) -> str:
    """``run``'s summary line (the latency lines follow it)."""
    return next(line for line in err.splitlines() if line.startswith("# ") and " frames (" in line)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _write(proc: subprocess.Popen[bytes], data: bytes, *, close: bool = False) -> None:
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()
    if close:
        proc.stdin.close()


# -- predict -----------------------------------------------------------------------------------------

#: Three images and stdin (4 inputs) run without a pipeline; four and stdin (5) through one, as a folder does.
PATHS = pytest.mark.parametrize("images", [3, 4], ids=["direct", "pipeline"])


@PATHS
def test_a_background_predict_ignores_sigint_and_finishes_its_inputs(
    tmp_path: Path, images: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    output = tmp_path / "out.jsonl"
    proc = _start("predict", str(MODEL), *IMAGES[:images], "/dev/stdin", "--output", str(output), "--no-progress")
    procs.append(proc)
    wait_until(lambda: len(_lines(output)) == images, PATIENCE_S, "the images' records")  # now reading stdin
    _signal(proc, signal.SIGINT)
    _write(proc, (SAMPLES / "digit_9.png").read_bytes(), close=True)
    code, out, err = _ended(proc)
    assert (code, err) == (0, ""), (code, out, err)  # the pipeline's was (130, ...; stopped by SIGINT ...)
    assert re.fullmatch(rf"# {images + 1} ok, 0 failed in [^;]+", out.splitlines()[-1]), out
    assert [json.loads(line)["input"] for line in _lines(output)] == [*IMAGES[:images], "/dev/stdin"]


@PATHS
def test_a_background_predict_is_stopped_by_sigterm_not_by_the_sigint_before_it(
    tmp_path: Path, images: int, procs: list[subprocess.Popen[bytes]]
) -> None:
    output = tmp_path / "out.jsonl"
    proc = _start("predict", str(MODEL), *IMAGES[:images], "/dev/stdin", "--output", str(output), "--no-progress")
    procs.append(proc)
    wait_until(lambda: len(_lines(output)) == images, PATIENCE_S, "the images' records")
    _signal(proc, signal.SIGINT, signal.SIGTERM)
    code, out, err = _ended(proc)
    assert (code, err) == (130, ""), (code, out, err)
    assert re.fullmatch(
        rf"# {images} ok, 0 failed in [^;]+; stopped by SIGTERM; 1 input\(s\) not done "  # was: by SIGINT
        r"\(run again with --resume to do them\)",
        out.splitlines()[-1],
    ), out


# -- run ---------------------------------------------------------------------------------------------


def _run_on_stdin(out: Path) -> subprocess.Popen[bytes]:
    proc = _start("run", str(VIBRATION / "vibration_int8.tflite"), "--source", "-", "--sink", str(out))
    _write(proc, ("\n".join(ROWS[: 1 + 256 * 2]) + "\n").encode())  # the header and two windows; stdin stays open
    wait_until(lambda: len(_lines(out)) == 2, PATIENCE_S, "two windows' records")
    return proc


def test_a_background_run_ignores_sigint_and_finishes_its_input(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    out = tmp_path / "out.jsonl"
    proc = _run_on_stdin(out)
    procs.append(proc)
    _signal(proc, signal.SIGINT)
    _write(proc, ("\n".join(ROWS[1 + 256 * 2 : 1 + 256 * 3]) + "\n").encode(), close=True)  # a third window
    code, _, err = _ended(proc)
    assert code == 0, err
    summary = _summary(err)
    assert "3 frames (3 ok, 0 failed" in summary and summary.endswith("; stopped by end of input"), (
        err
    )  # was: by SIGINT
    assert [json.loads(line)["output"][0]["label"] for line in _lines(out)] == ["misalignment"] * 3


def test_a_background_run_is_stopped_by_sigterm_not_by_the_sigint_before_it(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    out = tmp_path / "out.jsonl"
    proc = _run_on_stdin(out)
    procs.append(proc)
    _signal(proc, signal.SIGINT, signal.SIGTERM)
    code, _, err = _ended(proc)
    assert code == 0, err
    summary = _summary(err)
    assert "2 frames (2 ok, 0 failed" in summary and summary.endswith("; stopped by SIGTERM"), err


@pytest.fixture
def silent_camera() -> Iterator[_Camera]:
    camera = _Camera(answered=0, frames=0)
    yield camera
    camera.close()


def test_a_background_run_still_opening_its_source_is_stopped_by_sigterm_not_by_the_sigint_before_it(
    silent_camera: _Camera, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc = _start("run", str(MODEL), "--source", silent_camera.url)
    procs.append(proc)
    silent_camera.wait_for_connection()  # the first attempt is under way, and will get no answer
    _signal(proc, signal.SIGINT, signal.SIGTERM)
    code, out, err = _ended(proc)
    assert code == 0, err
    assert err.splitlines()[-1] == (
        "# digits 1.0.0 on cpu: 0 frames (0 ok, 0 failed, 0 dropped, 0 skipped) in 0.00 ms; stopped by SIGTERM"
    ), err  # was: stopped by SIGINT
    assert out == ""


# -- daemon ------------------------------------------------------------------------------------------


def test_a_background_daemon_keeps_sigint_ignored_and_serves_on_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"device:\n  id: sigint25\nmodels:\n  digits:\n    path: {MODEL}\n"
        f"api:\n  port: {port}\nstate_dir: {tmp_path / 'state'}\nlogging:\n  level: WARNING\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_as_a_background_job,
    )
    try:
        wait_until(lambda: _ready(port) or proc.poll() is not None, PATIENCE_S, "the daemon to serve")
        assert proc.poll() is None, proc.communicate()
        _signal(proc, signal.SIGINT)  # was: caught, and the daemon stopped
        assert http(port, "/ready")[0] == 200 and proc.poll() is None
        code = stop_process(proc, PATIENCE_S)  # SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert code == 0, err
    assert b"Traceback" not in err, err


def test_a_daemon_started_with_sigint_at_its_default_is_still_stopped_by_it(tmp_path: Path) -> None:
    """As under systemd, which starts a service with every signal at its default (``systemctl kill -s INT``)."""
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"device:\n  id: sigint25-fg\nmodels:\n  digits:\n    path: {MODEL}\n"
        f"api:\n  port: {port}\nstate_dir: {tmp_path / 'state'}\nlogging:\n  level: WARNING\n"
    )
    proc = start_daemon(config, stderr=subprocess.PIPE)  # the test process has SIGINT at Ctrl-C's default (conftest)
    try:
        wait_until(lambda: _ready(port) or proc.poll() is not None, PATIENCE_S, "the daemon to serve")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=PATIENCE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err, err
