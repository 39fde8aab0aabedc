"""``isolation: process``: the daemon's stop reaches the models it no longer serves but still runs requests on.

A model swapped out (an OTA update, a rollback, a SIGHUP reload) or removed from the config finishes the
requests that hold it. The stop told only the models each name served: a request held by an old one whose
worker hung waited out the call's 30 s (and the API's 30 s of grace), holding the daemon's exit. Now the stop
reaches every isolated model a slot still runs a request on, so that request is answered 503 like one on a
served model, its worker is killed and the daemon exits in seconds.

The daemon runs as a real process with a real HTTP API, its models in real worker processes; a hang is a
worker SIGSTOPped from outside, as a hung device looks from the daemon. The slot's own bookkeeping runs
real isolated models in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgerun.isolation import load_isolated
from edgerun.ota.slot import ModelSlot
from tests.conftest import DIGITS, SAMPLES, stop_process
from tests.test_isolation_19 import _Daemon as _IsolatedDaemon
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow

IMAGE = (SAMPLES / "digit_3.png").read_bytes()


def _post(port: int, model: str) -> tuple[int, str, Any]:
    """POST the digit image to ``model``: status, content type and the answer (JSON, else text)."""
    url = f"http://127.0.0.1:{port}/v1/models/{model}/predict"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=IMAGE, method="POST"), timeout=120) as answer:
            status, kind, raw = answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as exc:
        status, kind, raw = exc.code, exc.headers.get("content-type", ""), exc.read()
    try:
        return status, kind, json.loads(raw)
    except ValueError:
        return status, kind, raw.decode(errors="replace")


class _Daemon(_IsolatedDaemon):
    """``edgerun daemon`` as a real process serving isolated models over HTTP, its log in a file."""

    def worker(self, model_file: str) -> int:
        """The pid of the last worker started for ``model_file``."""
        return self.workers(model_file)[-1][0]

    def in_progress(self) -> int:
        """Connections the daemon's API holds open now (a request in progress)."""
        api = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        return sum(1 for c in api if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_ESTABLISHED)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (gone, or a zombie its parent has not reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[_Daemon]]:
    """The daemons a test starts; each stopped at the end (SIGKILLed where a stop hangs), none left running."""
    started: list[_Daemon] = []
    yield started
    for d in started:
        stop_process(d.proc, 60)


ONNX = {"path": str(DIGITS / "digits_int8.onnx"), "delegate": "cpu"}
TFLITE = {"path": str(DIGITS / "digits_fp32.tflite"), "delegate": "cpu"}


@pytest.mark.parametrize(
    ("how", "after"),
    [
        ("swapped by a reload", {"digits": TFLITE}),  # the path changed: a new model, the old one swapped out
        ("removed by a reload", {"other": TFLITE}),  # the name is gone: its slot retired
    ],
)
def test_a_sigterm_while_a_request_waits_on_the_hung_worker_of_a_model_no_longer_served_answers_503_and_exits(
    tmp_path: Path, daemons: list[_Daemon], how: str, after: dict[str, dict[str, Any]]
) -> None:
    d = _Daemon(tmp_path, {"digits": ONNX, "other": TFLITE})
    daemons.append(d)
    assert _post(d.port, "digits")[0] == 200
    hung = d.worker("digits_int8.onnx")
    os.kill(hung, signal.SIGSTOP)  # the runtime hangs on its device from now on
    answers: list[tuple[int, str, Any]] = []
    request = threading.Thread(target=lambda: answers.append(_post(d.port, "digits")))
    try:
        request.start()
        wait_until(lambda: d.in_progress() > 0, 30, "the request to reach the daemon")
        threading.Event().wait(0.5)  # its body read and handed to the worker, which holds the model
        d.reload(after)  # the model the request holds is no longer served: it finishes the request
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(timeout=120)  # only a bound on a hung test: before the fix it took over 30 s
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon was still stopping 120 s after SIGTERM")
        request.join(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGKILL)  # before the fix: ends the wait
    assert code == 0, d.log()[-3000:]
    [(status, kind, answer)] = answers
    assert status == 503 and kind == "application/json", (status, answer, d.log()[-3000:])
    assert answer["detail"] == (
        "model digits: the daemon is stopping; "
        "digits_int8.onnx: its worker gave no answer within 5 s of the stop and was killed"
    ), answer
    assert _gone(hung)
    log = d.log()
    assert f"worker process {hung} for digits_int8.onnx gave no answer within 5 s of the stop: killed" in log
    assert "worker on cpu crashed" not in log  # killed by the stop: neither a crash nor restarted
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "edgerun daemon stopped" in log


def test_a_slot_names_every_model_a_request_may_still_run_on_and_forgets_a_retired_one_once_let_go() -> None:
    first, second, third = (load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"]) for _ in range(3))
    try:
        slot = ModelSlot(first)
        assert slot.models() == [first]
        held = slot.hold()
        assert held is first
        slot.swap(second)  # an update: the request goes on holding the old model
        assert slot.models() == [second, first]
        slot.set_candidate(third, 0.5)
        assert slot.models() == [second, third, first]
        slot.set_candidate(None)  # the candidate rolled back: no request holds it, it is forgotten
        assert slot.models() == [second, first]
        held.let_go()  # the request is done: the old model is forgotten too, and its worker stops
        assert slot.models() == [second]
        wait_until(lambda: first.backend.process.exitcode is not None, 30, "the old model's worker to stop")
        second_held = slot.hold()
        slot.retire()  # the name removed: its model is named while the request holding it runs
        assert slot.models() == [second]
        second_held.let_go()
        assert slot.models() == []
    finally:
        for m in (first, second, third):
            m.close()
