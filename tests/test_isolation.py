"""Inference in a supervised worker process: same answers, survives native crashes, falls back."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest

import edgerun
from edgerun.isolation import IsolatedBackend, load_isolated
from tests.conftest import DIGITS, SAMPLES

pytestmark = pytest.mark.slow


def test_an_isolated_model_answers_like_the_in_process_one() -> None:
    isolated = load_isolated(DIGITS / "digits_int8.tflite", delegates=["auto"])
    try:
        with edgerun.load(DIGITS / "digits_int8.tflite") as local:
            for digit in range(10):
                image = SAMPLES / f"digit_{digit}.png"
                assert isolated.predict(image).output == local.predict(image).output
        batch = np.repeat(np.load(SAMPLES / "digit_7.npy")[None], 1, axis=0)
        assert int(np.argmax(isolated.run(batch)[0])) == 7
        assert isolated.delegate == "xnnpack"
    finally:
        isolated.close()


def test_a_native_crash_costs_one_restart_of_the_worker() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"], restarts=1)
    x = np.load(SAMPLES / "digit_7.npy")[None]
    try:
        first = backend.run([x])[0]
        pid = backend.process.pid
        os.kill(pid, signal.SIGSEGV)  # what a vendor library's abort looks like from outside
        backend.process.join(timeout=10)
        again = backend.run([x])[0]  # detected, restarted, retried: the caller sees an answer
        assert np.array_equal(first, again)
        assert backend.crashes == 1 and backend.process.pid != pid and backend.delegate == "cpu"
    finally:
        backend.close()


def test_a_worker_that_keeps_crashing_moves_to_the_next_delegate() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.tflite", delegates=["xnnpack", "cpu"], restarts=1)
    x = np.load(SAMPLES / "digit_7.npy")[None]
    try:
        for _ in range(2):  # two crashes within the window: xnnpack is given up
            assert backend.delegate == "xnnpack"
            os.kill(backend.process.pid, signal.SIGSEGV)
            backend.process.join(timeout=10)
            assert int(np.argmax(backend.run([x])[0])) == 7
        assert backend.delegate == "cpu" and backend.crashes == 2
    finally:
        backend.close()


def test_a_worker_that_crashes_on_its_last_delegate_is_a_clear_error() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.tflite", delegates=["cpu"], restarts=0)
    try:
        os.kill(backend.process.pid, signal.SIGSEGV)
        backend.process.join(timeout=10)
        with pytest.raises(edgerun.InferenceError, match="keeps crashing"):
            backend.run([np.load(SAMPLES / "digit_7.npy")[None]])
    finally:
        backend.close()


def test_the_daemon_config_can_isolate_a_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    config = parse_config(
        {
            "models": {"digits": {"path": str(DIGITS / "digits_int8.onnx")}},
            "isolation": "process",
            "state_dir": str(tmp_path),
        },
        "test",
    )
    model = Daemon(config)._load("digits", config.models["digits"])
    try:
        assert isinstance(model.backend, IsolatedBackend)
        assert model.predict(SAMPLES / "digit_4.png").output[0]["label"] == "4"
    finally:
        model.close()


def test_a_worker_given_up_on_every_delegate_fails_clearly_while_it_cools_down() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.tflite", delegates=["cpu"], restarts=0, cooldown_s=3600)
    x = np.load(SAMPLES / "digit_7.npy")[None]
    try:
        os.kill(backend.process.pid, signal.SIGSEGV)
        backend.process.join(timeout=10)
        with pytest.raises(edgerun.InferenceError, match="starting over from cpu in 3600 s"):
            backend.run([x])
        for _ in range(2):  # every later call: the same kind of error, never an IndexError
            with pytest.raises(edgerun.InferenceError, match="cooling down, starting over from cpu in"):
                backend.run([x])
    finally:
        backend.close()


def test_after_the_cool_down_the_worker_starts_over_from_the_first_delegate() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.tflite", delegates=["xnnpack", "cpu"], restarts=0, cooldown_s=0)
    x = np.load(SAMPLES / "digit_7.npy")[None]
    try:
        for delegate in ("xnnpack", "cpu"):  # one crash each: both given up
            assert backend.delegate == delegate
            os.kill(backend.process.pid, signal.SIGSEGV)
            backend.process.join(timeout=10)
            if delegate == "xnnpack":
                assert int(np.argmax(backend.run([x])[0])) == 7
        with pytest.raises(edgerun.InferenceError, match="no delegate is left"):
            backend.run([x])
        assert int(np.argmax(backend.run([x])[0])) == 7  # the cool-down (none here) is over: back on xnnpack
        assert backend.delegate == "xnnpack" and backend.crashes == 2
    finally:
        backend.close()


def test_a_swapped_out_isolated_model_frees_its_worker_and_shared_memory_after_its_last_request() -> None:
    import gc
    from pathlib import Path

    from edgerun.ota.slot import ModelSlot

    old = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    slot = ModelSlot(old)
    request = slot.get()  # a request that took the model just before the swap
    assert request.predict(SAMPLES / "digit_3.png").output[0]["label"] == "3"
    worker, blocks = old.backend.process, [b.name for b in old.backend._child.inputs.blocks]
    assert blocks and all(Path("/dev/shm", name).exists() for name in blocks)
    new = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    try:
        slot.swap(new)
        assert request.predict(SAMPLES / "digit_5.png").output[0]["label"] == "5"  # it finishes on the old one
        del old, request  # the last references: the slot dropped its own
        gc.collect()
        worker.join(timeout=10)
        assert worker.exitcode == 0  # told to stop, not killed
        assert not any(Path("/dev/shm", name).exists() for name in blocks)
    finally:
        new.close()


def test_a_crashed_worker_s_output_memory_is_unlinked_when_the_worker_is_replaced() -> None:
    from pathlib import Path

    backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"], restarts=1)
    x = np.load(SAMPLES / "digit_7.npy")[None]
    try:
        backend.run([x])
        outputs = list(backend._child.attached)  # the worker's output blocks, which the worker unlinks itself
        assert outputs and all(Path("/dev/shm", name).exists() for name in outputs)
        os.kill(backend.process.pid, signal.SIGKILL)  # it never gets to clean up
        backend.process.join(timeout=10)
        assert int(np.argmax(backend.run([x])[0])) == 7  # restarted
        assert not any(Path("/dev/shm", name).exists() for name in outputs)
    finally:
        backend.close()


def test_a_closed_isolated_backend_refuses_calls_instead_of_starting_a_worker_nobody_stops() -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    backend.close()
    with pytest.raises(edgerun.InferenceError, match="its worker was closed"):
        backend.run([np.load(SAMPLES / "digit_7.npy")[None]])
    assert not backend.process.is_alive()


def test_a_worker_that_dies_while_loading_is_a_clear_load_error() -> None:
    import multiprocessing
    import threading

    killed: list[int] = []

    def kill_the_worker_as_it_starts() -> None:  # a vendor library aborting during load, seen from outside
        for _ in range(1000):
            workers = [p for p in multiprocessing.active_children() if p.name == "edgerun-worker"]
            if workers and workers[0].pid is not None:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                return
            threading.Event().wait(0.005)

    for _attempt in range(5):  # the kill races the load: on a busy machine the load may finish first
        killer = threading.Thread(target=kill_the_worker_as_it_starts)
        killer.start()
        try:
            backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"])
        except edgerun.DelegateError as exc:
            assert re.search(r"exited while loading \(exit code -9\)", str(exc)), exc
            break
        finally:
            killer.join()
        backend.close()  # loaded before the kill came: the worker died after, as a crash in use (tested above)
    else:
        pytest.fail("the worker was never killed while loading in 5 attempts")
    assert killed
