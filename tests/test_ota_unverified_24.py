"""A payload refused before it is verified and read never replaces the retained ``P/ID/ota/status`` record.

A manifest signed by a key the device does not trust, one whose signature does not hold, or
garbage, left retained on the broker, comes back at every reconnect and every start. Its refusal
used to be retained each time, so the retained record (what ``edgerun ota status`` shows as the
device's last update) went back to that stale rejection over the outcome of every real update or
command since. Such a refusal is now published live, not retained (docs/protocol-notes.md item 6),
and a retained copy of bytes refused already since the start is passed over quietly. A start used to
log ``OTA None: publishing its retained status record again`` for a kept record that names no id.

A real Mosquitto, real ``edgerun ota publish`` and ``edgerun run`` processes, real in-process agents
(``tests.ota_helpers.Agent``), real signed manifests and commands.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_command
from tests.conftest import Broker, run_cli
from tests.ota_helpers import Agent, Device, StatusWatcher, make_key, publish, push_update, unique_model
from tests.test_ota_validation_faults import clear_chunks, keys, watcher
from tests.test_sync_stop import retained_status

pytestmark = pytest.mark.slow

__all__ = ["keys", "watcher"]  # fixtures of test_ota_validation_faults, used here by name

WAIT_S = 30.0
UNTRUSTED = "which this device does not trust"


def retained(port: int, device: str) -> dict[str, Any] | None:
    """The record the broker keeps on the device's ``ota/status``, as a watcher that starts now gets it."""
    return retained_status(port, f"edgerun/{device}/ota/status")


def retained_becomes(port: int, device: str, ident: str, state: str) -> dict[str, Any]:
    """The retained record once the broker holds ``ident``'s ``state`` (the link sends it in the background)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        record = retained(port, device) or {}
        if (record.get("update_id") or record.get("command_id")) == ident and record.get("state") == state:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def after(watcher: StatusWatcher, device: str, mark: int, found: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first OTA record ``device`` published after the ``mark`` first ones for which ``found`` holds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for record in watcher.ota(device)[mark:]:
            if found(record):
                return record
        assert time.monotonic() < deadline, watcher.ota(device)[mark:][-5:]
        time.sleep(0.05)


def answered(
    port: int, watcher: StatusWatcher, device: str, topic: str, payload: bytes, found: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Publish ``payload`` live on the device's ``topic`` (again each second, until the device is
    subscribed: a message sent before is lost) until a record for which ``found`` holds follows it;
    the first such record after the first publish."""
    deadline, mark = time.monotonic() + WAIT_S, len(watcher.ota(device))
    while True:
        publish(port, f"edgerun/{device}/{topic}", payload)
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            for record in watcher.ota(device)[mark:]:
                if found(record):
                    return record
            time.sleep(0.05)
        assert time.monotonic() < deadline, watcher.ota(device)[-5:]


def settled(port: int, watcher: StatusWatcher, device: str, manifest: dict[str, Any], key: Any) -> None:
    """Wait until the device has handled what the broker handed it at its last subscribe.

    The finished update's manifest is published again live and refused as a replay; the broker
    delivers the retained messages of a subscription before anything published after it, and the
    agent handles messages in order, so every retained copy was handled by then. A replay's
    refusal is not retained: it leaves the record under test alone.
    """
    ident = manifest["update_id"]
    replay = answered(port, watcher, device, "ota/manifest", seal(manifest, key), lambda r: r.get("update_id") == ident)
    assert replay["state"] == "rejected" and "(replay)" in replay["reason"], replay


def untrusted_lines(device: Device) -> int:
    return sum(UNTRUSTED in line and "rejected" in line for line in device.log().splitlines())


