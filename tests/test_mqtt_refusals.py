"""Subscriptions and publishes a broker refuses, against real private Mosquitto brokers.

Mosquitto 2.0's ``acl_file`` never refuses a subscription in the SUBACK: it grants it and
withholds the messages (a subscriber cannot tell). Its dynamic security plugin, shipped with
it, does refuse one (SUBACK 0x87 "Not authorized" to MQTT 5 clients, 0x80 to MQTT 3.1.1 ones),
and both refuse an MQTT 5 client's QoS 1 publish with PUBACK 0x87. The brokers here use one or
the other. What edgerun must do: say so once, in one line naming the topic; never claim a
subscription it was refused; never ask again in a tight loop; keep the device running.
"""

from __future__ import annotations

import glob
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgerun.errors import SourceError
from edgerun.sources.mqtt import MqttSource
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.publish import MetricsPublisher
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES, Broker, run_cli
from tests.ota_helpers import Agent, Device, make_key, model_with_card, push_update, unique_model
from tests.test_source_faults import _failure
from tests.test_sync import wait_until

LINK_LOG = "edgerun.sync.link"


def _dynsec_plugin() -> str:
    """Mosquitto's dynamic security plugin (in Debian's and Ubuntu's ``mosquitto`` package since 2.0)."""
    for pattern in (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    pytest.skip("mosquitto_dynamic_security.so (shipped with Mosquitto 2) is not installed")


def _acl(acltype: str, topic: str) -> dict[str, object]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": False}


def _dynsec_broker(workdir: Path, denied: list[dict[str, object]]) -> Broker:
    """A started broker whose dynamic security lets anonymous clients do everything but ``denied``."""
    workdir.mkdir()
    dynsec = workdir / "dynamic-security.json"
    dynsec.write_text(
        json.dumps(
            {
                "defaultACLAccess": {
                    "publishClientSend": True,
                    "publishClientReceive": True,
                    "subscribe": True,
                    "unsubscribe": True,
                },
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "device"}], "clients": []}],
                "anonymousGroup": "anonymous",
                "roles": [{"rolename": "device", "acls": denied}],
            }
        )
    )
    b = Broker(workdir, extra_conf=f"plugin {_dynsec_plugin()}\nplugin_opt_config_file {dynsec}\n")
    b.start()
    return b


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker whose dynamic security refuses anonymous clients: subscriptions to ``denied/#`` and
    ``edgerun/+/cmd``, publishes to ``edgerun/+/results/#`` and ``edgerun/+/ota/status``. Everything
    else is allowed."""
    b = _dynsec_broker(
        tmp_path / "broker",
        [
            _acl("subscribePattern", "denied/#"),
            _acl("subscribePattern", "edgerun/+/cmd"),
            _acl("publishClientSend", "edgerun/+/results/#"),
            _acl("publishClientSend", "edgerun/+/ota/status"),
        ],
    )
    yield b
    b.stop()


@pytest.fixture
def acl_file_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker whose ``acl_file`` lets anonymous clients read and write ``allowed/#`` only."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")
    b = Broker(tmp_path / "broker", extra_conf=f"acl_file {acl}\n")
    b.start()
    yield b
    b.stop()


def _lines(caplog: pytest.LogCaptureFixture, *words: str, level: int = logging.WARNING) -> list[str]:
    """The link's log lines at ``level`` that contain every one of ``words``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LINK_LOG and r.levelno == level and all(w in r.getMessage() for w in words)
    ]


