"""``ota rollback --wait`` and ``ota publish --wait`` follow each device's records of the update or command they
sent, not only its latest record: a device whose worker goes straight on to the next update (queued behind)
publishes that update's ``received`` right after this one's outcome, and the wait, which looks every 0.5 s,
saw only the ``received`` and waited out its timeout (exit 1) for an outcome already published.

The device here is this test on the broker, speaking the protocol's records (the hardware-free boundary):
the timing that hides an outcome is otherwise a race."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgerun import __version__
from tests.conftest import ROOT, Broker
from tests.ota_helpers import make_key


def _record(**fields: Any) -> bytes:
    return json.dumps({"schema": 1, "progress": 1.0, "ts": int(time.time()), **fields}).encode()


class _QuickDevice:
    """Answers the command it is sent on ``P/dev1/cmd`` with ``rolled_back``, then at once with the
    ``received`` of another update, both retained, as a real device's OTA status records are."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="quick-dev1")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        online = {"schema": 1, "state": "online", "ts": int(time.time()), "runtime": __version__, "groups": []}
        online["models"] = {"digits": {"version": "1.1.0", "format": "onnx", "delegate": "cpu"}}
        self.client.publish("edgerun/dev1/status", json.dumps(online), qos=1, retain=True).wait_for_publish(10)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.subscribe("edgerun/dev1/cmd", qos=1)
        assert self.subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        command = json.loads(base64.b64decode(json.loads(msg.payload)["payload"]))
        done = _record(command_id=command["command_id"], model="digits", version="1.1.0", state="rolled_back")
        queued = _record(update_id="u-next", model="digits", version="1.2.0", state="received", progress=0.0)
        client.publish("edgerun/dev1/ota/status", done, qos=1, retain=True)
        client.publish("edgerun/dev1/ota/status", queued, qos=1, retain=True)

    def close(self) -> None:
        self.client.publish("edgerun/dev1/status", b"", qos=1, retain=True).wait_for_publish(10)
        self.client.publish("edgerun/dev1/ota/status", b"", qos=1, retain=True).wait_for_publish(10)
        self.client.loop_stop()
        self.client.disconnect()


def test_a_rollback_wait_sees_the_outcome_a_record_of_the_next_update_followed_at_once(
    own_broker: Broker, tmp_path: Path
) -> None:
    _, private, _ = make_key(tmp_path)
    device = _QuickDevice(own_broker)
    try:
        argv = [sys.executable, "-m", "edgerun", "ota", "rollback", "--model", "digits", "--key", str(private),
                "--mqtt", own_broker.url, "--device", "dev1", "--wait", "--timeout", "20"]  # fmt: skip
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        device.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.split()[:2] == ["dev1", "rolled_back"] for line in done.stdout.splitlines()), done.stdout
    assert done.stderr == ""
