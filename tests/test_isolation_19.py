"""Isolated models: a swapped-out or removed model's worker stops after its last request, the delegate
reported is the one the worker runs on, and ``auto`` falls back down its ranked delegates.

The daemon runs as a real process with a real HTTP API, its models in real worker processes that
are killed with real signals; the OTA case runs a real agent on the session broker.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgerun.isolation import load_isolated
from edgerun.ota.slot import ModelSlot
from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, free_port, stop_process
from tests.ota_helpers import Agent, StatusWatcher, make_key, model_with_card
from tests.test_ota_fixes_18 import ENDED, command, listening, update
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow

IMAGE = (SAMPLES / "digit_3.png").read_bytes()
WORKER = re.compile(r"worker process (\d+) runs (\S+) on (\S+)")


def _request(port: int, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw[:1] == b"{" else raw.decode())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class _Daemon:
    """``edgerun daemon`` as a real process serving isolated models over HTTP, its log in a file."""

    def __init__(self, folder: Path, models: dict[str, dict[str, Any]]) -> None:
        self.folder, self.port = folder, free_port()
        self.config, self.log_file = folder / "c.yaml", folder / "daemon.log"
        self.write(models)
        with open(self.log_file, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgerun", "daemon", "--config", str(self.config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_until(self.ready, 60, "the daemon to be ready")

    def write(self, models: dict[str, dict[str, Any]]) -> None:
        config = {
            "models": models,
            "api": {"port": self.port},
            "state_dir": str(self.folder / "state"),
            "isolation": "process",
            "logging": {"level": "INFO", "format": "text"},
        }
        self.config.write_text(json.dumps(config))  # JSON is YAML

    def ready(self) -> bool:
        try:
            return _request(self.port, "/ready")[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def workers(self, model_file: str) -> list[tuple[int, str]]:
        """(pid, delegate) of every worker started for ``model_file``, oldest first."""
        return [(int(pid), delegate) for pid, name, delegate in WORKER.findall(self.log()) if name == model_file]

    def reload(self, models: dict[str, dict[str, Any]]) -> None:
        """Rewrite the config and SIGHUP; returns once the reload is done."""
        done = self.log().count("SIGHUP: config reloaded")
        self.write(models)
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.log().count("SIGHUP: config reloaded") > done, 60, "the reload")

    def running(self, pid: int) -> bool:
        """Whether ``pid`` is a live worker of this daemon (neither gone nor a zombie)."""
        try:
            worker = psutil.Process(pid)
            return worker.ppid() == self.proc.pid and worker.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def predict(self, model: str) -> tuple[int, Any]:
        return _request(self.port, f"/v1/models/{model}/predict", IMAGE)

    def kill_worker(self, model_file: str) -> int:
        """SIGKILL the current worker of ``model_file`` (a native crash, as seen from outside)."""
        pid = self.workers(model_file)[-1][0]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.running(pid), 30, f"worker {pid} to die")
        return pid

    def stop(self) -> int:
        return stop_process(self.proc, 60)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    """``daemon(models)``: a daemon process on those models; stopped (exit code 0) at the end."""
    started: list[_Daemon] = []

    def start(models: dict[str, dict[str, Any]]) -> _Daemon:
        d = _Daemon(tmp_path, models)
        started.append(d)
        return d

    yield start
    for d in started:
        assert d.stop() == 0, d.log()[-3000:]


def _batched(d: _Daemon, model: str, n: int = 80, concurrent: int = 8) -> list[tuple[int, Any]]:
    """``n`` predict requests, ``concurrent`` at a time: the API groups them into batch calls."""
    with ThreadPoolExecutor(concurrent) as pool:
        return list(pool.map(lambda _: d.predict(model), range(n)))


def _models(digits: str | None) -> dict[str, dict[str, Any]]:
    models = {"other": {"path": str(DIGITS / "digits_fp32.tflite")}}
    if digits is not None:
        models["digits"] = {"path": str(DIGITS / digits)}
    return models


def _any_exists(shared_memory_blocks: list[str]) -> bool:
    return any(Path("/dev/shm", name).exists() for name in shared_memory_blocks)


def _all_threes(answers: list[tuple[int, Any]]) -> bool:
    return all(status == 200 and body["output"][0]["label"] == "3" for status, body in answers)


# -- a model no longer served stops its worker after its last request --------------------------------


def test_a_model_removed_by_a_reload_stops_its_worker_after_its_last_batched_request(daemon: Any) -> None:
    d = daemon(_models("digits_fp32.onnx"))
    assert _all_threes(_batched(d, "digits"))
    (old, _), (other, _) = d.workers("digits_fp32.onnx")[0], d.workers("digits_fp32.tflite")[0]
    d.reload(_models(None))
    wait_until(lambda: not d.running(old), 30, f"the removed model's worker {old} to stop")
    assert d.predict("digits")[0] == 404
    assert _all_threes(_batched(d, "other", n=20, concurrent=4))
    assert d.running(other)
    assert f"worker process {old} for digits_fp32.onnx stopped" in d.log()


def test_a_model_swapped_by_a_reload_stops_its_old_worker_after_its_last_batched_request(daemon: Any) -> None:
    d = daemon(_models("digits_fp32.onnx"))
    assert _all_threes(_batched(d, "digits"))
    (old, _) = d.workers("digits_fp32.onnx")[0]
    d.reload(_models("digits_int8.onnx"))  # the path changed: a new worker, the old one swapped out
    (new, _) = d.workers("digits_int8.onnx")[0]
    assert _all_threes(_batched(d, "other", n=20, concurrent=4))  # requests to another model only
    wait_until(lambda: not d.running(old), 30, f"the swapped-out worker {old} to stop")
    assert d.running(new)
    assert _all_threes(_batched(d, "digits", n=20, concurrent=4))  # served by the new one
    assert d.running(new)


def test_requests_in_flight_through_a_swap_all_succeed_and_the_old_worker_stops_after_the_last(daemon: Any) -> None:
    d = daemon(_models("digits_fp32.onnx"))
    (old, _) = d.workers("digits_fp32.onnx")[0]
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and len(answers) < 5000:
            answers.append(d.predict("digits"))

    clients = [threading.Thread(target=client) for _ in range(6)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: len(answers) >= 50, 60, "requests before the swap")
        d.reload(_models("digits_int8.onnx"))
        after = len(answers)
        wait_until(lambda: len(answers) >= after + 50, 60, "requests after the swap")
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=120)
    assert _all_threes(answers), [a for a in answers if a[0] != 200][:3]
    wait_until(lambda: not d.running(old), 30, f"the swapped-out worker {old} to stop")
    (new, _) = d.workers("digits_int8.onnx")[0]
    assert d.running(new)


def test_an_isolated_model_replaced_by_an_ota_update_or_a_rollback_stops_its_worker(
    broker: Broker, tmp_path: Path
) -> None:
    key, _, public = make_key(tmp_path)
    keys = {"key": key}
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    device = f"iso19-{secrets.token_hex(3)}"

    def isolated(path: Path, card: Any) -> Any:
        return load_isolated(path, delegates=["cpu"], card=card)

    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, tmp_path / "state" / device, v1, public, device, isolated)
    served: list[Any] = []  # every model served here, each kept referred to as an idle thread keeps its last one
    try:
        served.append(isolated(agent.slot.primary.path, agent.slot.primary.card))
        agent.slot.swap(served[0])  # 1.0.0 in a worker too
        listening(broker, keys, watcher, device)
        first_worker = agent.slot.get().backend.process
        assert agent.slot.get().predict(SAMPLES / "digit_3.png").output[0]["label"] == "3"
        update(broker, keys, agent, watcher, "1.1.0")
        served.append(agent.slot.get())
        assert served[1].version == "1.1.0"
        wait_until(lambda: not first_worker.is_alive(), 30, "the updated version's worker to stop")
        assert first_worker.exitcode == 0  # told to stop, not killed

        second_worker = served[1].backend.process
        assert served[1].predict(SAMPLES / "digit_3.png").output[0]["label"] == "3"
        rollback = command(broker, keys, device, "rollback")
        done = watcher.wait_state(device, rollback["command_id"], ENDED)
        assert done["state"] == "rolled_back", done
        served.append(agent.slot.get())
        assert served[2].version == "1.0.0"
        wait_until(lambda: not second_worker.is_alive(), 30, "the rolled-back version's worker to stop")
        assert second_worker.exitcode == 0
        assert served[2].predict(SAMPLES / "digit_3.png").output[0]["label"] == "3"
    finally:
        agent.stop()
        for model in served:
            model.close()
        watcher.close()


def test_a_request_holding_a_swapped_out_model_keeps_its_worker_until_it_lets_go() -> None:
    old = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    slot = ModelSlot(old)
    new = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    try:
        request = slot.hold()  # a request that took the model just before the swap
        worker = old.backend.process
        slot.swap(new)
        assert slot.hold() is new  # the next request gets the new one
        new.let_go()
        assert request is old and worker.is_alive()
        assert request.predict(SAMPLES / "digit_5.png").output[0]["label"] == "5"  # it finishes on the old one
        assert worker.is_alive() and old.backend.process is worker
        blocks = [b.name for b in old.backend._child.inputs.blocks]
        request.let_go()  # its last request done
        assert blocks
        wait_until(
            lambda: not worker.is_alive() and not _any_exists(blocks), 30, "the worker to stop, its memory freed"
        )
        assert worker.exitcode == 0  # told to stop, not killed
        assert new.backend.process.is_alive()
    finally:
        new.close()
        old.close()


def test_a_call_that_took_a_model_before_it_was_swapped_out_is_answered_and_leaves_no_worker() -> None:
    old = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    slot = ModelSlot(old)
    frame_model = slot.get()  # a caller that took it with no hold (a pipeline frame holds its model)
    new = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    try:
        first_worker = old.backend.process
        slot.swap(new)
        wait_until(lambda: not first_worker.is_alive(), 30, "the swapped-out worker to stop")
        assert frame_model.predict(SAMPLES / "digit_5.png").output[0]["label"] == "5"  # a worker for that call
        late_worker, blocks = old.backend.process, [b.name for b in old.backend._child.inputs.blocks]
        assert late_worker is not first_worker and blocks
        wait_until(lambda: not late_worker.is_alive() and not _any_exists(blocks), 30, "the late call's worker to stop")
        assert late_worker.exitcode == 0
    finally:
        new.close()
        old.close()


# -- the delegate reported is the one the worker runs on ------------------------------------------------


def test_after_a_worker_moves_to_the_next_delegate_every_report_names_the_new_one(daemon: Any) -> None:
    d = daemon({"iso": {"path": str(DIGITS / "digits_fp32.tflite"), "delegate": ["xnnpack", "cpu"]}})
    assert d.predict("iso")[1]["delegate"] == "xnnpack"
    for delegate in ("xnnpack", "cpu"):  # two crashes within a minute: xnnpack is given up
        d.kill_worker("digits_fp32.tflite")
        status, answer = d.predict("iso")
        assert status == 200 and answer["delegate"] == delegate, answer
    assert d.workers("digits_fp32.tflite")[-1][1] == "cpu"
    assert _request(d.port, "/ready")[1]["models"]["iso"]["delegate"] == "cpu"
    assert _request(d.port, "/v1/models")[1]["iso"]["delegate"] == "cpu"
    status = _request(d.port, "/v1/status")[1]
    assert status["models"]["iso"]["delegate"] == "cpu"
    assert status["metrics"]["models"]["iso"]["delegate"] == "cpu"
    metrics = _request(d.port, "/metrics")[1]
    assert 'edgerun_inferences_total{delegate="cpu",model="iso",version="1.0.0"}' in metrics
    assert 'delegate="xnnpack"' not in metrics


# -- auto falls back down its ranked delegates; the give-up is said once and /ready tells ------------


def test_with_auto_two_crashes_move_the_worker_to_the_cpu_instead_of_a_cool_down(daemon: Any) -> None:
    d = daemon({"iso": {"path": str(DIGITS / "digits_fp32.tflite")}})  # delegate: auto, xnnpack chosen
    assert d.workers("digits_fp32.tflite") and d.workers("digits_fp32.tflite")[-1][1] == "xnnpack"
    d.kill_worker("digits_fp32.tflite")
    status, answer = d.predict("iso")
    assert status == 200 and answer["delegate"] == "xnnpack"  # restarted on auto's choice
    d.kill_worker("digits_fp32.tflite")
    status, answer = d.predict("iso")
    assert status == 200 and answer["delegate"] == "cpu", answer  # the next ranked candidate, no outage
    assert answer["output"][0]["label"] == "3"
    warnings = [line for line in d.log().splitlines() if "WARNING edgerun.isolation" in line]
    assert any("worker on xnnpack crashed 2 times (killed by SIGKILL): moving to cpu" in w for w in warnings), warnings
    assert d.ready()


def test_a_worker_given_up_on_every_delegate_is_one_warning_and_not_ready_while_it_cools_down(daemon: Any) -> None:
    d = daemon({"iso": {"path": str(DIGITS / "digits_fp32.tflite"), "delegate": "cpu"}})
    d.kill_worker("digits_fp32.tflite")
    assert d.predict("iso")[0] == 200  # restarted
    d.kill_worker("digits_fp32.tflite")
    status, answer = d.predict("iso")
    assert status == 503 and "no delegate is left; starting over from cpu in 60 s" in answer["detail"], answer
    for _ in range(3):  # the cool-down: each request fails the same way, and says so without a new warning
        status, answer = d.predict("iso")
        assert status == 503 and "cooling down" in answer["detail"], answer
    gave_up = [line for line in d.log().splitlines() if "no delegate is left" in line]
    assert len(gave_up) == 1 and "WARNING edgerun.isolation" in gave_up[0], gave_up
    assert "calls fail until it starts over from cpu in 60 s" in gave_up[0]
    assert _request(d.port, "/ready") == (503, {"ready": False, "cooling_down": ["iso"]})
    assert _request(d.port, "/health")[0] == 200
