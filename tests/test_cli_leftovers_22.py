"""User errors the CLI sweep found outside the commands it fixed, each one line now:

* ``devices --probe-root`` with a FIFO where a probe reads a file (``proc/cpuinfo``) waited for a
  writer for ever; a device node there (``/dev/zero``) was read without end, until the process was
  killed for its memory. A probe now reads regular files only, and 4 MiB of one at most.
* ``ota publish --key`` (and ``--ota-key``) read the key file whole: ``/dev/zero`` filled the memory.
  A key file over 64 KiB is now refused before it is parsed.
* ``ota status`` over a fleet in which one device's retained status record holds a list for its
  ``models`` ended in a traceback, for every device.
* ``config check`` writing the effective config to a full stdout with ``PYTHONUNBUFFERED=1`` (as under
  systemd or in a container) ended in a traceback.
* ``--mqtt-ca DIR`` said the file was "not found".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.conftest import ROOT, Broker, FakeTree, run_cli


def test_devices_passes_over_a_fifo_where_the_probe_reads_a_file(tmp_path: Path) -> None:
    root = FakeTree(tmp_path / "root").file("sys/bus/usb/devices/1-1/idProduct", "089a\n").root
    os.mkfifo(root / "sys/bus/usb/devices/1-1/idVendor")  # nobody ever writes it
    (root / "proc").mkdir()
    os.mkfifo(root / "proc/cpuinfo")
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "devices", "--probe-root", str(root), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # the old code never returned
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)["device"]
    assert facts["edgetpu"] == [] and facts["cpu_model"] is None  # half a USB id is no Coral, a FIFO no CPU


def test_a_key_file_of_more_than_64_kib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 70_000 + b"\n-----END PRIVATE KEY-----\n")
    model = ROOT / "models/digits/digits_int8.onnx"
    sent = run_cli(
        "ota", "publish", str(model), "--model", "digits", "--version", "9.9.9", "--device", "d1",
        "--key", str(big), "--mqtt", "mqtt://127.0.0.1:1",
    )  # fmt: skip
    assert sent.returncode == 2, sent.stderr
    assert sent.stderr == f"edgerun: error: key {big} is not a PEM key: over 64 KiB\n"
    ran = run_cli(
        "run", str(model), "--source", str(ROOT / "models/digits/samples"), "--mqtt", "mqtt://127.0.0.1:1",
        "--ota-key", str(big),
    )  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr == f"edgerun: error: trusted key {big} is not a PEM key: over 64 KiB\n"


def test_ota_status_shows_the_fleet_when_one_device_s_models_are_a_list(own_broker: Broker) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", own_broker.port)
    client.loop_start()
    try:
        for device, models in (("odd", b'["a", "b"]'), ("fine", b'{"m": {"version": "1.0.0", "delegate": "cpu"}}')):
            payload = b'{"state": "online", "models": ' + models + b"}"
            client.publish(f"edgerun/{device}/status", payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    done = run_cli("ota", "status", "--mqtt", own_broker.url, "--wait", "1")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert sorted(rows) == ["fine", "odd"]
    assert "m 1.0.0 (cpu)" in rows["fine"]


def test_config_check_to_a_full_unbuffered_stdout_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "edgerun", "config", "check", str(ROOT / "device-configs/generic-x86-64.yaml")],
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == "edgerun: error: cannot write stdout: No space left on device"
    assert "Traceback" not in done.stderr


def test_a_tls_file_option_naming_a_directory_says_it_is_one(tmp_path: Path) -> None:
    done = run_cli("mqtt", "check", "--mqtt", "mqtts://127.0.0.1:1", "--mqtt-ca", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"edgerun: error: MQTT ca file is a directory, not a file: {tmp_path}\n"  # "not found"
