"""The daemon end to end, as a real process: video pipeline, HTTP API, MQTT, OTA, SIGHUP, SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SAMPLES, Broker, free_port, held_by_this_process, run_cli, start_daemon
from tests.ota_helpers import StatusWatcher, make_key, model_with_card
from tests.test_ota import push
from tests.test_sources import make_video
from tests.test_sync import Collector, wait_until

pytestmark = pytest.mark.slow

DIGITS_INT8 = ROOT / "models" / "digits" / "digits_int8.onnx"


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
    proc = start_daemon(config, stderr=log)
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


def _in_process_daemon(state_dir: Path, models: dict[str, str], pipelines: dict[str, Any]) -> Any:
    """A ``Daemon`` in this process (not started) serving ``models`` (name -> path) to ``pipelines``, no HTTP API."""
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    config = parse_config(
        {
            "models": {name: {"path": path} for name, path in models.items()},
            "pipelines": pipelines,
            "api": {"enabled": False},
            "state_dir": str(state_dir),
        },
        "test",
    )
    return Daemon(config)


def test_a_sensor_window_or_channel_count_the_model_does_not_accept_is_named_and_the_daemon_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = str(ROOT / "models/vibration/vibration_int8.tflite")
    samples = str(ROOT / "models/vibration/samples/normal.csv")
    two = tmp_path / "two.csv"
    two.write_text("".join(f"{i * 0.1:.1f},{i * 0.2:.1f}\n" for i in range(300)))
    daemon = _in_process_daemon(
        tmp_path,
        {"vibration": model},
        {
            "wrong": {"source": samples, "model": "vibration", "window": 100, "restart_s": 0.1},
            "columns": {"source": str(two), "model": "vibration", "restart_s": 0.1},
            "fits": {"source": samples, "model": "vibration"},
        },
    )
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["fits"].state == "finished", 30, "the pipeline that fits to finish")
        wait_until(lambda: daemon.runners["wrong"].state == "waiting", 30, "the other to wait")
        wait_until(lambda: daemon.runners["columns"].state == "waiting", 30, "the two-column one to wait")
        assert daemon.metrics.snapshot()["models"]["vibration"]["count"] > 0  # the other pipeline ran
        messages = [r.getMessage() for r in caplog.records]
        assert any("window of 100 rows does not fit vibration" in m for m in messages)
        assert any("two.csv has 2 channels per row, and vibration takes 3" in m for m in messages)
    finally:
        daemon.stop()


def test_a_frame_that_fails_in_a_pipeline_is_one_warning_naming_the_pipeline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = (ROOT / "models/vibration/samples/normal.csv").read_text().splitlines()
    readings = tmp_path / "readings.csv"
    readings.write_text("\n".join([*rows[:5], "0.005,1.0,oops,2.0", *rows[5:300]]) + "\n")  # one bad row
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"vibration": str(ROOT / "models/vibration/vibration_int8.tflite")},
        {"line": {"source": str(readings), "model": "vibration"}},
    )
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["line"].state == "finished", 30, "the pipeline to finish")
    finally:
        daemon.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"pipeline line: {readings} line 6: field 3 ('y') is not a number: 'oops'; row skipped"]


OTA_CONFIG = """
device:
  id: {device}
models:
  digits:
    path: {model}
    threads: {threads}
mqtt:
  url: mqtt://127.0.0.1:{mqtt}
ota:
  trusted_keys: [{key}]
api:
  port: {port}
  max_concurrency: {concurrency}
state_dir: {state}
logging:
  format: text
