"""A stop while the link is still connecting waits for the connection, within the flush timeout.

A short ``edgerun predict --mqtt mqtts://...`` ended before its first CONNACK (the TLS handshake
takes longer than two images), and the stop, which only drained a link already connected, left
its last metrics record in the outbox. Against real Mosquitto brokers (TLS with certificates made
by ``tests/certs.py``), with the real command line in a subprocess and a real paho subscriber.
A slow broker is a loopback TCP peer in front of the broker (the network, not our code): it holds
the broker's first bytes back, or accepts and never answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgerun.sync.link import MqttLink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from tests.certs import Pki, make_pki
from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, free_port

MODEL = DIGITS / "digits_int8.onnx"
IMAGES = [str(SAMPLES / "digit_0.png"), str(SAMPLES / "digit_1.png")]
FLUSH_S = 2.0  # the flush timeout of the stop after a run whose input ended (edgerun.cli.common.run_pipeline)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Broker]:
    """A broker on TLS alone (its certificate for ``localhost``), anonymous, no client certificate."""
    b = Broker(tmp_path_factory.mktemp("tls-broker"))
    root = "user root\n" if os.geteuid() == 0 else ""  # as root, mosquitto would drop to a user that cannot read tmp
    b.conf.write_text(
        f"listener {b.port} 127.0.0.1\n{root}persistence false\nallow_anonymous true\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
    )
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A fleet-side paho client subscribed to one device's metrics."""

    def __init__(self, port: int, device: str, ca: Path | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.got = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{time.monotonic_ns()}")
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"edgerun/{device}/metrics", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("localhost" if ca is not None else "127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "the subscriber did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.records.append(json.loads(msg.payload))
        self.got.set()

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes paho's loop thread, which loop_stop() then joins
        self.client.loop_stop()


class SlowPeer:
    """A loopback listener for one connection: with ``broker_port``, a proxy that holds the broker's
    first bytes (the TLS ServerHello, or the CONNACK) back ``hold_s``; without, a peer that accepts,
    reads and never answers. ``opened`` and ``closed`` are when the connection was accepted and when
    the device hung up."""

    def __init__(self, broker_port: int | None = None, hold_s: float = 0.0) -> None:
        self.broker_port, self.hold_s = broker_port, hold_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.opened = self.closed = 0.0
        self.hung_up = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, name="slow-peer", daemon=True).start()

    def _serve(self) -> None:
        try:
            device, _ = self.listener.accept()
        except OSError:
            return
        self.opened = time.monotonic()
        self._sockets.append(device)
        self.accepted.set()
        if self.broker_port is None:
            self._pipe(device, None)
            return
        upstream = socket.create_connection(("127.0.0.1", self.broker_port), timeout=10)
        self._sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(device, upstream), daemon=True).start()
        try:
            first = upstream.recv(65536)
            time.sleep(self.hold_s)
            device.sendall(first)
        except OSError:
            return
        self._pipe(upstream, device)

    def _pipe(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(65536):
                if dst is not None:
                    dst.sendall(data)
        except OSError:
            pass
        if src is self._sockets[0]:  # the device's side ended
            self.closed = time.monotonic()
            self.hung_up.set()
        if dst is not None:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for s in [self.listener, *self._sockets]:
            s.close()


def predict(url: str, state: Path, device: str, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``edgerun predict`` of two images with ``--mqtt URL`` as a real process (bounded: 120 s)."""
    args = [sys.executable, "-m", "edgerun", "predict", str(MODEL), *IMAGES, "--mqtt", url]
    args += ["--state-dir", str(state), "--device-id", device, "--no-progress"]
    if ca is not None:
        args += ["--mqtt-ca", str(ca)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def queued(state: Path) -> int:
    """Records left in the outbox, as ``edgerun outbox`` reports them."""
    shown = subprocess.run(
        [sys.executable, "-m", "edgerun", "outbox", "--state-dir", str(state), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return int(json.loads(shown.stdout)["records"])


def delivered(done: subprocess.CompletedProcess[str], fleet: Subscriber, device: str, state: Path) -> None:
    """The run says everything was delivered, the fleet got its metrics record, and the outbox is empty."""
    assert done.stdout.splitlines()[-1] == "# MQTT: everything delivered", (done.stdout, done.stderr)
    assert "not delivered" not in done.stderr, done.stderr
    assert fleet.got.wait(10), "the fleet never received the run's metrics record"
    assert [r["device"] for r in fleet.records] == [device]
    assert sum(m["count"] for m in fleet.records[0]["models"].values()) == len(IMAGES)
    assert queued(state) == 0


def kept(done: subprocess.CompletedProcess[str], state: Path) -> None:
    """The run says its one record (the last metrics) stays in the outbox for the next start."""
    outbox = state / "outbox.sqlite"
    line = f"# MQTT: 1 record(s) not delivered, kept in {outbox} for the next start"
    assert done.stdout.splitlines()[-1] == line, (done.stdout, done.stderr)
    assert f"MQTT: 1 record(s) not delivered stay in the outbox {outbox}" in done.stderr
    assert queued(state) == 1


def test_a_short_predict_over_tls_delivers_its_metrics_before_it_exits(
    tmp_path: Path, tls_broker: Broker, pki: Pki
) -> None:
    device = f"tls-{time.monotonic_ns()}"
    fleet = Subscriber(tls_broker.port, device, ca=pki.ca)
    try:
        done = predict(f"mqtts://localhost:{tls_broker.port}", tmp_path / "state", device, ca=pki.ca)
        delivered(done, fleet, device, tmp_path / "state")
    finally:
        fleet.close()


def test_a_short_predict_over_plain_mqtt_still_delivers_its_metrics(tmp_path: Path, broker: Broker) -> None:
    device = f"plain-{time.monotonic_ns()}"
    fleet = Subscriber(broker.port, device)
    try:
        done = predict(broker.url, tmp_path / "state", device)
        delivered(done, fleet, device, tmp_path / "state")
    finally:
        fleet.close()


def test_a_predict_whose_tls_handshake_is_slow_waits_for_it_and_delivers(
    tmp_path: Path, tls_broker: Broker, pki: Pki
) -> None:
    """The broker's ServerHello held back 1 s: the run has ended long before the connection is up."""
    device = f"slow-tls-{time.monotonic_ns()}"
    fleet = Subscriber(tls_broker.port, device, ca=pki.ca)
    peer = SlowPeer(tls_broker.port, hold_s=1.0)
    try:
        done = predict(f"mqtts://localhost:{peer.port}", tmp_path / "state", device, ca=pki.ca)
        delivered(done, fleet, device, tmp_path / "state")
    finally:
        fleet.close()
        peer.close()


def test_a_predict_whose_tls_broker_is_down_ends_at_once_and_keeps_its_records(tmp_path: Path, pki: Pki) -> None:
    port = free_port()  # nothing listens there: the connection is refused
    started = time.monotonic()
    done = predict(f"mqtts://localhost:{port}", tmp_path / "state", f"down-{time.monotonic_ns()}", ca=pki.ca)
    assert time.monotonic() - started < 60
    kept(done, tmp_path / "state")
    assert "delivering" not in done.stderr, done.stderr


def test_a_broker_that_never_sends_its_connack_is_waited_for_the_flush_timeout_only(tmp_path: Path) -> None:
    """A peer that accepts the connection and never answers the CONNECT: the stop gives it the flush
    timeout (2 s after a run whose input ended), not the 30 s of the keepalive, and keeps the record."""
    peer = SlowPeer()
    try:
        done = predict(f"mqtt://127.0.0.1:{peer.port}", tmp_path / "state", f"mute-{time.monotonic_ns()}")
        assert peer.hung_up.wait(10), "the device never hung up"
        held = peer.closed - peer.opened
        assert FLUSH_S - 0.5 <= held < 15, f"the device held the connection for {held:.2f} s"
        kept(done, tmp_path / "state")
    finally:
        peer.close()


def test_a_stop_during_a_tls_handshake_nobody_answers_returns_within_the_flush_timeout(tmp_path: Path) -> None:
    """paho's blocking connect waits 5 s for the handshake (its connect timeout); the stop does not."""
    peer = SlowPeer()
    ca = make_pki(tmp_path / "pki").ca
    settings = MqttSettings(host="localhost", port=peer.port, tls=True, ca_file=str(ca), client_id="mute-tls")
    link = MqttLink(settings, Topics("edgerun", "mute-tls"), None)
    link.start()
    try:
        assert peer.accepted.wait(10), "the link never dialled"
        started = time.monotonic()
        link.stop(flush_timeout_s=0.2)
        took = time.monotonic() - started
        assert took < 3, f"stop() took {took:.2f} s"
        assert not link.connected
    finally:
        peer.close()  # the handshake left behind fails at once
