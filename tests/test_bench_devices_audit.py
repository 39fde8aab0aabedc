"""Audit of ``edgerun bench`` and ``edgerun devices``: every figure real, every bad input one line, Ctrl-C clean.

Everything here runs ``python -m edgerun`` as a real process on real models: the committed
digits models, and a slow ONNX model (a chain of 256x256 MatMuls, a few ms a run) built with
``onnx`` so that a bench of a million runs is still going when the test acts on it. The
process-level tests read Linux's /proc (children, signal masks).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DIGITS, ROOT, FakeTree, run_cli

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")

#: A hang guard, not a speed limit: how long a test waits for something that must come (or end).
PATIENCE_S = 60.0


def _slow_model(folder: Path) -> Path:
    """A real ONNX model that takes milliseconds a run: a million runs would take the better part of an hour."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 256
    nodes, prev = [], "x"
    for i in range(8):
        out = "y" if i == 7 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "w"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        initializer=[numpy_helper.from_array(np.eye(n, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slow.onnx"
    onnx.save(model, str(path))
    return path


def _children(pid: int) -> list[int]:
    """The multiprocessing children of ``pid`` that run a benchmark (not its resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    found.append(int(kid))
            except OSError:
                pass
    return found


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (gone, or a zombie no one has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


class _OnTerminal:
    """``python -m edgerun ARGS`` with its stderr on a pseudo-terminal (stdout a pipe), read as it comes."""

    def __init__(self, *args: str) -> None:
        leader, follower = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=follower,
            start_new_session=True,
        )
        os.close(follower)
        self._leader = leader
        self.terminal = b""

    def read_until(self, done: Callable[[], bool], patience: float = PATIENCE_S) -> bool:
        """Read the terminal until ``done()`` or the process ends or ``patience`` runs out; ``done()``."""
        deadline = time.monotonic() + patience
        while not done() and time.monotonic() < deadline:
            ready, _, _ = select.select([self._leader], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self._leader, 65536)
                except OSError:  # EIO: every writer has gone
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    break
                self.terminal += chunk
            elif self.proc.poll() is not None:
                break
        return done()

    def finish(self) -> tuple[int, str, str]:
        """Wait for the end (killing it past ``PATIENCE_S``); (exit status, stdout, terminal text)."""
        assert self.proc.stdout is not None
        try:
            out, _ = self.proc.communicate(timeout=PATIENCE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
            pytest.fail("edgerun bench hung")
        self.read_until(lambda: False, patience=1.0)
        os.close(self._leader)
        return self.proc.returncode, out.decode(), self.terminal.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("edgerun: error: "), stderr
    return lines[0]


# -- the figures ---------------------------------------------------------------------------------


def test_bench_reports_the_threads_the_runtime_was_given_not_null() -> None:
    result = run_cli("bench", str(DIGITS / "digits_int8.tflite"), "--runs", "20", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    assert record["threads"] == 1  # a model under 1 MiB gets one thread (edgerun.model.default_threads)
    given = run_cli("bench", str(DIGITS / "digits_int8.tflite"), "--runs", "20", "--threads", "2", "--json")
    assert json.loads(given.stdout.splitlines()[0])["threads"] == 2


def test_the_int8_ratio_line_says_which_way_it_goes_and_on_how_many_threads() -> None:
    models = [str(DIGITS / "digits_fp32.tflite"), str(DIGITS / "digits_int8.tflite")]
    result = run_cli("bench", *models, "--runs", "20", "--threads", "1")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "INT8 is" in line)
    # once "INT8 is 0.90x FP32": read as a latency, that says INT8 is the faster when it is the slower
    assert line.startswith("digits tflite on xnnpack with 1 thread: INT8 is ") and "x as fast as FP32 (p50 " in line


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: every model gets one thread")
def test_fp32_and_int8_run_on_different_threads_get_no_ratio_but_a_line_saying_why(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    # The FP32 variant grown past 1 MiB by an unused initializer: by default it gets more threads than INT8.
    model = onnx.load(str(DIGITS / "digits_fp32.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(300_000, np.float32), "ballast"))
    onnx.save(model, str(tmp_path / "digits_fp32.onnx"))
    for name in ("digits_fp32.onnx.card.yaml", "digits_int8.onnx", "digits_int8.onnx.card.yaml"):
        shutil.copy(DIGITS / name, tmp_path / name)
    args = ["bench", str(tmp_path / "digits_fp32.onnx"), str(tmp_path / "digits_int8.onnx"), "--runs", "20"]
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    threads = {r["precision"]: r["threads"] for r in records if r["type"] == "result"}
    assert threads == {"fp32": min(4, os.cpu_count() or 1), "int8": 1}
    assert [r for r in records if r["type"] == "ratio"] == []  # once a ratio of 2 threads against 1
    table = run_cli(*args)
    assert "INT8 is" not in table.stdout
    assert (
        f"no INT8/FP32 ratio for digits onnx: FP32 ran on cpu with {threads['fp32']} threads, "
        "INT8 on cpu with 1 thread; give --delegate and --threads to run both alike"
    ) in table.stdout
    alike = run_cli(*args, "--threads", "1")
    assert "digits onnx on cpu with 1 thread: INT8 is " in alike.stdout


@pytest.mark.slow
def test_peak_rss_leaves_out_the_benchs_own_timing_arrays() -> None:
    def peak(runs: int) -> float:
        result = run_cli("bench", str(DIGITS / "digits_int8.tflite"), "--runs", str(runs), "--json")
        assert result.returncode == 0, result.stderr
        return float(json.loads(result.stdout.splitlines()[0])["peak_rss_mb"])

    few, many = peak(100), peak(500_000)
    # 500,000 timings are 3.8 MiB, and the percentiles sorted a copy: the same model once read 7.6 MiB bigger.
    assert abs(many - few) < 3.0, (few, many)


def test_the_table_says_rss_in_mib_as_it_is_measured() -> None:
    result = run_cli("bench", str(DIGITS / "digits_int8.tflite"), "--runs", "5")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.split()[-2:] == ["RSS", "MiB"]  # kB/1024 from /proc: once headed "RSS MB"


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["bench", "devices"])
def test_an_empty_probe_root_is_named_as_empty(command: str) -> None:
    args = [str(DIGITS / "digits_int8.tflite")] if command == "bench" else []
    result = run_cli(command, *args, "--probe-root", "")
    assert result.returncode == 2
    # once "--probe-root  is not a directory", the empty name between two spaces
    assert _one_error_line(result.stderr) == "edgerun: error: --probe-root is an empty string"


def test_an_empty_model_path_is_refused_not_benchmarked_as_the_current_directory() -> None:
    result = run_cli("bench", "", str(DIGITS / "digits_int8.tflite"), "--runs", "5")
    assert result.returncode == 2 and result.stdout == ""
    # once "edgerun: error:  on auto: model path is a directory, not a model file: ."
    assert _one_error_line(result.stderr) == "edgerun: error: MODEL is an empty string"


# -- long runs: progress, Ctrl-C, a child that dies, a parent that dies -------------------------------


@linux_only
def test_a_terminal_shows_how_far_the_runs_have_got_and_json_never_does() -> None:
    bench = _OnTerminal("bench", str(DIGITS / "digits_int8.tflite"), "--runs", "2000")
    code, out, terminal = bench.finish()
    assert code == 0, terminal
    assert "digits_int8.tflite on auto: loading" in terminal
    assert "digits_int8.tflite on xnnpack: 1/2,000 runs" in terminal
    assert terminal.endswith("\r\x1b[K")  # the line is cleared before the table row is read
    assert "\x1b" not in out and out.splitlines()[1].startswith("digits_int8.tflite")
    quiet = _OnTerminal("bench", str(DIGITS / "digits_int8.tflite"), "--runs", "2000", "--json")
    code, out, terminal = quiet.finish()
    assert code == 0 and terminal == "" and json.loads(out.splitlines()[0])["runs"] == 2000
    plain = _OnTerminal("bench", str(DIGITS / "digits_int8.tflite"), "--runs", "20", "--no-progress")
    assert plain.finish()[2] == ""


@linux_only
def test_ctrl_c_during_the_timed_runs_keeps_the_figures_of_the_runs_made(tmp_path: Path) -> None:
    slow = _slow_model(tmp_path)
    bench = _OnTerminal("bench", str(slow), str(DIGITS / "digits_int8.tflite"), "--runs", "1000000", "--threads", "1")
    try:
        bench.read_until(lambda: b"/1,000,000 runs" in bench.terminal, 20.0)  # the old bench showed none: sent anyway
        os.killpg(bench.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        code, out, terminal = bench.finish()
    finally:
        bench.kill()
    assert code == 130
    rows = out.splitlines()
    assert len(rows) >= 2, (out, terminal)  # once nothing: the figures of the runs made were lost
    assert rows[1].startswith("slow.onnx ") and "digits" not in out  # the rest is not started
    assert all(line.startswith("* from ") for line in rows[2:])  # a footnote when the runs made are few
    line = _one_error_line(terminal.split("\x1b[K")[-1])
    assert line.startswith(f"edgerun: error: interrupted: {slow} on cpu stopped after ")
    assert line.endswith(" of 1,000,000 runs (its figures are from those)")


@linux_only
def test_sigint_while_the_benchmark_process_starts_is_one_line_not_its_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "bench", str(_slow_model(tmp_path)), "--runs", "1000000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + PATIENCE_S
        starting = None
        while starting is None and time.monotonic() < deadline and proc.poll() is None:
            for kid in _children(proc.pid):
                try:
                    status = Path(f"/proc/{kid}/status").read_text()
                except OSError:
                    continue
                cgt = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
                if cgt & (1 << (signal.SIGINT - 1)):  # its Python is up, and still importing
                    starting = kid
            time.sleep(0.001)
        assert starting is not None, "no benchmark process started"
        os.kill(starting, signal.SIGINT)  # the benchmark process's share of a Ctrl-C
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # the old bench started another worker and went on
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=PATIENCE_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130
    assert out.decode() == ""
    # once the child's own KeyboardInterrupt traceback (or "Fatal Python error: init_import_site")
    assert _one_error_line(err.decode()) == "edgerun: error: interrupted"


@linux_only
def test_a_benchmark_process_that_dies_is_one_line_and_the_next_model_is_still_measured(tmp_path: Path) -> None:
    slow = _slow_model(tmp_path)
    bench = _OnTerminal("bench", str(slow), str(DIGITS / "digits_int8.tflite"), "--runs", "1000000")
    try:
        assert bench.read_until(lambda: b"slow.onnx on cpu: " in bench.terminal and b" runs" in bench.terminal), (
            bench.terminal
        )
        kids = _children(bench.proc.pid)
        assert len(kids) == 1, kids
        os.kill(kids[0], signal.SIGKILL)  # what the OOM killer does
        assert bench.read_until(lambda: b"digits_int8.tflite on xnnpack: 1/1,000,000 runs" in bench.terminal), (
            bench.terminal
        )
        # To the group, as a terminal's Ctrl-C: under load the digits child could answer it before bench,
        # scheduled late, took its own, which then cut the reply's read in two (no row: tests/test_bench_flake_20.py).
        os.killpg(bench.proc.pid, signal.SIGINT)  # no need to wait for a million digits runs
        code, out, terminal = bench.finish()  # the old bench waited for ever on the dead child
    finally:
        bench.kill()
    assert code == 130
    assert f"edgerun: error: {slow} on auto: the benchmark process ended without a result (killed by SIGKILL)" in (
        terminal
    )
    rows = out.splitlines()
    assert len(rows) >= 2, (out, terminal)
    assert rows[1].startswith("digits_int8.tflite ")  # measured after the failure (its partial row)


@linux_only
def test_the_benchmark_process_stops_when_bench_itself_is_killed(tmp_path: Path) -> None:
    bench = _OnTerminal("bench", str(_slow_model(tmp_path)), "--runs", "1000000")
    kids: list[int] = []
    try:
        bench.read_until(lambda: b" runs" in bench.terminal, 20.0)
        kids = _children(bench.proc.pid)
        assert len(kids) == 1
        bench.proc.kill()  # SIGKILL to bench alone: its child is left with no one to report to
        bench.proc.wait()
        deadline = time.monotonic() + PATIENCE_S
        while not _gone(kids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(kids[0]), "the orphaned benchmark process ran on"  # once for the rest of its million runs
    finally:
        for kid in kids:
            if not _gone(kid):
                os.kill(kid, signal.SIGKILL)
        bench.kill()


# -- devices -------------------------------------------------------------------------------------------


def _loads(library: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux" or _loads("libedgetpu.so.1"), reason="needs Linux without libedgetpu")
def test_devices_says_no_to_an_edge_tpu_whose_library_does_not_load(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0")
    result = run_cli("devices", "--probe-root", str(tree.root), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"]["accelerators"] == ["edgetpu:pcie:/dev/apex_0"]
    edgetpu = next(d for d in report["delegates"] if d["name"] == "edgetpu")
    assert edgetpu["usable"] is False  # once true: no model can run on it without libedgetpu
    assert edgetpu["reason"].startswith("the accelerator is present, but its delegate library does not load (")
    assert "libedgetpu.so.1" in edgetpu["reason"]
    human = run_cli("devices", "--probe-root", str(tree.root))
    line = next(line for line in human.stdout.splitlines() if " edgetpu " in line)
    assert line.split()[0] == "no" and "its delegate library does not load (libedgetpu.so.1" in line
