"""Stopping the MQTT sync when a step fails: every later step still runs, and stop() returns."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgerun.sync.service import SyncService
from edgerun.sync.settings import MqttSettings
from edgerun.telemetry.metrics import Metrics
from tests.conftest import ROOT, Broker, start_daemon
from tests.test_outbox_faults import fill_disk

DIGITS = ROOT / "models" / "digits" / "digits_int8.onnx"


def retained_status(port: int, topic: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The retained record on ``topic``, read by a fresh subscriber (None if none came in ``timeout``)."""
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peek{time.monotonic_ns()}")

    def on_message(c: Any, u: Any, message: Any) -> None:
        if message.retain:
            got.append(message.payload)
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return json.loads(got[-1]) if got else None


@pytest.mark.logs_errors
def test_a_full_disk_at_stop_still_says_offline_disconnects_and_closes_the_outbox(
    broker: Broker, small_disk: Callable[[int], Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk = small_disk(2 * 1024 * 1024)
    settings = MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=2)
    service = SyncService(settings, device_id="stop-full-dev", state_dir=disk, metrics=Metrics(), interval_s=3600)
    service.start()
    stopped = False
    try:
        assert service.link.wait_connected(10)
        service.outbox.put("metrics", service.topics.metrics, {"n": 1})
        service.link.notify()
        assert service.link.wait_drained(10)
        status = retained_status(broker.port, service.topics.status)
        assert status is not None and status["state"] == "online"
        fill_disk(disk)  # the last metrics record has no room now

        service.stop(flush_timeout_s=2)  # does not raise
        stopped = True

        status = retained_status(broker.port, service.topics.status)
        assert status is not None and status["state"] == "offline"  # the link was stopped all the same,
        assert "ts" in status  # cleanly: its own offline record, not the broker's last will
        assert not service.link.connected
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            service.outbox.pending()  # and the outbox closed
    finally:
        if not stopped:  # what stop() should have done, so no link is left behind
            service.link.stop(flush_timeout_s=0.5)
            service.outbox.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("edgerun")]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "last metrics record" in message and "the disk is full" in message and errors[0].exc_info is None


DAEMON_CONFIG = """
device:
  id: {device}
models:
  digits:
    path: {model}
mqtt:
  url: mqtt://127.0.0.1:{port}
  metrics_interval_s: 3600
api:
  enabled: false
state_dir: {state}
"""


def test_sigterm_with_the_state_disk_full_still_exits_0_offline_and_says_why_in_one_line(
    broker: Broker, small_disk: Callable[[int], Path], tmp_path: Path
) -> None:
    state = small_disk(8 * 1024 * 1024)
    config = tmp_path / "edgerun.yaml"
    device = "sigterm-full-dev"
    config.write_text(DAEMON_CONFIG.format(device=device, model=DIGITS, port=broker.port, state=state))
    status_topic = f"edgerun/{device}/status"
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = start_daemon(config, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while (retained_status(broker.port, status_topic, timeout=0.5) or {}).get("state") != "online":
            assert proc.poll() is None and time.monotonic() < deadline, "the daemon did not come online"
        fill_disk(state)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = retained_status(broker.port, status_topic)
    assert status is not None and status["state"] == "offline"
    assert "ts" in status  # the link's own offline record (a clean stop), not the broker's last will
    lines = (tmp_path / "daemon.log").read_text().splitlines()
    full = [line for line in lines if "the disk is full" in line]
    assert len(full) == 1 and "last metrics record" in full[0], lines[-20:]
    assert not any("Traceback" in line for line in lines), lines[-20:]
