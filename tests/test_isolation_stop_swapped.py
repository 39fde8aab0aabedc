"""``isolation: process``: the daemon's stop reaches the models it no longer serves but still runs requests on.

A model swapped out (an OTA update, a rollback, a SIGHUP reload) or removed from the config finishes the
requests that hold it. The stop told only the models each name served: a request held by an old one whose
worker hung waited out the call's 30 s (and the API's 30 s of grace), holding the daemon's exit. Now the stop
reaches every isolated model a slot still runs a request on, so that request is answered 503 like one on a
served model, its worker is killed and the daemon exits in seconds. The workers of the models no longer
served that no request holds stop on their own, without waiting for the stop.

The daemon runs as a real process with a real HTTP API, its models in real worker processes; a hang is a
worker SIGSTOPped from outside, as a hung device looks from the daemon. The requests held through a
swap, a removal and a candidate's rollback run on a real daemon in-process, its models in real workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgerun.config import load_config
from edgerun.daemon import Daemon
from edgerun.errors import InferenceError
from edgerun.model import Model
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


def _write(path: Path, models: dict[str, dict[str, Any]]) -> None:
    config = {"models": models, "api": {"enabled": False}, "state_dir": str(path.parent / "state")}
    path.write_text(json.dumps({**config, "isolation": "process"}))  # JSON is YAML


def _alive(model: Model) -> bool:
    """Whether ``model``'s worker process still runs."""
    return model.backend.process.exitcode is None  # type: ignore[attr-defined]


def test_the_stop_reaches_the_hung_workers_of_models_a_reload_swapped_out_or_removed_and_the_rest_stop_once_let_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.yaml"
    _write(path, {"digits": ONNX, "other": TFLITE})
    daemon = Daemon(load_config(path), path)
    daemon.start()
    held: list[Model] = []  # the requests in progress: each holds its model until it lets go
    try:
        slot = daemon.slots["digits"]
        first = slot.primary
        held.append(slot.hold())
        assert held[0] is first
        _write(path, {"digits": TFLITE, "other": TFLITE})  # the path changed: a new model, the old one swapped out
        daemon.reload()
        second = slot.primary
        assert second is not first and _alive(first)  # the request goes on holding the old model
        # an A/B candidate, loaded as the OTA agent loads one, then rolled back with no request on it: it stops
        third = daemon._load("digits", daemon.config.models["digits"], DIGITS / "digits_int8.onnx")
        slot.set_candidate(third, 0.5)
        slot.set_candidate(None)
        wait_until(lambda: not _alive(third), 30, "the dropped candidate's worker to stop")
        assert _alive(first) and _alive(second)
        held.pop().let_go()  # the request is done: the old model's worker stops
        wait_until(lambda: not _alive(first), 30, "the old model's worker to stop")

        # at the stop: a request on a model swapped out and one on a model removed, both workers hung
        held.append(slot.hold())
        assert held[-1] is second
        other = daemon.slots["other"].primary
        held.append(daemon.slots["other"].hold())
        assert held[-1] is other
        _write(path, {"other": ONNX})  # digits removed, other swapped out
        daemon.reload()
        assert "digits" not in daemon.slots and daemon.slots["other"].primary is not other
        assert _alive(second) and _alive(other)  # each still finishes the request holding it
        hung = [m.backend.process.pid for m in (second, other)]  # type: ignore[attr-defined]
        for pid in hung:
            os.kill(pid, signal.SIGSTOP)  # the runtime hangs on its device from now on
        answers: dict[int, BaseException | None] = {}

        def request(model: Model) -> None:
            try:
                model.predict(SAMPLES / "digit_3.png")  # a request in progress, as the API's or a frame's
                answers[id(model)] = None
            except BaseException as exc:
                answers[id(model)] = exc

        requests = [threading.Thread(target=request, args=(m,)) for m in (second, other)]
        for r in requests:
            r.start()
        threading.Event().wait(0.5)  # each call handed to its worker
        stopped = time.monotonic()
        daemon.stop()
        for r in requests:
            r.join(timeout=max(0.1, stopped + 15 - time.monotonic()))  # the call's own limit is 30 s
        assert not any(r.is_alive() for r in requests), "a request was still waiting 15 s after the stop"
        for model in (second, other):
            error = answers[id(model)]
            assert isinstance(error, InferenceError), error
            why = f"{model.path.name}: its worker gave no answer within 5 s of the stop and was killed"
            assert str(error) == f"{SAMPLES / 'digit_3.png'}: {why}"
        wait_until(lambda: all(_gone(pid) for pid in hung), 30, "the killed workers to end")  # SIGKILL lands soon after
        log = caplog.text
        for model, pid in zip((second, other), hung):
            assert f"worker process {pid} for {model.path.name} gave no answer within 5 s of the stop: killed" in log
        assert "crashed" not in log  # killed by the stop: neither a crash nor restarted
    finally:
        for model in held:
            model.let_go()
        if daemon.ready:  # a failure before the stop above
            daemon.stop()
        for model in [*(s.primary for s in daemon.slots.values()), *held]:
            model.close()
