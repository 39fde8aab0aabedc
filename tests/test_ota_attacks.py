"""OTA under attack: forged, stale, replayed, oversized and malformed updates and commands.

Most cases talk to ONE real device process for the whole module (``att1``, serving a
copy of ``digits_fp32.onnx``, version 1.0.0), over a private Mosquitto, and send each
attack as a live publish. After every attack the device must have said ``rejected``
(or ``failed``) with a reason in plain words, still serve 1.0.0 correctly, and be alive.
A second device (``att2``, ``--ota-max-bytes 100000``) takes one real update so that
replays and the size limit can be tried against a version received over the air.
The pure pieces (the clock policy, the model store, the chunk download) are tested
without a device.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgerun.card import load_card
from edgerun.errors import ModelLoadError, UpdateFailed, UpdateRejected
from edgerun.ota.envelope import seal
from edgerun.ota.manifest import parse_manifest
from edgerun.ota.operator import build_command, build_manifest, validation_samples
from edgerun.ota.policy import RELEASE_TIME, Clock, check_times
from edgerun.ota.store import Active, ModelStore
from edgerun.ota.transfer import download
from edgerun.sync.link import MqttLink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, npy_bytes
from tests.ota_helpers import Device, StatusWatcher, make_key, model_with_card

DEV = "att1"
TERMINAL = {"active", "rejected", "failed", "rolled_back"}
WAIT_S = 15.0


# -- helpers ---------------------------------------------------------------------------------------


def card_of(model_file: Path) -> dict[str, Any]:
    """The card beside a model, as ``edgerun ota publish`` puts it in a manifest."""
    card = load_card(model_file.with_name(model_file.name + ".card.yaml")).to_dict()
    card.pop("inferred", None)
    return card


DIGITS_CARD = card_of(DIGITS / "digits_fp32.onnx")


def unique_onnx(source: Path, target: Path) -> Path:
    """A copy of an ONNX model with a random doc string: the same model under a SHA-256 no other
    test uses, so its retained chunks cannot collide with anyone else's."""
    import onnx

    model = onnx.load(str(source))
    model.doc_string = f"edgerun attack test {secrets.token_hex(8)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


class Publisher:
    """One long-lived operator connection: every publish QoS 1 and acknowledged (a fresh client per
    message, as ``ota_helpers.publish`` does, costs about a second to stop its network thread)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"attacker-{secrets.token_hex(4)}")
        self.client.max_inflight_messages_set(100)
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10), "no connection to the test broker"

    def __call__(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(30)
        assert info.is_published(), f"the broker did not acknowledge a publish to {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Rig:
    """One device process with its broker, watcher, keys and a scratch folder."""

    def __init__(self, broker: Broker, tmp: Path, device: Device, watcher: StatusWatcher, key: Any) -> None:
        self.broker, self.port, self.tmp = broker, broker.port, tmp
        self.device, self.watcher, self.key = device, watcher, key
        self.publish = Publisher(broker.port)
        self.name = device.device
        self.state = tmp / "state" / self.name

    # what the attacker/operator sends ----------------------------------------------------------
    def manifest(
        self,
        data: bytes,
        version: str,
        *,
        chunk_size: int = 1024,
        url: str | None = None,
        card: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A manifest document for ``data``, as ``edgerun ota publish`` builds it, with ``fields`` changed."""
        blob = self.tmp / f"blob-{secrets.token_hex(6)}"
        blob.write_bytes(data)
        doc = build_manifest(
            blob,
            model="digits",
            version=version,
            fmt="onnx",
            card=card or DIGITS_CARD,
            devices=[self.name],
            groups=[],
            prefix="edgerun",
            url=url,
            probation_s=0,
            chunk_size=chunk_size,
        )
        doc.update(fields)
        return doc

    def chunks(self, doc: dict[str, Any], data: bytes, indices: Any = None) -> None:
        """Publish chunks of ``data`` (retained) where ``doc`` says they are."""
        blob = doc["source"]["mqtt"]
        size = blob["chunk_size"]
        for i in range(blob["chunks"]) if indices is None else indices:
            self.publish(f"{blob['topic']}/{i}", data[i * size : (i + 1) * size], retain=True)

    def mark(self) -> int:
        return len(self.watcher.ota(self.name))

    def send(self, payload: bytes, topic: str = "ota/manifest") -> int:
        """Publish live (not retained) to the device; returns the mark to look for the outcome after."""
        mark = self.mark()
        self.publish(f"edgerun/{self.name}/{topic}", payload)
        return mark

    def outcome(
        self, mark: int, ident: str | None, states: set[str] = TERMINAL, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        """The first OTA record after ``mark`` for ``ident`` whose state is in ``states``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.watcher.ota(self.name)[mark:]:
                if (r.get("update_id") or r.get("command_id")) == ident and r.get("state") in states:
                    return r
            assert self.device.proc.poll() is None, f"{self.name} died: {self.device.log()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no {states} for {ident!r} in {timeout} s; saw {self.watcher.ota(self.name)[mark:][-5:]}"
        )

    def attack(
        self, payload: bytes, ident: str | None, topic: str = "ota/manifest", states: set[str] = TERMINAL
    ) -> dict[str, Any]:
        return self.outcome(self.send(payload, topic), ident, states)

    # what the device still does -----------------------------------------------------------------
    def predict(self, digit: int = 3) -> dict[str, Any]:
        """Send an image to the device's input topic (again, until its source is subscribed); the new record."""
        out = self.device.out
        before = out.read_text().count("\n") if out.exists() else 0
        for _ in range(10):
            self.publish(f"edgerun/{self.name}/input", (SAMPLES / f"digit_{digit}.png").read_bytes())
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                lines = out.read_text().splitlines() if out.exists() else []
                if len(lines) > before:
                    return dict(json.loads(lines[before]))
                time.sleep(0.02)
        raise AssertionError(f"no output from {self.name}: {self.device.log()[-2000:]}")

    def versions(self) -> list[str]:
        folder = self.state / "models" / "digits" / "versions"
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def assert_unharmed(self, version: str = "1.0.0") -> None:
        """Alive, serving ``version`` (status record and a real prediction), no swallowed exception."""
        assert self.device.proc.poll() is None, f"{self.name} died: {self.device.log()[-3000:]}"
        record = self.predict(3)
        assert record["version"] == version, record
        assert record["output"][0]["label"] == "3", record
        status = self.watcher.status(self.name)[-1]
        assert status["state"] == "online" and status["models"]["digits"]["version"] == version, status
        active = json.loads((self.state / "models" / "digits" / "active.json").read_text())
        assert active["version"] == version and active["ab"] is None, active
        log = self.device.log()
        assert "Traceback" not in log and "OTA: handling a" not in log, log[-3000:]


def start_rig(broker: Broker, tmp: Path, name: str, extra: tuple[str, ...] = ()) -> Rig:
    key, _private, public = make_key(tmp)
    model = model_with_card(tmp / "models", "digits_fp32.onnx", "digits.onnx")
    watcher = StatusWatcher(broker.port)
    device = Device(broker.port, tmp / "state", model, public, device=name, extra=extra)
    rig = Rig(broker, tmp, device, watcher, key)
    try:
        watcher.wait_online_version(name, "1.0.0")
        # The OTA subscription is made after the status record: probe until the agent answers.
        for _ in range(20):
            probe = f"probe-{secrets.token_hex(4)}"
            doc = rig.manifest(b"p" * 2000, "9.0.0", update_id=probe, targets={"devices": ["nobody"]})
            mark = rig.send(seal(doc, key))
            try:
                rig.outcome(mark, probe, {"rejected"}, timeout=1.0)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"{name} never answered on its manifest topic: {device.log()[-2000:]}")
    except BaseException:
        device.kill()
        watcher.close()
        rig.publish.close()
        raise
    return rig


