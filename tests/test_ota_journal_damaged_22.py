"""Damaged OTA state (a failing SD card, a file edited by hand) must not stop a device: a journal entry,
``clock.json``, the store's record of a version.

Before, the agent's start read every entry with ``json.loads`` and no guard: an entry that was
not JSON, not UTF-8 or not an object ended ``edgerun run`` (and the daemon) at every start with a
traceback, so the device served nothing until someone deleted the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from edgerun.ota.envelope import seal
from tests.conftest import Broker
from tests.ota_helpers import (
    Agent,
    Device,
    StatusWatcher,
    make_key,
    model_with_card,
    publish,
    push_update,
    unique_model,
)
from tests.test_ota import predict_over_mqtt, push
from tests.test_ota_fixes_18 import ENDED, listening

pytestmark = pytest.mark.slow

DAMAGE = {
    "not-json": b"garbage{",
    "not-utf8": b"\xff\xfe\x00{",
    "a-list": b"[1, 2]",
    "empty": b"",
}


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = model_with_card(tmp_path / "v2", "digits_int8.onnx", "digits.onnx")
    return {"key": key, "public": public, "v1": v1, "v2": v2, "tmp": tmp_path}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_device_starts_over_a_damaged_journal_entry_and_still_refuses_its_replay(
    broker: Broker, setup: dict, damage: str
) -> None:
    name = f"jdmg-{damage}"
    watcher = StatusWatcher(broker.port)
    state = setup["tmp"] / "state"
    device = Device(broker.port, state, setup["v1"], setup["public"], device=name)
    try:
        watcher.wait_online_version(name, "1.0.0")
        manifest = push(broker.port, setup["v2"], "1.1.0", setup["key"], devices=[name])
        assert watcher.wait_state(name, manifest["update_id"], {"active", "rejected", "failed"})["state"] == "active"
        assert device.stop() == 0
        entry = state / name / "ota" / "journal" / f"{manifest['update_id']}.json"
        assert entry.is_file()
        entry.write_bytes(DAMAGE[damage])

        device = Device(broker.port, state, setup["v1"], setup["public"], device=name)
        watcher.wait_online_version(name, "1.1.0")  # the store's active version, served as before
        assert predict_over_mqtt(broker.port, device)[-1]["version"] == "1.1.0"
        log = device.log()
        assert "Traceback" not in log, log[-3000:]
        assert f"OTA: the journal entry {entry} is damaged (" in log, log[-3000:]
        assert "it is not resumed, and its id stays refused as used" in log, log[-3000:]

        # the damaged entry still marks the id as used: the same update sent again live is a replay
        mark = len(watcher.ota(name))
        publish(broker.port, f"edgerun/{name}/ota/manifest", seal(manifest, setup["key"]))
        record = watcher.wait_state(name, manifest["update_id"], {"rejected"}, timeout=30)
        assert f"update_id {manifest['update_id']} was already used (replay)" in record["reason"], record
        assert record in watcher.ota(name)[mark:]
        assert predict_over_mqtt(broker.port, device)[-1]["version"] == "1.1.0"
    finally:
        device.stop()
        watcher.close()


def _agent(broker: Broker, setup: dict, name: str) -> tuple[Agent, StatusWatcher]:
    """An agent in this process serving digits 1.0.0 as ``name``, listening, and a watcher."""
    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, setup["tmp"] / "state", setup["v1"], setup["public"], name)
    listening(broker, {"key": setup["key"]}, watcher, name)
    return agent, watcher


def test_a_damaged_clock_file_does_not_make_every_update_fail(broker: Broker, setup: dict) -> None:
    """``clock.json`` holding JSON of another shape (``[1]``, a null) raised ``TypeError`` for every manifest:
    the worker logged a traceback each time and the device could never be updated again."""
    (setup["tmp"] / "state" / "ota").mkdir(parents=True)
    (setup["tmp"] / "state" / "ota" / "clock.json").write_text('{"newest_issued": null}')
    agent, watcher = _agent(broker, setup, "clockdmg")
    try:
        model = unique_model(setup["tmp"] / "v2b", "digits_int8.onnx")
        manifest = push_update(broker.port, setup["key"], model, "1.1.0", "clockdmg", probation_s=0)
        assert watcher.wait_state("clockdmg", manifest["update_id"], ENDED)["state"] == "active"
        assert agent.slot.primary.version == "1.1.0"
    finally:
        agent.stop()
        watcher.close()


def test_an_update_of_a_version_whose_store_record_is_damaged_is_refused_saying_so(broker: Broker, setup: dict) -> None:
    """An update of a version installed here already is checked against the store's record of it; a
    record damaged since (not JSON) raised out of the check: no status record, a traceback in the log."""
    agent, watcher = _agent(broker, setup, "recdmg")
    try:
        model = unique_model(setup["tmp"] / "v12", "digits_int8.onnx")
        record = {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "size": model.stat().st_size}
        agent.store.install("digits", "1.2.0", "onnx", model, {**record, "update_id": "earlier"}, {"name": "digits"})
        (agent.store.version_dir("digits", "1.2.0") / "manifest.json").write_bytes(b"\x00\x00 damaged")
        manifest = push_update(broker.port, setup["key"], model, "1.2.0", "recdmg")
        done = watcher.wait_state("recdmg", manifest["update_id"], ENDED)
        assert done["state"] == "rejected", done
        assert done["reason"] == (
            "digits 1.2.0 is installed here already, and its record in the store is damaged: "
            "an update needs a version of its own"
        ), done
        assert agent.slot.primary.version == "1.0.0"
    finally:
        agent.stop()
        watcher.close()
