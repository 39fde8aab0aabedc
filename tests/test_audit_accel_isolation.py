"""Audit of ``isolation: process``: bad inputs stay input errors, and a crash is reported as the signal it was."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

from edgerun.errors import InputError
from edgerun.isolation import IsolatedBackend, load_isolated
from tests.conftest import DIGITS, SAMPLES

pytestmark = pytest.mark.slow


def test_inputs_that_are_not_numeric_arrays_are_input_errors_and_never_reach_the_worker() -> None:
    model = load_isolated(DIGITS / "digits_int8.tflite", delegates=["auto"])
    backend = model.backend
    assert isinstance(backend, IsolatedBackend)
    try:
        # An object array in shared memory hands the worker this process's pointers: it crashed on
        # them, and two such requests gave every delegate up for the cool-down.
        for bad in (None, np.array([object()]), np.array([[1, 2]], dtype=object), np.array(["7"])):
            with pytest.raises(InputError):
                model.run(bad)
        with pytest.raises(InputError, match="takes 1 input"):
            backend.run([])
        assert backend.crashes == 0
        x = np.load(SAMPLES / "digit_7.npy")[None]
        assert int(np.argmax(model.run(x)[0])) == 7
    finally:
        model.close()


def test_an_input_the_worker_s_backend_refuses_is_an_input_error_as_in_process() -> None:
    model = load_isolated(DIGITS / "digits_int8.tflite", delegates=["auto"])
    try:
        with pytest.raises(InputError, match="does not fit"):
            model.run(np.zeros((1, 8, 8, 2), np.float32))
        assert model.backend.crashes == 0
    finally:
        model.close()


def test_a_worker_killed_by_a_signal_is_reported_by_that_signal(caplog: pytest.LogCaptureFixture) -> None:
    backend = IsolatedBackend(DIGITS / "digits_int8.onnx", delegates=["cpu"], restarts=1)
    x = np.load(SAMPLES / "digit_7.npy")[None]
    try:
        backend.run([x])
        os.kill(backend.process.pid, signal.SIGSEGV)  # not joined here: the backend has to find out
        with caplog.at_level(logging.WARNING, logger="edgerun.isolation"):
            assert int(np.argmax(backend.run([x])[0])) == 7
        (restart,) = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
        assert "killed by SIGSEGV" in restart
    finally:
        backend.close()
