"""MqttLink.stop() leaves the retained status ``offline``, whatever the link was doing when it was called.

Against a real Mosquitto. The race with a CONNACK on its way is made by a loopback TCP proxy
(the network, not our code): it holds the broker's first bytes (the CONNACK) for a moment, so the
link thread waits for them in ``select``, and calls ``stop()`` from the thread that has just
written them, so ``stop()`` runs while the link thread reads and handles that CONNACK.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest

from edgerun.sync.link import MqttLink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from tests.conftest import Broker

CYCLES = 30


class StatusWatcher:
    """A fleet-side subscriber to every device's status; the last record seen is the retained one."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, Any] = {}
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch{time.monotonic_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edgerun/+/status", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self._last[msg.topic] = json.loads(msg.payload)["state"]

    def last(self, topic: str) -> str | None:
        with self._lock:
            return self._last.get(topic)

    def settles_offline(self, topic: str, timeout: float) -> bool:
        """Whether the last status on ``topic`` is ``offline`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last(topic) == "offline":
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_state(port: int, topic: str) -> str | None:
    """The ``state`` of the status record the broker retains on ``topic`` (what a late subscriber sees).

    A probe published after subscribing arrives after any retained record, so its arrival says
    there is none when nothing came before it.
    """
    probe = f"{topic}/probe"
    got: list[str] = []
    came = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == probe:
            came.set()
        elif msg.retain:
            got.append(json.loads(msg.payload)["state"])

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"late{time.monotonic_ns()}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1), (probe, 1)])
    client.on_subscribe = lambda c, u, mid, rc, p: c.publish(probe, b"", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        assert came.wait(10), "the probe did not come back"
    finally:
        client.disconnect()  # first: it wakes paho's loop thread, which loop_stop() then joins
        client.loop_stop()
    return got[-1] if got else None


def final_status(watcher: StatusWatcher, port: int, topic: str) -> str | None:
    """The retained status once it settled: ``offline`` seen live, then, a moment later, still retained."""
    if not watcher.settles_offline(topic, 5):
        return watcher.last(topic)
    time.sleep(0.2)  # what the device wrote before stop() returned has reached the broker
    return retained_state(port, topic)


class ConnackProxy:
    """A loopback proxy for one MQTT connection that calls ``on_connack()`` right after passing on
    the broker's first bytes (its CONNACK), held back ``hold_s`` first. Later bytes go on flowing,
    from another thread, while ``on_connack()`` runs."""

    def __init__(self, broker_port: int, hold_s: float = 0.03) -> None:
        self.broker_port = broker_port
        self.on_connack: Callable[[], None] = lambda: None
        self.hold_s = hold_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port: int = self.listener.getsockname()[1]
        self.done = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, name="proxy", daemon=True).start()

    def _serve(self) -> None:
        try:
            device, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.broker_port), timeout=10)
        except OSError:
            self.done.set()
            return
        self._sockets += [device, upstream]
        threading.Thread(target=self._pipe, args=(device, upstream), daemon=True).start()
        try:
            first = upstream.recv(65536)
        except OSError:
            first = b""
        passed = threading.Event()
        threading.Thread(target=self._pipe, args=(upstream, device, passed), daemon=True).start()
        time.sleep(self.hold_s)  # the link thread now waits for the CONNACK in select
        with contextlib.suppress(OSError):
            device.sendall(first)
        passed.set()
        try:
            self.on_connack()  # at once, from the thread that wrote the CONNACK
        finally:
            self.done.set()

    def _pipe(self, src: socket.socket, dst: socket.socket, after: threading.Event | None = None) -> None:
        if after is not None:
            after.wait(10)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for s in [self.listener, *self._sockets]:
            s.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_stop_while_the_connack_is_on_its_way_leaves_the_device_offline(
    broker: Broker, protocol: Literal["5", "3.1.1"]
) -> None:
    watcher = StatusWatcher(broker.port)
    outcomes: list[str | None] = []
    try:
        for n in range(CYCLES):
            device = f"connack-stop-{protocol.replace('.', '')}-{n}-{time.monotonic_ns()}"
            topics = Topics("edgerun", device)
            proxy = ConnackProxy(broker.port)
            settings = MqttSettings(
                host="127.0.0.1", port=proxy.port, protocol=protocol, client_id=device, keepalive_s=5
            )
            link = MqttLink(settings, topics, None)
            proxy.on_connack = link.stop  # SIGTERM, or the end of `edgerun run`, as the link connects
            link.start()
            try:
                assert proxy.done.wait(20), "the link never connected through the proxy"
            finally:
                link.stop()  # a no-op when the proxy's call stopped it
                proxy.close()
            outcomes.append(final_status(watcher, broker.port, topics.status))
            if outcomes[-1] != "offline":
                break
    finally:
        watcher.close()
    assert outcomes == ["offline"] * CYCLES, f"retained status after stop(), per cycle: {outcomes}"


def test_status_changes_during_stop_never_leave_the_device_online(broker: Broker) -> None:
    watcher = StatusWatcher(broker.port)
    outcomes: list[str | None] = []
    try:
        for n in range(10):
            device = f"busy-stop-{n}-{time.monotonic_ns()}"
            topics = Topics("edgerun", device)
            settings = MqttSettings(host="127.0.0.1", port=broker.port, client_id=device, keepalive_s=5)
            link = MqttLink(settings, topics, None)
            link.start()
            stopped = threading.Event()

            def churn(link: MqttLink = link, stopped: threading.Event = stopped) -> None:
                i = 0
                while not stopped.is_set():  # a probation ending, a model swapped: the status changes
                    link.set_status(models={"m": {"version": f"1.0.{i}"}})
                    i += 1
                    time.sleep(0.0005)

            churner = threading.Thread(target=churn, daemon=True)
            try:
                assert link.wait_connected(10)
                churner.start()
                time.sleep(0.05)
                link.stop()
            finally:
                stopped.set()
                churner.join(5)
                link.stop()
            outcomes.append(final_status(watcher, broker.port, topics.status))
            if outcomes[-1] != "offline":
                break
    finally:
        watcher.close()
    assert outcomes == ["offline"] * 10, f"retained status after stop(), per cycle: {outcomes}"


def test_an_offline_status_the_broker_never_acknowledges_leaves_the_device_offline_through_the_will(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        assert broker.proc is not None
        watcher = StatusWatcher(broker.port)
        topics = Topics("edgerun", "unacked-dev")
        # one message in flight at most: while the broker is frozen, the offline status waits unsent in paho
        settings = MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=60, max_inflight=1)
        link = MqttLink(settings, topics, None)
        link.start()
        try:
            assert link.wait_connected(10)
            deadline = time.monotonic() + 10
            while watcher.last(topics.status) != "online" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert watcher.last(topics.status) == "online"
            broker.proc.send_signal(signal.SIGSTOP)  # reads nothing, acknowledges nothing
            try:
                link.publish("edgerun/unacked-dev/note", b"{}", qos=1)  # fills the window
                assert link.wait_drained(5)
                link.stop(flush_timeout_s=0.5)
            finally:
                broker.proc.send_signal(signal.SIGCONT)
        finally:
            link.stop()
        # a clean DISCONNECT would have made the broker drop the will, and the device would stay online
        assert final_status(watcher, broker.port, topics.status) == "offline"
        watcher.close()
    finally:
        broker.stop()
