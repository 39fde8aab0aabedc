"""JSON Lines on standard input are read as JSON Lines: standard input has no suffix to name its format, and every
stdin was read as CSV, so ``cat arr.jsonl | edgerun run MODEL --source -`` took the first JSON line for a CSV
header, reported every other line as a bad row and ended with exit 1 after 0 readable rows. Its first line that
holds a row now decides, as it is read: ``[`` or ``{`` is JSON Lines, anything else CSV."""

from __future__ import annotations

import csv
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli, start_daemon, stop_process
from tests.test_daemon_named_pipe import _write
from tests.test_sync import wait_until

MODEL = ROOT / "models/vibration/vibration_int8.tflite"
SAMPLE = ROOT / "models/vibration/samples/bearing_fault.csv"
WINDOW = 256  # the vibration model's input: [1, 256, 3]


def _readings() -> list[dict[str, str]]:
    """The sample's rows, by its header's names (``t``, ``x``, ``y``, ``z``)."""
    with SAMPLE.open(newline="") as f:
        return list(csv.DictReader(f))


def _arrays() -> list[str]:
    """The sample as JSON Lines arrays, ``[x, y, z]`` (the time left out), one line each."""
    return [json.dumps([float(r["x"]), float(r["y"]), float(r["z"])]) + "\n" for r in _readings()]


def _objects() -> list[str]:
    """The sample as JSON Lines objects, ``{"t": .., "x": .., "y": .., "z": ..}``, one line each."""
    return [json.dumps({k: float(v) for k, v in r.items()}) + "\n" for r in _readings()]


def _outputs(stdout: str) -> list[list[dict[str, object]]]:
    """Each result's ranked labels and scores, from ``--sink jsonl``'s lines (error records left out)."""
    return [r["output"] for r in map(json.loads, stdout.splitlines()) if "output" in r]


def _errors(stdout: str) -> list[str]:
    """Each error record's text, from ``--sink jsonl``'s lines."""
    return [r["error"] for r in map(json.loads, stdout.splitlines()) if "error" in r]


