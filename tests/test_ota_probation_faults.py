"""Faults when a probation ends: a full disk, a model a config reload removed.

The probation watcher must never die of them: it logs the error, keeps watching and ends the
probation properly once it can, so ``active.json`` and the journal never stay ``probation`` (the
next start would roll a passing update back). The full disk is a real tmpfs of a few MiB
(``small_disk``), filled with a real file at the right moment and freed by deleting it; the
removed model is a real daemon process reloading a config without it on SIGHUP.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, fill_disk, free_port, start_daemon
from tests.ota_helpers import Agent, StatusWatcher, make_key, model_with_card, push_update, unique_model

pytestmark = pytest.mark.slow

FAILED_END = "ending the probation failed"
FAILED_RECORD = "recording the end of the probation failed"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    return {"key": key, "public": public, "v1": v1}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def logged(caplog: pytest.LogCaptureFixture, words: str, level: int = logging.ERROR) -> list[logging.LogRecord]:
    return [r for r in list(caplog.records) if r.levelno >= level and words in r.getMessage()]


def on_probation(broker: Broker, keys: dict[str, Any], agent: Agent, watcher: StatusWatcher, s: float) -> str:
    """Update ``agent`` to digits 1.1.0 with a probation of ``s`` seconds; its update id once on probation."""
    v11 = unique_model(agent.state.parent / f"{agent.device}-v11", "digits_int8.onnx")
    manifest = push_update(broker.port, keys["key"], v11, "1.1.0", agent.device, probation_s=s)
    record = watcher.wait_state(agent.device, manifest["update_id"], {"probation", "rejected", "failed"})
    assert record["state"] == "probation", record
    return str(manifest["update_id"])


@pytest.mark.logs_errors
def test_a_disk_full_when_the_probation_ends_is_logged_and_the_update_made_final_once_space_is_back(
    broker: Broker,
    keys: dict[str, Any],
    small_disk: Callable[[int], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "probfull1"
    disk = small_disk(8 << 20)
    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, disk / "state", keys["v1"], keys["public"], name)
    running = [agent]
    try:
        uid = on_probation(broker, keys, agent, watcher, 4)
        filler = fill_disk(disk)  # the SD card is full when the probation ends
        wait_for(lambda: bool(logged(caplog, FAILED_END)), 30, "the failed end of the probation to be logged")
        first = logged(caplog, FAILED_END)[0]
        assert f"OTA {uid} digits 1.1.0: {FAILED_END}; trying again in 1 s" == first.getMessage()
        assert first.exc_info is not None and "No space left on device" in str(first.exc_info[1])
        active = agent.store.active("digits")
        assert active is not None and (active.probation or {}).get("update_id") == uid, active  # nothing half done
        assert agent.journal(uid)["state"] == "probation"

        filler.unlink()  # space is back: the next try ends the probation
        record = watcher.wait_state(name, uid, {"active", "rolled_back", "failed"}, timeout=30)
        assert record["state"] == "active" and record["reason"] == "probation passed", record
        active = agent.store.active("digits")
        assert active is not None and active.version == "1.1.0" and active.probation is None, active
        assert agent.journal(uid)["state"] == "active"
        assert agent.slot.primary.version == "1.1.0"
        wait_for(lambda: bool(logged(caplog, "the probation ended after", logging.INFO)), 10, "the recovery line")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert all(FAILED_END in m for m in errors), errors

        running.remove(agent)
        agent.stop()  # a restart keeps the update that passed
        again = Agent(broker.port, disk / "state", keys["v1"], keys["public"], name)
        running.append(again)
        assert again.slot.primary.version == "1.1.0"
        assert again.journal(uid)["state"] == "active"
        assert [r["state"] for r in watcher.ota(name) if r.get("update_id") == uid][-1] == "active"
    finally:
        for each in running:
            each.stop()
        watcher.close()


@pytest.mark.logs_errors
def test_a_journal_write_that_fails_after_the_switch_is_written_again_and_the_switch_not_made_twice(
    broker: Broker,
    keys: dict[str, Any],
    small_disk: Callable[[int], Path],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    name = "probfull2"
    journal_disk = small_disk(1 << 20)  # only the journal is on the small disk: active.json can be written
    state = tmp_path / "state" / name
    (state / "ota").mkdir(parents=True)
    (journal_disk / "journal").mkdir()
    (state / "ota" / "journal").symlink_to(journal_disk / "journal")
    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, state, keys["v1"], keys["public"], name)
    try:
        uid = on_probation(broker, keys, agent, watcher, 4)
        filler = fill_disk(journal_disk)
        wait_for(lambda: bool(logged(caplog, FAILED_RECORD)), 30, "the failed record to be logged")
        active = agent.store.active("digits")
        assert active is not None and active.version == "1.1.0" and active.probation is None, active  # switched
        assert agent.journal(uid)["state"] == "probation"

        filler.unlink()
        record = watcher.wait_state(name, uid, {"active", "rolled_back", "failed"}, timeout=30)
        assert record["state"] == "active" and record["reason"] == "probation passed", record
        assert agent.journal(uid)["state"] == "active"
        assert agent.store.active("digits") == active  # switched once
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all(FAILED_RECORD in m for m in errors), errors
    finally:
        agent.stop()
        watcher.close()


DAEMON_CONFIG = """
device:
  id: {device}
