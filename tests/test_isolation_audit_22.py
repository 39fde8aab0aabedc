"""Audit of ``isolation: process``: what goes through shared memory is bounded by the model and by /dev/shm.

An input whose shape does not fit is refused before it takes shared memory, a block replaced by a
larger one is unmapped on both sides, and a tensor that does not fit in /dev/shm is an error, not a
SIGBUS that kills the caller (the daemon).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgerun.errors import InferenceError, InputError
from edgerun.isolation import IsolatedBackend
from tests.conftest import DIGITS, ROOT, SAMPLES

pytestmark = pytest.mark.slow

SEVEN = np.load(SAMPLES / "digit_7.npy")[None]  # (1, 8, 8, 1) float32


def _unlinked_but_mapped(pid: int | str) -> list[str]:
    """The shared-memory blocks process ``pid`` still maps though they were unlinked: memory kept taken."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-2] for line in maps if "/dev/shm/psm_" in line and line.endswith("(deleted)")})


def test_an_input_whose_shape_does_not_fit_is_refused_before_it_takes_shared_memory() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"])  # input [N,8,8,1] float32
    try:
        assert int(np.argmax(backend.run([SEVEN])[0])) == 7
        worker = backend.process.pid
        too_wide = np.zeros((1, 8, 8, 250_000), np.float32)  # 64 MB: in /dev/shm until close, before
        with pytest.raises(InputError, match="does not fit") as refused:
            backend.run([too_wide])
        assert all(block.size < 1 << 20 for block in backend._child.inputs.blocks)
        assert str(refused.value) == "input of shape [1, 8, 8, 250000] does not fit input [N,8,8,1] float32"
        with pytest.raises(InputError, match="does not fit"):
            backend.run([np.zeros((1, 8, 8), np.float32)])
        assert all(block.size < 1 << 20 for block in backend._child.inputs.blocks)
        assert backend.crashes == 0 and backend.process.pid == worker
        assert int(np.argmax(backend.run([np.repeat(SEVEN, 3, axis=0)])[0][2])) == 7  # the batch stays free
    finally:
        backend.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_a_block_replaced_by_a_larger_one_is_let_go_by_both_processes() -> None:
    backend = IsolatedBackend(DIGITS / "digits_fp32.onnx", delegates=["cpu"])
    before = _unlinked_but_mapped("self")
    try:
        for batch in range(1, 41):  # each larger batch replaces the input block and the output block
            answers = backend.run([np.repeat(SEVEN, batch * 10, axis=0)])[0]
            assert (np.argmax(answers, axis=1) == 7).all()
        # the worker kept mapping every input block it was ever handed, the daemon every output block
        assert _unlinked_but_mapped(backend.process.pid) == []
        assert _unlinked_but_mapped("self") == before
        assert len(backend._child.attached) == 1
    finally:
        backend.close()


_TINY_SHM = textwrap.dedent(
    """
    import sys
    import numpy as np
    from edgerun.errors import InferenceError
    from edgerun.isolation import IsolatedBackend

    seven = np.load(sys.argv[1])[None]
    backend = IsolatedBackend(sys.argv[2], delegates=["cpu"])
    try:
        backend.run([np.repeat(seven, 8000, axis=0)])  # 2 MB into a 1 MB /dev/shm
    except InferenceError as exc:
        print("refused:", exc)
    print("answer:", int(np.argmax(backend.run([seven])[0])), "crashes:", backend.crashes)
    backend.close()
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_a_tensor_that_does_not_fit_in_dev_shm_is_an_error_and_not_a_bus_error() -> None:
    # a 1 MB /dev/shm of its own, as a container's (docker gives 64 MiB unless told otherwise)
    script = 'mount -t tmpfs -o size=1m tmpfs /dev/shm || exit 77; exec "$@"'
    python = [sys.executable, "-c", _TINY_SHM, str(SAMPLES / "digit_7.npy"), str(DIGITS / "digits_fp32.onnx")]
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *python], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7 / 135 before: SIGBUS
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: shared memory is full: a tensor of 2048000 bytes does not fit"), lines
    assert "--shm-size" in lines[0]
    assert lines[1] == "answer: 7 crashes: 0"


def _stop_the_next_worker(old: int) -> int | None:
    """SIGSTOP the worker started after ``old`` as soon as it appears, before it has loaded its model
    (a vendor library hanging on a device): its pid, or None if it had loaded already."""
    import multiprocessing

    for _ in range(20000):
        workers = [p for p in multiprocessing.active_children() if p.name == "edgerun-worker" and p.pid != old]
        if workers and workers[0].pid is not None:
            os.kill(workers[0].pid, signal.SIGSTOP)
            return workers[0].pid
        threading.Event().wait(0.001)
    return None


def test_closing_while_a_call_restarts_the_worker_kills_the_one_loading_and_that_call_fails() -> None:
    import multiprocessing

    for _attempt in range(5):  # the stop races the load: on a busy machine the load may finish first
        backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"], restarts=1)
        first = backend.process
        os.kill(first.pid, signal.SIGKILL)
        first.join()
        outcome: list[str] = []

        def call(backend: IsolatedBackend = backend, outcome: list[str] = outcome) -> None:
            try:
                outcome.append(f"answered {int(np.argmax(backend.run([SEVEN])[0]))}")
            except InferenceError as exc:
                outcome.append(str(exc))

        caller = threading.Thread(target=call)
        caller.start()
        stopped = _stop_the_next_worker(first.pid)
        loaded = backend.process.pid == stopped  # the load won the race: the call is answered
        # before: close waited for the restart's 120 s, then the call failed as a crash on every delegate
        backend.close()
        caller.join()
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):  # let a worker that loaded go on to its end
                os.kill(stopped, signal.SIGCONT)
        if loaded or outcome == ["answered 7"]:
            continue
        assert outcome == ["digits_int8.onnx: its worker was closed"]
        assert not [p for p in multiprocessing.active_children() if p.pid == stopped]
        assert not psutil.pid_exists(stopped)  # killed and reaped, not left stopped
        break
    else:
        pytest.fail("the replacement worker loaded before it could be stopped, 5 times")


def test_a_worker_whose_parent_is_killed_ends_without_a_traceback(tmp_path: Path) -> None:
    """The worker read its pipe with no guard: a parent killed (SIGKILL, the OOM killer) left a traceback
    of ``EOFError`` on the shared stderr, in the daemon's log, from a process that was simply ending."""
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from edgerun.isolation import IsolatedBackend
        backend = IsolatedBackend({str(DIGITS / "digits_int8.onnx")!r}, delegates=["cpu"])
        backend.run([np.zeros((1, 8, 8, 1), np.float32)])
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        parent = subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )
        try:
            assert parent.stdout is not None and parent.stdout.readline() == b"ready\n", log.read_text()
            workers = psutil.Process(parent.pid).children()
            assert workers, "no worker process"
            parent.kill()
            parent.wait(timeout=30)
            _, alive = psutil.wait_procs(workers, timeout=30)
            assert not alive, alive
        finally:
            parent.kill()
            parent.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()
