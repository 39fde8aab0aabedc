"""A start never publishes again the kept refusal of a payload that failed verification.

Since 2026-12-07 a manifest or command that fails verification (a key the device does not trust,
a signature that does not hold, garbage) is refused live, never retained nor kept in
``<state>/ota/last_status.json`` (docs/protocol-notes.md item 6). An earlier release retained such
a refusal and kept it in that file, and a start published the kept record again, retained, at every
start until the next outcome replaced it: back over the outcome of the device's last real update or
command, naming whatever id the forged payload claimed (or none). A start now recognises such a
record (a ``rejected`` record that the journal does not hold as the refusal of a verified update or
command of that id), publishes nothing in its place, as with no kept record, and says so in one
INFO line. A refusal of a verified update or command is published again as before.

Real in-process agents (``tests.ota_helpers.Agent``), a real Mosquitto, real signed manifests and
commands; the record planted is the one the device publishes live for the payload, which the
earlier release built the same way and retained.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.card import load_card
from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_command, build_manifest
from tests.conftest import Broker
from tests.ota_helpers import Agent, StatusWatcher, make_key
from tests.test_ota_unverified_24 import after, answered, retained, retained_becomes
from tests.test_ota_validation_faults import keys, watcher

pytestmark = pytest.mark.slow

__all__ = ["keys", "watcher"]  # fixtures of test_ota_validation_faults, used here by name

AGENT_LOG = "edgerun.ota.agent"
REPUBLISHED = "publishing its retained status record again"
NOT_REPUBLISHED = "failed verification"


@pytest.fixture
def device_id() -> str:
    return f"unverified25-{secrets.token_hex(4)}"


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """The agents a test started on one state folder (each stopped before the next starts); all stopped at the end."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def manifest_for(keys: dict[str, Any], device: str, model: str, version: str) -> dict[str, Any]:
    """A whole manifest (not signed) of the test's digits file for ``model`` ``version``, sent to ``device``."""
    v1 = keys["v1"]
    card = load_card(v1.with_name(v1.name + ".card.yaml")).to_dict()
    card.pop("inferred", None)
    return build_manifest(
        v1, model=model, version=version, fmt="onnx", card=card, devices=[device], groups=[], prefix="edgerun"
    )


def ident(record: dict[str, Any]) -> str | None:
    return record.get("update_id") or record.get("command_id")


def lines(caplog: pytest.LogCaptureFixture, since: int) -> list[str]:
    return [r.getMessage() for r in caplog.records[since:] if r.name == AGENT_LOG]