models:
{models}
mqtt:
  url: mqtt://127.0.0.1:{mqtt}
ota:
  trusted_keys: [{key}]
api:
  port: {port}
state_dir: {state}
logging:
  format: text
"""


def test_a_model_removed_by_a_reload_during_its_probation_ends_it_rolled_back_in_the_store(
    broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    device = "probhup1"
    spare = model_with_card(tmp_path / "spare", "digits_int8.onnx", "spare.onnx")
    card = spare.with_name("spare.onnx.card.yaml")
    card.write_text(card.read_text().replace("name: digits", "name: spare", 1))
    both = f"  digits:\n    path: {keys['v1']}\n  spare:\n    path: {spare}"
    values = {"device": device, "mqtt": broker.port, "key": keys["public"], "port": free_port()}
    state = tmp_path / "state"
    config = tmp_path / "edgerun.yaml"
    config.write_text(DAEMON_CONFIG.format(models=both, state=state, **values))
    log_path = tmp_path / "daemon.log"
    watcher = StatusWatcher(broker.port)
    with open(log_path, "wb") as log:
        proc = start_daemon(config, stderr=log)
    try:
        watcher.wait_online_version(device, "1.0.0", timeout=60)
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        manifest = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=600)
        uid = manifest["update_id"]
        record = watcher.wait_state(device, uid, {"probation", "rejected", "failed"})
        assert record["state"] == "probation", record

        config.write_text(DAEMON_CONFIG.format(models=f"  spare:\n    path: {spare}", state=state, **values))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: model digits removed" in log_path.read_text(), 30, "the reload")
        record = watcher.wait_state(device, uid, {"active", "rolled_back", "failed"}, timeout=30)
        reason = "this device stopped serving digits during the probation of 1.1.0; 1.0.0 is active again"
        assert record["state"] == "rolled_back" and record["reason"] == reason, record
        active = json.loads((state / "models" / "digits" / "active.json").read_text())
        assert active["version"] == "1.0.0" and active["probation"] is None, active
        entry = json.loads((state / "ota" / "journal" / f"{uid}.json").read_text())
        assert entry["state"] == "rolled_back", entry
        assert "Traceback" not in log_path.read_text()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()


def test_a_rollout_that_names_only_an_ab_fraction_keeps_the_devices_own_probation_bounds(
    own_broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    """Once the manifest's field defaults (300 s, 5%, 1.5x) replaced the device's config as soon as a
    manifest had any rollout field: ``ota publish --ab 0.5`` gave a 300 s probation on a device set to 2 s."""
    broker = own_broker
    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, tmp_path / "state", keys["v1"], keys["public"], "ab1", probation_s=2.0)
    try:
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        manifest = push_update(broker.port, keys["key"], v11, "1.1.0", "ab1", ab_fraction=0.5)
        record = watcher.wait_state("ab1", manifest["update_id"], {"probation", "rejected", "failed"})
        assert record["state"] == "probation", record
        active = agent.store.active("digits")
        assert active is not None and active.probation is not None and (active.ab or {}).get("fraction") == 0.5
        assert active.probation["until"] - time.time() <= 2.0  # the device's 2 s, not the manifest schema's 300
        record = watcher.wait_state("ab1", manifest["update_id"], {"active", "rolled_back", "failed"}, timeout=30)
        assert record["state"] == "active" and record["reason"] == "probation passed", record
    finally:
        agent.stop()
        watcher.close()