def stop_rig(rig: Rig) -> None:
    code = rig.device.stop()
    rig.watcher.close()
    rig.publish.close()
    assert code == 0, rig.device.log()[-3000:]


@pytest.fixture(scope="module")
def att(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Device ``att1`` serving digits 1.0.0 for the whole module."""
    rig = start_rig(broker, tmp_path_factory.mktemp("att1"), DEV)
    yield rig
    stop_rig(rig)


@pytest.fixture(scope="module")
def updated(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Device ``att2`` (limit 100000 bytes) after a real update to 1.1.0 (digits_int8, no probation)."""
    tmp = tmp_path_factory.mktemp("att2")
    rig = start_rig(broker, tmp, "att2", extra=("--ota-max-bytes", "100000"))
    try:
        model = unique_onnx(DIGITS / "digits_int8.onnx", tmp / "v11" / "digits.onnx")
        data = model.read_bytes()
        assert len(data) < 100_000
        doc = rig.manifest(data, "1.1.0", chunk_size=16 * 1024, card=card_of(DIGITS / "digits_int8.onnx"))
        rig.chunks(doc, data)
        envelope = seal(doc, rig.key)
        done = rig.attack(envelope, doc["update_id"])
        assert done["state"] == "active", done
        rig.watcher.wait_online_version("att2", "1.1.0")
        yield {"rig": rig, "doc": doc, "envelope": envelope}
    finally:
        stop_rig(rig)


def refused_as_replay(rig: Rig, payload: bytes, ident: str, topic: str = "ota/manifest") -> dict[str, Any]:
    """Send a replay; its refusal, as a watcher sees it live. The refusal is not retained: the
    retained record stays the outcome of the update or command the id belongs to (checked here)."""
    before = retained_record(rig)
    assert (before.get("update_id") or before.get("command_id")) == ident, before
    record = rig.attack(payload, ident, topic, states={"rejected", "failed", "active", "rolled_back"})
    assert record["state"] == "rejected", record
    assert retained_record(rig) == before  # a fleet view that starts now sees the original's outcome
    return record


def retained_record(rig: Rig) -> dict[str, Any]:
    """The record the broker keeps on the device's ``ota/status``, as a watcher that starts now gets it."""
    fresh = StatusWatcher(rig.broker.port)
    try:
        deadline = time.monotonic() + WAIT_S
        while not fresh.ota(rig.name):
            assert time.monotonic() < deadline, f"no retained OTA record for {rig.name}"
            time.sleep(0.05)
        return fresh.ota(rig.name)[0]
    finally:
        fresh.close()


def rejected(record: dict[str, Any], *words: str) -> str:
    assert record["state"] == "rejected", record
    reason = record["reason"]
    for word in words:
        assert word in reason, f"{word!r} not in {reason!r}"
    return str(reason)


# -- the envelope ------------------------------------------------------------------------------------


def test_an_unsigned_envelope_is_rejected_and_not_journaled(att: Rig) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0")
    envelope = json.dumps({"payload": base64.b64encode(json.dumps(doc).encode()).decode()}).encode()
    record = att.attack(envelope, doc["update_id"])
    rejected(record, "unsigned envelope", "no sig or key")
    assert not (att.state / "ota" / "journal" / f"{doc['update_id']}.json").exists()
    att.assert_unharmed()


def test_an_envelope_signed_by_an_unknown_key_is_rejected(att: Rig) -> None:
    stranger, _, _ = make_key(att.tmp, "stranger")
    doc = att.manifest(os.urandom(3000), "2.0.0")
    record = att.attack(seal(doc, stranger), doc["update_id"])
    rejected(record, "does not trust")
    att.assert_unharmed()


def test_a_payload_changed_after_signing_is_rejected(att: Rig) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0")
    envelope = json.loads(seal(doc, att.key))
    doc["sha256"] = hashlib.sha256(b"the attacker's model").hexdigest()
    envelope["payload"] = base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
    record = att.attack(json.dumps(envelope).encode(), doc["update_id"])
    rejected(record, "signature does not match the payload")
    att.assert_unharmed()


def test_a_signature_of_another_document_is_rejected(att: Rig) -> None:
    doc, other = att.manifest(os.urandom(3000), "2.0.0"), att.manifest(os.urandom(3000), "2.0.1")
    envelope = json.loads(seal(doc, att.key))
    envelope["sig"] = json.loads(seal(other, att.key))["sig"]
    record = att.attack(json.dumps(envelope).encode(), doc["update_id"])
    rejected(record, "signature does not match")
    att.assert_unharmed()


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"payload": "!!!", "sig": "AAAA", "key": "0011223344556677"}', "payload is not valid base64"),
        (json.dumps({"payload": base64.b64encode(b"x").decode(), "sig": 5, "key": "k"}).encode(), "sig must be"),
        (b"\xff\xfe\x00garbage", "not JSON"),
    ],
    ids=["not-json", "json-array", "bad-base64", "sig-not-string", "binary"],
)
def test_a_malformed_envelope_is_rejected_in_plain_words(att: Rig, payload: bytes, words: str) -> None:
    record = att.attack(payload, None)
    rejected(record, "malformed envelope", words)
    att.assert_unharmed()


