"""The daemon end to end, as a real process: video pipeline, HTTP API, MQTT, OTA, SIGHUP, SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SAMPLES, Broker, free_port, run_cli
from tests.ota_helpers import StatusWatcher, make_key, model_with_card
from tests.test_ota import push
from tests.test_sources import make_video
from tests.test_sync import Collector, wait_until

pytestmark = pytest.mark.slow


def http(port: int, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


CONFIG = """
device:
  id: e2e-dev
models:
  digits:
    path: {model}
    threads: {threads}
pipelines:
  video:
    source: {video}
    model: digits
    sinks: [{sink}]
mqtt:
  url: mqtt://127.0.0.1:{mqtt}
  metrics_interval_s: 1
ota:
  trusted_keys: [{key}]
  probation_s: 0
api:
  port: {port}
state_dir: {state}
logging:
  format: json
"""


def test_the_daemon_serves_updates_reloads_and_stops_cleanly(broker: Broker, tmp_path: Path) -> None:
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = model_with_card(tmp_path / "v2", "digits_int8.onnx", "digits.onnx")
    video = make_video(tmp_path / "in.avi", frames=25, size=(64, 48))
    port = free_port()
    values = {
        "model": v1,
        "threads": 1,
        "video": video,
        "sink": tmp_path / "video.jsonl",
        "mqtt": broker.port,
        "key": public,
        "port": port,
        "state": tmp_path / "state",
    }
    config = tmp_path / "edgerun.yaml"
    config.write_text(CONFIG.format(**values))
    collector = Collector(broker.port, "edgerun/e2e-dev/#")
    watcher = StatusWatcher(broker.port)
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    failures: list[Any] = []
    stop = threading.Event()
    try:
        wait_until(lambda: _ready(port), 60, "the daemon to be ready")
        # the video pipeline ran through its 25 frames into its sink
        wait_until(
            lambda: (
                (tmp_path / "video.jsonl").exists() and len((tmp_path / "video.jsonl").read_text().splitlines()) == 25
            ),
            20,
            "25 video frames",
        )
        status, record = http(port, "/v1/models/digits/predict", (SAMPLES / "digit_3.png").read_bytes())
        assert status == 200 and record["output"][0]["label"] == "3" and record["version"] == "1.0.0"
        metrics_text = http(port, "/metrics")[1]
        assert 'edgerun_inferences_total{delegate="cpu",model="digits",version="1.0.0"}' in metrics_text
        wait_until(
            lambda: any("digits" in m.get("models", {}) for m in collector.on("edgerun/e2e-dev/metrics")),
            15,
            "an MQTT metrics record",
        )

        versions: list[str] = []

        def stream() -> None:  # predictions keep flowing through the update and the reload
            body = (SAMPLES / "digit_5.png").read_bytes()
            while not stop.is_set():
                code, answer = http(port, "/v1/models/digits/predict", body)
                if code != 200 or answer["output"][0]["label"] != "5":
                    failures.append((code, answer))
                else:
                    versions.append(answer["version"])
                time.sleep(0.005)

        streamer = threading.Thread(target=stream)
        streamer.start()
        manifest = push(broker.port, v2, "1.1.0", key, devices=["e2e-dev"])
        assert (
            watcher.wait_state("e2e-dev", manifest["update_id"], {"active", "rejected", "failed"})["state"] == "active"
        )
        wait_until(lambda: versions and versions[-1] == "1.1.0", 10, "requests served by 1.1.0")

        config.write_text(CONFIG.format(**{**values, "threads": 2}))  # a changed model section
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: b"config reloaded" in (tmp_path / "daemon.log").read_bytes(), 20, "the reload")
        config.write_text("models: [broken\n")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: b"running one is kept" in (tmp_path / "daemon.log").read_bytes(), 20, "the refused reload")
        time.sleep(0.5)
        stop.set()
        streamer.join()
        assert not failures, failures[:3]
        assert len(versions) > 50

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_until(lambda: collector.on("edgerun/e2e-dev/status")[-1].get("state") == "offline", 10, "offline")
        outbox = run_cli("outbox", "--state-dir", str(tmp_path / "state"), "--json")
        assert json.loads(outbox.stdout)["records"] == 0  # nothing queued was lost or left behind
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        collector.close()
        watcher.close()


def _ready(port: int) -> bool:
    try:
        return http(port, "/ready")[0] == 200
    except OSError:
        return False


def test_a_broken_config_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  digits:\n    path: x.onnx\n    colour: red\n")
    result = run_cli("daemon", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == f"edgerun: error: {config}: models.digits.colour: unknown key"


def test_a_missing_model_file_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  digits:\n    path: {tmp_path}/gone.onnx\napi:\n  port: {free_port()}\n")
    result = run_cli("daemon", "--config", str(config))
    assert result.returncode == 1 and "model file not found" in result.stderr and "Traceback" not in result.stderr


def test_a_delegate_preference_order_takes_the_first_that_works(tmp_path: Path) -> None:
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon
    from edgerun.errors import DelegateError

    config = parse_config(
        {
            "models": {
                "digits": {
                    "path": str(ROOT / "models/digits/digits_int8.tflite"),
                    "delegate": ["edgetpu", "gpu", "xnnpack", "cpu"],
                }
            },
            "state_dir": str(tmp_path),
        },
        "test",
    )
    model = Daemon(config)._load("digits", config.models["digits"])
    assert model.delegate == "xnnpack"
    only_absent = parse_config(
        {
            "models": {
                "digits": {"path": str(ROOT / "models/digits/digits_int8.tflite"), "delegate": ["edgetpu", "gpu"]}
            }
        },
        "test",
    )
    with pytest.raises(DelegateError, match="gpu"):
        Daemon(only_absent)._load("digits", only_absent.models["digits"])


def test_a_sensor_window_the_model_does_not_accept_is_named_and_the_daemon_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    model = str(ROOT / "models/vibration/vibration_int8.tflite")
    samples = str(ROOT / "models/vibration/samples/normal.csv")
    config = parse_config(
        {
            "models": {"vibration": {"path": model}},
            "pipelines": {
                "wrong": {"source": samples, "model": "vibration", "window": 100, "restart_s": 0.1},
                "fits": {"source": samples, "model": "vibration"},
            },
            "api": {"enabled": False},
            "state_dir": str(tmp_path),
        },
        "test",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["fits"].state == "finished", 30, "the pipeline that fits to finish")
        wait_until(lambda: daemon.runners["wrong"].state == "waiting", 30, "the other to wait")
        assert daemon.metrics.snapshot()["models"]["vibration"]["count"] > 0  # the other pipeline ran
        assert any("window of 100 rows does not fit vibration" in r.getMessage() for r in caplog.records)
    finally:
        daemon.stop()


def test_a_frame_that_fails_in_a_pipeline_is_one_warning_naming_the_pipeline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    rows = (ROOT / "models/vibration/samples/normal.csv").read_text().splitlines()
    readings = tmp_path / "readings.csv"
    readings.write_text("\n".join([*rows[:5], "0.005,1.0,oops,2.0", *rows[5:300]]) + "\n")  # one bad row
    config = parse_config(
        {
            "models": {"vibration": {"path": str(ROOT / "models/vibration/vibration_int8.tflite")}},
            "pipelines": {"line": {"source": str(readings), "model": "vibration"}},
            "api": {"enabled": False},
            "state_dir": str(tmp_path / "state"),
        },
        "test",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["line"].state == "finished", 30, "the pipeline to finish")
    finally:
        daemon.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"pipeline line: {readings} line 6: field 2 is not a number: 'oops'; row skipped"]