def _publish(port: int, topic: str, payload: bytes) -> None:
    """One acknowledged QoS 1 publish (MQTT 3.1.1, allowed topics only)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _settings(port: int, protocol: str) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        protocol=protocol,  # type: ignore[arg-type]
        client_id=f"suback-{time.monotonic_ns()}",
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )


# -- the MQTT source ---------------------------------------------------------------------------------------


def test_a_run_over_a_topic_the_broker_refuses_fails_at_once_in_one_line_naming_the_topic(
    refusing_broker: Broker,
) -> None:
    done = run_cli("run", str(DIGITS / "digits_fp32.onnx"), "--source", f"{refusing_broker.url}/denied/x")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refused the subscription to denied/x" in lines[0], lines[0]
    # MQTT 3.1.1 (the source's protocol) answers only "failure" (0x80): the line says what that means.
    assert "not authorized" in lines[0].lower(), lines[0]
    assert "[code:128]" in lines[0], lines[0]


def test_an_mqtt_source_never_logs_a_subscription_the_broker_refused(
    refusing_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    failure = _failure(MqttSource(f"{refusing_broker.url}/denied/x", retries=1))
    assert isinstance(failure, SourceError), failure
    assert "refused the subscription to denied/x" in str(failure)
    claimed = [r.getMessage() for r in caplog.records if "subscribed to denied/x" in r.getMessage()]
    assert claimed == [], claimed


def test_an_mqtt_source_logs_its_subscription_once_the_broker_granted_it(
    refusing_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    source = MqttSource(f"{refusing_broker.url}/allowed/x", retries=1)
    got: list[object] = []

    def consume() -> None:
        for frame in source.frames():
            got.append(frame)
            return

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        wait_until(lambda: any("subscribed to allowed/x" in r.getMessage() for r in caplog.records), 20, "the SUBACK")
        _publish(refusing_broker.port, "allowed/x", b"[1.0, 2.0]")
        consumer.join(timeout=20)
        assert got, "the granted subscription delivered nothing"
    finally:
        source.close()
        consumer.join(timeout=10)


def test_with_mosquittos_acl_file_a_denied_topic_is_granted_and_its_messages_withheld(
    acl_file_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Pins a limit, not a fix: Mosquitto 2.0's acl_file answers a denied subscription with
    "granted" and then delivers nothing, so no subscriber can tell (docs/pipelines.md says so)."""
    got: list[object] = []
    source = MqttSource(f"{acl_file_broker.url}/denied/x", retries=1)

    def consume() -> None:
        for frame in source.frames():
            got.append(frame)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        wait_until(lambda: any("subscribed to denied/x" in r.getMessage() for r in caplog.records), 20, "the SUBACK")
        _publish(acl_file_broker.port, "allowed/x", b"[1.0]")  # acknowledged: after it, the denied one
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", acl_file_broker.port)
        client.loop_start()
        client.publish("denied/x", b"[1.0]", qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        consumer.join(timeout=1.0)  # a bounded look: the message never comes
        assert got == []
        assert consumer.is_alive(), "the source stopped"
    finally:
        source.close()
        consumer.join(timeout=10)


# -- the device's link: subscriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_link_says_once_that_a_subscription_was_refused_and_asks_again_only_after_a_reconnect(
    refusing_broker: Broker, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LINK_LOG)  # paho's packet log: every SUBSCRIBE sent
    topics = Topics("edgerun", "dev1")
    received: list[bytes] = []
    link = MqttLink(_settings(refusing_broker.port, protocol), topics, None)
    link.subscribe(topics.cmd, lambda m: None)
    link.subscribe(topics.manifest, lambda m: received.append(m.payload))

    def asked(topic: str) -> int:
        return len([line for line in _lines(caplog, "Sending SUBSCRIBE", level=logging.DEBUG) if f"'{topic}'" in line])

    def subacks() -> int:
        return len(_lines(caplog, "Received SUBACK", level=logging.DEBUG))

    def delivered(tag: bytes) -> None:
        """Publish ``tag`` on the allowed topic until it arrives: later than both SUBACKs of this connection."""
        deadline = time.monotonic() + 20
        while tag not in received:
            assert time.monotonic() < deadline, "the allowed subscription delivers nothing"
            _publish(refusing_broker.port, topics.manifest, tag)
            time.sleep(0.1)

    link.start()
    try:
        wait_until(lambda: subacks() >= 2, 20, "both SUBACKs")
        delivered(b"first")
        refused = _lines(caplog, "refused the subscription to edgerun/dev1/cmd")
        assert len(refused) == 1, refused
        assert "not authorized" in refused[0].lower(), refused[0]
        assert ("[code:135]" if protocol == "5" else "[code:128]") in refused[0], refused[0]
        assert _lines(caplog, "edgerun/dev1/ota/manifest") == []
        assert link.connected
        assert "refused the subscription to edgerun/dev1/cmd" in (link.state().last_error or "")
        assert link.refusal(topics.cmd) == refused[0].removeprefix("MQTT: ").partition("; nothing")[0]
        assert link.refusal(topics.manifest) is None
        assert asked(topics.cmd) == 1  # not asked again on the same connection

        refusing_broker.stop()
        refusing_broker.start()
        wait_until(lambda: link.state().connects >= 2 and subacks() >= 4, 30, "the reconnect's SUBACKs")
        delivered(b"second")
        assert asked(topics.cmd) == 2  # once per connection
        assert len(_lines(caplog, "refused the subscription to edgerun/dev1/cmd")) == 1  # said once
        assert "refused the subscription to edgerun/dev1/cmd" in (link.state().last_error or "")
    finally:
        link.stop(1)


def test_a_device_whose_command_topic_is_refused_says_so_once_and_keeps_serving(
    refusing_broker: Broker, tmp_path: Path
) -> None:
    _, _, public = make_key(tmp_path)
    model = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    device = Device(refusing_broker.port, tmp_path / "state", model, public, device="dev1")
    try:
        wait_until(lambda: "refused the subscription to edgerun/dev1/cmd" in device.log(), 60, "the refusal in the log")
        image = (SAMPLES / "digit_3.png").read_bytes()
        deadline = time.monotonic() + 30
        while not (device.out.exists() and device.out.read_text().strip()):  # until its source is subscribed
            assert device.proc.poll() is None and time.monotonic() < deadline, device.log()[-2000:]
            _publish(refusing_broker.port, "edgerun/dev1/input", image)
            time.sleep(0.2)
    finally:
        code = device.stop()
    log = device.log()
    refused = [line for line in log.splitlines() if "refused the subscription" in line]
    assert len(refused) == 1 and "edgerun/dev1/cmd" in refused[0] and "not authorized" in refused[0].lower(), log
    assert "Traceback" not in log
    assert code == 0, log