"""


def _install_over_the_air(state: Path, source: Path, version: str) -> None:
    """Install ``source`` as digits ``version`` and make it active, as the OTA agent does (edgerun/ota/store.py)."""
    from edgerun.card import load_card
    from edgerun.files import sha256_file
    from edgerun.ota.store import ModelStore

    store = ModelStore(state / "models", keep=2)
    card = {**load_card(source.with_name(source.name + ".card.yaml")).to_dict(), "name": "digits", "version": version}
    manifest = {"update_id": f"u-{version}", "sha256": sha256_file(source), "size": source.stat().st_size}
    store.install("digits", version, "onnx", source, {**manifest, "format": "onnx"}, card)
    store.activate("digits", version)


def test_a_sighup_keeps_the_version_ota_made_active_and_reloads_it_with_the_new_settings(
    broker: Broker, tmp_path: Path
) -> None:
    _, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")  # the config's file: 1.0.0
    state = tmp_path / "state"
    _install_over_the_air(state, v1, "1.0.0")  # the first start's seeding
    _install_over_the_air(state, DIGITS_INT8, "3.0.0")  # then an update made 3.0.0 active
    port = free_port()
    values = {
        "device": "hup-dev",
        "model": v1,
        "threads": 1,
        "mqtt": broker.port,
        "key": public,
        "port": port,
        "concurrency": 32,
        "state": state,
    }
    config = tmp_path / "edgerun.yaml"
    config.write_text(OTA_CONFIG.format(**values))
    collector = Collector(broker.port, "edgerun/hup-dev/status")
    log_path = tmp_path / "daemon.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = start_daemon(config, stderr=log)

    def reloads() -> int:
        return log_path.read_text().count("SIGHUP: config reloaded")

    try:
        wait_until(lambda: _ready(port), 60, "the daemon to be ready")
        assert http(port, "/v1/models")[1]["digits"]["version"] == "3.0.0"

        config.write_text(OTA_CONFIG.format(**{**values, "concurrency": 16}))  # only the api section
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads() == 1, 20, "the first reload")
        assert "model digits reloaded" not in log_path.read_text()
        assert http(port, "/v1/models")[1]["digits"]["version"] == "3.0.0"

        config.write_text(OTA_CONFIG.format(**{**values, "concurrency": 16, "threads": 2}))  # the model's settings
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads() == 2, 20, "the second reload")
        text = log_path.read_text()
        assert "SIGHUP: model digits reloaded (digits 3.0.0 on cpu)" in text
        assert "loaded digits 3.0.0 (onnx) on cpu with 2 thread(s)" in text  # the new settings
        models = http(port, "/v1/models")[1]
        assert models["digits"]["version"] == "3.0.0" and models["digits"]["path"].startswith(str(state))
        status, record = http(port, "/v1/models/digits/predict", (SAMPLES / "digit_3.png").read_bytes())
        assert status == 200 and record["version"] == "3.0.0"
        time.sleep(1.0)  # a wrong version would have been republished by now
        published = [
            m["models"]["digits"]["version"] for m in collector.on("edgerun/hup-dev/status") if m.get("models")
        ]
        assert published and set(published) == {"3.0.0"}, published

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        collector.close()


def _slow_png() -> bytes:
    """A PNG of 8000 x 8000 pixels (under the decoding limit): small to send, a fraction of a second to decode."""
    import cv2
    import numpy as np

    image = (np.add.outer(np.arange(8000), np.arange(8000)) % 256).astype(np.uint8)
    return bytes(cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1])


def test_sigterm_answers_the_requests_in_flight_then_exits_0(tmp_path: Path) -> None:
    import socket

    body = _slow_png()
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {DIGITS_INT8}\n"
        f"api:\n  port: {port}\n  batch_max_size: 1\nstate_dir: {tmp_path / 'state'}\nlogging:\n  format: text\n"
    )
    proc = start_daemon(config, stderr=subprocess.PIPE)
    request = (
        f"POST /v1/models/digits/predict HTTP/1.1\r\nhost: edgerun\r\ncontent-type: image/png\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    connections = []
    try:
        wait_until(lambda: _ready(port), 60, "the daemon to be ready")
        for _ in range(12):  # each a quarter of a second of decoding or more: native code in pool threads
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(request)
            connections.append(s)
        time.sleep(0.15)  # every request read and in progress
        proc.send_signal(signal.SIGTERM)
        answers = []
        for s in connections:
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
            answers.append(raw)
        assert proc.wait(timeout=60) == 0
    finally:
        for s in connections:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 12, stderr[-2000:]
    assert all(json.loads(a.split(b"\r\n\r\n", 1)[1])["version"] == "1.0.0" for a in answers)
    assert "terminate called" not in stderr and "Aborted" not in stderr


def _unusable_state_dirs(tmp_path: Path) -> list[tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    cases = [(a_file, "not a directory"), (a_file / "state", f"not a directory ({a_file} is not one)")]
    if Path("/sys").is_dir():  # sysfs: nobody, root included, creates a folder there
        cases.append((Path("/sys/edgerun-state"), "cannot create it: "))
    return cases


def test_an_unusable_state_dir_is_one_line_from_config_check_and_the_daemon(tmp_path: Path) -> None:
    for state, reason in _unusable_state_dirs(tmp_path):
        config = tmp_path / "c.yaml"
        config.write_text(
            f"models:\n  digits:\n    path: {DIGITS_INT8}\napi:\n  port: {free_port()}\nstate_dir: {state}\n"
        )
        expected = f"edgerun: error: {config}: state_dir {state}: {reason}"
        for args in (("config", "check", str(config)), ("daemon", "--config", str(config))):
            result = run_cli(*args)
            assert result.returncode == 2, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(expected), (args, result.stderr)
        assert not (Path("/sys/edgerun-state")).exists()


def test_config_check_accepts_a_state_dir_it_can_create_and_leaves_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "var" / "edgerun"
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  digits:\n    path: {DIGITS_INT8}\nstate_dir: {state}\n")
    result = run_cli("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.logs_errors
def test_an_unexpected_error_while_reloading_is_logged_and_the_running_config_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from edgerun.config import load_config
    from edgerun.daemon import Daemon

    path = tmp_path / "c.yaml"
    path.write_text(f"models:\n  digits:\n    path: {DIGITS_INT8}\napi:\n  enabled: false\nstate_dir: {tmp_path}\n")
    daemon = Daemon(load_config(path), path)
    daemon.start()
    try:
        running = daemon.config

        def bug(*args: Any, **kwargs: Any) -> Any:  # a library failing in a way nobody foresaw
            raise RuntimeError("unforeseen")

        monkeypatch.setattr(yaml, "load", bug)  # what load_config parses with
        daemon.reload()  # returns: the daemon's main loop goes on
        assert daemon.config is running
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == ["SIGHUP: config not reloaded (unexpected error), the running one is kept"]
        assert daemon.slots["digits"].get().predict(SAMPLES / "digit_3.png").output[0]["label"] == "3"
    finally:
        daemon.stop()


def test_the_systemd_watchdog_is_fed_while_a_sighup_reload_loads_a_model(tmp_path: Path) -> None:
    import os
    import socket
    import sys
    import tempfile

    config = tmp_path / "c.yaml"
    text = "models:\n  digits:\n    path: {model}\n    threads: {threads}\napi:\n  enabled: false\n"
    text += f"isolation: process\nstate_dir: {tmp_path / 'state'}\nlogging:\n  format: text\n"
    config.write_text(text.format(model=DIGITS_INT8, threads=1))
    received: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgerun-") as folder:  # a socket path is at most 107 bytes
        address = str(Path(folder) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(0.2)

        def listen() -> None:
            while True:
                try:
                    received.append(sock.recv(4096).decode())
                except TimeoutError:
                    continue
                except OSError:
                    return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        # WatchdogSec of 20 ms: a ping every 10 ms; a reload that starts a worker process takes far longer
        env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
        env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="20000")
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: any(m.startswith("READY=1") for m in received), 60, "READY=1")
            config.write_text(text.format(model=DIGITS_INT8, threads=2))  # a changed model: loaded in a new worker
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: sum(m.startswith("READY=1") for m in received) == 2, 60, "READY=1 after the reload")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sock.close()
            listener.join(timeout=5)
    start = next(i for i, m in enumerate(received) if m.startswith("RELOADING=1"))
    end = next(i for i, m in enumerate(received) if i > start and m.startswith("READY=1"))
    assert "WATCHDOG=1" in received[start + 1 : end], received[start : end + 1]
    assert received[-1] == "STOPPING=1"


def test_a_sink_that_fails_to_open_leaves_the_source_closed(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", frames=5, size=(64, 48))
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"digits": str(DIGITS_INT8)},
        {"cam": {"source": str(video), "model": "digits", "sinks": [str(tmp_path / "gone" / "out.jsonl")]}},
    )
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["cam"].state == "waiting", 30, "the pipeline to wait for a retry")
        assert not held_by_this_process(video)  # a camera would be free for the retry, or for another program
    finally:
        daemon.stop()


class _HeldStream:
    """An MJPEG stream over HTTP whose answer is held back until ``release()``: a source still opening."""

    def __init__(self) -> None:
        import socket

        import cv2
        import numpy as np

        self._jpeg = bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))[1])
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/"
        self.asked = threading.Event()
        self._release = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def release(self) -> None:
        self._release.set()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            self.asked.set()
            self._release.wait(60)
            part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(self._jpeg)
            try:
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=frame\r\n\r\n")
                for _ in range(50):
                    conn.sendall(part + self._jpeg + b"\r\n")
                    time.sleep(0.02)
            except OSError:
                return

    def close(self) -> None:
        self._release.set()
        self._server.close()


def test_a_pipeline_stopped_while_its_source_opens_never_runs(tmp_path: Path) -> None:
    stream = _HeldStream()
    out = tmp_path / "out.jsonl"
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"digits": str(DIGITS_INT8)},
        {"cam": {"source": stream.url, "model": "digits", "sinks": [str(out)]}},
    )
    daemon.start()
    runner = daemon.runners["cam"]
    stopper = threading.Thread(target=runner.stop)
    try:
        assert stream.asked.wait(30)  # the source is opening: the stream has not answered yet
        stopper.start()
        wait_until(runner._stop.is_set, 10, "the stop to be asked for")
        stream.release()  # the source opens after the stop
        stopper.join(timeout=60)
        assert not runner.thread.is_alive() and runner.state == "stopped"
        assert out.read_text() == ""  # not one frame inferred after the stop
    finally:
        stream.close()
        if stopper.is_alive():
            stopper.join(timeout=60)
        daemon.stop()


def test_a_pipeline_whose_standard_output_went_away_is_retried_not_left_dead(tmp_path: Path) -> None:
    import sys

    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {DIGITS_INT8}\n"
        f"pipelines:\n  p:\n    source: {SAMPLES}\n    model: digits\n    sinks: [jsonl]\n    restart_s: 0.2\n"
        f"api:\n  enabled: false\nstate_dir: {tmp_path / 'state'}\nlogging:\n  format: text\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # whoever read the results (a pipe, a log collector) went away
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: sum("pipeline p: " in x and "retrying in 0.2 s" in x for x in lines) >= 2, 60, "two retries")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    assert not any("Exception in thread" in x for x in lines)
    assert any("Broken pipe" in x for x in lines)