def _run_on_stdin(text: str) -> subprocess.CompletedProcess[str]:
    """``edgerun run MODEL --source - --sink jsonl`` as a real process, ``text`` on its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", "-", "--sink", "jsonl"],
        cwd=ROOT,
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _from_the_csv_file() -> list[list[dict[str, object]]]:
    done = run_cli("run", str(MODEL), "--source", str(SAMPLE), "--sink", "jsonl")
    assert done.returncode == 0, done.stderr
    outputs = _outputs(done.stdout)
    assert len(outputs) == 8 and {o[0]["label"] for o in outputs} == {"bearing_fault"}  # 2,048 rows, 8 windows
    return outputs


def test_json_arrays_on_stdin_give_the_results_the_csv_file_gives() -> None:
    done = _run_on_stdin("".join(_arrays()))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "row skipped" not in done.stderr
    assert _outputs(done.stdout) == _from_the_csv_file()


def test_json_objects_on_stdin_give_the_results_the_csv_file_gives() -> None:
    done = _run_on_stdin("\n# a comment and blank lines before the first row\n\n" + "".join(_objects()))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "row skipped" not in done.stderr
    assert _outputs(done.stdout) == _from_the_csv_file()


def test_csv_on_stdin_is_still_read_as_csv_with_its_header() -> None:
    done = _run_on_stdin(SAMPLE.read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "row skipped" not in done.stderr
    assert _outputs(done.stdout) == _from_the_csv_file()
    bad = _run_on_stdin("t,x,y,z\n0.0,1,2,3\n0.1,[1,2,3\n")  # bad rows keep their line numbers and CSV names
    assert bad.returncode == 1
    assert "edgerun: error: - line 3: field 2 ('x') is not a number: '[1'; row skipped" in bad.stderr


def test_a_bad_json_row_on_stdin_is_reported_with_its_line_and_the_run_goes_on() -> None:
    rows = _arrays()
    done = _run_on_stdin("".join(rows[:100]) + "[1, 2]\nnot json\n" + "".join(rows[100:]))
    assert done.returncode == 1  # a bad row fails the run, after every window ran
    assert "edgerun: error: - line 101: has 2 values, earlier rows have 3; row skipped" in done.stderr
    assert "edgerun: error: - line 102: not valid JSON; row skipped" in done.stderr
    assert _errors(done.stdout) == [
        "- line 101: has 2 values, earlier rows have 3; row skipped",
        "- line 102: not valid JSON; row skipped",
    ]
    assert len(_outputs(done.stdout)) == 8


def _daemon_config(tmp_path: Path, source: str, out: Path) -> Path:
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"models:\n  vibration:\n    path: {MODEL}\n"
        f"pipelines:\n  accel:\n    source: '{source}'\n    model: vibration\n    sinks: [{out}]\n"
        f"api:\n  enabled: false\nstate_dir: {tmp_path / 'state'}\n"
    )
    return config


def _labels(out: Path) -> list[str]:
    """Each record's top label from a JSON Lines sink's file, or its error text (a bad row's record)."""
    if not out.exists():
        return []
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return [r["output"][0]["label"] if "output" in r else r["error"] for r in records]


def test_a_daemon_pipeline_on_stdin_reads_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = _daemon_config(tmp_path, "-", out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("".join(_arrays()))
        proc.stdin.close()
        wait_until(lambda: len(_labels(out)) >= 8 or proc.poll() is not None, 60, "the daemon's 8 windows")
    finally:
        code = stop_process(proc, 30)
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert code == 0, log[-2000:]
    assert _labels(out) == ["bearing_fault"] * 8, log[-2000:]
    assert "row skipped" not in log


def test_a_daemon_pipeline_on_a_named_pipe_reads_json_lines(tmp_path: Path) -> None:
    fifo = tmp_path / "accel.jsonl"  # the suffix says JSON Lines
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    proc = start_daemon(_daemon_config(tmp_path, str(fifo), out))
    try:
        _write(fifo, "".join(_objects()[: 2 * WINDOW]), wait_s=60)
        wait_until(lambda: len(_labels(out)) == 2, 60, "the writer's 2 windows")
    finally:
        code = stop_process(proc, 30)
    assert code == 0
    assert _labels(out) == ["bearing_fault"] * 2


class _Reader:
    """A process's stdout read line by line, each wait bounded (``poll``, never a blocking read)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)
        self.pending = b""
        self.lines: list[str] = []

    def results(self) -> list[str]:
        """The top label of each result read so far (error records left out)."""
        return [r["output"][0]["label"] for r in map(json.loads, self.lines) if "output" in r]

    def until(self, count: int, wait_s: float) -> list[str]:
        """The results read so far, once there are ``count`` of them or ``wait_s`` has passed (or the output ended)."""
        deadline = time.monotonic() + wait_s
        while len(self.results()) < count and time.monotonic() < deadline:
            if not self.selector.select(timeout=min(0.1, max(0.0, deadline - time.monotonic()))):
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            *done, self.pending = (self.pending + chunk).split(b"\n")
            self.lines += [line.decode() for line in done]
        return self.results()


def test_a_live_trickle_of_json_lines_on_stdin_gives_results_before_the_writer_closes() -> None:
    rows = _arrays()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", "-", "--sink", "jsonl"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    reader = _Reader(proc)
    try:
        proc.stdin.write(rows[0].encode())  # the first line alone: it decides the format, and nothing waits for more
        proc.stdin.flush()
        time.sleep(0.5)
        for start in range(1, WINDOW, 32):  # the rest of one window, 32 rows at a time
            proc.stdin.write("".join(rows[start : min(start + 32, WINDOW)]).encode())
            proc.stdin.flush()
            time.sleep(0.05)
        assert len(reader.until(1, 60)) == 1, "no result for the first window while the writer was still open"
        assert proc.poll() is None  # still reading: the writer has not closed
        time.sleep(0.3)
        proc.stdin.write("".join(rows[WINDOW : 2 * WINDOW]).encode())
        proc.stdin.flush()
        assert len(reader.until(2, 60)) == 2, "no result for the second window while the writer was still open"
        proc.stdin.close()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert code == 0, log[-2000:]
    assert reader.results() == ["bearing_fault"] * 2
    assert len(reader.lines) == 2  # and no error record
    assert "row skipped" not in log


def test_a_sensor_source_whose_suffix_names_no_format_is_told_by_its_first_line(tmp_path: Path) -> None:
    from edgerun.sources.sensor import SensorSource

    arrays, table = tmp_path / "readings.txt", tmp_path / "table.txt"
    arrays.write_text("".join(_arrays()[:WINDOW]))
    table.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[: WINDOW + 1]))
    for path in (arrays, table):
        source = SensorSource(str(path), window=WINDOW)
        frames = list(source.frames())
        assert [f.error for f in frames] == [None], path
        assert frames[0].data is not None and frames[0].data.shape == (WINDOW, 3)