def test_an_empty_message_clearing_a_retained_manifest_or_command_is_ignored_quietly(att: Rig) -> None:
    # `edgerun ota clear` and `mosquitto_pub -r -n` clear a retained message with an empty one; the
    # broker passes it on to the device, which must not answer it (its answer would overwrite the
    # retained record of the last real update with a rejection of nothing).
    mark, logged = att.mark(), len(att.device.log())
    for topic in ("ota/manifest", "cmd"):
        subprocess.run(
            ["mosquitto_pub", "-p", str(att.port), "-q", "1", "-r", "-n", "-t", f"edgerun/{DEV}/{topic}"],
            check=True,
            timeout=30,
        )
        att.publish(f"edgerun/{DEV}/{topic}", b"")  # live, not retained: the same
    # The worker takes messages in order: once these probes are answered, the empty ones were handled.
    probe = att.manifest(b"p" * 2000, "9.0.0", targets={"devices": ["nobody"]})
    rejected(att.attack(seal(probe, att.key), probe["update_id"]), "not among the targets")
    command = build_command("activate", model="digits", devices=["nobody"], groups=[], version="1.0.0")
    rejected(att.attack(seal(command, att.key), command["command_id"], topic="cmd"), "not among the targets")
    idents = [r.get("update_id") or r.get("command_id") for r in att.watcher.ota(DEV)[mark:]]
    assert idents == [probe["update_id"], command["command_id"]], att.watcher.ota(DEV)[mark:]
    assert "OTA None" not in att.device.log()[logged:]
    att.assert_unharmed()


def test_a_signed_payload_that_is_not_json_is_rejected(att: Rig) -> None:
    record = att.attack(seal(b"model-update please", att.key), None)
    rejected(record, "signed payload is not JSON")
    att.assert_unharmed()


@pytest.mark.parametrize("topic", ["ota/manifest", "cmd"])
def test_json_nested_a_hundred_thousand_deep_is_rejected_in_plain_words(att: Rig, topic: str) -> None:
    logged = len(att.device.log())
    record = att.attack(b"[" * 100_000 + b"]" * 100_000, None, topic=topic)
    rejected(record, "malformed envelope: JSON nested too deeply")
    what = "manifest" if topic == "ota/manifest" else "command"
    line = f"OTA (a {what} that names no id): rejected (malformed envelope: JSON nested too deeply)"
    assert line in att.device.log()[logged:], att.device.log()[logged:]  # no "OTA None None None"
    att.assert_unharmed()


def test_a_signed_payload_nested_a_hundred_thousand_deep_is_rejected_in_plain_words(att: Rig) -> None:
    record = att.attack(seal(b"[" * 100_000 + b"]" * 100_000, att.key), None)
    rejected(record, "the signed payload is JSON nested too deeply")
    att.assert_unharmed()


def test_ten_megabytes_of_garbage_on_the_manifest_topic_are_dropped_unread(att: Rig) -> None:
    mark = att.send(os.urandom(10 * 1024 * 1024))
    deadline = time.monotonic() + WAIT_S
    while "dropped a 10485760-byte message on edgerun/att1/ota/manifest" not in att.device.log():
        assert time.monotonic() < deadline, att.device.log()[-2000:]
        time.sleep(0.05)
    att.assert_unharmed()
    assert att.watcher.ota(DEV)[mark:] == []  # dropped before parsing: nothing to report


# -- the manifest's fields ------------------------------------------------------------------------------


def test_an_expired_manifest_is_rejected(att: Rig) -> None:
    now = int(time.time())
    doc = att.manifest(os.urandom(3000), "2.0.0", issued=now - 7200, expires=now - 3600)
    reason = rejected(att.attack(seal(doc, att.key), doc["update_id"]), "expired")
    assert "unsynced" not in reason  # this clock is right: no excuse in the reason
    att.assert_unharmed()


def test_a_manifest_issued_far_in_the_future_is_rejected(att: Rig) -> None:
    now = int(time.time())
    doc = att.manifest(os.urandom(3000), "2.0.0", issued=now + 3600, expires=now + 7200)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "in the future")
    att.assert_unharmed()


@pytest.mark.parametrize(
    "targets", [{"devices": ["att9"]}, {"groups": ["line-2"]}, {}], ids=["device", "group", "none"]
)
def test_a_manifest_for_another_device_is_rejected(att: Rig, targets: dict[str, Any]) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0", targets=targets)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "this device (att1) is not among the targets")
    att.assert_unharmed()


@pytest.mark.parametrize("version", ["1.0.0", "0.9.9"])
def test_a_version_not_newer_than_the_installed_one_is_rejected(att: Rig, version: str) -> None:
    doc = att.manifest(os.urandom(3000), version)
    rejected(
        att.attack(seal(doc, att.key), doc["update_id"]),
        f"version {version} is not newer than the installed 1.0.0",
        "allow_downgrade",
    )
    att.assert_unharmed()


def test_a_manifest_for_a_model_the_device_does_not_serve_is_rejected(att: Rig) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0", model="vibration")
    doc["card"]["name"] = "vibration"
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "does not serve a model named 'vibration'")
    att.assert_unharmed()


