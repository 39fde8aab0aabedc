"""With OTA on, a SIGHUP and a stop meet the model store and the updates it serves.

* A model file changed on disk under the config's ``path`` is chosen again as at start, and the
  store's active version wins: where the store serves an update (another version, or the same
  version installed over the air), the change does not bear on what serves, and the model is no
  longer swapped for a fresh load of the very version it serves. The operator's own file under
  the active version's number still replaces it (the operator's file wins, as at a restart).
* An OTA update activated while the daemon stops (after its isolated workers were told to stop)
  swaps in a model whose worker the stop reaches too: a request that takes it and finds its worker
  hung is answered 503 once the stop's grace is over, as on the model it replaced, not a 500 after
  the API's 30 s.

A real daemon process, a real Mosquitto, keys from ``edgerun keys generate`` and updates sent with
``edgerun ota publish`` and ``edgerun ota rollback``; a hung worker is one SIGSTOPped from outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DIGITS, SAMPLES, Broker, free_port, run_cli, start_daemon, stop_process
from tests.ota_helpers import model_with_card
from tests.test_daemon import _ready, http
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow

CONFIG = """
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
  probation_s: 0
api:
  port: {port}
  body_timeout_s: 120
state_dir: {state}
isolation: {isolation}
logging:
  format: text
"""

WORKER = re.compile(r"worker process (\d+) runs (\S+) on (\S+)")


class _Daemon:
    """``edgerun daemon`` with OTA on, as a real process, its log in a file."""

    def __init__(self, tmp_path: Path, broker: Broker, key: Path, device: str, isolation: str = "thread") -> None:
        self.device, self.broker, self.key = device, broker, key
        self.folder, self.port = tmp_path, free_port()
        self.model = model_with_card(tmp_path / "models", "digits_fp32.onnx", "digits.onnx")  # 1.0.0
        self.state = tmp_path / "state"
        self.config = tmp_path / "edgerun.yaml"
        self.config.write_text(
            CONFIG.format(
                device=device,
                model=self.model,
                mqtt=broker.port,
                public=key.with_name("op.pub.pem"),
                port=self.port,
                state=self.state,
                isolation=isolation,
            )
        )
        self.log_path = tmp_path / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = start_daemon(self.config, stderr=self._log)
        try:
            wait_until(lambda: _ready(self.port), 60, "the daemon to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.text()[-3000:]}") from None

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def served(self) -> dict[str, Any]:
        return dict(http(self.port, "/v1/models")[1]["digits"])

    def ota(self, *args: str) -> None:
        """``edgerun ota ARGS`` to this device, waiting where it can; exit 0."""
        done = run_cli(
            "ota",
            *args,
            "--model",
            "digits",
            "--device",
            self.device,
            "--key",
            str(self.key),
            "--mqtt",
            f"mqtt://127.0.0.1:{self.broker.port}",
        )
        assert done.returncode == 0, done.stdout + done.stderr + self.text()[-3000:]

    def publish(self, model: Path, version: str) -> None:
        self.ota("publish", str(model), "--version", version, "--wait", "--timeout", "120")

    def reload(self) -> str:
        """SIGHUP; the log lines the reload wrote, once it is done."""
        before = self.text()
        self.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: self.text().count("SIGHUP: config reloaded") > before.count("SIGHUP: config reloaded"),
            60,
            "the reload",
        )
        return self.text()[len(before) :]

    def replace_model(self, source: str, version: str) -> None:
        """Copy ``models/digits/SOURCE`` over the config's model file, its card saying ``version``."""
        card = (DIGITS / f"{source}.card.yaml").read_text().replace("version: 1.0.0", f"version: {version}")
        shutil.copy(DIGITS / source, self.model)
        self.model.with_name(self.model.name + ".card.yaml").write_text(card)

    def close(self) -> None:
        stop_process(self.proc, 60)
        self._log.close()


@pytest.fixture
def daemons() -> Any:
    started: list[_Daemon] = []
    yield started
    for d in started:
        d.close()


