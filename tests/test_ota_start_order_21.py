"""OTA at a start: what the broker kept for a device while it was down reaches its OTA agent.

The link's session is persistent, so the broker delivers the QoS 1 messages it queued for the
device right after CONNACK; a command is not retained, so one that arrives before the agent has
registered its subscriptions is lost for good. ``edgerun run`` and the daemon start the OTA agent
before the link, and a connection subscribes before it says ``online``.

Real Mosquitto, real ``edgerun run`` and ``edgerun daemon`` processes (killed with SIGKILL during
a probation, so that the next start rolls back first), real digits models and Ed25519 keys.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_command
from tests.conftest import Broker, start_daemon, stop_process
from tests.ota_helpers import Device, StatusWatcher, make_key, model_with_card, publish, push_update, unique_model

pytestmark = pytest.mark.slow

ENDED = {"active", "rejected", "failed", "rolled_back"}

DAEMON_CONFIG = """\
device:
  id: {device}
models:
  digits:
    path: {model}
mqtt:
  url: mqtt://127.0.0.1:{port}
ota:
  trusted_keys: [{key}]
api:
  enabled: false
state_dir: {state}
"""


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    key, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    return {"key": key, "private": private, "public": public, "v1": v1}


class Daemon:
    """``edgerun daemon`` as a device process, with the ``kill`` and ``stop`` of ``Device``."""

    def __init__(self, config: Path, log: Path) -> None:
        with open(log, "ab") as err:
            self.proc = start_daemon(config, stderr=err)

    def stop(self) -> int:
        return stop_process(self.proc, 20)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def rolled_back_by_a_command_sent_while_it_was_down(
    broker: Broker, keys: dict[str, Any], tmp_path: Path, device: str, start: Callable[[], Any]
) -> None:
    """Update ``device`` to 1.1.0, then 1.2.0 on a long probation; kill it; send a rollback command
    while it is down; start it again. The start rolls 1.2.0 back to 1.1.0 (loading 1.1.0 first),
    and then the command, delivered by the broker from the device's session, rolls back to 1.0.0."""
    watcher = StatusWatcher(broker.port)
    running = start()
    try:
        watcher.wait_online_version(device, "1.0.0", timeout=60)
        for version, probation in (("1.1.0", 0), ("1.2.0", 600)):
            model = unique_model(tmp_path / version, "digits_int8.onnx")
            manifest = push_update(broker.port, keys["key"], model, version, device, probation_s=probation)
            record = watcher.wait_state(device, manifest["update_id"], ENDED | {"probation"})
            assert record["state"] == ("probation" if probation else "active"), record
        running.kill()  # SIGKILL during the probation of 1.2.0

        sent = build_command("rollback", model="digits", devices=[device], groups=[])
        publish(broker.port, f"edgerun/{device}/cmd", seal(sent, keys["key"]))  # QoS 1, not retained
        running = start()
        restart = watcher.wait_state(device, manifest["update_id"], {"rolled_back", "failed"})
        assert restart["reason"] == "the device restarted during the probation of 1.2.0; serving 1.1.0 again"
        done = watcher.wait_state(device, sent["command_id"], ENDED)
        assert done["state"] == "rolled_back" and done["reason"] == "rollback command; serving 1.0.0 again", done
        watcher.wait_online_version(device, "1.0.0")
        assert running.stop() == 0
    finally:
        running.stop()
        watcher.close()


def test_a_command_sent_while_a_device_was_down_is_taken_when_edgerun_run_starts_again(
    broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    device = f"order21-run-{secrets.token_hex(3)}"
    state = tmp_path / "state"

    def start() -> Device:
        return Device(broker.port, state, keys["v1"], keys["public"], device=device)

    rolled_back_by_a_command_sent_while_it_was_down(broker, keys, tmp_path, device, start)


def test_a_command_sent_while_a_daemon_was_down_is_taken_when_it_starts_again(
    broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    device = f"order21-daemon-{secrets.token_hex(3)}"
    config = tmp_path / "edgerun.yaml"
    values = {"device": device, "model": keys["v1"], "port": broker.port, "key": keys["public"]}
    config.write_text(DAEMON_CONFIG.format(**values, state=tmp_path / "state"))

    def start() -> Daemon:
        return Daemon(config, tmp_path / "daemon.log")

    rolled_back_by_a_command_sent_while_it_was_down(broker, keys, tmp_path, device, start)


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private broker that logs every packet it receives, in the order it handles them."""
    b = Broker(tmp_path / "broker", extra_conf="log_type all\nlog_dest stderr\n")
    b.start()
    yield b
    b.stop()


def packets_of(log: str, client: str) -> list[list[tuple[str, str]]]:
    """Per connection of ``client``, in order: ("SUBSCRIBE", topic) for each topic it subscribed to
    and ("PUBLISH", topic) for each message it published, as the broker logged them."""
    connections: list[list[tuple[str, str]]] = []
    subscribing = False
    for line in log.splitlines():
        text = line.split(": ", 1)[1] if ": " in line else line
        if text.startswith("New client connected from ") and text.split(" as ")[-1].startswith(f"{client} "):
            connections.append([])
            subscribing = False
        elif not connections:
            continue
        elif text == f"Received SUBSCRIBE from {client}":
            subscribing = True
        elif subscribing and text.startswith("\t"):
            connections[-1].append(("SUBSCRIBE", text.strip().rsplit(" (QoS", 1)[0]))
        elif match := re.match(rf"Received PUBLISH from {re.escape(client)} \(.*?, '([^']*)'", text):
            connections[-1].append(("PUBLISH", match.group(1)))
            subscribing = False
        else:
            subscribing = False
    return connections


def test_a_device_subscribes_to_its_commands_before_it_says_online_at_every_connection(
    logging_broker: Broker, keys: dict[str, Any], tmp_path: Path
) -> None:
    """An operator who sends a command the moment the device says ``online`` reaches it: the broker
    handles a client's packets in order, and the device's SUBSCRIBEs precede its ``online``."""
    device = f"order21-sub-{secrets.token_hex(3)}"
    state = tmp_path / "state"
    watcher = StatusWatcher(logging_broker.port)
    try:
        for _ in range(2):  # a first connection (no session), then a restart (the session kept)
            running = Device(logging_broker.port, state, keys["v1"], keys["public"], device=device)
            try:
                watcher.wait_online_version(device, "1.0.0", timeout=60)
                assert running.stop() == 0
            finally:
                running.stop()
    finally:
        watcher.close()
    log = (logging_broker.workdir / "log").read_text(errors="replace")
    connections = packets_of(log, f"edgerun-{device}")
    assert len(connections) == 2, connections
    wanted = {f"edgerun/{device}/cmd", f"edgerun/{device}/ota/manifest"}
    for packets in connections:
        online = packets.index(("PUBLISH", f"edgerun/{device}/status"))
        assert wanted <= {topic for kind, topic in packets[:online] if kind == "SUBSCRIBE"}, packets