def test_a_size_above_the_default_limit_is_rejected_before_downloading(att: Rig) -> None:
    size = 300 * 1024 * 1024
    sha = hashlib.sha256(b"never sent").hexdigest()
    doc = att.manifest(os.urandom(3000), "2.0.0", url="file:///dev/zero", size=size, sha256=sha)
    rejected(
        att.attack(seal(doc, att.key), doc["update_id"]),
        f"size {size} bytes is above this device's limit of {256 * 1024 * 1024} bytes",
    )
    assert not (att.state / "ota" / "downloads" / sha).exists()
    att.assert_unharmed()


def test_chunks_on_a_topic_other_than_the_blob_topic_are_refused(att: Rig) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0")
    doc["source"]["mqtt"]["topic"] = "edgerun/att1/input"
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "chunk topic must be edgerun/blobs/")
    att.assert_unharmed()


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "../x"),
        ("model", "/abs"),
        ("model", "digits\x00"),
        ("version", "../1.0.0"),
        ("version", "/2.0.0"),
        ("version", "2.0.0\x00"),
        ("update_id", "../../../escape"),
    ],
)
def test_names_that_would_leave_the_store_are_refused_by_the_schema(att: Rig, field: str, value: str) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0")
    doc[field] = value
    ident = value if field == "update_id" else doc["update_id"]
    rejected(att.attack(seal(doc, att.key), ident), "invalid manifest", f"$.{field}")
    assert att.versions() == ["1.0.0"]
    assert not list(att.tmp.rglob("escape*")) and not list(att.tmp.rglob("x"))
    att.assert_unharmed()


@pytest.mark.parametrize(
    "change, where",
    [
        ({"size": "big"}, "$.size"),
        ({"size": 0}, "$.size"),
        ({"issued": "yesterday"}, "$.issued"),
        ({"targets": {"devices": "att1"}}, "$.targets.devices"),
        ({"schema": 2}, "$.schema"),
        ({"format": "pickle"}, "$.format"),
        ({"sha256": "ABC"}, "$.sha256"),
        ({"rollout": {"probation_s": -1}}, "$.rollout.probation_s"),
        ({"source": {"url": "ftp://example.invalid/m.onnx"}}, "url must be https://, http:// or file://"),
        ({"source": {}}, "exactly one of mqtt or url"),
        ({"extra": "field"}, "extra"),
        ({"card": {"task": "telepathy"}}, "invalid card"),
        ({"card": {**DIGITS_CARD, "name": "vibration", "version": "2.0.0"}}, "card names model 'vibration'"),
    ],
    ids=[
        "size-string",
        "size-zero",
        "issued-string",
        "devices-string",
        "schema-2",
        "format",
        "sha256",
        "probation-negative",
        "url-scheme",
        "no-source",
        "unknown-field",
        "card-task",
        "card-name",
    ],
)
def test_a_manifest_with_a_wrong_field_is_rejected_naming_it(att: Rig, change: dict[str, Any], where: str) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0")
    doc.update(change)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), where)
    att.assert_unharmed()


def test_a_chunk_count_that_does_not_fit_the_size_is_rejected(att: Rig) -> None:
    doc = att.manifest(os.urandom(3000), "2.0.0")
    doc["source"]["mqtt"]["chunks"] = 2
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "source.mqtt.chunks is 2", "make 3")
    att.assert_unharmed()


def test_chunks_larger_than_the_link_s_message_limit_are_rejected_before_downloading(att: Rig) -> None:
    # The link drops every message over 1 MiB unread: 2 MiB chunks could never arrive.
    doc = att.manifest(os.urandom(3 * 1024 * 1024), "2.0.0", chunk_size=2 * 1024 * 1024)
    rejected(
        att.attack(seal(doc, att.key), doc["update_id"]),
        "chunk_size 2097152 bytes is above the 1048576-byte message limit of this device's MQTT link",
    )
    assert not downloads_of(att, doc).exists()
    att.assert_unharmed()


def test_a_signed_command_sent_as_a_manifest_is_rejected(att: Rig) -> None:
    command = build_command("rollback", model="digits", devices=[DEV], groups=[])
    rejected(att.attack(seal(command, att.key), None), "not a model-update manifest")
    att.assert_unharmed()


# -- the blob ------------------------------------------------------------------------------------


def downloads_of(att: Rig, doc: dict[str, Any]) -> Path:
    return att.state / "ota" / "downloads" / str(doc["sha256"])


def test_a_blob_whose_sha256_differs_is_rejected(att: Rig) -> None:
    data = os.urandom(3000)
    doc = att.manifest(data, "2.0.0")
    att.chunks(doc, os.urandom(3000))  # the right sizes, other bytes
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "SHA-256", doc["sha256"][:16])
    assert not downloads_of(att, doc).exists()
    att.assert_unharmed()


def test_a_truncated_last_chunk_is_rejected(att: Rig) -> None:
    data = os.urandom(3000)
    doc = att.manifest(data, "2.0.0")
    att.chunks(doc, data[:-100])
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "chunk 2 is truncated: 852 bytes, expected 952")
    att.assert_unharmed()


@pytest.mark.parametrize(
    "extra, words",
    [(b"tail", "larger than the 3000 bytes"), (None, "has 2000 bytes, the manifest says 3000")],
    ids=["longer", "shorter"],
)
def test_a_url_blob_whose_length_differs_is_rejected(att: Rig, extra: bytes | None, words: str) -> None:
    data = os.urandom(3000)
    served = att.tmp / f"served-{secrets.token_hex(4)}.onnx"
    served.write_bytes(data + extra if extra else data[:2000])
    doc = att.manifest(data, "2.0.0", url=served.as_uri())
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), words)
    assert not downloads_of(att, doc).exists()
    att.assert_unharmed()


def test_an_oversized_chunk_is_rejected(att: Rig) -> None:
    data = os.urandom(3000)
    doc = att.manifest(data, "2.0.0")
    att.chunks(doc, data, indices=[1, 2])
    att.publish(f"{doc['source']['mqtt']['topic']}/0", data[:1024] + b"!", retain=True)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "chunk 0 is oversized: 1025 bytes, expected 1024")
    att.assert_unharmed()