def test_a_retained_manifest_signed_by_an_untrusted_key_never_takes_back_the_retained_record(
    own_broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    port, name = own_broker.port, "dev1"
    assert run_cli("keys", "generate", str(tmp_path / "rogue")).returncode == 0
    watcher = StatusWatcher(port)
    device = Device(port, tmp_path / "state", keys["v1"], keys["public"], device=name)
    try:
        watcher.wait_online_version(name, "1.0.0")
        v5 = unique_model(tmp_path / "v5", "digits_fp32.onnx", "model.onnx")
        done = run_cli(
            "ota", "publish", str(v5), "--model", "digits", "--version", "5.0.0", "--device", name,
            "--key", str(tmp_path / "rogue.pem"), "--mqtt", own_broker.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        rogue = re.search(r"^update (\S+):", done.stdout, re.M)
        assert rogue is not None, done.stdout
        refusal = watcher.wait_state(name, rogue[1], {"rejected", "received"})
        assert refusal["state"] == "rejected" and UNTRUSTED in refusal["reason"], refusal  # seen live, as ever

        v11 = unique_model(tmp_path / "v11", "digits_fp32.onnx")
        update = push_update(port, keys["key"], v11, "1.1.0", name, probation_s=0)
        assert watcher.wait_state(name, update["update_id"], {"active", "rejected", "failed"})["state"] == "active"
        outcome = retained_becomes(port, name, update["update_id"], "active")

        # A reconnect: the broker hands the device the retained rogue manifest again.
        own_broker.stop()
        own_broker.start()
        watcher.close()
        watcher = StatusWatcher(port)
        watcher.wait_online_version(name, "1.1.0")
        settled(port, watcher, name, update, keys["key"])
        assert retained(port, name) == outcome
        assert untrusted_lines(device) == 1, device.log()[-3000:]  # a retained copy of bytes refused: quiet

        # A restart: the first copy after a start is refused again, live; the retained record stays.
        assert device.stop() == 0
        mark = len(watcher.ota(name))
        device = Device(port, tmp_path / "state", keys["v1"], keys["public"], device=name)
        watcher.wait_online_version(name, "1.1.0")
        settled(port, watcher, name, update, keys["key"])
        again = after(watcher, name, mark, lambda r: r.get("update_id") == rogue[1])
        assert again["state"] == "rejected" and UNTRUSTED in again["reason"], again
        assert retained(port, name) == outcome
        kept = json.loads((tmp_path / "state" / name / "ota" / "last_status.json").read_text())
        assert kept == outcome
        assert untrusted_lines(device) == 2, device.log()[-3000:]
        assert "OTA None" not in device.log()
    finally:
        assert device.stop() == 0
        watcher.close()


@pytest.fixture
def device_id() -> str:
    return f"unverified24-{secrets.token_hex(4)}"


@pytest.fixture
def agents(broker: Broker, keys: dict[str, Any], tmp_path: Path, device_id: str) -> Iterator[list[Agent]]:
    """The agents a test started on one state folder (each stopped before the next starts); all stopped at the end."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def test_retained_garbage_and_forged_payloads_leave_a_command_s_retained_outcome_alone(
    broker: Broker,
    keys: dict[str, Any],
    tmp_path: Path,
    watcher: StatusWatcher,
    agents: list[Agent],
    device_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, name = broker.port, device_id
    args = (port, tmp_path / "state", keys["v1"], keys["public"], name)
    agents.append(Agent(*args))
    command = build_command("activate", model="digits", devices=[name], groups=[], version="1.0.0")
    envelope = seal(command, keys["key"])  # sent again until the agent is subscribed: a replay is not retained
    done = answered(port, watcher, name, "cmd", envelope, lambda r: r.get("command_id") == command["command_id"])
    assert done["state"] == "active", done
    outcome = retained_becomes(port, name, command["command_id"], "active")

    stranger, _, _ = make_key(tmp_path, "stranger")
    forged_command = build_command("rollback", model="digits", devices=[name], groups=[])
    v11 = unique_model(tmp_path / "v11", "digits_fp32.onnx")
    update = push_update(port, keys["key"], v11, "1.1.0", "nobody")  # a real manifest, sent to another device
    tampered = json.loads(seal(update, keys["key"]))
    other = dict(update, update_id=f"other-{secrets.token_hex(3)}", targets={"devices": [name], "groups": []})
    tampered["payload"] = base64.b64encode(json.dumps(other).encode()).decode()  # the signature of another document
    sent = [
        ("ota/manifest", b"{not an envelope", None, "malformed envelope: not JSON"),
        ("cmd", seal(forged_command, stranger), forged_command["command_id"], UNTRUSTED),
    ]
    try:
        mark = len(watcher.ota(name))
        for topic, payload, _, _ in sent:
            publish(port, f"edgerun/{name}/{topic}", payload, retain=True)
        for _, _, ident, words in sent:
            found = after(watcher, name, mark, lambda r, i=ident: (r.get("update_id") or r.get("command_id")) == i)
            assert found["state"] == "rejected" and words in found["reason"], found
        mark = len(watcher.ota(name))
        publish(port, f"edgerun/{name}/ota/manifest", json.dumps(tampered).encode(), retain=True)
        bad = after(watcher, name, mark, lambda r: r.get("update_id") == other["update_id"])
        assert bad["state"] == "rejected" and "signature does not match" in bad["reason"], bad
        assert retained(port, name) == outcome
        assert json.loads((tmp_path / "state" / "ota" / "last_status.json").read_text()) == outcome

        # A start: the record kept is the command's, and the broker's retained copies are refused live again.
        agents[-1].stop()
        mark, logged = len(watcher.ota(name)), len(caplog.records)
        agents.append(Agent(*args))
        assert after(watcher, name, mark, lambda r: True) == outcome  # what the start published again
        assert after(watcher, name, mark, lambda r: r.get("update_id") == other["update_id"])["state"] == "rejected"
        found = after(watcher, name, mark, lambda r: r.get("command_id") == forged_command["command_id"])
        assert found["state"] == "rejected", found
        assert retained(port, name) == outcome
        lines = [r.getMessage() for r in caplog.records[logged:] if r.name == "edgerun.ota.agent"]
        assert not [line for line in lines if "None" in line], lines
    finally:
        for topic in ("ota/manifest", "cmd"):
            publish(port, f"edgerun/{name}/{topic}", b"", retain=True)
        clear_chunks(port, update)


@pytest.mark.parametrize("kind", ["update_id", "command_id"])
def test_a_kept_refusal_that_names_no_id_is_named_in_plain_words_and_not_published_again(
    broker: Broker,
    keys: dict[str, Any],
    tmp_path: Path,
    watcher: StatusWatcher,
    agents: list[Agent],
    device_id: str,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    # As an earlier release kept the retained refusal of garbage on the manifest or command topic.
    record = {"schema": 1, kind: None, "model": None, "version": None, "state": "rejected", "progress": 1.0}
    record.update(reason="malformed envelope: not JSON", ts=int(time.time()) - 60)
    raw = json.dumps(record).encode()
    kept = tmp_path / "state" / "ota" / "last_status.json"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(raw)
    caplog.set_level(logging.INFO, logger="edgerun")

    agents.append(Agent(broker.port, tmp_path / "state", keys["v1"], keys["public"], device_id))

    what = "command" if kind == "command_id" else "manifest"
    start = f"OTA (a {what} that names no id): its status record kept in {kept} is the refusal of a payload"
    lines = [r.getMessage() for r in caplog.records if r.name == "edgerun.ota.agent"]  # start() said it
    said = [line for line in lines if line.startswith(start)]
    assert len(said) == 1 and said[0].endswith("not published again (such a refusal is live only)"), lines
    assert agents[-1].agent.events == []  # nothing published in its place: the refusal was live only (since 2026-12-07)
    assert not [line for line in lines if line.startswith("OTA None")], lines
