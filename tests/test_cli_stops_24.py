"""SIGINT and SIGTERM end ``bench`` and ``predict`` with what was done so far, said as a stop.

``bench`` stopped by SIGTERM (a service manager's stop, ``kill``, ``timeout``) died with no word
(exit 143), losing every finished figure; it now ends as on Ctrl-C: the rows made, the
``interrupted: ... stopped after N of M runs`` line, exit 130. ``predict`` over four inputs or
fewer (run without a pipeline) ended on either signal with ``edgerun: error: interrupted`` and no
summary; both of its paths now end with the summary, which says the run was stopped and, where
``--output`` was given, that ``--resume`` does the inputs left. A finished run's line is as it was.

Real processes (``python -m edgerun``) on the committed digits models and sample images; a pipe
nobody writes (stdin, or a named pipe) holds ``predict`` in a read when the signal comes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES
from tests.test_bench_devices_audit import _children, linux_only
from tests.test_sync import wait_until

#: A hang guard, not a speed limit: how long a test waits for something that must come (or end).
PATIENCE_S = 60.0
MODEL = DIGITS / "digits_int8.onnx"
IMAGES = [str(SAMPLES / f"digit_{d}.png") for d in range(4)]
FINISHED = re.compile(r"^# \d+ ok, \d+ failed in [^;]+$")  # a finished run's line: no stop in it


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds ``pid`` has used (Linux's /proc), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ended(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of a process that must end by itself within ``PATIENCE_S``.

    Waited for, not ``communicate``d with: that closes its stdin, an end of input racing the signal.
    Its output is a few lines, which the pipes hold.
    """
    try:
        proc.wait(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running {PATIENCE_S:.0f} s after the stop")
    assert proc.stdout is not None and proc.stderr is not None
    return proc.returncode, proc.stdout.read().decode(), proc.stderr.read().decode()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- bench -------------------------------------------------------------------------------------------


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a non-interactive shell starts a background job


@linux_only
@pytest.mark.parametrize(
    ("as_json", "how"),
    [(False, "alone"), (True, "alone"), (False, "group"), (False, "background")],
    ids=["table", "json", "process-group", "background-job"],
)
def test_sigterm_stops_a_bench_as_ctrl_c_does_keeping_the_figures_of_the_runs_made(as_json: bool, how: str) -> None:
    """``alone``: SIGTERM to bench alone, as `kill PID` sends it. ``group``: to its whole process group, as
    `timeout` and systemd's control-group stop send it: the benchmarking child got it too and died at once
    (no figures). ``background``: bench started with SIGINT ignored (a shell's background job), which its
    child inherits: the child ignored the SIGINT bench sent it to ask for the figures."""
    second = DIGITS / "digits_fp32.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "bench", str(MODEL), str(second), "--runs", "1000000", "--no-progress"]
        + (["--json"] if as_json else []),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=how == "group",
        preexec_fn=_ignore_sigint if how == "background" else None,
    )
    try:
        # 0.2 s of the child's CPU go to loading and warming up: at 2 s, timed runs have been made
        wait_until(lambda: any(_cpu_s(kid) >= 2.0 for kid in _children(proc.pid)), PATIENCE_S, "timed runs")
        if how == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        code, out, err = _ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 130, (code, out, err)  # was -15: no word, no row
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    made = re.fullmatch(
        rf"edgerun: error: interrupted: {re.escape(str(MODEL))} on cpu stopped after ([\d,]+) of 1,000,000 runs "
        r"\(its figures are from those\)",
        lines[0],
    )
    assert made is not None, lines[0]
    runs = int(made.group(1).replace(",", ""))
    rows = out.splitlines()
    if as_json:
        assert len(rows) == 1, out
        record = json.loads(rows[0])
        assert record["type"] == "result" and record["interrupted"] is True and record["runs"] == runs
    else:
        assert rows[0].startswith("model ") and rows[1].startswith("digits_int8.onnx "), out
    assert "digits_fp32" not in out  # the second model is not started