def test_a_chunk_out_of_range_is_rejected(att: Rig) -> None:
    data = os.urandom(3000)
    doc = att.manifest(data, "2.0.0")
    att.chunks(doc, data, indices=[0, 1])  # chunk 2 held back: only the stray chunk can end the download
    att.publish(f"{doc['source']['mqtt']['topic']}/3", data[:1024], retain=True)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "chunk 3 is out of range", "3 chunks")
    assert not downloads_of(att, doc).exists()
    att.assert_unharmed()


def test_a_chunk_sent_twice_with_different_content_is_rejected(att: Rig) -> None:
    data = os.urandom(3000)
    doc = att.manifest(data, "2.0.0")
    att.chunks(doc, data, indices=[0, 1])  # chunk 2 held back, so the download is still going
    mark = att.send(seal(doc, att.key))
    have = downloads_of(att, doc) / "have"  # the record of the chunks written
    deadline = time.monotonic() + WAIT_S
    while not (have.exists() and "0" in have.read_text().split()):
        assert time.monotonic() < deadline, att.watcher.ota(DEV)[mark:]
        time.sleep(0.02)
    topic = f"{doc['source']['mqtt']['topic']}/0"
    att.publish(topic, data[:1024])  # an identical duplicate (QoS 1 is at least once): fine
    att.publish(topic, bytes(1024))
    rejected(att.outcome(mark, doc["update_id"]), "chunk 0 arrived twice with different content")
    att.assert_unharmed()


def test_random_bytes_with_a_valid_signature_are_not_a_model(att: Rig) -> None:
    # An ONNX ModelProto opens with the tag byte 0x08, and one random file in 512 opens like one;
    # ONNX Runtime then rejects it as a protobuf that does not parse, which is not this test's case.
    data = b"\xff" + os.urandom(4999)
    doc = att.manifest(data, "2.0.0")
    att.chunks(doc, data)
    record = att.attack(seal(doc, att.key), doc["update_id"])
    rejected(record, "not a model", "is neither an ONNX nor a TFLite file")
    assert record["version"] == "2.0.0", record
    assert att.versions() == ["1.0.0"], "a version that does not load must not stay in the store"
    att.assert_unharmed()


def test_a_model_whose_input_differs_from_the_card_is_rejected(att: Rig) -> None:
    data = unique_onnx(ROOT / "models" / "vibration" / "vibration_fp32.onnx", att.tmp / "vib1.onnx").read_bytes()
    doc = att.manifest(data, "2.0.0", chunk_size=16 * 1024)  # the digits card: 8x8 grey images
    att.chunks(doc, data)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "[N,256,3]", "not an image tensor")
    assert att.versions() == ["1.0.0"]
    att.assert_unharmed()


def test_a_model_whose_input_differs_from_the_serving_model_is_rejected(att: Rig) -> None:
    vibration = ROOT / "models" / "vibration" / "vibration_fp32.onnx"
    data = unique_onnx(vibration, att.tmp / "vib2.onnx").read_bytes()
    card = card_of(vibration)
    doc = att.manifest(data, "2.0.0", chunk_size=16 * 1024, card={**card, "name": "digits"})
    att.chunks(doc, data)
    rejected(
        att.attack(seal(doc, att.key), doc["update_id"]),
        "input input [N,256,3] float32 differs from the serving model's input [N,8,8,1] float32",
    )
    assert att.versions() == ["1.0.0"]
    att.assert_unharmed()


def test_a_model_that_fails_its_validation_samples_is_rejected(att: Rig) -> None:
    model = unique_onnx(DIGITS / "digits_int8.onnx", att.tmp / "val" / "digits.onnx")
    card = card_of(DIGITS / "digits_int8.onnx")
    samples = validation_samples(model, {**card, "name": "digits", "version": "2.0.0"}, [str(SAMPLES / "digit_3.png")])
    expected = np.load(io.BytesIO(base64.b64decode(samples[0]["output"])))
    buf = io.BytesIO()
    np.save(buf, expected[..., ::-1].copy() + 5.0)  # the same shape, the wrong values
    samples[0]["output"] = base64.b64encode(buf.getvalue()).decode()
    data = model.read_bytes()
    doc = att.manifest(data, "2.0.0", chunk_size=16 * 1024, card=card, validation={"samples": samples})
    att.chunks(doc, data)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "validation sample 0 fails", "atol")
    assert att.versions() == ["1.0.0"]
    att.assert_unharmed()


def _digits_samples(model: Path, version: str) -> list[dict[str, Any]]:
    card = card_of(DIGITS / "digits_int8.onnx")
    return validation_samples(model, {**card, "name": "digits", "version": version}, [str(SAMPLES / "digit_3.png")])


def test_a_validation_sample_that_is_not_numeric_is_rejected_and_leaves_nothing(att: Rig) -> None:
    model = unique_onnx(DIGITS / "digits_int8.onnx", att.tmp / "strings" / "digits.onnx")
    samples = _digits_samples(model, "2.0.0")
    samples[0]["input"] = base64.b64encode(npy_bytes(np.array(["a"] * 64).reshape(1, 8, 8, 1))).decode()
    data = model.read_bytes()
    card = card_of(DIGITS / "digits_int8.onnx")
    doc = att.manifest(data, "2.0.0", chunk_size=16 * 1024, card=card, validation={"samples": samples})
    att.chunks(doc, data)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), "validation sample 0: input dtype <U1 is not numeric")
    assert att.versions() == ["1.0.0"]
    journal = json.loads((att.state / "ota" / "journal" / f"{doc['update_id']}.json").read_text())
    assert journal["state"] == "rejected", journal  # never resumed at a restart
    att.assert_unharmed()


def _npy_claiming_shape(shape: str) -> bytes:
    """A small ``.npy`` whose header claims ``shape``: loading it asks for that much memory."""
    real = npy_bytes(np.zeros(4, np.float32))
    end = real.index(b"\n") + 1
    header = real[10:end].replace(b"(4,)", shape.encode()).rstrip(b" \n")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return real[:8] + len(header).to_bytes(2, "little") + header + real[end:]