def _store_loads(text: str) -> int:
    """How many times ``text`` says a model was loaded from the store (where every version is ``model.onnx``),
    in the daemon or in a worker process of its own."""
    return len(re.findall(r"delegate for model\.onnx: |worker process \d+ runs model\.onnx on ", text))


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_sighup_keeps_the_update_the_store_serves_when_the_config_file_changes_on_disk(
    broker: Broker, key_pair: Path, tmp_path: Path, daemons: list[_Daemon], isolation: str
) -> None:
    d = _Daemon(tmp_path, broker, key_pair, f"hup-ota-{isolation}", isolation)
    daemons.append(d)
    d.publish(DIGITS / "digits_int8.onnx", "1.1.0")  # an update made active: the store serves 1.1.0
    served = d.served()
    assert served["version"] == "1.1.0" and served["path"].startswith(str(d.state)), served
    assert _store_loads(d.text()) == 1

    # another file, another version at the config's path: a restart would serve the store's 1.1.0 too
    d.replace_model("digits_int8.onnx", "2.0.0")
    said = d.reload()
    assert f"SIGHUP: model digits: {d.model} or its card changed on disk; reloading it" in said, said
    assert "model digits reloaded" not in said, said
    assert _store_loads(d.text()) == 1, said  # not loaded again
    assert f"SIGHUP: model digits: the model store's active 1.1.0 serves on, not {d.model}" in said, said
    assert d.served() == served
    status, record = http(d.port, "/v1/models/digits/predict", (SAMPLES / "digit_3.png").read_bytes())
    assert status == 200 and record["version"] == "1.1.0", record

    # the update's own version number with other bytes: the update's copy serves, as at a restart
    d.replace_model("digits_fp32.onnx", "1.1.0")
    said = d.reload()
    assert "is not the digits 1.1.0 that an OTA update installed" in said, said
    assert "model digits reloaded" not in said, said
    assert _store_loads(d.text()) == 1, said
    assert f"SIGHUP: model digits: the model store's active 1.1.0 serves on, not {d.model}" in said, said
    assert d.served() == served

    # the operator rolls back to 1.0.0, the file given at the first start (served from the store's copy)
    d.ota("rollback")
    wait_until(lambda: d.served()["version"] == "1.0.0", 30, "the rollback to 1.0.0")
    assert d.served()["path"].startswith(str(d.state))
    # the operator's own file under that version, other bytes: it replaces the store's copy and serves
    d.replace_model("digits_int8.onnx", "1.0.0")
    said = d.reload()
    assert "model store: digits 1.0.0 replaced by" in said, said
    assert "SIGHUP: model digits reloaded (digits 1.0.0 on cpu)" in said, said
    assert d.served()["path"] == str(d.model)

    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=60) == 0, d.text()[-3000:]
    log = d.text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def _answer(conn: socket.socket) -> tuple[int, Any]:
    """Read one HTTP answer to its end (the request said ``connection: close``): status and JSON body."""
    raw = b""
    while chunk := conn.recv(65536):
        raw += chunk
    if not raw:
        return 0, "the connection closed without an answer"
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(body)
    except ValueError:
        return int(head.split()[1]), body.decode(errors="replace")


def test_an_update_swapped_in_while_the_daemon_stops_has_its_hung_worker_ended_by_the_stop(
    broker: Broker, key_pair: Path, tmp_path: Path, daemons: list[_Daemon]
) -> None:
    d = _Daemon(tmp_path, broker, key_pair, "stop-ota-2", isolation="process")
    daemons.append(d)
    image = (SAMPLES / "digit_3.png").read_bytes()
    conn = socket.create_connection(("127.0.0.1", d.port), timeout=120)  # a bound on a hung test only
    hung: int | None = None
    try:
        # a request in progress: its body not all sent, so it takes its model only once the rest comes
        conn.sendall(
            b"POST /v1/models/digits/predict HTTP/1.1\r\nhost: edgerun\r\ncontent-type: image/png\r\n"
            + f"content-length: {len(image)}\r\nconnection: close\r\n\r\n".encode()
            + image[:-1]
        )
        threading.Event().wait(0.5)  # the request read as far as it goes: one in progress, which the stop answers
        d.proc.send_signal(signal.SIGTERM)  # the stop begins: the API waits for the request
        d.publish(DIGITS / "digits_int8.onnx", "1.1.0")  # the OTA agent still runs: 1.1.0 swapped in
        hung = int([pid for pid, name, _ in WORKER.findall(d.text()) if name == "model.onnx"][-1])
        os.kill(hung, signal.SIGSTOP)  # the update's worker hangs on its device from now on
        conn.sendall(image[-1:])  # the request takes 1.1.0, whose worker does not answer
        status, answer = _answer(conn)
        code = d.proc.wait(timeout=120)  # only a bound on a hung test
    finally:
        conn.close()
        if hung is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGKILL)
    log = d.text()
    assert status == 503, (status, answer, log[-3000:])
    assert answer["detail"] == (
        "model digits: the daemon is stopping; "
        "model.onnx: its worker gave no answer within 5 s of the stop and was killed"
    ), answer
    assert code == 0, log[-3000:]
    assert f"worker process {hung} for model.onnx gave no answer within 5 s of the stop: killed" in log, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
