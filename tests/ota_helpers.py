"""Helpers for the OTA tests: keys, model copies, device processes and a status watcher."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import DIGITS, ROOT


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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

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