def test_a_validation_sample_claiming_4_pib_is_refused_by_its_header_and_ends_the_update(att: Rig) -> None:
    # A sample claiming 4 PiB made numpy raise MemoryError (an "unexpected error while validating"):
    # its header is now checked against its bytes before anything is allocated. The update must
    # end (not stay "validating" and come back at every restart) and leave nothing behind.
    model = unique_onnx(DIGITS / "digits_int8.onnx", att.tmp / "huge" / "digits.onnx")
    samples = _digits_samples(model, "2.0.0")
    samples[0]["output"] = base64.b64encode(_npy_claiming_shape("(1125899906842624,)")).decode()
    data = model.read_bytes()
    card = card_of(DIGITS / "digits_int8.onnx")
    doc = att.manifest(data, "2.0.0", chunk_size=16 * 1024, card=card, validation={"samples": samples})
    att.chunks(doc, data)
    rejected(
        att.attack(seal(doc, att.key), doc["update_id"]),
        "sample 0 output is not a base64 .npy array",
        "its header declares 4,503,599,627,370,496 bytes of data",
    )
    assert att.versions() == ["1.0.0"]
    assert not (att.state / "ota" / "downloads" / doc["sha256"]).exists()
    journal = json.loads((att.state / "ota" / "journal" / f"{doc['update_id']}.json").read_text())
    assert journal["state"] == "rejected", journal
    att.assert_unharmed()


@pytest.mark.parametrize(
    "source, declared, words",
    [
        ("digits_fp32.onnx", "tflite", "the manifest says tflite, the file is an ONNX model"),
        ("digits_fp32.tflite", "onnx", "the manifest says onnx, the file is a TFLite model"),
    ],
    ids=["onnx-file-said-tflite", "tflite-file-said-onnx"],
)
def test_a_model_file_of_another_format_than_the_manifest_says_is_rejected_before_install(
    att: Rig, source: str, declared: str, words: str
) -> None:
    # Trailing random bytes give the file a SHA-256 of its own (the check reads only the header).
    data = (DIGITS / source).read_bytes() + os.urandom(16)
    doc = att.manifest(data, "2.0.0", chunk_size=16 * 1024, format=declared)
    att.chunks(doc, data)
    rejected(att.attack(seal(doc, att.key), doc["update_id"]), words)
    assert att.versions() == ["1.0.0"]
    assert not (att.state / "ota" / "downloads" / doc["sha256"]).exists()
    att.assert_unharmed()


# -- commands ------------------------------------------------------------------------------------


def test_an_unsigned_rollback_command_is_rejected(att: Rig) -> None:
    command = build_command("rollback", model="digits", devices=[DEV], groups=[])
    envelope = json.dumps({"payload": base64.b64encode(json.dumps(command).encode()).decode()}).encode()
    record = att.attack(envelope, command["command_id"], topic="cmd")
    rejected(record, "unsigned envelope")
    att.assert_unharmed()


def test_a_command_for_another_device_is_rejected(att: Rig) -> None:
    command = build_command("activate", model="digits", devices=["att9"], groups=["line-2"], version="1.0.0")
    rejected(
        att.attack(seal(command, att.key), command["command_id"], topic="cmd"),
        "this device (att1) is not among the targets",
    )
    att.assert_unharmed()


def test_activating_a_version_that_is_not_installed_is_rejected(att: Rig) -> None:
    command = build_command("activate", model="digits", devices=[DEV], groups=[], version="9.9.9")
    rejected(
        att.attack(seal(command, att.key), command["command_id"], topic="cmd"),
        "digits 9.9.9 is not installed here (installed: 1.0.0)",
    )
    att.assert_unharmed()


def test_a_rollback_with_nothing_to_roll_back_to_is_rejected(att: Rig) -> None:
    command = build_command("rollback", model="digits", devices=[DEV], groups=[])
    rejected(att.attack(seal(command, att.key), command["command_id"], topic="cmd"), "no previous version")
    att.assert_unharmed()


def test_an_expired_command_is_rejected(att: Rig) -> None:
    command = build_command("activate", model="digits", devices=[DEV], groups=[], version="1.0.0")
    command["issued"], command["expires"] = command["issued"] - 7200, command["issued"] - 3600
    rejected(att.attack(seal(command, att.key), command["command_id"], topic="cmd"), "expired")
    att.assert_unharmed()


def test_a_replayed_command_is_rejected(att: Rig) -> None:
    command = build_command("activate", model="digits", devices=[DEV], groups=[], version="1.0.0")
    envelope = seal(command, att.key)
    first = att.attack(envelope, command["command_id"], topic="cmd")
    assert first["state"] == "active", first  # 1.0.0 again: harmless, and it proves the command was good
    record = refused_as_replay(att, envelope, command["command_id"], topic="cmd")
    rejected(record, f"command_id {command['command_id']} was already used (replay)")
    att.assert_unharmed()


def test_an_unsigned_command_writes_no_file_outside_the_journal(att: Rig) -> None:
    token = f"escape-{secrets.token_hex(4)}"
    command = build_command("rollback", model="digits", devices=[DEV], groups=[])
    command["command_id"] = f"../../../{token}"
    envelope = json.dumps({"payload": base64.b64encode(json.dumps(command).encode()).decode()}).encode()
    rejected(att.attack(envelope, command["command_id"], topic="cmd"), "unsigned envelope")
    att.assert_unharmed()
    assert list(att.tmp.rglob(f"{token}*")) == []


def test_an_unsigned_command_cannot_use_up_the_id_of_a_signed_one(att: Rig) -> None:
    command = build_command("activate", model="digits", devices=[DEV], groups=[], version="1.0.0")
    forged = json.dumps(
        {"payload": base64.b64encode(json.dumps(command).encode()).decode(), "sig": "AAAA", "key": "0000000000000000"}
    ).encode()
    rejected(att.attack(forged, command["command_id"], topic="cmd"), "does not trust")
    record = att.attack(seal(command, att.key), command["command_id"], topic="cmd")
    assert record["state"] == "active", f"{record['state']}: {record['reason']}"
    att.assert_unharmed()


# -- replays and the size limit on a device that took a real update -----------------------------------


def test_an_applied_update_republished_live_is_rejected_as_a_replay(updated: dict[str, Any]) -> None:
    rig, doc = updated["rig"], updated["doc"]
    record = refused_as_replay(rig, updated["envelope"], doc["update_id"])
    rejected(record, f"update_id {doc['update_id']} was already used (replay)")
    rig.assert_unharmed("1.1.0")


