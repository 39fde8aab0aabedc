"""OTA on the device: rollbacks that walk back through history, replays refused live that leave
the retained status record alone, commands journaled as they ended, ``verifying`` before a hash
or size refusal, and envelopes that must be UTF-8.

Each test talks to a real OTA agent (in this process, so its store and slot can be looked at, or
as an ``edgerun run`` process killed with SIGKILL) over the session's private Mosquitto, with real
digits models and real Ed25519 keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.card import ModelCard, load_card
from edgerun.errors import UpdateRejected
from edgerun.model import Model
from edgerun.ota.envelope import TrustedKeys, open_envelope, seal
from edgerun.ota.operator import build_command, build_manifest
from edgerun.ota.store import Active, ModelStore
from tests.conftest import DIGITS, Broker, run_cli
from tests.ota_helpers import (
    Agent,
    Device,
    StatusWatcher,
    load_digits,
    make_key,
    model_with_card,
    publish,
    push_update,
    unique_model,
)

pytestmark = pytest.mark.slow

ENDED = {"active", "rejected", "failed", "rolled_back"}
NOTHING_EARLIER = "digits has no previous version to roll back to"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    key, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    return {"key": key, "private": private, "public": public, "v1": v1}


@pytest.fixture
def rig(broker: Broker, keys: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    """``rig(**settings)``: an agent serving digits 1.0.0 under a device name of its own, and a watcher."""
    started: list[Any] = []

    def start(load: Any = load_digits, **settings: Any) -> tuple[Agent, StatusWatcher]:
        device = f"fix18-{secrets.token_hex(3)}"
        watcher = StatusWatcher(broker.port)
        started.append(watcher)
        agent = Agent(broker.port, tmp_path / "state" / device, keys["v1"], keys["public"], device, load, **settings)
        started.append(agent)
        listening(broker, keys, watcher, device)
        return agent, watcher

    yield start
    for thing in reversed(started):
        if isinstance(thing, Agent):
            thing.stop()
        else:
            thing.close()


def listening(broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, device: str) -> None:
    """Wait until the agent's subscriptions are made, so that a command published live is heard:
    send a manifest for another device until the agent refuses one."""
    for _ in range(20):
        probe = build_manifest(
            DIGITS / "digits_fp32.onnx",
            model="digits",
            version="9.0.0",
            fmt="onnx",
            card=card_of(DIGITS / "digits_fp32.onnx"),
            devices=["nobody"],
            groups=[],
            prefix="edgerun",
        )
        publish(broker.port, f"edgerun/{device}/ota/manifest", seal(probe, keys["key"]))
        try:
            watcher.wait_state(device, probe["update_id"], {"rejected"}, timeout=1.0)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{device}: the agent never answered on its manifest topic")


def card_of(model: Path) -> dict[str, Any]:
    """The card beside a model file, as ``edgerun ota publish`` puts it in a manifest."""
    card = load_card(model.with_name(model.name + ".card.yaml")).to_dict()
    card.pop("inferred", None)
    return card


def update(
    broker: Broker, keys: dict[str, Any], agent: Agent, watcher: StatusWatcher, version: str, **options: Any
) -> str:
    """Update ``agent`` to ``version`` of digits; its update id once it is active (or on probation)."""
    model = unique_model(agent.state.parent / f"{agent.device}-{version}", "digits_int8.onnx")
    manifest = push_update(broker.port, keys["key"], model, version, agent.device, **{"probation_s": 0, **options})
    wanted = {"probation"} if options.get("probation_s") else {"active"}
    record = watcher.wait_state(agent.device, manifest["update_id"], ENDED | {"probation"})
    assert record["state"] in wanted, record
    return str(manifest["update_id"])


def command(
    broker: Broker, keys: dict[str, Any], device: str, what: str, model: str = "digits", version: str | None = None
) -> dict[str, Any]:
    """Sign and publish a command to one device, live, as ``edgerun ota rollback`` does."""
    doc = build_command(what, model=model, devices=[device], groups=[], version=version)
    publish(broker.port, f"edgerun/{device}/cmd", seal(doc, keys["key"]))
    return doc


def retained(broker: Broker, device: str) -> dict[str, Any]:
    """The record the broker keeps on ``P/ID/ota/status``: what a fleet view that starts now sees."""
    fresh = StatusWatcher(broker.port)
    try:
        deadline = time.monotonic() + 10
        while not fresh.ota(device):
            assert time.monotonic() < deadline, f"no retained OTA record for {device}"
            time.sleep(0.05)
        return fresh.ota(device)[0]
    finally:
        fresh.close()


def records_after(watcher: StatusWatcher, device: str, mark: int, count: int = 1) -> list[dict[str, Any]]:
    """The first ``count`` OTA records ``device`` published after the first ``mark``."""
    deadline = time.monotonic() + 15
    while len(watcher.ota(device)) < mark + count:
        assert time.monotonic() < deadline, f"{device}: no new record; saw {watcher.ota(device)[-3:]}"
        time.sleep(0.05)
    return watcher.ota(device)[mark : mark + count]


# -- 1. a rollback walks back through history ------------------------------------------------------


def test_a_rollback_command_after_an_automatic_rollback_goes_further_back_never_to_the_failed_version(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    device = agent.device
    update(broker, keys, agent, watcher, "1.1.0")
    failing = update(broker, keys, agent, watcher, "1.2.0", probation_s=600)
    for _ in range(40):  # every request on 1.2.0 fails: the probation's error bound is broken
        agent.metrics.error("digits", "1.2.0", agent.slot.primary.delegate)
    record = watcher.wait_state(device, failing, {"rolled_back", "failed", "active"})
    assert record["state"] == "rolled_back" and record["reason"].endswith("serving 1.1.0 again"), record
    active = json.loads((agent.state / "models" / "digits" / "active.json").read_text())
    assert active["version"] == "1.1.0" and active["previous"] == ["1.0.0"], active  # 1.2.0 is no rollback target

    first = command(broker, keys, device, "rollback")
    done = watcher.wait_state(device, first["command_id"], ENDED)
    assert done["state"] == "rolled_back" and done["version"] == "1.1.0", done
    assert done["reason"] == "rollback command; serving 1.0.0 again", done
    assert agent.slot.primary.version == "1.0.0"  # not 1.2.0, the version that failed its probation
    assert agent.store.active("digits") == Active(version="1.0.0", previous=[])
    assert agent.store.versions("digits") == ["1.0.0"]  # the versions rolled back from are pruned

    last = command(broker, keys, device, "rollback")
    refused = watcher.wait_state(device, last["command_id"], ENDED)
    assert refused["state"] == "rejected", refused
    assert refused["reason"] == f"{NOTHING_EARLIER}: 1.0.0 is the earliest in its history", refused
    assert agent.slot.primary.version == "1.0.0"

    # A version rolled back from was pruned: naming it is refused as any version not installed.
    again = command(broker, keys, device, "activate", version="1.2.0")
    refused = watcher.wait_state(device, again["command_id"], ENDED)
    assert refused["state"] == "rejected", refused
    assert refused["reason"] == "digits 1.2.0 is not installed here (installed: 1.0.0)", refused
    assert agent.slot.primary.version == "1.0.0"


def test_successive_rollback_commands_walk_back_one_version_each_and_end_with_a_rejection(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    device = agent.device
    update(broker, keys, agent, watcher, "1.1.0")
    update(broker, keys, agent, watcher, "1.2.0")
    served = []
    for _ in range(3):
        sent = command(broker, keys, device, "rollback")
        served.append((watcher.wait_state(device, sent["command_id"], ENDED)["state"], agent.slot.primary.version))
    assert served == [("rolled_back", "1.1.0"), ("rolled_back", "1.0.0"), ("rejected", "1.0.0")], served
    active = json.loads((agent.state / "models" / "digits" / "active.json").read_text())
    assert active == {"version": "1.0.0", "previous": [], "probation": None, "ab": None}, active
    assert agent.store.versions("digits") == ["1.0.0"]


def test_after_a_kill_during_probation_the_restart_and_an_operator_s_rollback_both_go_back_in_history(
    broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    device = f"fix18-kill-{secrets.token_hex(3)}"
    state = tmp_path / "state"
    active_json = state / device / "models" / "digits" / "active.json"
    watcher = StatusWatcher(broker.port)
    proc = Device(broker.port, state, keys["v1"], keys["public"], device=device)
    try:
        watcher.wait_online_version(device, "1.0.0", timeout=60)
        for version, probation in (("1.1.0", 0), ("1.2.0", 600)):
            model = unique_model(tmp_path / version, "digits_int8.onnx")
            manifest = push_update(broker.port, keys["key"], model, version, device, probation_s=probation)
            record = watcher.wait_state(device, manifest["update_id"], ENDED | {"probation"})
            assert record["state"] == ("probation" if probation else "active"), record
        proc.kill()  # SIGKILL during the probation of 1.2.0
        proc = Device(broker.port, state, keys["v1"], keys["public"], device=device)
        record = watcher.wait_state(device, manifest["update_id"], {"rolled_back", "failed"})
        assert record["reason"] == "the device restarted during the probation of 1.2.0; serving 1.1.0 again", record
        active = json.loads(active_json.read_text())
        assert active == {"version": "1.1.0", "previous": ["1.0.0"], "probation": None, "ab": None}, active
        assert sorted(p.name for p in (active_json.parent / "versions").iterdir()) == ["1.0.0", "1.1.0"]
        watcher.wait_online_version(device, "1.1.0")

        sent = run_cli(
            "ota", "rollback", "--model", "digits", "--device", device,
            "--key", str(keys["private"]), "--mqtt", f"mqtt://127.0.0.1:{broker.port}",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        match = re.match(r"command (\S+): rollback of digits", sent.stdout)
        assert match, sent.stdout
        done = watcher.wait_state(device, match.group(1), ENDED)
        assert done["state"] == "rolled_back" and done["reason"] == "rollback command; serving 1.0.0 again", done
        watcher.wait_online_version(device, "1.0.0")
        assert proc.stop() == 0
    finally:
        proc.stop()
        watcher.close()


def test_an_active_json_of_an_earlier_release_or_with_withdrawn_versions_is_read_and_rolled_back(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path / "models")
    model = DIGITS / "digits_fp32.onnx"
    record = {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "size": model.stat().st_size}
    for version in ("1.3.0", "1.5.0", "1.6.0"):
        store.install("digits", version, "onnx", model, {**record, "update_id": version}, {"name": "digits"})
    path = tmp_path / "models" / "digits" / "active.json"
    old = {"version": "1.5.0", "previous": ["1.3.0"], "probation": None, "ab": None}  # as earlier releases wrote it
    path.write_text(json.dumps(old))
    assert store.active("digits") == Active(version="1.5.0", previous=["1.3.0"])
    path.write_text(json.dumps({**old, "withdrawn": ["1.6.0"]}))  # as the build of b150bec wrote it
    assert store.active("digits") == Active(version="1.5.0", previous=["1.3.0"])

    assert store.roll_back("digits") == Active(version="1.3.0")
    assert store.versions("digits") == ["1.3.0"]  # rolled back from, or withdrawn: pruned
    assert json.loads(path.read_text()) == {"version": "1.3.0", "previous": [], "probation": None, "ab": None}
    with pytest.raises(UpdateRejected) as refused:
        store.roll_back("digits")
    assert str(refused.value) == f"{NOTHING_EARLIER}: 1.3.0 is the earliest in its history"


# -- 2. a replay is refused live and leaves the update's retained record alone ----------------------


def replay_reason(kind: str, ident: str) -> str:
    what = "command" if kind == "command_id" else "update"
    return (
        f"{kind} {ident} was already used (replay): not acted on; "
        f"the retained record is the {what}'s own (a new {what} needs an id of its own)"
    )


def test_a_live_replay_of_a_finished_update_is_refused_live_and_its_retained_active_record_stays(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    device = agent.device
    model = unique_model(agent.state.parent / "v11", "digits_int8.onnx")
    manifest = push_update(broker.port, keys["key"], model, "1.1.0", device, probation_s=0)
    uid = manifest["update_id"]
    assert watcher.wait_state(device, uid, ENDED)["state"] == "active"
    mark = len(watcher.ota(device))

    publish(broker.port, f"edgerun/{device}/ota/manifest", seal(manifest, keys["key"]))  # the same envelope, live
    changed = {**manifest, "version": "1.2.0"}  # a corrected document under the same update id
    publish(broker.port, f"edgerun/{device}/ota/manifest", seal(changed, keys["key"]))
    live = records_after(watcher, device, mark, 2)  # what an operator watching now sees
    assert [(r["update_id"], r["version"], r["state"], r["reason"]) for r in live] == [
        (uid, "1.1.0", "rejected", replay_reason("update_id", uid)),
        (uid, "1.2.0", "rejected", replay_reason("update_id", uid)),
    ], live
    assert live[0]["schema"] == 1 and live[0]["model"] == "digits" and live[0]["progress"] == 1.0, live[0]

    kept = retained(broker, device)  # what a fleet view that starts now sees: the update's own outcome
    assert kept["update_id"] == uid and kept["state"] == "active" and kept["version"] == "1.1.0", kept
    assert agent.journal(uid)["state"] == "active"
    assert agent.slot.primary.version == "1.1.0"


def test_a_live_replay_of_a_command_is_refused_live_and_its_retained_record_stays(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    device = agent.device
    doc = build_command("activate", model="digits", devices=[device], groups=[], version="1.0.0")
    envelope = seal(doc, keys["key"])
    publish(broker.port, f"edgerun/{device}/cmd", envelope)
    assert watcher.wait_state(device, doc["command_id"], ENDED)["state"] == "active"
    mark = len(watcher.ota(device))
    publish(broker.port, f"edgerun/{device}/cmd", envelope)
    live = records_after(watcher, device, mark)[0]
    assert live["command_id"] == doc["command_id"] and live["state"] == "rejected", live
    assert live["reason"] == replay_reason("command_id", doc["command_id"]), live
    kept = retained(broker, device)
    assert kept["command_id"] == doc["command_id"] and kept["state"] == "active", kept
    assert agent.journal(doc["command_id"])["state"] == "active"


# -- 3. a rejected command is journaled rejected ---------------------------------------------------


@pytest.mark.parametrize(
    ("what", "model", "version", "reason"),
    [
        ("activate", "digits", "9.9.9", "digits 9.9.9 is not installed here (installed: 1.0.0)"),
        ("rollback", "nosuch", None, "this device does not serve a model named 'nosuch'"),
        ("rollback", "digits", None, f"{NOTHING_EARLIER}: 1.0.0 is the earliest in its history"),
    ],
    ids=["activate-not-installed", "rollback-unknown-model", "rollback-nothing-earlier"],
)
def test_a_command_refused_after_it_was_received_is_journaled_rejected(
    broker: Broker, keys: dict[str, Any], rig: Any, what: str, model: str, version: str | None, reason: str
) -> None:
    agent, watcher = rig()
    sent = command(broker, keys, agent.device, what, model=model, version=version)
    record = watcher.wait_state(agent.device, sent["command_id"], ENDED)
    assert record["state"] == "rejected" and record["reason"] == reason, record
    assert agent.journal(sent["command_id"]) == {"kind": "command", "state": "rejected", "reason": reason}


def test_a_command_that_fails_unexpectedly_is_journaled_and_reported_failed(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    def load(path: Path, card: ModelCard | None) -> Model:
        if card is not None and card.version == "1.0.0":  # the loader's own bug, not a refusal
            raise RuntimeError("delegate crashed")
        return load_digits(path, card)

    agent, watcher = rig(load=load)
    update(broker, keys, agent, watcher, "1.1.0")
    sent = command(broker, keys, agent.device, "activate", version="1.0.0")
    record = watcher.wait_state(agent.device, sent["command_id"], ENDED)
    reason = "unexpected error: RuntimeError: delegate crashed"
    assert record["state"] == "failed" and record["reason"] == reason, record
    assert agent.journal(sent["command_id"]) == {"kind": "command", "state": "failed", "reason": reason}
    assert agent.slot.primary.version == "1.1.0"


# -- 4. verifying before a hash or size refusal ----------------------------------------------------


def states_of(watcher: StatusWatcher, device: str, uid: str) -> list[str]:
    states = [r["state"] for r in watcher.ota(device) if r.get("update_id") == uid]
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]  # progress records once


def test_a_blob_with_the_wrong_sha256_is_reported_verifying_before_it_is_rejected(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    model = unique_model(agent.state.parent / "v11", "digits_int8.onnx")
    manifest = build_manifest(
        model,
        model="digits",
        version="1.1.0",
        fmt="onnx",
        card=card_of(model),
        devices=[agent.device],
        groups=[],
        prefix="edgerun",
        probation_s=0,
        chunk_size=16 * 1024,
    )
    wrong = hashlib.sha256(os.urandom(32)).hexdigest()  # a manifest that names other bytes
    manifest["sha256"] = wrong
    manifest["source"]["mqtt"]["topic"] = f"edgerun/blobs/{wrong}"
    data = model.read_bytes()
    for i in range(manifest["source"]["mqtt"]["chunks"]):
        publish(broker.port, f"edgerun/blobs/{wrong}/{i}", data[i * 16 * 1024 : (i + 1) * 16 * 1024], retain=True)
    publish(broker.port, f"edgerun/{agent.device}/ota/manifest", seal(manifest, keys["key"]))
    uid = manifest["update_id"]
    record = watcher.wait_state(agent.device, uid, ENDED)
    assert record["state"] == "rejected" and record["reason"].startswith("the blob's SHA-256 is "), record
    assert states_of(watcher, agent.device, uid) == ["received", "downloading", "verifying", "rejected"]
    assert agent.journal(uid)["state"] == "rejected"
    assert agent.slot.primary.version == "1.0.0"


def test_a_url_blob_shorter_than_its_manifest_says_is_reported_verifying_before_it_is_rejected(
    broker: Broker, keys: dict[str, Any], rig: Any, tmp_path: Path
) -> None:
    agent, watcher = rig()
    model = unique_model(tmp_path / "v11", "digits_int8.onnx")
    short = tmp_path / "short.onnx"
    short.write_bytes(model.read_bytes()[:5000])  # the server's copy was cut short
    manifest = build_manifest(
        model,
        model="digits",
        version="1.1.0",
        fmt="onnx",
        card=card_of(model),
        devices=[agent.device],
        groups=[],
        prefix="edgerun",
        url=short.as_uri(),
        probation_s=0,
    )
    publish(broker.port, f"edgerun/{agent.device}/ota/manifest", seal(manifest, keys["key"]))
    uid = manifest["update_id"]
    record = watcher.wait_state(agent.device, uid, ENDED)
    assert record["state"] == "rejected", record
    assert record["reason"] == f"the blob has 5000 bytes, the manifest says {manifest['size']}", record
    assert states_of(watcher, agent.device, uid) == ["received", "downloading", "verifying", "rejected"]


# -- 5. envelopes and signed documents are UTF-8 -----------------------------------------------------


def sealed_as(document: dict[str, Any], key: Any, encoding: str) -> bytes:
    """``seal`` with the signed document itself in ``encoding`` (signed as those bytes)."""
    payload = json.dumps(document).encode(encoding)
    return json.dumps(
        {
            "payload": base64.b64encode(payload).decode(),
            "sig": base64.b64encode(key.sign(payload)).decode(),
            "key": json.loads(seal(b"{}", key))["key"],
        }
    ).encode()


@pytest.mark.parametrize(
    ("encoding", "looks"),
    [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16-LE"), ("utf-16-be", "UTF-16-BE"), ("utf-32", "UTF-32")],
)
def test_an_envelope_or_a_signed_document_that_is_not_utf8_is_refused_naming_why(
    keys: dict[str, Any], encoding: str, looks: str
) -> None:
    trusted = TrustedKeys.load([keys["public"]])
    doc = build_command("activate", model="digits", devices=["dev1"], groups=[], version="1.0.0")
    envelope = seal(doc, keys["key"])
    with pytest.raises(UpdateRejected) as refused:
        open_envelope(envelope.decode().encode(encoding), trusted)
    assert str(refused.value) == f"malformed envelope: not JSON (not UTF-8: it looks like {looks})"
    with pytest.raises(UpdateRejected) as refused:
        open_envelope(sealed_as(doc, keys["key"], encoding), trusted)
    assert str(refused.value) == f"the signed payload is not JSON (not UTF-8: it looks like {looks})"


def test_bytes_utf8_does_not_allow_are_refused_naming_the_byte_and_a_utf8_bom_is_accepted(
    keys: dict[str, Any],
) -> None:
    trusted = TrustedKeys.load([keys["public"]])
    doc = build_command("activate", model="digits", devices=["dev1"], groups=[], version="1.0.0")
    latin1 = json.dumps({**doc, "note": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    with pytest.raises(
        UpdateRejected, match=r"^the signed payload is not JSON \(not UTF-8: byte 0xe9 at offset \d+\)$"
    ):
        open_envelope(seal(latin1, keys["key"]), trusted)
    bom = b"\xef\xbb\xbf"
    assert open_envelope(bom + seal(doc, keys["key"]), trusted) == doc
    assert open_envelope(seal(bom + json.dumps(doc).encode(), keys["key"]), trusted) == doc


def test_a_utf16_command_envelope_is_not_executed(broker: Broker, keys: dict[str, Any], rig: Any) -> None:
    agent, watcher = rig()
    update(broker, keys, agent, watcher, "1.1.0")
    doc = build_command("rollback", model="digits", devices=[agent.device], groups=[])
    mark = len(watcher.ota(agent.device))
    publish(broker.port, f"edgerun/{agent.device}/cmd", seal(doc, keys["key"]).decode().encode("utf-16"))
    record = records_after(watcher, agent.device, mark)[0]
    assert record["state"] == "rejected", record
    assert record["reason"] == "malformed envelope: not JSON (not UTF-8: it looks like UTF-16)", record
    assert record["command_id"] is None  # an envelope refused unread claims nothing
    signed = sealed_as(doc, keys["key"], "utf-16")  # a good signature over a UTF-16 document
    publish(broker.port, f"edgerun/{agent.device}/cmd", signed)
    record = records_after(watcher, agent.device, mark + 1)[0]
    assert record["reason"] == "the signed payload is not JSON (not UTF-8: it looks like UTF-16)", record
    assert agent.slot.primary.version == "1.1.0"  # the rollback never ran
    assert not (agent.state / "ota" / "journal" / f"{doc['command_id']}.json").exists()


# -- set-ab during a probation ------------------------------------------------------------------------


@pytest.mark.slow
def test_set_ab_during_a_probation_is_refused_and_the_probation_still_rolls_the_update_back(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    device = agent.device
    update = push_update(
        broker.port, keys["key"], unique_model(agent.state.parent / "v11", "digits_int8.onnx"), "1.1.0", device,
        probation_s=600,
    )  # fmt: skip
    uid = update["update_id"]
    assert watcher.wait_state(device, uid, ENDED | {"probation"})["state"] == "probation"
    before = agent.store.active("digits")
    assert before is not None and before.probation is not None
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before.probation["until"]))

    doc = build_command("set-ab", model="digits", devices=[device], groups=[], version="1.0.0", fraction=0.5)
    publish(broker.port, f"edgerun/{device}/cmd", seal(doc, keys["key"]))
    record = watcher.wait_state(device, doc["command_id"], ENDED)
    reason = f"digits is on probation (update {uid}) until {until}: set-ab once it has ended"
    assert record["state"] == "rejected" and record["reason"] == reason, record
    assert agent.journal(doc["command_id"]) == {"kind": "command", "state": "rejected", "reason": reason}
    assert agent.store.active("digits") == before  # no split: the probation acts on what the update left
    assert agent.slot.candidate is None

    for _ in range(40):  # every request on 1.1.0 fails: the probation's error bound is broken
        agent.metrics.error("digits", "1.1.0", agent.slot.primary.delegate)
    record = watcher.wait_state(device, uid, {"rolled_back", "failed", "active"})
    assert record["state"] == "rolled_back" and record["version"] == "1.1.0", record
    assert agent.slot.primary.version == "1.0.0"
    assert agent.store.active("digits") == Active(version="1.0.0")