@pytest.mark.parametrize("payload", ["forged manifest", "garbage", "forged command naming a real id"])
def test_a_kept_refusal_of_an_unverified_payload_is_not_published_again_at_a_start(
    broker: Broker,
    keys: dict[str, Any],
    tmp_path: Path,
    watcher: StatusWatcher,
    agents: list[Agent],
    device_id: str,
    caplog: pytest.LogCaptureFixture,
    payload: str,
) -> None:
    port, name = broker.port, device_id
    caplog.set_level(logging.INFO, logger="edgerun")
    args = (port, tmp_path / "state", keys["v1"], keys["public"], name)
    agents.append(Agent(*args))
    command = build_command("activate", model="digits", devices=[name], groups=[], version="1.0.0")
    real = seal(command, keys["key"])  # sent again until the agent is subscribed: a replay is not retained
    done = answered(port, watcher, name, "cmd", real, lambda r: ident(r) == command["command_id"])
    assert done["state"] == "active", done
    outcome = retained_becomes(port, name, command["command_id"], "active")

    stranger, _, _ = make_key(tmp_path, "stranger")
    if payload == "forged manifest":  # a whole manifest naming an id of its own, signed by a stranger
        forged = manifest_for(keys, name, "digits", "9.9.9")
        topic, sent, claimed, words = "ota/manifest", seal(forged, stranger), forged["update_id"], "does not trust"
    elif payload == "garbage":  # it names no id at all
        topic, sent, claimed, words = "ota/manifest", b"{not an envelope", None, "malformed envelope: not JSON"
    else:  # it claims the id of the command that ran: its journal says ``active``
        forged = dict(build_command("rollback", model="digits", devices=[name], groups=[]))
        forged["command_id"] = command["command_id"]
        topic, sent, claimed, words = "cmd", seal(forged, stranger), command["command_id"], "does not trust"
    refusal = answered(
        port,
        watcher,
        name,
        topic,
        sent,
        lambda r: r["state"] == "rejected" and ident(r) == claimed and words in r["reason"],
    )
    assert retained(port, name) == outcome  # refused live: the retained record is still the command's
    agents[-1].stop()
    # As an earlier release kept it: the same record (``_status`` built it alike), retained and kept.
    kept = tmp_path / "state" / "ota" / "last_status.json"
    kept.write_bytes(json.dumps(refusal).encode())
    logged = len(caplog.records)
    mark = len(watcher.ota(name))

    agents.append(Agent(*args))

    # The command sent again live is refused as a replay after anything the start handed the link.
    replay = answered(port, watcher, name, "cmd", real, lambda r: "(replay)" in r["reason"])
    assert ident(replay) == command["command_id"] and replay["state"] == "rejected", replay
    assert retained(port, name) == outcome, "the kept refusal went back over the command's outcome"
    assert after(watcher, name, mark, lambda r: True) == replay  # the start published no record
    assert agents[-1].agent.events == [replay]
    said = lines(caplog, logged)
    assert not [line for line in said if REPUBLISHED in line], said
    why = [line for line in said if NOT_REPUBLISHED in line]
    assert len(why) == 1 and "not published again" in why[0], said
    assert json.loads(kept.read_bytes()) == refusal  # left for the next outcome to replace


@pytest.mark.parametrize("payload", ["command", "manifest"])
def test_a_kept_refusal_of_a_verified_command_or_manifest_is_still_published_again(
    broker: Broker,
    keys: dict[str, Any],
    tmp_path: Path,
    watcher: StatusWatcher,
    agents: list[Agent],
    device_id: str,
    caplog: pytest.LogCaptureFixture,
    payload: str,
) -> None:
    port, name = broker.port, device_id
    caplog.set_level(logging.INFO, logger="edgerun")
    args = (port, tmp_path / "state", keys["v1"], keys["public"], name)
    agents.append(Agent(*args))
    if payload == "command":  # refused after it was verified: the version is not installed
        document = build_command("activate", model="digits", devices=[name], groups=[], version="7.7.7")
        topic, uid, words = "cmd", document["command_id"], "digits 7.7.7 is not installed here"
    else:  # refused after it was verified: the device serves no such model
        document = manifest_for(keys, name, "other", "1.1.0")
        topic, uid, words = "ota/manifest", document["update_id"], "does not serve a model named 'other'"
    sent = seal(document, keys["key"])
    refusal = answered(port, watcher, name, topic, sent, lambda r: ident(r) == uid)
    assert refusal["state"] == "rejected" and words in refusal["reason"], refusal
    before = retained_becomes(port, name, uid, "rejected")
    agents[-1].stop()
    logged = len(caplog.records)
    mark = len(watcher.ota(name))

    agents.append(Agent(*args))

    assert agents[-1].agent.events[:1] == [before]  # the first thing the start did
    replay = answered(port, watcher, name, topic, sent, lambda r: ident(r) == uid and "(replay)" in r["reason"])
    assert watcher.ota(name)[mark : mark + 1] == [before]
    assert replay["state"] == "rejected"
    assert retained(port, name) == before
    said = lines(caplog, logged)
    assert f"OTA {uid} {refusal['model']} {refusal['version']}: {REPUBLISHED} (rejected)" in said, said
    assert not [line for line in said if NOT_REPUBLISHED in line], said
