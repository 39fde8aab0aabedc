"""What a daemon's start does, and says, found by a new user's walkthrough.

* A start whose HTTP API port is in use stops before anything ran: the port is taken first. It ran
  every pipeline once (a folder's records written), connected to the broker (``online``, results,
  the commands kept in its session taken), then exited 1; under ``Restart=on-failure``, every 5 s.
* With OTA on, the store's active version serves without the config's ``path`` being loaded to
  learn its name (a second load at every start and SIGHUP), and a ``path`` that is not there serves
  the store's active version with one WARNING, where it stopped the start.
* A model file not there is named by its key (``models.digits.path: ...``) and so is an unusable
  trusted key (``ota.trusted_keys[0]: ...``).
* A SIGHUP that adds a model or a pipeline says ``added``, not ``reloaded`` or ``restarted``.

Real daemon processes, a real Mosquitto (its own log of who connected), real digits models and keys.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgerun
from edgerun.card import ModelCard
from edgerun.model import Model
from edgerun.ota.serving import serve_from_store
from edgerun.ota.store import ModelStore
from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, free_port, run_cli, start_daemon, stop_process
from tests.ota_helpers import make_key, model_with_card
from tests.test_daemon import _ready, http
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private broker that logs every client that connects."""
    b = Broker(tmp_path / "broker", extra_conf="log_type all\nlog_dest stderr\n")
    b.start()
    yield b
    b.stop()


def _taken_port() -> socket.socket:
    """A socket listening on a loopback port, as another server holding it."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def test_a_start_whose_api_port_is_in_use_runs_no_pipeline_and_never_reaches_the_broker(
    logging_broker: Broker, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    shutil.copytree(SAMPLES, inbox)
    out = tmp_path / "out.jsonl"
    config = tmp_path / "c.yaml"
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        config.write_text(
            f"device:\n  id: start24-busy\nmodels:\n  digits:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
            "    publish_results: true\n"
            f"pipelines:\n  folder:\n    source: {inbox}/\n    model: digits\n    sinks: [{out}]\n"
            f"mqtt:\n  url: mqtt://127.0.0.1:{logging_broker.port}\n"
            f"api:\n  port: {port}\nstate_dir: {tmp_path / 'state'}\nlogging:\n  level: WARNING\n"
        )
        done = run_cli("daemon", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"edgerun: error: the HTTP API could not listen on 127.0.0.1:{port} (Address already in use)"
    ], done.stderr
    assert not out.exists()  # the pipeline never ran
    log = (logging_broker.workdir / "log").read_text(errors="replace")
    assert "start24-busy" not in log  # never connected: no online, no results, no command taken from its session


def test_a_request_made_while_the_daemon_starts_is_answered_once_it_is_ready(tmp_path: Path) -> None:
    """The port listens from the start, and is served once the models and pipelines are up: the first
    answer ``/ready`` gives is 200, never a 503 of a daemon half started."""
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
        f"api:\n  port: {port}\nstate_dir: {tmp_path / 'state'}\n"
    )
    daemon = start_daemon(config)
    try:

        def connects() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return daemon.poll() is not None

        wait_until(connects, 60, "the daemon to listen")
        code, body = http(port, "/ready")
        assert code == 200 and body["ready"] is True and set(body["models"]) == {"digits"}, body
    finally:
        assert stop_process(daemon, 30) == 0


def _version_card(folder: Path, version: str) -> Path:
    """``digits.onnx`` (the fp32 digits model) in ``folder`` with a card of ``version``."""
    model = model_with_card(folder, "digits_fp32.onnx", "digits.onnx")
    card = model.with_name("digits.onnx.card.yaml")
    card.write_text(card.read_text().replace("version: 1.0.0", f"version: {version}"))
    return model


OTA_CONFIG = """\
device:
  id: {device}
models:
  digits:
    path: {model}
    delegate: cpu
mqtt:
  url: mqtt://127.0.0.1:{mqtt}
ota:
  trusted_keys: [{public}]
api:
  port: {port}
state_dir: {state}
logging:
  format: text
