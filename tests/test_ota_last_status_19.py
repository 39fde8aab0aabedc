"""The last retained ``P/ID/ota/status`` record is published again at a start exactly as it was published.

A device keeps each retained record in ``<state>/ota/last_status.json`` before it hands it to the
link, and a start publishes that record again, verbatim: same id, state, reason and ``ts``. A start
used to rebuild it from the journal entry written last (by file date), which picked the wrong entry
once the clock had been set back, and changed the record's ``ts`` and reason. A refusal before
verification (a forged manifest) is live only: never retained nor kept, it leaves the record alone.

Real agents (``tests.ota_helpers.Agent``, in this process, or a killed agent process and a real
``edgerun run``), a real Mosquitto, signed manifests and commands.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_command
from tests.conftest import Broker
from tests.ota_helpers import Agent, Device, StatusWatcher, make_key, publish, push_update, unique_model
from tests.test_ota_kill_install_19 import killed_before, replay_refused
from tests.test_ota_validation_faults import clear_chunks, keys, watcher
from tests.test_sync_stop import retained_status

pytestmark = pytest.mark.slow

__all__ = ["keys", "watcher"]  # fixtures of test_ota_validation_faults, used here by name


@pytest.fixture
def device() -> str:
    return f"last19-{secrets.token_hex(4)}"


class Agents:
    """Agents of one device on one state folder, one at a time: each start stops the one before."""

    def __init__(self, broker: Broker, keys: dict[str, Any], state: Path, device: str) -> None:
        self.args = (broker.port, state, keys["v1"], keys["public"], device)
        self.running: Agent | None = None

    def start(self, **settings: Any) -> Agent:
        self.stop()
        self.running = Agent(*self.args, **settings)
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None


@pytest.fixture
def agents(broker: Broker, keys: dict[str, Any], tmp_path: Path, device: str) -> Iterator[Agents]:
    started = Agents(broker, keys, tmp_path / "state", device)
    yield started
    started.stop()


def retained(port: int, device: str) -> dict[str, Any] | None:
    return retained_status(port, f"edgerun/{device}/ota/status")


def retained_becomes(port: int, device: str, ident: str, state: str) -> dict[str, Any]:
    """The retained record once the broker holds ``ident``'s ``state`` (the link sends it in the background)."""
    deadline = time.monotonic() + 30
    while True:
        record = retained(port, device) or {}
        if record.get("update_id", record.get("command_id")) == ident and record["state"] == state:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def published_after(watcher: StatusWatcher, device: str, seen: int) -> dict[str, Any]:
    """The first OTA record ``device`` published after the ``seen`` first ones."""
    deadline = time.monotonic() + 30
    while len(watcher.ota(device)) <= seen:
        assert time.monotonic() < deadline, watcher.ota(device)[-3:]
        time.sleep(0.05)
    return watcher.ota(device)[seen]


def updated(broker: Broker, keys: dict[str, Any], tmp_path: Path, watcher: StatusWatcher, device: str) -> dict:
    """Update digits to 1.1.0 (no probation) and return its manifest once the broker retains ``active``."""
    v11 = unique_model(tmp_path / "v11", "digits_fp32.onnx")
    manifest = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0)
    assert watcher.wait_state(device, manifest["update_id"], {"active", "rejected", "failed"})["state"] == "active"
    retained_becomes(broker.port, device, manifest["update_id"], "active")
    return manifest


def kept(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "state" / "ota" / "last_status.json").read_text()))


def republished(agents: Agents, watcher: StatusWatcher, device: str, **settings: Any) -> dict[str, Any]:
    """Restart the agent; the one OTA record its start published."""
    seen = len(watcher.ota(device))
    agent = agents.start(**settings)
    record = published_after(watcher, device, seen)
    assert agent.agent.events == [record], agent.agent.events  # the start published that record alone
    return record


def test_a_forged_manifest_s_refusal_is_live_only_and_a_restart_publishes_the_update_s_own_record(
    broker: Broker, keys: dict[str, Any], tmp_path: Path, watcher: StatusWatcher, agents: Agents, device: str
) -> None:
    """A refusal before verification is published without the retain flag and never kept
    (docs/protocol-notes.md item 6): the update's own outcome stays the retained record."""
    agents.start()
    manifest = updated(broker, keys, tmp_path, watcher, device)
    before = retained(broker.port, device)
    stranger, _, _ = make_key(tmp_path, "stranger")
    forged = dict(manifest, update_id=f"forged-{secrets.token_hex(3)}", version="9.9.9")
    seen = len(watcher.ota(device))
    publish(broker.port, f"edgerun/{device}/ota/manifest", seal(forged, stranger))
    refusal = published_after(watcher, device, seen)
    assert refusal["update_id"] == forged["update_id"], refusal
    assert refusal["state"] == "rejected" and "which this device does not trust" in refusal["reason"], refusal
    assert not (tmp_path / "state" / "ota" / "journal" / f"{forged['update_id']}.json").exists()
    assert kept(tmp_path) == before and retained(broker.port, device) == before

    record = republished(agents, watcher, device)

    assert record == before and record["state"] == "active"


def test_a_replay_s_live_refusal_is_not_kept_and_a_restart_publishes_the_update_s_own_record(
    broker: Broker, keys: dict[str, Any], tmp_path: Path, watcher: StatusWatcher, agents: Agents, device: str
) -> None:
    agents.start()
    manifest = updated(broker, keys, tmp_path, watcher, device)
    before = retained(broker.port, device)
    seen = len(watcher.ota(device))
    publish(broker.port, f"edgerun/{device}/ota/manifest", seal(dict(manifest, version="1.2.0"), keys["key"]))
    refusal = published_after(watcher, device, seen)
    assert refusal["state"] == "rejected" and "(replay)" in refusal["reason"], refusal
    assert kept(tmp_path) == before

    record = republished(agents, watcher, device)

    assert record == before and record["state"] == "active"


