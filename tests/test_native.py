"""Turns between inference calls and background Python (edgerun.native), and the MQTT link taking them."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.native import NativeCalls, native_calls
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from tests.conftest import ROOT, Broker
from tests.test_sync import Collector, deduplicated, wait_until


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watched(clock: Clock, **kw: float) -> NativeCalls:
    calls = NativeCalls(clock=clock, **kw)
    calls.watch()
    return calls


def one_call(calls: NativeCalls, clock: Clock, seconds: float) -> None:
    started = calls.enter()
    clock.now += seconds
    calls.leave(started)


def test_nothing_is_tracked_and_background_work_always_fits_while_nobody_watches() -> None:
    clock = Clock()
    calls = NativeCalls(clock=clock)
    started = calls.enter()
    assert started == 0.0
    clock.now += 0.01
    assert calls.time_left() == math.inf
    calls.leave(started)
    assert calls.typical_s == 0.0
    calls.wait_turn(max_wait_s=30)  # returns at once


def test_during_a_call_background_work_gets_a_share_of_a_typical_call_and_none_between_calls() -> None:
    clock = Clock()
    calls = watched(clock, share=0.5, min_call_s=0.001)
    for _ in range(3):
        one_call(calls, clock, 0.010)
    assert calls.typical_s == pytest.approx(0.010)
    assert calls.time_left() == 0.0  # between two calls: the GIL is the foreground's
    started = calls.enter()
    assert calls.time_left() == pytest.approx(0.005)
    clock.now += 0.004
    assert calls.time_left() == pytest.approx(0.001)
    clock.now += 0.002
    assert calls.time_left() < 0  # the call is expected back soon: stop
    calls.leave(started)
    assert calls.time_left() == 0.0


def test_a_call_that_starts_while_another_runs_opens_a_turn_of_its_own() -> None:
    clock = Clock()
    calls = watched(clock, share=0.5)
    one_call(calls, clock, 0.010)
    first = calls.enter()  # one pipeline's call
    clock.now += 0.008
    assert calls.time_left() < 0  # its turn is spent
    second = calls.enter()  # another pipeline's call starts while the first runs
    assert calls.time_left() == pytest.approx(0.005)
    calls.leave(first)
    calls.leave(second)


def test_a_foreground_idle_for_a_while_leaves_background_work_unbounded() -> None:
    clock = Clock()
    calls = watched(clock, idle_after_s=0.05)
    one_call(calls, clock, 0.010)
    clock.now += 0.049
    assert calls.time_left() == 0.0
    clock.now += 0.002
    assert calls.time_left() == math.inf


def test_calls_too_short_to_work_beside_impose_no_turns() -> None:
    clock = Clock()
    calls = watched(clock, min_call_s=0.001)
    for _ in range(5):
        one_call(calls, clock, 0.0001)  # 100 us: a digits-sized model
    assert calls.time_left() == math.inf
    calls.enter()
    assert calls.time_left() == math.inf


def test_a_new_watcher_measures_calls_afresh() -> None:
    clock = Clock()
    calls = watched(clock)
    one_call(calls, clock, 0.010)
    calls.unwatch()
    calls.watch()  # say, the next run's link, beside another model
    assert calls.typical_s == 0.0
    one_call(calls, clock, 0.0001)
    assert calls.typical_s == pytest.approx(0.0001)


def test_the_moving_average_follows_a_model_that_got_slower() -> None:
    clock = Clock()
    calls = watched(clock)
    one_call(calls, clock, 0.002)
    for _ in range(60):
        one_call(calls, clock, 0.010)
    assert calls.typical_s == pytest.approx(0.010, rel=0.01)


def test_a_waiting_background_thread_goes_on_when_the_next_call_starts_and_not_before() -> None:
    calls = NativeCalls(idle_after_s=30.0, min_call_s=0.0)
    calls.watch()
    started = calls.enter()
    time.sleep(0.2)
    calls.leave(started)  # a 0.2 s call just ended: the next is due
    entered = threading.Event()
    seen: list[bool] = []

    def background() -> None:
        calls.wait_turn(max_wait_s=30.0)
        seen.append(entered.is_set())

    thread = threading.Thread(target=background)
    thread.start()
    wait_until(lambda: calls._waiting == 1, 10, "the background thread to wait")
    assert not seen
    entered.set()
    started = calls.enter()
    thread.join(timeout=10)
    calls.leave(started)
    assert seen == [True]


def test_background_work_is_delayed_at_most_max_wait_when_no_call_comes() -> None:
    calls = NativeCalls(idle_after_s=30.0, min_call_s=0.0)
    calls.watch()
    calls.leave(calls.enter())
    done = threading.Event()
    thread = threading.Thread(target=lambda: (calls.wait_turn(max_wait_s=0.05), done.set()))
    thread.start()
    thread.join(timeout=10)
    assert done.is_set()  # the foreground never called again, yet the background went on


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="share"):
        NativeCalls(share=0)


def test_the_link_delivers_every_record_in_order_while_taking_turns_with_a_busy_model(
    broker: Broker, tmp_path: Path
) -> None:
    """Batches of 512 digits make ONNX calls of a few milliseconds, long enough to take
    turns with: the link publishes and reads acknowledgements while they run."""
    model = edgerun.load(ROOT / "models" / "digits" / "digits_int8.onnx", threads=1)
    x = np.zeros((512, 8, 8, 1), dtype=np.float32)
    stop = threading.Event()
    calls = [0]

    def infer() -> None:
        while not stop.is_set():
            model.run(x)
            calls[0] += 1

    topic = "edgerun/turns-dev/metrics"
    collector = Collector(broker.port, topic)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    settings = MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_min_s=0.1)
    link = MqttLink(settings, Topics("edgerun", "turns-dev"), outbox)
    worker = threading.Thread(target=infer)
    worker.start()
    try:
        link.start()
        assert link.wait_connected(10)
        for start in range(0, 600, 50):
            outbox.put_many([("metrics", topic, {"n": start + i}, 1) for i in range(50)])
            link.notify()
        assert link.wait_drained(60), link.state()
        wait_until(lambda: len(set(collector.seqs(topic))) == 600, 20, "600 records")
        assert deduplicated(collector.seqs(topic)) == list(range(1, 601))
        assert native_calls.typical_s > 0  # the calls were tracked while the link ran
        assert calls[0] > 0
    finally:
        stop.set()
        worker.join(timeout=10)
        link.stop()
        collector.close()
        outbox.close()
        model.close()


def test_the_link_survives_a_disconnect_sent_by_the_broker_and_delivers_afterwards(
    broker: Broker, tmp_path: Path
) -> None:
    """MQTT 5: a client that takes over the device's session makes the broker send the link
    a DISCONNECT, after which paho closes the socket; the link reconnects and goes on."""
    import paho.mqtt.client as mqtt

    topic = "edgerun/takeover-dev/metrics"
    collector = Collector(broker.port, topic)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    settings = MqttSettings(
        host="127.0.0.1", port=broker.port, client_id="takeover-dev", keepalive_s=5, reconnect_min_s=0.1,
        reconnect_max_s=0.2,
    )  # fmt: skip
    link = MqttLink(settings, Topics("edgerun", "takeover-dev"), outbox)
    try:
        link.start()
        assert link.wait_connected(10)
        connects = link.state().connects
        intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="takeover-dev", protocol=mqtt.MQTTv5)
        intruder.connect("127.0.0.1", broker.port)
        intruder.loop_start()
        wait_until(lambda: intruder.is_connected(), 10, "the intruder to connect")
        intruder.disconnect()
        intruder.loop_stop()
        wait_until(lambda: link.state().connects > connects and link.connected, 20, "the link to reconnect")
        outbox.put_many([("metrics", topic, {"n": 1}, 1)])
        link.notify()
        wait_until(lambda: collector.seqs(topic) == [1], 20, "the record sent after the reconnect")
    finally:
        link.stop()
        collector.close()
        outbox.close()
