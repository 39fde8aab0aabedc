"""``isolation: process``: the worker's start limit is a setting, and a close never waits for a worker that hangs.

A worker's start (spawn, model load, warm-up call) was capped at a hard-coded 120 s: a first TensorRT
engine build on a Jetson, or a large model on a Raspberry Pi's SD card, could never load isolated. It is
``isolation.start_timeout_s`` now. A close while a call waited on a worker that does not answer (a vendor
library hanging on a device) waited out the call's ``timeout_s``; it gives the call ``CLOSE_GRACE_S``.

Workers are real child processes on the real digits model; a hang is a worker SIGSTOPped from outside,
as a hung device looks from the daemon.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgerun.config import parse_config
from edgerun.errors import ConfigError, DelegateError, InferenceError
from edgerun.isolation import IsolatedBackend
from tests.conftest import DIGITS, SAMPLES

pytestmark = pytest.mark.slow

SEVEN = np.load(SAMPLES / "digit_7.npy")[None]  # (1, 8, 8, 1) float32


def _config(isolation: object, tmp_path: Path) -> dict[str, object]:
    return {
        "models": {"digits": {"path": str(DIGITS / "digits_int8.onnx"), "delegate": "cpu"}},
        "isolation": isolation,
        "state_dir": str(tmp_path / "state"),
    }


def test_the_isolation_section_takes_a_start_limit_and_the_one_word_form_still_works(tmp_path: Path) -> None:
    config = parse_config(_config({"mode": "process", "start_timeout_s": 900}, tmp_path), "c.yaml")
    assert (config.isolation.mode, config.isolation.start_timeout_s) == ("process", 900)
    assert config.effective()["isolation"] == {"mode": "process", "start_timeout_s": 900.0}
    short = parse_config(_config("process", tmp_path), "c.yaml")  # as every config wrote it before
    assert (short.isolation.mode, short.isolation.start_timeout_s) == ("process", 120)
    default = parse_config({"models": {"digits": {"path": str(DIGITS / "digits_int8.onnx")}}}, "c.yaml")
    assert (default.isolation.mode, default.isolation.start_timeout_s) == ("thread", 120)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0, "greater than or equal to 1"),
        (3601, "less than or equal to 3600"),
        ("ten minutes", "a valid number"),
        (True, "a valid number"),
    ],
)
def test_a_bad_start_limit_is_refused_in_one_line_naming_the_key(value: object, why: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(_config({"mode": "process", "start_timeout_s": value}, tmp_path), "c.yaml")
    assert str(refused.value).startswith("c.yaml: isolation.start_timeout_s: Input should be ")
    assert why in str(refused.value) and "\n" not in str(refused.value)


def test_an_isolation_that_is_neither_a_mode_nor_a_mapping_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^c\.yaml: isolation\.mode: Input should be 'thread' or 'process'$"):
        parse_config(_config("processes", tmp_path), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c\.yaml: isolation: Input should be 'thread' or 'process', or a mapping"):
        parse_config(_config(5, tmp_path), "c.yaml")


def _stop_the_next_worker(old: int | None) -> int | None:
    """SIGSTOP the worker started after ``old`` as soon as it appears, before it has loaded its model
    (a vendor library hanging on a device, a TensorRT build still running): its pid, or None."""
    for _ in range(20000):
        workers = [p for p in multiprocessing.active_children() if p.name == "edgerun-worker" and p.pid != old]
        if workers and workers[0].pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(workers[0].pid, signal.SIGSTOP)
                return workers[0].pid
        threading.Event().wait(0.001)
    return None


def test_a_worker_not_started_within_the_configured_limit_fails_naming_the_setting(tmp_path: Path) -> None:
    from edgerun.daemon import Daemon

    config = parse_config(_config({"mode": "process", "start_timeout_s": 1}, tmp_path), "c.yaml")
    for _attempt in range(5):  # the stop races the load: on a busy machine the load may finish first
        outcome: list[object] = []

        def load(outcome: list[object] = outcome) -> None:
            try:
                outcome.append(Daemon(config)._load("digits", config.models["digits"]))
            except DelegateError as exc:
                outcome.append(exc)

        loader = threading.Thread(target=load)
        loader.start()
        stopped = _stop_the_next_worker(None)
        loader.join(timeout=60)  # the configured 1 s; before, the hard-coded 120 s
        assert not loader.is_alive(), "the load did not give up within 60 s"
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):  # a worker that loaded before it was stopped
                os.kill(stopped, signal.SIGCONT)
        if not isinstance(outcome[0], DelegateError):
            outcome[0].close()  # type: ignore[attr-defined]
            continue
        assert str(outcome[0]) == (
            "the worker cannot load digits_int8.onnx: the worker did not start within 1 s (isolation.start_timeout_s)"
        )
        assert stopped is not None and not psutil.pid_exists(stopped)  # killed and reaped, not left stopped
        break
    else:
        pytest.fail("the worker loaded before it could be stopped, 5 times")


def test_a_tiny_start_limit_fails_a_real_worker_start_with_one_line_naming_the_setting() -> None:
    # no interpreter spawns, imports its runtime and loads a model in a millisecond
    with pytest.raises(DelegateError) as refused:
        IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"], start_timeout_s=0.001)
    assert str(refused.value) == (
        "the worker cannot load digits_int8.onnx: the worker did not start within 0.001 s (isolation.start_timeout_s)"
    )
    assert not [p for p in multiprocessing.active_children() if p.name == "edgerun-worker"]


def test_closing_while_a_call_waits_on_a_worker_that_hangs_ends_that_call_with_a_clear_error() -> None:
    # a call may take minutes on a slow device: the close, not the call's own limit, must end the wait
    backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"], timeout_s=600)
    hung = backend.process.pid
    outcome: list[str] = []

    def call() -> None:
        try:
            outcome.append(f"answered {int(np.argmax(backend.run([SEVEN])[0]))}")
        except InferenceError as exc:
            outcome.append(str(exc))

    caller = threading.Thread(target=call)
    closer = threading.Thread(target=backend.close)
    try:
        assert int(np.argmax(backend.run([SEVEN])[0])) == 7
        os.kill(hung, signal.SIGSTOP)  # the runtime hangs on its device from now on
        caller.start()
        for _ in range(3000):  # until the call holds the backend, waiting for its answer
            if backend._lock.locked():
                break
            threading.Event().wait(0.01)
        assert backend._lock.locked(), "the call never started"
        closer.start()
        closer.join(timeout=60)  # before: the call's 600 s
        caller.join(timeout=60)
        assert not closer.is_alive(), "close() was still waiting for the hung call after 60 s"
        assert outcome == ["digits_int8.onnx: its worker was closed"]
        assert not psutil.pid_exists(hung)  # killed and reaped, not left stopped
        assert backend.crashes == 0  # a close, not a crash: no worker was started again
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGKILL)  # before the fix: lets the call, then the close, end
        for thread in (caller, closer):
            if thread.ident is not None:  # started
                thread.join(timeout=60)
        backend.close()