# -- predict -----------------------------------------------------------------------------------------


def _predict(*args: str, stdin: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgerun", "predict", str(MODEL), *args, "--no-progress"],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("images", "sig"),
    [(3, signal.SIGINT), (3, signal.SIGTERM), (4, signal.SIGTERM)],
    ids=["direct-SIGINT", "direct-SIGTERM", "pipeline-SIGTERM"],
)
def test_a_stopped_predict_prints_its_summary_saying_so_and_resume_does_the_rest(
    tmp_path: Path, images: int, sig: signal.Signals
) -> None:
    """Three images and stdin (4 inputs) run without a pipeline; four and stdin (5) through one."""
    output = tmp_path / "out.jsonl"
    args = [*IMAGES[:images], "/dev/stdin", "--output", str(output)]
    proc = _predict(*args)  # stdin a pipe nobody writes: the run waits there
    try:
        wait_until(lambda: len(_lines(output)) == images, PATIENCE_S, "the images' records")
        proc.send_signal(sig)
        code, out, err = _ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        assert proc.stdin is not None
        proc.stdin.close()
    assert code == 130, (code, out, err)
    assert err == ""  # was `edgerun: error: interrupted` without a pipeline
    rows = out.splitlines()
    assert len(rows) == images + 2, out  # the header, a row per image, the summary
    assert re.fullmatch(
        rf"# {images} ok, 0 failed in [^;]+; stopped by {sig.name}; 1 input\(s\) not done "
        r"\(run again with --resume to do them\)",
        rows[-1],
    ), rows[-1]
    assert len(_lines(output)) == images  # every record whole, none for stdin

    again = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(MODEL), *args, "--resume", "--no-progress"],
        cwd=ROOT,
        input=(SAMPLES / "digit_9.png").read_bytes(),
        capture_output=True,
        timeout=PATIENCE_S,
    )
    assert again.returncode == 0, again
    shown = again.stdout.decode().splitlines()
    assert shown[0].endswith(f"; resuming, {images} input(s) already done"), shown
    assert FINISHED.match(shown[-1]) and shown[-1].startswith("# 1 ok, 0 failed in "), shown  # as before
    records = [json.loads(line) for line in _lines(output)]
    assert [r["input"] for r in records] == [*IMAGES[:images], "/dev/stdin"]
    assert records[-1]["output"][0]["label"] == "9"


def test_a_stopped_predict_without_output_says_what_is_not_done_and_gives_no_resume_hint(tmp_path: Path) -> None:
    fifo = tmp_path / "quiet.npy"
    os.mkfifo(fifo)
    proc = _predict(*IMAGES[:2], str(fifo), stdin=subprocess.DEVNULL)
    writer = -1
    try:

        def opened() -> bool:  # a writer can open a named pipe only once its reader has: predict is there
            nonlocal writer
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                return False
            return True

        wait_until(opened, PATIENCE_S, "predict to open the named pipe")
        proc.send_signal(signal.SIGINT)
        code, out, err = _ended(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if writer >= 0:
            os.close(writer)
    assert (code, err) == (130, ""), (code, out, err)
    last = out.splitlines()[-1]
    assert re.fullmatch(r"# 2 ok, 0 failed in [^;]+; stopped by SIGINT; 1 input\(s\) not done", last), out


def test_a_predict_that_finishes_keeps_its_summary_line() -> None:
    for inputs in (IMAGES[:2], [*IMAGES[:4], str(SAMPLES / "digit_9.png")]):  # without a pipeline, and with one
        proc = _predict(*inputs, stdin=subprocess.DEVNULL)
        code, out, err = _ended(proc)
        assert (code, err) == (0, ""), (code, out, err)
        last = out.splitlines()[-1]
        assert FINISHED.match(last) and last.startswith(f"# {len(inputs)} ok, 0 failed in "), out
