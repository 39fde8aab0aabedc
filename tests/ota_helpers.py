"""Helpers for the OTA tests: keys, model copies, device processes, an in-process agent and a status watcher."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import edgerun
from edgerun.card import ModelCard
from edgerun.model import Model
from edgerun.ota.agent import OtaAgent, OtaSettings
from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_manifest
from edgerun.ota.serving import serve_from_store
from edgerun.ota.slot import ModelSlot
from edgerun.ota.store import ModelStore
from edgerun.sync.link import MqttLink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, ROOT, stop_process


def make_key(folder: Path, name: str = "op") -> tuple[Ed25519PrivateKey, Path, Path]:
    """An Ed25519 pair written as ``name.pem`` / ``name.pub.pem``."""
    key = Ed25519PrivateKey.generate()
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, private, public


def model_with_card(folder: Path, source: str, name: str) -> Path:
    """A copy of a digits model and its card under a new file name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy(DIGITS / source, target)
    shutil.copy(DIGITS / f"{source}.card.yaml", folder / f"{name}.card.yaml")
    return target


class StatusWatcher:
    """Follows ``edgerun/+/ota/status`` and ``edgerun/+/status`` like an operator would."""

    def __init__(self, port: int) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch{time.monotonic_ns()}")
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("edgerun/+/ota/status", 1), ("edgerun/+/status", 1)]
        )
        self.client.on_subscribe = lambda c, u, mid, rc, p: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self.records.append((msg.topic, data))

    def ota(self, device: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for t, d in self.records if t == f"edgerun/{device}/ota/status"]

    def status(self, device: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for t, d in self.records if t == f"edgerun/{device}/status"]

    def wait_state(self, device: str, ident: str | None, states: set[str], timeout: float = 60) -> dict[str, Any]:
        """The first OTA record of ``ident`` (any id when None) whose state is in ``states``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.ota(device):
                rid = r.get("update_id") or r.get("command_id")
                if (ident is None or rid == ident) and r.get("state") in states:
                    return r
            time.sleep(0.05)
        raise AssertionError(f"{device}: no {states} for {ident} in {timeout} s; saw {self.ota(device)[-5:]}")

    def wait_online_version(self, device: str, version: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status(device)
            if (
                s
                and s[-1].get("state") == "online"
                and s[-1].get("models", {}).get("digits", {}).get("version") == version
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"{device}: not online with digits {version}; saw {self.status(device)[-3:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Device:
    """``edgerun run`` as a device process: serves a model from an MQTT input topic, takes OTA updates."""

    def __init__(
        self,
        port: int,
        state: Path,
        model: Path,
        public_key: Path,
        device: str = "dev1",
        groups: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        preexec: Any = None,
    ) -> None:
        self.device, self.port = device, port
        self.out = state / f"{device}.out.jsonl"
        self.err = state / f"{device}.err"
        state.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "edgerun",
            "-v",
            "run",
            str(model),
            "--source",
            f"mqtt://127.0.0.1:{port}/edgerun/{device}/input",
            "--sink",
            str(self.out),
            "--mqtt",
            f"mqtt://127.0.0.1:{port}",
            "--device-id",
            device,
            "--ota-key",
            str(public_key),
            "--state-dir",
            str(state / device),
            *[a for g in groups for a in ("--group", g)],
            *extra,
        ]
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec)

    def stop(self) -> int:
        return stop_process(self.proc, 20)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        return self.err.read_text(errors="replace")


def publish(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """One QoS 1 publish, acknowledged."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def load_digits(path: Path, card: ModelCard | None) -> Model:
    """The loader ``edgerun run`` gives the agent, with default delegate options."""
    return edgerun.load(path, card=card)


class Agent:
    """An ``OtaAgent`` in this process, built as ``edgerun run --ota-key`` builds it: a real link,
    store, slot, metrics and models, so a test can reach its store and slot between two steps.

    ``load`` is the agent's model loader (a test may pass one that waits for a moment it chooses);
    ``settings`` override ``OtaSettings`` fields. Stop it with ``stop()`` (like a process that dies:
    probations in progress stay in ``active.json``).
    """

    def __init__(
        self,
        port: int,
        state: Path,
        model: Path,
        public_key: Path,
        device: str,
        load: Any = load_digits,
        **settings: Any,
    ) -> None:
        self.state, self.device = state, device
        self.store = ModelStore(state / "models", settings.get("keep", 2))
        self.slot = ModelSlot(serve_from_store(model, self.store, load_digits))
        self.metrics = Metrics()
        self.link = MqttLink(
            MqttSettings.from_url(f"mqtt://127.0.0.1:{port}", client_id=f"{device}-{time.monotonic_ns()}"),
            Topics("edgerun", device),
            None,
        )
        self.link.start()
        assert self.link.wait_connected(10), "no connection to the test broker"
        self.agent = OtaAgent(
            OtaSettings(trusted_keys=(str(public_key),), **settings),
            link=self.link,
            topics=Topics("edgerun", device),
            groups=(),
            store=self.store,
            slots={"digits": self.slot},
            metrics=self.metrics,
            state_dir=state,
            load_model=load,
        )
        try:
            self.agent.start()
        except BaseException:
            self.link.stop()
            raise

    def journal(self, ident: str) -> dict[str, Any]:
        """The journal entry of an update or command."""
        return dict(json.loads((self.state / "ota" / "journal" / f"{ident}.json").read_text()))

    def stop(self) -> None:
        self.agent.stop()
        for watch in list(self.agent._probations.values()):
            watch.join(timeout=10)
        self.link.stop()


def push_update(
    port: int,
    key: Any,
    model: Path,
    version: str,
    device: str,
    *,
    chunks: range | None = None,
    chunk_size: int = 256 * 1024,
    **options: Any,
) -> dict[str, Any]:
    """Publish the chunks (all, or ``chunks``) and then the signed manifest of an update of digits."""
    card = _card(model)
    manifest = build_manifest(
        model,
        model="digits",
        version=version,
        fmt="onnx",
        card=card,
        devices=[device],
        groups=[],
        prefix="edgerun",
        chunk_size=chunk_size,
        **options,
    )
    data, blob = model.read_bytes(), manifest["source"]["mqtt"]
    for i in range(blob["chunks"]) if chunks is None else chunks:
        publish(port, f"{blob['topic']}/{i}", data[i * chunk_size : (i + 1) * chunk_size], retain=True)
    publish(port, f"edgerun/{device}/ota/manifest", seal(manifest, key))
    return manifest


def unique_model(folder: Path, source: str, name: str = "digits.onnx") -> Path:
    """``model_with_card`` of an ONNX model with a random doc string: the same model under a SHA-256
    no other test uses, so its retained chunks cannot collide with anyone else's."""
    import secrets

    import onnx

    target = model_with_card(folder, source, name)
    model = onnx.load(str(target))
    model.doc_string = f"edgerun OTA test {secrets.token_hex(8)}"
    onnx.save(model, str(target))
    return target


def _card(model: Path) -> dict[str, Any]:
    from edgerun.card import load_card

    card = load_card(model.with_name(model.name + ".card.yaml")).to_dict()
    card.pop("inferred", None)
    return card