def test_a_different_payload_reusing_an_update_id_is_rejected_as_a_replay(updated: dict[str, Any]) -> None:
    rig, doc = updated["rig"], updated["doc"]
    other = rig.manifest(os.urandom(3000), "1.2.0", update_id=doc["update_id"])
    rig.chunks(other, os.urandom(3000))
    record = refused_as_replay(rig, seal(other, rig.key), doc["update_id"])
    rejected(record, f"update_id {doc['update_id']} was already used (replay)")
    assert record["version"] == "1.2.0", record  # the refused document's own version, said live
    rig.assert_unharmed("1.1.0")


def test_a_version_older_than_one_received_over_the_air_is_rejected(updated: dict[str, Any]) -> None:
    rig = updated["rig"]
    doc = rig.manifest(os.urandom(3000), "1.0.5")
    rejected(rig.attack(seal(doc, rig.key), doc["update_id"]), "not newer than the installed 1.1.0")
    rig.assert_unharmed("1.1.0")


def test_a_size_above_ota_max_bytes_is_rejected_before_downloading(updated: dict[str, Any]) -> None:
    rig = updated["rig"]
    data = (DIGITS / "digits_fp32.onnx").read_bytes()
    doc = rig.manifest(data, "1.2.0", chunk_size=16 * 1024)
    rejected(
        rig.attack(seal(doc, rig.key), doc["update_id"]),
        f"size {len(data)} bytes is above this device's limit of 100000 bytes",
    )
    assert not (rig.state / "ota" / "downloads" / doc["sha256"]).exists()
    rig.assert_unharmed("1.1.0")


# -- the download, without a device -----------------------------------------------------------------


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    yield p
    p.close()


@pytest.fixture
def link(broker: Broker) -> Iterator[MqttLink]:
    """A real MQTT link, as the device uses."""
    settings = MqttSettings.from_url(broker.url, client_id=f"lib-{secrets.token_hex(4)}")
    mqtt_link = MqttLink(settings, Topics("edgerun", "lib1"), None)
    mqtt_link.start()
    assert mqtt_link.wait_connected(10)
    yield mqtt_link
    mqtt_link.stop()


def _lib1_manifest(blob: Path, chunk_size: int) -> dict[str, Any]:
    """An unsigned manifest of ``blob`` as version 2.0.0 of digits for device lib1, in chunks of ``chunk_size``."""
    return build_manifest(
        blob,
        model="digits",
        version="2.0.0",
        fmt="onnx",
        card=DIGITS_CARD,
        devices=["lib1"],
        groups=[],
        prefix="edgerun",
        chunk_size=chunk_size,
    )


def test_a_missing_chunk_fails_the_download_after_its_timeout_and_the_rest_is_kept(
    publisher: Publisher, link: MqttLink, tmp_path: Path
) -> None:
    data = os.urandom(5000)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    doc = _lib1_manifest(blob, 1024)
    manifest = parse_manifest(doc)
    topic = doc["source"]["mqtt"]["topic"]
    for i in range(4):  # of 5
        publisher(f"{topic}/{i}", data[i * 1024 : (i + 1) * 1024], retain=True)
    seen: list[float] = []
    started = time.monotonic()
    with pytest.raises(UpdateFailed, match=r"chunk\(s\) 4 missing: nothing arrived for 2 s"):
        download(manifest, link=link, downloads=tmp_path / "dl", progress=seen.append, timeout_s=2)
    assert 2 <= time.monotonic() - started < 10
    assert seen and seen[-1] == pytest.approx(0.8), seen
    kept = tmp_path / "dl" / manifest.sha256
    assert sorted(int(i) for i in (kept / "have").read_text().split()) == [0, 1, 2, 3]  # written, kept
    assert (kept / "blob.part").stat().st_size >= 4 * 1024
    # The chunk arrives later: the next attempt asks only for it and returns the verified blob.
    publisher(f"{topic}/4", data[4096:], retain=True)
    done = download(manifest, link=link, downloads=tmp_path / "dl", progress=seen.append, timeout_s=2)
    assert done.read_bytes() == data


def test_a_stopped_download_fails_at_once_without_waiting_for_the_timeout(link: MqttLink, tmp_path: Path) -> None:
    data = os.urandom(3000)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    manifest = parse_manifest(_lib1_manifest(blob, 1024))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(UpdateFailed, match="stopped while downloading"):
        download(manifest, link=link, downloads=tmp_path / "dl", progress=lambda f: None, timeout_s=60, stop=stop)
    assert time.monotonic() - started < 5