# -- the device's link: publishes and the outbox ------------------------------------------------------------------


def test_records_the_broker_refuses_leave_the_outbox_counted_and_are_said_once_per_topic(
    refusing_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 5: PUBACK 0x87. A refused record is dropped (it would be refused again) and counted in
    ``refused``; pins the drop, fixes the log (it was one WARNING per record)."""
    topics = Topics("edgerun", "dev1")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    link = MqttLink(_settings(refusing_broker.port, "5"), topics, outbox)
    for i in range(10):
        outbox.put("results/digits", topics.results("digits"), {"i": i})
    outbox.put("metrics", topics.metrics, {"schema": 1})
    link.start()
    try:
        assert link.wait_connected(20)
        assert link.wait_drained(30)
        state = link.state()
        assert (state.refused, state.acked, len(outbox)) == (10, 1, 0)
        said = _lines(caplog, "refused")
        assert len(said) == 1, said
        assert "edgerun/dev1/results/digits" in said[0] and "Not authorized" in said[0], said[0]
    finally:
        link.stop(1)
        outbox.close()
    # the gap of ten seqs is told, as evictions are: on disk (it survives a restart), and in the metrics record
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        assert (outbox.refused_total(), outbox.stats().refused, outbox.evicted_total()) == (10, 10, 0)
        MetricsPublisher(Metrics(), outbox, None, topics).publish_now()
        (record,) = [json.loads(p.payload) for p in outbox.pending()]
        assert record["outbox"] == {"evicted": 0, "refused": 10}
    finally:
        outbox.close()


def test_over_mqtt_311_a_refused_record_is_acknowledged_and_leaves_the_outbox_unnoticed(
    refusing_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pins a limit of MQTT 3.1.1: Mosquitto acknowledges a refused QoS 1 publish as if it took it."""
    topics = Topics("edgerun", "dev1")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    link = MqttLink(_settings(refusing_broker.port, "3.1.1"), topics, outbox)
    for i in range(3):
        outbox.put("results/digits", topics.results("digits"), {"i": i})
    link.start()
    try:
        assert link.wait_connected(20)
        assert link.wait_drained(30)
        state = link.state()
        assert (state.refused, state.acked, len(outbox)) == (0, 3, 0)
        assert _lines(caplog, "refused") == []
    finally:
        link.stop(1)
        outbox.close()


def test_a_direct_publish_the_broker_refuses_is_said_once(
    refusing_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The OTA agent's status records go out as direct publishes: a refusal was silent."""
    caplog.set_level(logging.DEBUG, logger=LINK_LOG)  # paho's packet log: every PUBACK
    topics = Topics("edgerun", "dev1")
    link = MqttLink(_settings(refusing_broker.port, "5"), topics, None)
    link.start()
    try:
        assert link.wait_connected(20)
        for i in range(3):
            link.publish(topics.ota_status, json.dumps({"i": i}), qos=1, retain=True)
        # The retained ``online`` status and the three refused records: four PUBACKs.
        wait_until(lambda: len(_lines(caplog, "Received PUBACK", level=logging.DEBUG)) >= 4, 20, "four PUBACKs")
        said = _lines(caplog, "refused a publish")
        assert len(said) == 1, said
        assert "edgerun/dev1/ota/status" in said[0] and "Not authorized" in said[0], said[0]
    finally:
        link.stop(1)


def test_an_update_whose_chunk_topic_is_refused_fails_at_once_naming_it(tmp_path: Path) -> None:
    """Once the download waited out ``download_timeout_s`` (120 s by default), then said chunks were missing."""
    broker = _dynsec_broker(tmp_path / "broker", [_acl("subscribePattern", "edgerun/blobs/#")])
    key, _, public = make_key(tmp_path)
    agent = Agent(
        broker.port,
        tmp_path / "state",
        model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx"),
        public,
        "dev1",
        download_timeout_s=3600,
    )
    try:
        update = unique_model(tmp_path / "v2", "digits_int8.onnx")
        manifest = push_update(broker.port, key, update, "1.1.0", "dev1")
        journal = agent.state / "ota" / "journal" / f"{manifest['update_id']}.json"
        failed = lambda: journal.exists() and agent.journal(manifest["update_id"])["state"] == "failed"  # noqa: E731
        wait_until(failed, 60, "the update to fail")
        reason = agent.journal(manifest["update_id"])["reason"]
        topic = manifest["source"]["mqtt"]["topic"]
        assert reason.startswith(f"the broker refused the subscription to {topic}/+: Not authorized"), reason
        assert agent.slot.primary.version == "1.0.0"
    finally:
        agent.stop()
        broker.stop()