def test_a_clock_set_back_does_not_change_the_record_published_again(
    broker: Broker, keys: dict[str, Any], tmp_path: Path, watcher: StatusWatcher, agents: Agents, device: str
) -> None:
    agents.start()
    first = updated(broker, keys, tmp_path, watcher, device)
    v105 = unique_model(tmp_path / "v105", "digits_fp32.onnx")
    older = push_update(broker.port, keys["key"], v105, "1.0.5", device, probation_s=0)  # a downgrade: journaled
    before = retained_becomes(broker.port, device, older["update_id"], "rejected")
    agents.stop()
    ota = tmp_path / "state" / "ota"
    # The rejection was written while the clock was an hour behind (no RTC, before NTP): every file
    # but the first update's journal entry is dated earlier than that entry.
    now = time.time()
    for path in ota.rglob("*.json"):
        os.utime(path, (now - 3600, now - 3600))
    os.utime(ota / "journal" / f"{first['update_id']}.json", (now, now))

    record = republished(agents, watcher, device)

    assert record == before
    assert retained(broker.port, device) == before


def test_a_rollback_s_reason_is_published_again_as_it_was_published(
    broker: Broker, keys: dict[str, Any], tmp_path: Path, watcher: StatusWatcher, agents: Agents, device: str
) -> None:
    agent = agents.start(probation_s=600)
    v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
    manifest = push_update(broker.port, keys["key"], v11, "1.1.0", device)
    step = watcher.wait_state(device, manifest["update_id"], {"probation", "rejected", "failed"})
    assert step["state"] == "probation", step
    for _ in range(40):  # every request on 1.1.0 fails: a breach
        agent.metrics.error("digits", "1.1.0", agent.slot.primary.delegate)
    before = retained_becomes(broker.port, device, manifest["update_id"], "rolled_back")
    assert before["reason"].startswith("error rate ") and before["reason"].endswith("; serving 1.0.0 again"), before
    assert agent.journal(manifest["update_id"])["reason"] != before["reason"]  # the journal's is shorter

    record = republished(agents, watcher, device, probation_s=600)

    assert record == before
    assert retained(broker.port, device) == before


def test_a_rollback_command_s_outcome_is_published_again_after_a_restart(
    broker: Broker, keys: dict[str, Any], tmp_path: Path, watcher: StatusWatcher, agents: Agents, device: str
) -> None:
    agents.start()
    updated(broker, keys, tmp_path, watcher, device)
    command = build_command("rollback", model="digits", devices=[device], groups=[], version=None)
    publish(broker.port, f"edgerun/{device}/cmd", seal(command, keys["key"]))
    before = retained_becomes(broker.port, device, command["command_id"], "rolled_back")
    assert before["reason"] == "rollback command; serving 1.0.0 again", before

    record = republished(agents, watcher, device)

    assert record == before


def test_an_update_killed_after_its_final_record_was_kept_and_before_it_was_sent_reports_it_at_the_restart(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, tmp_path: Path
) -> None:
    device = f"last19-kept-{secrets.token_hex(3)}"
    update = killed_before(broker, keys, tmp_path, device, "kept")
    uid, ota = update["update_id"], tmp_path / device / "ota"
    try:
        final = json.loads((ota / "last_status.json").read_text())
        assert final["update_id"] == uid and final["state"] == "active", final
        assert [r for r in watcher.ota(device) if r.get("state") == "active"] == []  # never sent
        assert (retained(broker.port, device) or {}).get("state") == "validating"
        clear_chunks(broker.port, update)
        seen = len(watcher.ota(device))

        restarted = Device(broker.port, tmp_path, keys["v1"], keys["public"], device=device)
        try:
            assert published_after(watcher, device, seen) == final, restarted.log()[-3000:]  # its own ts and reason
            watcher.wait_online_version(device, "1.1.0")
            replay_refused(broker, keys, watcher, device, update, seen)  # the worker is done then
            assert [r for r in watcher.ota(device)[seen:] if r["state"] != "rejected"] == [final]
            assert retained(broker.port, device) == final
            assert restarted.stop() == 0, restarted.log()[-3000:]
        finally:
            restarted.stop()
        assert json.loads((ota / "journal" / f"{uid}.json").read_text())["state"] == "active"
        assert json.loads((ota / "last_status.json").read_text()) == final
    finally:
        publish(broker.port, f"edgerun/{device}/ota/manifest", b"", retain=True)


@pytest.mark.parametrize("damage", [b"", b'{"schema": 1, "update_id": "x", "sta', b"\xff\xfe{}", b"[1, 2]"])
def test_a_damaged_last_status_file_is_ignored_with_one_warning(
    broker: Broker,
    keys: dict[str, Any],
    tmp_path: Path,
    watcher: StatusWatcher,
    agents: Agents,
    device: str,
    caplog: pytest.LogCaptureFixture,
    damage: bytes,
) -> None:
    agents.start()
    updated(broker, keys, tmp_path, watcher, device)
    before = retained(broker.port, device)
    agents.stop()
    (tmp_path / "state" / "ota" / "last_status.json").write_bytes(damage)
    caplog.clear()

    agent = agents.start()

    assert agent.agent.events == []  # nothing published again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("edgerun")]
    assert len(warnings) == 1 and "last_status.json is damaged" in warnings[0].getMessage(), warnings
    assert retained(broker.port, device) == before
