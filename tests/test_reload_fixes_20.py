"""SIGHUP and results publishing: a model's ``publish_results``, a model file replaced on disk and a
``logging`` change on reload; a results rate below 1 per second; the API's URL on an IPv6 bind."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, start_daemon
from tests.ota_helpers import model_with_card
from tests.test_daemon import _ready, http
from tests.test_run_device_audit import _device, _distinct_seqs, _finish
from tests.test_sources import make_video
from tests.test_sync import Collector, wait_until

PUBLISH_CONFIG = """
device:
  id: {device}
models:
  digits:
    path: {model}
    publish_results: {publish}
pipelines:
  cam:
    source: mqtt://127.0.0.1:{mqtt}/{device}/in
    model: digits
    sinks: [{sink}]
mqtt:
  url: mqtt://127.0.0.1:{mqtt}
api:
  port: {port}
state_dir: {state}
logging:
  format: text
"""

API_CONFIG = """
models:
  digits:
    path: {model}
api:
  bind: "{bind}"
  port: {port}
state_dir: {state}
logging:
  format: {format}
"""


class _Daemon:
    """``edgerun daemon --config CONFIG`` as a real process, its log in a file."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = start_daemon(config, stderr=self._log)

    def text(self) -> str:
        return self.log_path.read_text()

    def reload(self, count: int) -> None:
        """SIGHUP, then wait for the ``count``-th "config reloaded" line."""
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.text().count("SIGHUP: config reloaded") == count, 30, f"reload {count}")

    def stop(self) -> None:
        """SIGTERM; the daemon must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.text()[-3000:]

    def ready_port(self) -> int:
        """The API's port (the config asks for port 0: a free one the daemon picks itself, so no other
        process can take it first), once ``/ready`` answers 200; the log's tail when it never does."""
        found: list[int] = []

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon ended ({self.proc.returncode}): {self.text()[-3000:]}")
            if not found and (line := re.search(r"HTTP API on http://[^\s\"]+:(\d+)", self.text())):
                found.append(int(line.group(1)))
            return bool(found) and _ready(found[0])

        try:
            wait_until(up, 60, "the daemon to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.text()[-3000:]}") from None
        return found[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_a_sighup_that_changes_publish_results_restarts_the_pipelines_on_that_model_both_ways(
    broker: Broker, tmp_path: Path
) -> None:
    device = "hup-publish-dev"
    sink = tmp_path / "cam.jsonl"
    values: dict[str, Any] = {
        "device": device,
        "model": DIGITS / "digits_int8.onnx",
        "publish": "false",
        "mqtt": broker.port,
        "sink": sink,
        "port": 0,
        "state": tmp_path / "state",
    }
    config = tmp_path / "edgerun.yaml"
    config.write_text(PUBLISH_CONFIG.format(**values))
    results = f"edgerun/{device}/results/digits"
    collector = Collector(broker.port, results)
    camera = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cam{time.monotonic_ns()}")
    camera.connect("127.0.0.1", broker.port)
    camera.loop_start()
    stop = threading.Event()

    def feed() -> None:  # a camera sending a frame every 20 ms for as long as the test runs
        image = (SAMPLES / "digit_3.png").read_bytes()
        while not stop.wait(0.02):
            camera.publish(f"{device}/in", image)

    feeder = threading.Thread(target=feed)
    feeder.start()
    daemon = _Daemon(config)
    try:
        daemon.ready_port()
        wait_until(lambda: _lines(sink) >= 20, 30, "20 inferences in the pipeline")
        assert collector.on(results) == []  # publish_results: false

        config.write_text(PUBLISH_CONFIG.format(**{**values, "publish": "true"}))
        daemon.reload(1)
        wait_until(lambda: len(collector.on(results)) >= 5, 30, "results published after publish_results: true")
        assert "SIGHUP: pipeline cam restarted: publish_results of model digits is now on" in daemon.text()
        assert "model digits reloaded" not in daemon.text()  # the model itself did not change

        config.write_text(PUBLISH_CONFIG.format(**values))  # back to false
        daemon.reload(2)
        after = _lines(sink)
        wait_until(lambda: _lines(sink) >= after + 20, 30, "20 more inferences")
        published = len(collector.on(results))  # what was queued before the restart has arrived by now
        wait_until(lambda: _lines(sink) >= after + 60, 30, "40 more inferences")
        assert len(collector.on(results)) == published, "results still published after publish_results: false"
        assert "SIGHUP: pipeline cam restarted: publish_results of model digits is now off" in daemon.text()

        daemon.stop()
    finally:
        stop.set()
        feeder.join()
        daemon.close()
        camera.loop_stop()
        camera.disconnect()
        collector.close()


def test_a_results_rate_below_one_per_second_lets_about_that_many_through(tmp_path: Path) -> None:
    import edgerun
    from edgerun.sinks.base import Result, result_record
    from edgerun.sources.base import Frame
    from edgerun.sync.outbox import Outbox
    from edgerun.sync.publish import ResultsSink
    from edgerun.sync.topics import Topics

    outbox = Outbox(tmp_path / "outbox.sqlite")
    with edgerun.load(ROOT / "models/digits/digits_int8.onnx") as model:
        prediction = model.predict(SAMPLES / "digit_3.png")
        result = Result(Frame(None, time.time(), "cam#0", 0), result_record(model, "cam#0", prediction.output, 1.0))
    sink = ResultsSink(outbox, None, Topics("edgerun", "dev"), max_per_s=0.5)
    offered = 0
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # a fast pipeline: a result every 10 ms for 3 s
        sink.publish(result)
        offered += 1
        time.sleep(0.01)
    sink.close()
    # 0.5 per second over 3 s: 1 or 2 (a slow machine's late loop adds one at most); never none
    assert 1 <= sink.queued <= 4, (sink.queued, sink.skipped)
    assert sink.queued + sink.skipped == offered
    assert len(outbox) == sink.queued
    outbox.close()


@pytest.mark.slow
def test_run_with_a_results_rate_below_one_per_second_publishes_results(broker: Broker, tmp_path: Path) -> None:
    device = "rate-half-dev"
    video = make_video(tmp_path / "in.avi", frames=30)
    collector = Collector(broker.port, f"edgerun/{device}/#")
    try:
        summary, _ = _finish(
            _device(str(video), broker.port, device, tmp_path / "state", "--results-rate", "0.5", "--fps", "10")
        )
        published, skipped = summary["mqtt"]["results"], summary["mqtt"]["results_skipped"]
        assert summary["frames"] == 30 and published + skipped == 30
        assert 1 <= published <= 4, summary["mqtt"]  # 30 frames at 10 per second: about 3 s at 0.5 per second
        wait_until(lambda: len(_distinct_seqs(collector, device)) == published, 10, "the published results")
    finally:
        collector.close()


@pytest.mark.slow
def test_a_sighup_reloads_a_model_whose_file_and_card_were_replaced_on_disk(tmp_path: Path) -> None:
    model = model_with_card(tmp_path / "m", "digits_fp32.onnx", "digits.onnx")  # 1.0.0, fp32
    config = tmp_path / "edgerun.yaml"
    config.write_text(API_CONFIG.format(model=model, bind="127.0.0.1", port=0, state=tmp_path / "state", format="text"))
    daemon = _Daemon(config)
    try:
        port = daemon.ready_port()
        assert http(port, "/v1/models")[1]["digits"]["version"] == "1.0.0"

        daemon.reload(1)  # nothing changed: nothing reloaded
        assert "changed on disk" not in daemon.text() and "model digits reloaded" not in daemon.text()

        # a new model and card copied over the old ones, at the same paths; the config file is untouched
        shutil.copy(DIGITS / "digits_int8.onnx", model)
        card = (DIGITS / "digits_int8.onnx.card.yaml").read_text().replace("version: 1.0.0", "version: 2.0.0")
        assert "version: 2.0.0" in card
        model.with_name(model.name + ".card.yaml").write_text(card)
        daemon.reload(2)
        assert http(port, "/v1/models")[1]["digits"]["version"] == "2.0.0"
        text = daemon.text()
        assert f"SIGHUP: model digits: {model} or its card changed on disk; reloading it" in text
        assert "SIGHUP: model digits reloaded (digits 2.0.0 on" in text
        status, record = http(port, "/v1/models/digits/predict", (SAMPLES / "digit_3.png").read_bytes())
        assert status == 200 and record["version"] == "2.0.0" and record["output"][0]["label"] == "3"

        daemon.reload(3)  # the new files are what was loaded now: not reloaded again
        assert daemon.text().count("changed on disk") == 1
        daemon.stop()
    finally:
        daemon.close()


@pytest.mark.slow
def test_a_sighup_that_changes_the_logging_format_warns_that_it_applies_at_the_next_restart(tmp_path: Path) -> None:
    values = {"model": DIGITS / "digits_int8.onnx", "bind": "127.0.0.1", "port": 0, "state": tmp_path / "state"}
    config = tmp_path / "edgerun.yaml"
    config.write_text(API_CONFIG.format(**values, format="json"))
    daemon = _Daemon(config)
    try:
        daemon.ready_port()
        config.write_text(API_CONFIG.format(**values, format="text"))
        daemon.reload(1)
        warning = "SIGHUP: logging.format changed; it applies at the next restart (logging.level applies now)"
        assert warning in daemon.text()
        daemon.reload(2)  # still not applied: said again, as for the other sections
        assert daemon.text().count(warning) == 2
        assert daemon.text().rstrip().splitlines()[-1].startswith("{")  # still JSON lines, as the warning says
        daemon.stop()
    finally:
        daemon.close()


@pytest.mark.slow
def test_the_api_url_logged_for_an_ipv6_bind_has_the_address_in_brackets(tmp_path: Path) -> None:
    config = tmp_path / "edgerun.yaml"
    model = DIGITS / "digits_int8.onnx"
    config.write_text(API_CONFIG.format(model=model, bind="::1", port=0, state=tmp_path / "state", format="text"))
    daemon = _Daemon(config)
    try:
        wait_until(lambda: "HTTP API on" in daemon.text() or daemon.proc.poll() is not None, 60, "the API line")
        found = re.search(r"HTTP API on (\S+)", daemon.text())
        assert found is not None and re.fullmatch(r"http://\[::1\]:\d+", found.group(1)), daemon.text()[-2000:]
        wait_until(lambda: _answers(found.group(1) + "/ready"), 30, "the API at the URL logged")
        daemon.stop()
    finally:
        daemon.close()