def test_every_chunk_listed_in_have_is_fsynced_before_it_is_listed(
    publisher: Publisher, link: MqttLink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A power cut loses what was not fsynced. The disk is the boundary faked here: os.pwrite and
    # os.fsync are watched, and at every one of them the chunks ``have`` lists on disk must be
    # chunks whose data an fsync of blob.part has already made durable (else a resume skips them
    # and the SHA-256 check rejects the update).
    size = 1024
    data = os.urandom(12 * size)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    doc = _lib1_manifest(blob, size)
    manifest = parse_manifest(doc)
    folder = tmp_path / "dl" / manifest.sha256
    written: set[int] = set()
    durable: set[int] = set()
    listed_seen: list[set[int]] = []
    real_pwrite, real_fsync = os.pwrite, os.fsync

    def is_part(fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith("blob.part")

    def check() -> None:
        have = folder / "have"
        listed = {int(x) for x in have.read_text().split()} if have.exists() else set()
        listed_seen.append(listed)
        assert listed <= durable, f"have lists chunks {sorted(listed - durable)} not yet fsynced"

    def pwrite(fd: int, payload: bytes, offset: int) -> int:
        check()
        if is_part(fd):
            written.add(offset // size)
        return real_pwrite(fd, payload, offset)

    def fsync(fd: int) -> None:
        check()
        part = is_part(fd)
        real_fsync(fd)
        if part:
            durable.update(written)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fsync", fsync)
    topic = doc["source"]["mqtt"]["topic"]
    for i in range(12):
        publisher(f"{topic}/{i}", data[i * size : (i + 1) * size], retain=True)
    done = download(manifest, link=link, downloads=tmp_path / "dl", progress=lambda f: None, timeout_s=10)
    assert done.read_bytes() == data
    assert any(listed_seen), "have was never written while downloading"


# -- the clock policy ------------------------------------------------------------------------------


def test_a_clock_at_1970_is_unsynced_and_judged_against_the_newest_issued_time() -> None:
    newest = RELEASE_TIME + 86400 * 30
    clock = Clock(now=12.0, newest_issued=newest, skew_s=300)
    assert clock.unsynced and clock.effective_now == newest
    with pytest.raises(UpdateRejected, match=r"expired 3600 s ago \(the device clock is unsynced"):
        check_times(newest - 7200, newest - 3600, clock)
    check_times(newest - 7200, newest + 3600, clock)  # expires after a moment known to have passed: fine
    check_times(newest + 86400 * 365, newest + 86400 * 366, clock)  # cannot be judged: accepted


def test_a_clock_at_1970_with_nothing_verified_yet_is_judged_against_the_release_time() -> None:
    clock = Clock(now=12.0, newest_issued=0.0, skew_s=300)
    assert clock.unsynced and clock.effective_now == RELEASE_TIME
    with pytest.raises(UpdateRejected, match="expired"):
        check_times(RELEASE_TIME - 7200, RELEASE_TIME - 3600, clock)


def test_a_synced_clock_rejects_issued_in_the_future_beyond_the_skew_only() -> None:
    now = time.time()
    clock = Clock(now=now, newest_issued=now - 86400, skew_s=300)
    assert not clock.unsynced and clock.effective_now == now
    with pytest.raises(UpdateRejected, match=r"issued \d+ s in the future"):
        check_times(now + 86400, now + 2 * 86400, clock)
    check_times(now + 200, now + 3600, clock)  # within the allowed skew
    check_times(now - 3600, now - 200, clock)  # expired, but within the skew
    with pytest.raises(UpdateRejected, match="expired"):
        check_times(now - 3600, now - 400, clock)
    with pytest.raises(UpdateRejected, match="is not after issued"):
        check_times(now, now, clock)


# -- the model store ------------------------------------------------------------------------------


def install(store: ModelStore, version: str, data: bytes, tmp: Path) -> Path:
    src = tmp / f"src-{version}.onnx"
    src.write_bytes(data)
    record = {
        "update_id": f"u-{version}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "format": "onnx",
    }
    return store.install("digits", version, "onnx", src, record, {**DIGITS_CARD, "version": version})


def test_the_store_activates_remembers_previous_versions_and_prunes_beyond_keep(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep=2)
    model = (DIGITS / "digits_fp32.onnx").read_bytes()
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        install(store, v, model + v.encode(), tmp_path)
        store.activate("digits", v)
    active = store.active("digits")
    assert active is not None and active.version == "1.3.0" and active.previous == ["1.2.0", "1.1.0"]
    assert store.versions("digits") == ["1.1.0", "1.2.0", "1.3.0"]  # 1.0.0 pruned, keep=2 kept
    assert store.models() == ["digits"]
    assert store.verified_file("digits", "1.2.0").read_bytes() == model + b"1.2.0"
    # Going back to an older version keeps the newer one as previous.
    store.activate("digits", "1.1.0")
    active = store.active("digits")
    assert active is not None and active.previous == ["1.3.0", "1.2.0"]
    with pytest.raises(UpdateRejected, match="in use"):
        install(store, "1.1.0", b"other bytes", tmp_path)
    assert store.model_file("digits", "1.1.0").read_bytes() == model + b"1.1.0"  # not replaced


def test_the_store_detects_a_corrupted_model_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    path = install(store, "1.0.0", (DIGITS / "digits_fp32.onnx").read_bytes(), tmp_path)
    store.activate("digits", "1.0.0")
    assert store.verified_file("digits", "1.0.0") == path
    with open(path, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\xff")
    with pytest.raises(ModelLoadError, match="corrupt"):
        store.verified_file("digits", "1.0.0")


def test_a_half_built_version_is_ignored_never_activated_and_cleaned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    install(store, "1.0.0", b"model one", tmp_path)
    store.activate("digits", "1.0.0")
    # A crash in the middle of install(): the folder beside versions/ was never renamed into place.
    crashed = tmp_path / "models" / "digits" / "versions" / ".1.1.0.deadbeef.building"
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"half a mod")
    assert store.versions("digits") == ["1.0.0"] and not store.installed("digits", "1.1.0")
    with pytest.raises(ModelLoadError, match="not installed"):
        store.activate("digits", "1.1.0")
    active = store.active("digits")
    assert active is not None and active.version == "1.0.0"
    install(store, "1.2.0", b"model two", tmp_path)
    store.activate("digits", "1.2.0")
    assert not crashed.exists()
    assert store.versions("digits") == ["1.0.0", "1.2.0"]


def test_an_install_that_fails_leaves_no_version_and_no_building_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(FileNotFoundError):
        store.install("digits", "1.0.0", "onnx", tmp_path / "missing.onnx", {"sha256": "0" * 64}, DIGITS_CARD)
    folder = tmp_path / "models" / "digits" / "versions"
    assert list(folder.iterdir()) == []
    assert store.active("digits") is None and store.models() == []
    with pytest.raises(ModelLoadError, match="not installed"):
        store.set_active("digits", Active(version="1.0.0"))


@pytest.mark.parametrize(
    "name, version", [("..", "1.0.0"), ("digits", "../1.0.0"), ("digits", "1\x00"), ("digits", "/etc")]
)
def test_the_store_refuses_names_that_leave_it(tmp_path: Path, name: str, version: str) -> None:
    with pytest.raises(UpdateRejected, match="would leave the store"):
        ModelStore(tmp_path / "models").version_dir(name, version)


@pytest.mark.parametrize("version", ["..", "."])
def test_the_store_refuses_a_version_of_dots(tmp_path: Path, version: str) -> None:
    with pytest.raises(UpdateRejected, match="would leave the store"):
        ModelStore(tmp_path / "models").version_dir("digits", version)
