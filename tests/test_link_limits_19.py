"""The link and the broker's limits: a record over the broker's maximum packet size, and a client id
that another client takes over. Against real private Mosquitto brokers.

A broker closes the connection on a packet over its ``max_packet_size``, and paho sends an
unacknowledged message again after every reconnect: one such record used to hold the link in a
reconnect loop for ever (a WARNING per reconnect, the retained status flapping to ``offline``, the
records behind it never sent). Two processes with one device id (one client id) used to kick each
other off the broker several times a second.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from tests.conftest import Broker
from tests.test_sync import Collector, deduplicated, wait_until

LINK_LOG = "edgerun.sync.link"
LIMIT = 380  # bytes: the brokers' max_packet_size here


@pytest.fixture
def small_packet_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private broker that closes the connection of a client sending a packet over 380 bytes."""
    b = Broker(tmp_path / "broker", extra_conf=f"max_packet_size {LIMIT}\n")
    b.start()
    yield b
    b.stop()


def _settings(port: int, protocol: str = "5", *, reconnect_max_s: float = 0.4) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        protocol=protocol,  # type: ignore[arg-type]
        keepalive_s=5,
        reconnect_min_s=0.05,
        reconnect_max_s=reconnect_max_s,
    )


def _warnings(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """The link's WARNING lines that contain every one of ``words``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LINK_LOG and r.levelno == logging.WARNING and all(w in r.getMessage() for w in words)
    ]


def _queue(outbox: Outbox, topic: str, sizes: list[int]) -> None:
    """One metrics record per size, each with a ``pad`` string of that many characters."""
    outbox.put_many([("metrics", topic, {"schema": 1, "pad": "x" * n}, 1) for n in sizes])


def _packet_size(topic: str, payload: bytes, v5: bool) -> int:
    """Bytes of a QoS 1 PUBLISH packet with no properties (MQTT 3.1.1 and 5, section 3.3)."""
    remaining = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + len(payload)
    return 1 + (1 if remaining < 128 else 2) + remaining


def _oversize(outbox: Outbox, topic: str, seq: int, v5: bool) -> bool:
    """Whether the record ``seq`` of the outbox would make a packet over the broker's limit."""
    return any(
        _packet_size(r.topic, r.payload, v5) > LIMIT
        for r in outbox.pending(limit=1000)
        if r.topic == topic and b'"seq":%d,' % seq in r.payload
    )


def _run_with_one_oversize_record(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> tuple[MqttLink, Outbox, Collector, Topics]:
    """A link (real outbox) delivering records 1-4, 5 (too large), 6-9, then a second batch 10-12 with
    12 too large; returns once the outbox is empty."""
    topics = Topics("edgerun", f"big{protocol.replace('.', '')}")
    collector = Collector(broker.port, f"edgerun/{topics.device}/#")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    _queue(outbox, topics.metrics, [10, 20, 30, 40, 600, 50, 60, 70, 80])
    assert _oversize(outbox, topics.metrics, 5, protocol == "5")
    assert not _oversize(outbox, topics.metrics, 9, protocol == "5")
    link = MqttLink(_settings(broker.port, protocol), topics, outbox)
    link.start()
    wait_until(lambda: len(outbox) == 0, 30, "the first batch to leave the outbox")
    _queue(outbox, topics.metrics, [10, 20, 700])
    link.notify()
    wait_until(lambda: len(outbox) == 0, 30, "the second batch to leave the outbox")
    wait_until(lambda: len(collector.seqs(topics.metrics)) >= 10, 10, "the records to reach the subscriber")
    return link, outbox, collector, topics


def test_a_record_over_the_brokers_maximum_packet_size_is_refused_without_dropping_the_connection(
    small_packet_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link, outbox, collector, topics = _run_with_one_oversize_record(small_packet_broker, tmp_path, caplog, "5")
    try:
        assert deduplicated(collector.seqs(topics.metrics)) == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
        assert outbox.refused_total() == 2
        state = link.state()
        assert (state.refused, state.connects, state.connected) == (2, 1, True)
        said = _warnings(caplog, topics.metrics, "maximum packet size", f"({LIMIT} bytes)")
        assert len(said) == 1, said  # one line for the topic and limit, not one per record
        assert len(_warnings(caplog)) == 1, _warnings(caplog)  # no connection lost
        states = [d["state"] for d in collector.on(topics.status)]
        assert states and "offline" not in states  # the last will never fired
        assert "oversize" not in (small_packet_broker.workdir / "log").read_text()
    finally:
        link.stop(1.0)
        outbox.close()
        collector.close()


def test_over_mqtt_3_1_1_a_record_the_broker_keeps_closing_the_connection_on_is_kept_and_named(
    small_packet_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 3.1.1 cannot say a packet is too large, and a close without a reason looks like a network that drops
    # connections: the record is never deleted on that guess (a 79-byte record was, after three cut
    # connections); it holds the records behind it, and one WARNING names its topic and points to MQTT 5
    topics = Topics("edgerun", "big311")
    collector = Collector(small_packet_broker.port, f"edgerun/{topics.device}/#")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    _queue(outbox, topics.metrics, [10, 20, 30, 40, 600, 50])
    assert _oversize(outbox, topics.metrics, 5, False)
    link = MqttLink(_settings(small_packet_broker.port, "3.1.1"), topics, outbox)
    link.start()
    try:
        wait_until(
            lambda: _warnings(caplog, topics.metrics, "times in a row", "kept and sent again"), 60, "the WARNING"
        )
        wait_until(lambda: len(collector.seqs(topics.metrics)) >= 4, 10, "the records before it to arrive")
        assert deduplicated(collector.seqs(topics.metrics)) == [1, 2, 3, 4]
        assert len(outbox) == 2 and outbox.refused_total() == 0 and link.state().refused == 0
        assert len(_warnings(caplog, topics.metrics, "times in a row")) == 1  # once, not per reconnect
    finally:
        link.stop(1.0)
        outbox.close()
        collector.close()


def _by_link(caplog: pytest.LogCaptureFixture, start: str) -> dict[int, list[float]]:
    """When each link thread (by thread id) logged a line starting with ``start``."""
    times: dict[int, list[float]] = {}
    for r in caplog.records:
        if r.name == LINK_LOG and r.getMessage().startswith(start):
            times.setdefault(r.thread or 0, []).append(r.created)
    return times


def test_two_links_with_one_client_id_say_so_and_reconnect_only_after_a_long_backoff(
    own_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    topics = Topics("edgerun", "devy")
    settings = _settings(own_broker.port, reconnect_max_s=1.0)
    links = [MqttLink(settings, topics, None) for _ in range(2)]
    for link in links:
        link.start()
    try:
        wait_until(
            lambda: bool(_warnings(caplog, "edgerun-devy", "two edgerun processes with one device id")),
            30,
            "a link to say another client takes its client id",
        )
        time.sleep(4.0)
        said = _by_link(caplog, "MQTT: the broker at")
        assert said and all(len(times) == 1 for times in said.values()), said  # once per link
        connected = _by_link(caplog, "MQTT connected to")
        for thread, (when,) in said.items():
            # From its warning on, a link waits 0.5-1.0 s (half the longest backoff to the longest)
            # before each reconnect: the two no longer kick each other off several times a second.
            times = [when] + [t for t in connected[thread] if t > when]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert len(gaps) >= 2 and all(g >= 0.45 for g in gaps), gaps
        assert sum(link.state().connects for link in links) < 60  # the old link: hundreds
    finally:
        for link in links:
            link.stop(0.5)


class TakeoverProxy:
    """A loopback proxy for MQTT connections that says what a newer broker says when another client
    takes the client id over: when the broker closes a connection, the proxy sends the device an MQTT 5
    DISCONNECT with reason 0x8E (Session taken over) before closing it (Mosquitto 2.0.11 just closes)."""

    DISCONNECT_TAKEN_OVER = bytes([0xE0, 0x02, 0x8E, 0x00])

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                device, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.broker_port), timeout=10)
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(device, upstream, b""), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(upstream, device, self.DISCONNECT_TAKEN_OVER), daemon=True
            ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, last_words: bytes) -> None:
        try:
            while (data := src.recv(65536)) and self._passes(data):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            if last_words:
                dst.sendall(last_words)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _passes(self, data: bytes) -> bool:
        """Whether ``data`` goes through; a packet that does not ends the connection, both ways."""
        return True

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def test_a_disconnect_saying_session_taken_over_is_one_warning_naming_the_client_id_and_a_long_wait(
    own_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TakeoverProxy(own_broker.port)
    topics = Topics("edgerun", "devz")
    via_proxy = MqttLink(_settings(proxy.port, reconnect_max_s=1.0), topics, None)
    direct = MqttLink(_settings(own_broker.port, reconnect_max_s=1.0), topics, None)
    via_proxy.start()
    try:
        assert via_proxy.wait_connected(10)
        direct.start()
        wait_until(
            lambda: bool(_warnings(caplog, "edgerun-devz", "Session taken over [code:142]")),
            10,
            "the link behind the proxy to say it was taken over",
        )
        taken = time.monotonic()
        wait_until(lambda: via_proxy.state().connects >= 2, 10, "the link behind the proxy to reconnect")
        assert time.monotonic() - taken >= 0.45  # it waited at least half the longest backoff
        time.sleep(2.0)
        assert len(_warnings(caplog, "edgerun-devz", "Session taken over")) == 1  # said once
        assert via_proxy.state().connects + direct.state().connects < 15
    finally:
        direct.stop(0.5)
        via_proxy.stop(0.5)
        proxy.close()


class CuttingProxy(TakeoverProxy):
    """A loopback proxy that cuts the connection, both ways and without a word, the first ``cuts`` times a
    packet holding ``marker`` goes through: a network that drops, or a broker that restarts, right after
    a record went out."""

    DISCONNECT_TAKEN_OVER = b""  # says nothing

    def __init__(self, broker_port: int, marker: bytes, cuts: int) -> None:
        self.marker, self.left = marker, cuts
        super().__init__(broker_port)

    def _passes(self, data: bytes) -> bool:
        if self.left and self.marker in data:
            self.left -= 1
            return False
        return True


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_small_record_whose_connection_is_cut_three_times_is_delivered_not_deleted(
    own_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    # a review's reproduction: a 79-byte record was deleted as "too large" after three cut connections
    topics = Topics("edgerun", f"cut{protocol.replace('.', '')}")
    collector = Collector(own_broker.port, f"edgerun/{topics.device}/#")
    proxy = CuttingProxy(own_broker.port, b"cut-me", cuts=4)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    link = MqttLink(_settings(proxy.port, protocol), topics, outbox)
    link.start()
    try:
        assert link.wait_connected(10)
        outbox.put_many([("metrics", topics.metrics, {"schema": 1, "tag": "cut-me"}, 1)])
        link.notify()
        wait_until(lambda: proxy.left == 0 and len(outbox) == 0, 60, "the record to be delivered after the cuts")
        wait_until(lambda: collector.seqs(topics.metrics), 10, "the record to reach the subscriber")
        assert deduplicated(collector.seqs(topics.metrics)) == [1]
        assert outbox.refused_total() == 0 and link.state().refused == 0
    finally:
        link.stop(1.0)
        proxy.close()
        outbox.close()
        collector.close()
