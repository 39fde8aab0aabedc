"""The fleet operator's side of OTA: building, signing and publishing updates and commands.

Everything here produces exactly what PROTOCOL.md describes, so a device cannot
tell an update published by ``edgerun ota publish`` from one made with
``openssl`` and ``mosquitto_pub``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.errors import ConfigError, EdgerunError
from edgerun.ota.envelope import seal
from edgerun.sync.diagnose import connack_reason, describe_connect_error
from edgerun.sync.settings import MqttSettings

__all__ = ["Fleet", "build_command", "build_manifest", "validation_samples"]

CHUNK_SIZE = 256 * 1024


def _npy_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def validation_samples(model_file: Path, card: dict[str, Any], inputs: Iterable[str]) -> list[dict[str, Any]]:
    """Run the model here on ``inputs`` (images or .npy) and record input/output pairs for the device to check."""
    import edgerun
    from edgerun.card import parse_card

    samples = []
    with edgerun.load(model_file, card=parse_card(card, "card"), verify=False) as model:
        for item in inputs:
            tensor = model.prepare(item, name=item)
            output = model.run(tensor)[0]
            spec = model.outputs[0]
            atol = 1e-3 + (2 * spec.quant.scale if spec.quant else 0.0)
            samples.append({"input": _npy_b64(tensor), "output": _npy_b64(output), "atol": atol})
    return samples


def build_manifest(
    model_file: Path,
    *,
    model: str,
    version: str,
    fmt: str,
    card: dict[str, Any],
    devices: list[str],
    groups: list[str],
    prefix: str,
    url: str | None = None,
    samples: list[dict[str, Any]] | None = None,
    probation_s: float | None = None,
    ab_fraction: float | None = None,
    expires_in_s: float = 7 * 86400,
    allow_downgrade: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, Any]:
    """The manifest document for ``model_file`` (not yet signed)."""
    data = model_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    now = int(time.time())
    source: dict[str, Any]
    if url is not None:
        source = {"url": url}
    else:
        source = {
            "mqtt": {"topic": f"{prefix}/blobs/{sha}", "chunk_size": chunk_size, "chunks": -(-len(data) // chunk_size)}
        }
    manifest: dict[str, Any] = {
        "schema": 1,
        "kind": "model-update",
        "update_id": f"{model}-{version}-{secrets.token_hex(4)}",
        "model": model,
        "version": version,
        "format": fmt,
        "sha256": sha,
        "size": len(data),
        "source": source,
        "issued": now,
        "expires": now + int(expires_in_s),
        "targets": {"devices": devices, "groups": groups},
        "card": {**card, "name": model, "version": version},
    }
    if samples:
        manifest["validation"] = {"samples": samples}
    if probation_s is not None or ab_fraction is not None:
        rollout: dict[str, Any] = {}
        if probation_s is not None:
            rollout["probation_s"] = probation_s
        if ab_fraction is not None:
            rollout["ab_fraction"] = ab_fraction
        manifest["rollout"] = rollout
    if allow_downgrade:
        manifest["allow_downgrade"] = True
    return manifest


def build_command(
    command: str,
    *,
    model: str,
    devices: list[str],
    groups: list[str],
    version: str | None = None,
    fraction: float | None = None,
    expires_in_s: float = 3600,
) -> dict[str, Any]:
    """A command document (not yet signed)."""
    now = int(time.time())
    doc: dict[str, Any] = {
        "schema": 1,
        "kind": "command",
        "command_id": f"{command}-{secrets.token_hex(6)}",
        "issued": now,
        "expires": now + int(expires_in_s),
        "targets": {"devices": devices, "groups": groups},
        "command": command,
        "model": model,
    }
    if version is not None:
        doc["version"] = version
    if fraction is not None:
        doc["fraction"] = fraction
    return doc


@dataclass
class DeviceView:
    """What the operator knows of one device from its retained records.

    ``groups``: those its last ``online`` status record names (docs/protocol-notes.md); None where the
    record names none (an older edgerun, or one not seen online yet), which says nothing of its groups.
    ``ota`` is its latest ``P/ID/ota/status`` record; ``answers`` the latest of each update or command
    seen since the session began, by its id: a record of another update that follows at once (one queued
    behind) does not hide how this one ended from a ``--wait``.
    """

    online: bool | None = None
    models: dict[str, Any] = field(default_factory=dict)
    ota: dict[str, Any] = field(default_factory=dict)
    groups: list[str] | None = None
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _groups(value: Any) -> list[str] | None:
    """The ``groups`` of a device's status record, where it is a list of names; else None (unknown).

    A record is anyone's JSON: another value says nothing, so the device is treated as one whose
    record names no groups, never as a member of none.
    """
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return list(value)
    return None


class Fleet:
    """An operator's MQTT session: publishing, and watching ``P/+/status`` and ``P/+/ota/status``."""

    def __init__(self, settings: MqttSettings, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.prefix = prefix
        self.devices: dict[str, DeviceView] = {}
        self.retained: dict[str, bytes] = {}
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgerun-operator-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self._client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file, keyfile=settings.key_file)
        self._client.max_inflight_messages_set(100)
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._refused: dict[int, Any] = {}  # message id -> the broker's failure reason code (MQTT v5 PUBACK)
        connected = threading.Event()
        refused: list[Any] = []

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                refused.append(rc)
            connected.set()

        self._client.on_connect = on_connect
        try:
            self._client.connect(settings.host, settings.port, 30)
        except Exception as exc:
            raise ConfigError(describe_connect_error(exc, settings)) from exc
        self._client.loop_start()
        if not connected.wait(10) or refused:
            self.close()
            raise ConfigError(connack_reason(refused[0]) if refused else "no answer from the broker")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        with self._lock:
            if msg.retain:
                self.retained[msg.topic] = msg.payload
            if len(parts) >= 3 and parts[-1] == "status":
                try:
                    data = json.loads(msg.payload) if msg.payload else {}
                except ValueError:
                    return
                if not isinstance(data, dict):
                    return
                if len(parts) >= 4 and parts[-2] == "ota":
                    view = self.devices.setdefault(parts[-3], DeviceView())
                    view.ota = data
                    ident = data.get("update_id", data.get("command_id"))
                    if isinstance(ident, str):
                        view.answers[ident] = data
                else:
                    view = self.devices.setdefault(parts[-2], DeviceView())
                    view.online = data.get("state") == "online"
                    models = data.get("models")  # a device's record is anyone's JSON: a list here broke every view
                    view.models = models if isinstance(models, dict) and models else view.models
                    if view.online:  # the offline record (the last will) names no groups: the last known stay
                        view.groups = _groups(data.get("groups"))
        self.changed.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # Called before paho marks the message published, so _sent sees the refusal.
        if reason_code.is_failure:
            with self._lock:
                self._refused[mid] = reason_code

    def _sent(self, info: Any, topic: str, timeout_s: float) -> None:
        """Wait for one QoS 1 publish: ``EdgerunError`` unless the broker acknowledged *and accepted* it.

        An MQTT v5 broker acknowledges a publish it refuses (an ACL, a quota) with a failure reason
        code in its PUBACK; paho counts that as published, so the reason code is checked here.
        """
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:  # not sent at all: disconnected, queue full
            raise EdgerunError(f"cannot publish to {topic}: {exc}") from exc
        if not info.is_published():
            raise EdgerunError(f"the broker did not acknowledge a publish to {topic} in {timeout_s:.0f} s")
        with self._lock:
            refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise EdgerunError(f"the broker refused the publish to {topic}: {refused} [code:{refused.value}]")

    def watch(self, *topics: str) -> None:
        """Subscribe (QoS 1); retained records arrive at once."""
        for topic in topics:
            self._client.subscribe(topic, qos=1)

    def watch_devices(self) -> None:
        """Follow every device's status and OTA status."""
        self.watch(f"{self.prefix}/+/status", f"{self.prefix}/+/ota/status")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout_s: float = 30.0) -> None:
        """QoS 1, waiting for the broker's acknowledgement."""
        self._sent(self._client.publish(topic, payload, qos=1, retain=retain), topic, timeout_s)

    def publish_many(self, items: list[tuple[str, bytes]], *, retain: bool, progress: Callable[[int], None]) -> None:
        """Pipelined QoS 1 publishes (up to 100 in flight), then wait for every acknowledgement."""
        infos = []
        for topic, payload in items:
            infos.append((topic, self._client.publish(topic, payload, qos=1, retain=retain)))
            progress(1)
        for topic, info in infos:
            self._sent(info, topic, 60)

    def sign_and_publish(self, topic: str, document: dict[str, Any], key: Any, *, retain: bool) -> None:
        """Seal ``document`` with ``key`` and publish it."""
        self.publish(topic, seal(document, key), retain=retain)

    def snapshot(self) -> dict[str, DeviceView]:
        """A copy of what is known of every device."""
        with self._lock:
            return {
                k: DeviceView(
                    v.online, dict(v.models), dict(v.ota), None if v.groups is None else list(v.groups), dict(v.answers)
                )
                for k, v in self.devices.items()
            }

    def close(self) -> None:
        """Disconnect."""
        self._client.loop_stop()
        self._client.disconnect()