"""


def test_with_ota_the_store_serves_without_loading_the_config_file_and_a_file_gone_serves_the_store(
    broker: Broker, tmp_path: Path
) -> None:
    _, _, public = make_key(tmp_path)
    v15 = _version_card(tmp_path / "v15", "1.5.0")
    v10 = model_with_card(tmp_path / "v10", "digits_int8.onnx", "digits.onnx")  # 1.0.0
    config, log_path = tmp_path / "c.yaml", tmp_path / "daemon.log"

    def run(model: Path) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        config.write_text(
            OTA_CONFIG.format(
                device="start24-ota", model=model, mqtt=broker.port, public=public, port=port, state=tmp_path / "s"
            )
        )
        log_path.write_bytes(b"")
        with open(log_path, "ab") as log:
            daemon = start_daemon(config, stderr=log)
        wait_until(lambda: _ready(port) or daemon.poll() is not None, 60, "the daemon to be ready")
        assert daemon.poll() is None, log_path.read_text()
        return daemon, port

    daemon, _ = run(v15)  # the first start installs 1.5.0 and makes it active
    assert stop_process(daemon, 30) == 0
    daemon, port = run(v10)  # 1.0.0 given: the store's 1.5.0 wins, and 1.0.0 is not loaded to learn its name
    try:
        assert http(port, "/v1/models")[1]["digits"]["version"] == "1.5.0"
        text = log_path.read_text()
        assert "serving digits 1.5.0 from the store instead of" in text, text
        assert "loaded digits 1.0.0" not in text, text
    finally:
        assert stop_process(daemon, 30) == 0

    gone = tmp_path / "gone" / "digits_gone.onnx"
    daemon, port = run(gone)  # it stopped the start: "model file not found"
    try:
        assert http(port, "/v1/models")[1]["digits"]["version"] == "1.5.0"
        warnings = [line.split(" WARNING ", 1)[1] for line in log_path.read_text().splitlines() if " WARNING " in line]
        assert warnings == [
            f"edgerun.ota.serving: model store: {gone} is not there: serving digits 1.5.0, active in the store"
        ], warnings
        config.write_text(config.read_text().replace("delegate: cpu", "delegate: [cpu]"))  # a changed section
        daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: model digits reloaded" in log_path.read_text(), 60, "the reload")
        text = log_path.read_text()  # chosen as at start: the store's 1.5.0, loaded with the new section
        assert " ERROR " not in text and text.count(f"{gone} is not there") == 2, text
        assert "SIGHUP: model digits reloaded (digits 1.5.0 on cpu)" in text, text
    finally:
        assert stop_process(daemon, 30) == 0

    checked = run_cli("config", "check", str(config))  # the file is still what a fresh device needs
    assert checked.returncode == 2
    assert checked.stderr.strip() == f"edgerun: error: {config}: models.digits.path: model file not found: {gone}"


def test_edgerun_run_with_ota_names_the_model_from_its_card_and_loads_only_what_serves(tmp_path: Path) -> None:
    """``serve_from_store`` as ``edgerun run --ota-key`` calls it (no name given): the card names the model."""
    loaded: list[Path] = []

    def load_counted(path: Path, card: ModelCard | None) -> Model:
        loaded.append(path)
        return edgerun.load(path, card=card, state_dir=tmp_path / "caches")

    store = ModelStore(tmp_path / "state" / "models")
    serve_from_store(_version_card(tmp_path / "v15", "1.5.0"), store, load_counted).close()
    loaded.clear()
    given = model_with_card(tmp_path / "v10", "digits_int8.onnx", "digits.onnx")
    with serve_from_store(given, store, load_counted) as model:
        assert (model.name, model.version) == ("digits", "1.5.0")
    assert loaded == [store.verified_file("digits", "1.5.0")]


def test_a_model_file_not_there_is_named_by_its_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {tmp_path / 'digits_gone.onnx'}\napi:\n  enabled: false\n"
        f"state_dir: {tmp_path / 'state'}\nlogging:\n  level: WARNING\n"
    )
    done = run_cli("daemon", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"edgerun: error: {config}: models.digits.path: model file not found: {tmp_path / 'digits_gone.onnx'}"
    ], done.stderr


def test_an_unusable_trusted_key_is_named_by_its_key_at_start_and_in_config_check(tmp_path: Path) -> None:
    _, private, public = make_key(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.onnx'}\nmqtt:\n  url: mqtt://127.0.0.1:1\n"
        f"ota:\n  trusted_keys: [{public}, {private}]\napi:\n  enabled: false\nstate_dir: {tmp_path / 'state'}\n"
    )
    for done in (run_cli("daemon", "--config", str(config)), run_cli("config", "check", str(config))):
        assert done.returncode == 2
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"edgerun: error: {config}: ota.trusted_keys[1]: trusted key {private} "
        ), done.stderr


def test_a_sighup_that_adds_a_model_and_a_pipeline_says_added(tmp_path: Path) -> None:
    config, log_path = tmp_path / "c.yaml", tmp_path / "daemon.log"
    tail = f"api:\n  enabled: false\nstate_dir: {tmp_path / 'state'}\nlogging:\n  format: text\n"
    digits = f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
    config.write_text(digits + tail)
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)], cwd=ROOT, stderr=log
        )
    try:
        wait_until(lambda: "edgerun daemon ready" in log_path.read_text(), 60, "the daemon to be ready")
        config.write_text(
            digits + f"  vib:\n    path: {DIGITS / 'digits_fp32.onnx'}\n"
            f"pipelines:\n  mq:\n    source: {SAMPLES}/\n    model: vib\n    sinks: [{tmp_path / 'out.jsonl'}]\n" + tail
        )
        daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: config reloaded" in log_path.read_text(), 60, "the reload")
    finally:
        assert stop_process(daemon, 30) == 0
    said = [line.split(": ", 1)[1] for line in log_path.read_text().splitlines() if "SIGHUP: " in line]
    assert said[:2] == ["SIGHUP: model vib added (vib 1.0.0 on cpu)", "SIGHUP: pipeline mq added"], said


def test_a_library_start_that_fails_lets_go_of_the_api_port(tmp_path: Path) -> None:
    """``Daemon.start`` takes the API's port first; one whose model then fails to load kept it listening (only
    the command line's start stopped on a failure), so another daemon on that port could not start."""
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon
    from edgerun.errors import EdgerunError

    port = free_port()

    def config(path: Path) -> Any:
        data = {"models": {"digits": {"path": str(path)}}, "api": {"port": port}, "state_dir": str(tmp_path / "s")}
        return parse_config(data, "test")

    failed = Daemon(config(tmp_path / "digits_gone.onnx"))
    with pytest.raises(EdgerunError, match="model file not found"):
        failed.start()
    with socket.socket() as probe:  # the port is free again: bound and listened on here
        probe.bind(("127.0.0.1", port))
        probe.listen()
    daemon = Daemon(config(DIGITS / "digits_int8.onnx"))
    try:
        daemon.start()
        assert http(port, "/ready")[0] == 200
    finally:
        daemon.stop()
