"""The MQTT link against real Mosquitto brokers: status and will, outages, kills, garbage, sessions."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgerun.sync.link import Message, MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.publish import MetricsPublisher
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics
from tests.conftest import ROOT, SAMPLES, Broker, run_cli


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Collector:
    """A fleet-side subscriber with a persistent session, as an operator's backend would have."""

    def __init__(self, port: int, pattern: str = "edgerun/#", client_id: str | None = None) -> None:
        self.messages: list[tuple[str, Any, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"c{time.monotonic_ns()}", clean_session=False
        )
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(pattern, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            data = msg.payload
        with self._lock:
            self.messages.append((msg.topic, data, msg.retain))

    def on(self, topic: str) -> list[Any]:
        with self._lock:
            return [d for t, d, _ in self.messages if t == topic]

    def seqs(self, topic: str) -> list[int]:
        return [d["seq"] for d in self.on(topic)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def deduplicated(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _settings(port: int, **kw: Any) -> MqttSettings:
    kw = {"keepalive_s": 2, **kw}
    return MqttSettings(host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5, **kw)


def _device(state: Path, port: int, device: str, count: int, rate: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.device_proc", str(state), str(port), device, str(count), str(rate)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_status_is_retained_online_with_models_then_offline_on_a_clean_stop(broker: Broker, tmp_path: Path) -> None:
    topics = Topics("edgerun", "status-dev")
    link = MqttLink(
        _settings(broker.port),
        topics,
        None,
        status={"models": {"digits": {"version": "1.0.0", "format": "onnx", "delegate": "cpu"}}},
    )
    link.start()
    assert link.wait_connected(10)
    late = Collector(broker.port, topics.status)  # subscribes after the fact: sees the retained record
    wait_until(lambda: late.on(topics.status), 5, "retained status")
    status = late.on(topics.status)[0]
    assert status["state"] == "online" and status["schema"] == 1
    assert status["models"]["digits"]["delegate"] == "cpu" and "runtime" in status and "ts" in status
    link.set_status(models={"digits": {"version": "1.1.0", "format": "onnx", "delegate": "cpu"}})
    wait_until(
        lambda: any(s.get("models", {}).get("digits", {}).get("version") == "1.1.0" for s in late.on(topics.status)),
        5,
        "status after a change",
    )
    link.stop()
    wait_until(lambda: late.on(topics.status)[-1]["state"] == "offline", 5, "offline status")
    late.close()


def test_the_last_will_says_offline_when_the_device_is_killed(broker: Broker, tmp_path: Path) -> None:
    watcher = Collector(broker.port, "edgerun/will-dev/status")
    proc = _device(tmp_path, broker.port, "will-dev", 100_000, rate=50)
    try:
        wait_until(lambda: any(s["state"] == "online" for s in watcher.on("edgerun/will-dev/status")), 15, "online")
    finally:
        proc.kill()
        proc.wait()
    # keepalive 2 s: the broker gives up on the client after 1.5 keepalives and publishes the will
    wait_until(lambda: watcher.on("edgerun/will-dev/status")[-1] == {"schema": 1, "state": "offline"}, 15, "will")
    watcher.close()


def test_a_device_started_while_the_broker_is_down_queues_then_delivers_everything(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "late-broker")
    broker.start()
    collector = Collector(broker.port, "edgerun/late-dev/metrics", client_id="late-collector")
    collector.close()
    broker.stop()  # the collector's session is saved; the broker is now absent
    proc = _device(tmp_path / "state", broker.port, "late-dev", 30)
    assert proc.stdout is not None
    printed = [proc.stdout.readline() for _ in range(30)]
    assert printed[-1].strip() == "seq 30"  # queued while offline, the caller never waited
    broker.start()
    collector = Collector(broker.port, "edgerun/late-dev/metrics", client_id="late-collector")
    try:
        assert proc.wait(timeout=60) == 0
        assert proc.stdout.read().strip() == "done"
        wait_until(lambda: len(set(collector.seqs("edgerun/late-dev/metrics"))) == 30, 15, "30 records")
        assert deduplicated(collector.seqs("edgerun/late-dev/metrics")) == list(range(1, 31))
    finally:
        collector.close()
        broker.stop()


def test_records_flowing_through_a_broker_outage_all_arrive_in_order(own_broker: Broker, tmp_path: Path) -> None:
    topic = "edgerun/outage-dev/metrics"
    collector = Collector(own_broker.port, topic, client_id="outage-collector")
    proc = _device(tmp_path, own_broker.port, "outage-dev", 300, rate=150)
    assert proc.stdout is not None
    wait_until(lambda: len(collector.seqs(topic)) >= 60, 20, "records before the outage")
    own_broker.stop()
    time.sleep(1.5)  # records keep being queued while the broker is away
    own_broker.start()
    assert proc.wait(timeout=90) == 0, proc.stderr.read() if proc.stderr else ""
    assert proc.stdout.read().splitlines()[-1] == "done"
    wait_until(lambda: len(set(collector.seqs(topic))) == 300, 20, "all 300 records")
    assert deduplicated(collector.seqs(topic)) == list(range(1, 301))  # in order, no gap
    collector.close()


def test_a_device_killed_mid_publish_and_restarted_delivers_every_record(broker: Broker, tmp_path: Path) -> None:
    topic = "edgerun/kill-dev/metrics"
    collector = Collector(broker.port, topic)
    first = _device(tmp_path, broker.port, "kill-dev", 100_000, rate=400)
    assert first.stdout is not None
    last = 0
    while last < 150:
        last = int(first.stdout.readline().split()[1])
    first.kill()  # SIGKILL: records in flight and queued are left as they are
    first.wait()
    second = _device(tmp_path, broker.port, "kill-dev", 20)
    assert second.wait(timeout=60) == 0
    assert second.stdout is not None
    lines = second.stdout.read().splitlines()
    final = int(lines[-2].split()[1])
    assert lines[-1] == "done" and final > last + 19 - 1
    wait_until(lambda: set(range(1, final + 1)) <= set(collector.seqs(topic)), 20, "every record")
    assert deduplicated(collector.seqs(topic))[:final] == list(range(1, final + 1))
    collector.close()


@pytest.mark.logs_errors
def test_garbage_on_a_subscribed_topic_is_dropped_and_the_link_goes_on(broker: Broker, tmp_path: Path) -> None:
    topics = Topics("edgerun", "garbage-dev")
    handled: list[dict[str, Any]] = []

    def handler(message: Message) -> None:
        data = json.loads(message.payload)  # raises on garbage: the link must survive its handler's bugs
        if not isinstance(data, dict) or not isinstance(data.get("n"), int):
            raise TypeError("wrong types")
        handled.append(data)

    link = MqttLink(_settings(broker.port), topics, None)
    link.subscribe(topics.cmd, handler)
    link.start()
    assert link.wait_connected(10)
    wait_until(lambda: topics.cmd in link._subscribed, 5, "subscription")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for payload in (b"not json", b'{"n": "seven"}', b"[1, 2]", b"\xff\xfe", b"x" * (10 * 1024 * 1024), b'{"n": 7}'):
        pub.publish(topics.cmd, payload, qos=1).wait_for_publish(10)
    wait_until(lambda: handled == [{"n": 7}], 15, "the valid message after the garbage")
    assert link.connected
    pub.loop_stop()
    pub.disconnect()
    link.stop()


def test_qos1_messages_sent_while_the_device_was_away_arrive_when_it_returns(broker: Broker) -> None:
    topics = Topics("edgerun", "session-dev")
    got: list[bytes] = []

    def make() -> MqttLink:
        link = MqttLink(_settings(broker.port), topics, None)
        link.subscribe(topics.cmd, lambda m: got.append(m.payload))
        link.start()
        assert link.wait_connected(10)
        wait_until(lambda: topics.cmd in link._subscribed, 5, "subscription")
        time.sleep(0.2)
        return link

    make().stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    pub.publish(topics.cmd, b"while you were away", qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    again = make()
    wait_until(lambda: got == [b"while you were away"], 10, "the queued message")
    again.stop()


def test_subscriptions_are_restored_when_the_broker_lost_the_session(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "amnesiac", extra_conf="")
    broker.conf.write_text(broker.conf.read_text().replace("persistence true", "persistence false"))
    broker.start()
    topics = Topics("edgerun", "amnesia-dev")
    got: list[bytes] = []
    link = MqttLink(_settings(broker.port), topics, None)
    link.subscribe(topics.cmd, lambda m: got.append(m.payload))
    link.start()
    try:
        assert link.wait_connected(10)
        broker.stop()
        broker.start()  # a new broker process that knows nothing of the device's session
        wait_until(lambda: link.connected and topics.cmd in link._subscribed, 20, "reconnect and resubscribe")
        time.sleep(0.3)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish(topics.cmd, b"hello again", qos=1).wait_for_publish(10)
        wait_until(lambda: got == [b"hello again"], 10, "a message after the broker restart")
        pub.loop_stop()
        pub.disconnect()
    finally:
        link.stop()
        broker.stop()


def test_evictions_during_a_long_outage_are_counted_and_reported(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "evict-broker")
    topics = Topics("edgerun", "evict-dev")
    broker.start()
    Collector(broker.port, topics.metrics, client_id="evict-collector").close()  # its session waits for us
    broker.stop()
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=8192)
    link = MqttLink(_settings(broker.port), topics, outbox)
    publisher = MetricsPublisher(Metrics(), outbox, link, topics, interval_s=3600)
    link.start()  # nothing to connect to
    for _ in range(150):
        publisher.publish_now()
    evicted = outbox.stats().evicted
    assert evicted > 0
    broker.start()
    collector = Collector(broker.port, topics.metrics, client_id="evict-collector")
    try:
        assert link.wait_drained(30)
        wait_until(lambda: len(collector.on(topics.metrics)) == 150 - evicted, 10, "the surviving records")
        records = collector.on(topics.metrics)
        seqs = [r["seq"] for r in records]
        assert seqs == list(range(evicted + 1, 151))  # the oldest went first
        assert records[-1]["outbox"]["evicted"] == evicted  # and the gap is announced
        assert all(
            set(r) >= {"schema", "device", "epoch", "seq", "ts", "window_s", "models", "system"} for r in records
        )
    finally:
        collector.close()
        link.stop()
        broker.stop()


@pytest.mark.logs_errors
def test_an_outbox_failure_while_connected_is_logged_and_the_link_reconnects_and_delivers_everything(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topics = Topics("edgerun", "locked-dev")
    collector = Collector(broker.port, "edgerun/locked-dev/#")
    outbox = Outbox(tmp_path / "o.sqlite")
    for n in range(20):
        outbox.put("metrics", topics.metrics, {"n": n})
    # Another process holds the outbox's write lock (an `sqlite3` shell left open, say):
    # the link can send and read acknowledgements, but deleting acknowledged records fails.
    holder = sqlite3.connect(tmp_path / "o.sqlite", timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    link = MqttLink(_settings(broker.port), topics, outbox)
    link.start()
    try:
        wait_until(lambda: "database is locked" in (link.last_error or ""), 30, "the outbox failure reported")
        assert len(outbox) == 20  # nothing deleted without its acknowledgement reaching the outbox
        # closing cleanly drops the last will, so the link says offline itself while it backs off
        wait_until(lambda: "offline" in [d["state"] for d in collector.on(topics.status)], 10, "offline")
        holder.execute("ROLLBACK")
        assert link.wait_drained(30)  # the link went on: reconnected, and the acknowledgements were kept
        wait_until(lambda: set(collector.seqs(topics.metrics)) == set(range(1, 21)), 10, "every record")
        assert link.connected and link.state().connects >= 2
        wait_until(lambda: collector.on(topics.status)[-1]["state"] == "online", 10, "online again")
    finally:
        holder.close()
        link.stop()
        collector.close()
    errors = [r for r in caplog.records if r.name == "edgerun.sync.link" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "database is locked" in errors[0].getMessage()  # one line, with the reason
    assert errors[0].exc_info is None  # the traceback goes to DEBUG


def _connected_link(broker: Broker, tmp_path: Path, device: str) -> tuple[Topics, Outbox, MqttLink]:
    """A started link of ``device`` to ``broker`` (a 60 s keepalive: the test may freeze the broker), connected."""
    assert broker.proc is not None
    topics = Topics("edgerun", device)
    outbox = Outbox(tmp_path / "o.sqlite")
    link = MqttLink(_settings(broker.port, keepalive_s=60), topics, outbox)
    link.start()
    if not link.wait_connected(10):
        link.stop()
        raise AssertionError(f"the link did not connect to {broker.url} in 10 s")
    return topics, outbox, link


def test_a_stale_acknowledgement_never_deletes_a_later_record_that_reuses_its_message_id(
    own_broker: Broker, tmp_path: Path
) -> None:
    topics, outbox, link = _connected_link(own_broker, tmp_path, "wrap-dev")
    try:
        # paho reports a QoS 0 message published inside publish(), before the link knows its
        # message id; 65,535 of them use every id once, so the next ids are all reused.
        for _ in range(65_535):
            link.publish("edgerun/wrap-dev/noise", b"", qos=0)
        assert link.wait_drained(120)
        own_broker.proc.send_signal(signal.SIGSTOP)  # connected, but no PUBACK comes back now
        try:
            outbox.put("metrics", topics.metrics, {"n": 1})
            link.notify()
            wait_until(lambda: link.state().sent == 1, 10, "the first record handed to paho")
            outbox.put("metrics", topics.metrics, {"n": 2})  # its pass deletes what was acknowledged
            link.notify()
            wait_until(lambda: link.state().sent == 2, 10, "the second record handed to paho")
            assert len(outbox) == 2  # neither was acknowledged by the broker
        finally:
            own_broker.proc.send_signal(signal.SIGCONT)
        assert link.wait_drained(20)
        assert link.state().acked == 2
    finally:
        link.stop()


def test_predict_with_mqtt_reports_every_inference_and_goes_offline(broker: Broker, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(150):
        (folder / f"{i:03d}.png").write_bytes((SAMPLES / f"digit_{i % 10}.png").read_bytes())
    collector = Collector(broker.port, "edgerun/predict-dev/#")
    result = run_cli(
        "predict",
        str(ROOT / "models" / "digits" / "digits_int8.tflite"),
        str(folder),
        "--json",
        "--mqtt",
        f"mqtt://127.0.0.1:{broker.port}",
        "--device-id",
        "predict-dev",
        "--state-dir",
        str(tmp_path / "state"),
        "--publish-results",
    )
    assert result.returncode == 0, result.stderr
    metrics = "edgerun/predict-dev/metrics"
    wait_until(
        lambda: sum(m["models"]["digits"]["count"] for m in collector.on(metrics) if "digits" in m["models"]) == 150,
        10,
        "150 inferences in the metrics",
    )
    results = collector.on("edgerun/predict-dev/results/digits")
    wait_until(lambda: len(collector.on("edgerun/predict-dev/results/digits")) == 150, 10, "150 results")
    results = collector.on("edgerun/predict-dev/results/digits")
    assert [r["seq"] for r in results] == list(range(1, 151))
    assert {r["model"] for r in results} == {"digits"} and all(r["output"][0]["label"] for r in results)
    wait_until(lambda: collector.on("edgerun/predict-dev/status")[-1]["state"] == "offline", 10, "offline")
    collector.close()


def test_qos0_records_cut_off_by_a_lost_connection_are_sent_again_after_the_reconnect(
    own_broker: Broker, tmp_path: Path
) -> None:
    topics, outbox, link = _connected_link(own_broker, tmp_path, "cut-dev")
    try:
        own_broker.proc.send_signal(signal.SIGSTOP)  # reads nothing: the socket's buffers fill up
        pad = "x" * 200_000
        for n in range(100):  # 20 MB, more than loopback's buffers hold: paho keeps the rest queued
            outbox.put("metrics", topics.metrics, {"n": n, "pad": pad}, qos=0)
        link.notify()
        wait_until(lambda: link.state().sent == 100, 20, "every record handed to paho")
        own_broker.proc.kill()  # the connection is lost with QoS 0 packets still in paho's queue
        own_broker.proc.wait()
        own_broker.proc = None
        own_broker.start()
        # paho drops unsent QoS 0 packets when it reconnects and never reports them sent: the link
        # must send those records again, or they would wait in its in-flight map until a restart
        assert link.wait_drained(30)
        assert len(outbox) == 0
    finally:
        link.stop()


def test_a_result_reaches_the_outbox_while_the_source_is_quiet(tmp_path: Path) -> None:
    """A camera that gave one frame and then nothing (or an MQTT source between messages): its result
    is on disk within moments, not held until the next frame, which a power cut would lose."""
    import edgerun
    from edgerun.pipeline import Pipeline
    from edgerun.sources.base import Frame, LatestBuffer, LiveSource
    from edgerun.sync.publish import ResultsSink

    class OneThenQuiet(LiveSource):
        def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
            buffer.put(Frame((SAMPLES / "digit_4.png").read_bytes(), time.time(), "cam#0", 0))
            stop.wait()

    outbox = Outbox(tmp_path / "outbox.sqlite")
    source = OneThenQuiet("cam")
    with edgerun.load(ROOT / "models/digits/digits_int8.onnx") as model:
        pipeline = Pipeline(source, model, [ResultsSink(outbox, None, Topics("edgerun", "dev"))])
        runner = threading.Thread(target=pipeline.run, daemon=True)
        runner.start()
        try:
            wait_until(lambda: len(outbox) == 1, 30, "the result in the outbox")
            assert runner.is_alive()  # still running: nothing but the wait committed it
        finally:
            pipeline.stop()
            runner.join(timeout=30)
    assert json.loads(outbox.pending()[0].payload)["source"] == "cam#0"
    outbox.close()


def test_a_connection_lost_after_it_was_made_is_said_as_lost(
    own_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once "the broker ... closed the connection before answering CONNECT" for a broker that went away
    long after it had answered: paho's on_disconnect clears the connected flag before the link looks."""
    settings = MqttSettings.from_url(f"mqtt://127.0.0.1:{own_broker.port}", client_id="lost-dev")
    link = MqttLink(settings, Topics("edgerun", "lost-dev"), None)
    link.start()
    try:
        assert link.wait_connected(20)
        own_broker.stop()
        wait_until(lambda: link.state().last_error is not None, 20, "the loss to be noticed")
        assert (link.state().last_error or "").startswith(f"connection to {settings.describe()} lost"), link.state()
        said = [r.getMessage() for r in caplog.records if r.name == "edgerun.sync.link" and r.levelname == "WARNING"]
        assert not [line for line in said if "before answering CONNECT" in line], said
    finally:
        link.stop(1)
        own_broker.start()
