"""Audit of the operator's side of OTA: a broker that refuses publishes, a broker that goes away,
key files written with the wrong mode, and malformed retained manifests met by ``ota clear``."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgerun.errors import EdgerunError
from edgerun.ota.operator import Fleet
from edgerun.sync.settings import MqttSettings
from tests.conftest import DIGITS, Broker, run_cli

MODEL = str(DIGITS / "digits_fp32.onnx")


@pytest.fixture
def read_only_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker whose ACL lets anonymous clients read every topic and write none: MQTT v5 clients
    get their publishes acknowledged with the reason code "Not authorized"."""
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")
    b = Broker(tmp_path / "broker", extra_conf=f"acl_file {acl}\n")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def key_pair(tmp_path: Path) -> Path:
    done = run_cli("keys", "generate", str(tmp_path / "keys" / "op"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "keys" / "op.pem"


def retained(port: int, pattern: str = "#", wait_s: float = 0.5) -> dict[str, bytes]:
    """Every retained message under ``pattern`` on the broker."""
    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(pattern, qos=1)
    time.sleep(wait_s)
    client.loop_stop()
    client.disconnect()
    return got


def test_a_publish_the_broker_refuses_is_reported_as_refused_not_as_published(
    read_only_broker: Broker, key_pair: Path
) -> None:
    done = run_cli(
        "ota", "publish", MODEL, "--model", "digits", "--version", "1.1.0", "--device", "dev1",
        "--key", str(key_pair), "--mqtt", read_only_broker.url,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "published to" not in done.stdout
    assert "Traceback" not in done.stderr
    assert "refused the publish to edgerun/dev1/ota/manifest" in done.stderr
    assert "Not authorized" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_chunks_the_broker_refuses_are_reported_as_refused(read_only_broker: Broker, key_pair: Path) -> None:
    done = run_cli(
        "ota", "publish", MODEL, "--model", "digits", "--version", "1.1.0", "--device", "dev1",
        "--key", str(key_pair), "--mqtt", read_only_broker.url, "--chunks-first",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert "refused the publish to edgerun/blobs/" in done.stderr


def test_a_rollback_the_broker_refuses_is_not_reported_as_sent(read_only_broker: Broker, key_pair: Path) -> None:
    done = run_cli(
        "ota", "rollback", "--model", "digits", "--device", "dev1", "--key", str(key_pair),
        "--mqtt", read_only_broker.url,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "sent to" not in done.stdout
    assert "refused the publish to edgerun/dev1/cmd" in done.stderr and "Traceback" not in done.stderr


def test_a_publish_after_the_broker_went_away_raises_an_edgerun_error(own_broker: Broker) -> None:
    fleet = Fleet(MqttSettings.from_url(own_broker.url), "edgerun")
    try:
        own_broker.stop()
        deadline = time.monotonic() + 10
        while fleet._client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(EdgerunError, match="cannot publish to edgerun/dev1/cmd"):
            fleet.publish("edgerun/dev1/cmd", b"x", timeout_s=2)
    finally:
        fleet.close()


def test_a_publish_the_broker_accepts_still_succeeds(own_broker: Broker, key_pair: Path) -> None:
    done = run_cli(
        "ota", "publish", MODEL, "--model", "digits", "--version", "1.1.0", "--device", "dev1",
        "--key", str(key_pair), "--mqtt", own_broker.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "edgerun/dev1/ota/manifest" in retained(own_broker.port)


def test_keys_generate_with_force_leaves_the_private_key_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = tmp_path / "op.pem"
    old.write_text("an old key, readable by all\n")
    old.chmod(0o644)
    done = run_cli("keys", "generate", str(tmp_path / "op"), "--force")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o600
    assert b"PRIVATE KEY" in old.read_bytes()


def envelope_of(document: object) -> bytes:
    """An (unsigned) envelope around ``document``: ``clear`` reads manifests without keys."""
    payload = base64.b64encode(json.dumps(document).encode()).decode()
    return json.dumps({"payload": payload, "sig": "", "key": ""}).encode()


def put_retained(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


@pytest.mark.parametrize(
    "document",
    [
        [1, 2],
        {"update_id": "u1", "source": {"mqtt": "not an object"}},
        {"update_id": "u2", "targets": ["dev1"], "source": {"mqtt": {"topic": "x", "chunks": "lots"}}},
    ],
    ids=["payload-not-an-object", "source-mqtt-not-an-object", "chunks-not-a-number"],
)
def test_clear_meets_a_malformed_retained_manifest_without_a_traceback(own_broker: Broker, document: object) -> None:
    put_retained(own_broker.port, "edgerun/dev1/ota/manifest", envelope_of(document))
    done = run_cli("ota", "clear", "--force", "--wait", "0.3", "--mqtt", own_broker.url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_clear_never_empties_topics_an_unverified_manifest_names_outside_the_blob_topics(own_broker: Broker) -> None:
    sha = "ab" * 32
    put_retained(own_broker.port, "edgerun/dev2/config/0", b"keep me")
    document = {
        "update_id": "u3",
        "sha256": sha,
        "targets": {"devices": ["dev1"]},
        "source": {"mqtt": {"topic": "edgerun/dev2/config", "chunk_size": 1024, "chunks": 1}},
    }
    put_retained(own_broker.port, "edgerun/dev1/ota/manifest", envelope_of(document))
    done = run_cli("ota", "clear", "--force", "--wait", "0.3", "--mqtt", own_broker.url)
    assert done.returncode == 0, done.stderr
    left = retained(own_broker.port)
    assert left.get("edgerun/dev2/config/0") == b"keep me"
    assert "edgerun/dev1/ota/manifest" not in left


def test_clear_still_removes_the_chunks_of_a_well_formed_manifest(own_broker: Broker, key_pair: Path) -> None:
    done = run_cli(
        "ota", "publish", MODEL, "--model", "digits", "--version", "1.1.0", "--device", "dev1",
        "--key", str(key_pair), "--mqtt", own_broker.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert any("/blobs/" in t for t in retained(own_broker.port))
    done = run_cli("ota", "clear", "--force", "--wait", "0.3", "--mqtt", own_broker.url)
    assert done.returncode == 0, done.stderr
    assert "and its 1 chunk(s)" in done.stdout
    assert retained(own_broker.port) == {}
