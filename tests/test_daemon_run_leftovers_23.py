"""Three leftovers of the daemon and of ``edgerun run``:

* ``/v1/status`` names the device by its default id (``edge-`` and 12 hex digits) where the config
  sets no ``device.id`` and there is no MQTT; it gave ``null``, and the status page had no header.
* A daemon whose API port is taken says so in one line on stderr (exit 1); uvicorn's own ERROR
  record of the bind came first.
* SIGTERM or Ctrl-C while ``run`` retries a stream it cannot reach ends the run as a stop at its
  start does: the summary, exit 0, at once. SIGTERM ended the process (143) with no word, and
  Ctrl-C came as ``interrupted`` (130), with no summary.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.device import default_device_id
from tests.conftest import DIGITS, ROOT, free_port, run_cli, start_daemon, stop_process
from tests.test_daemon import _ready, http
from tests.test_sync import wait_until


def test_the_status_names_the_default_device_id_when_the_config_sets_none_and_there_is_no_mqtt(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
        f"api:\n  port: {port}\nstate_dir: {tmp_path / 'state'}\n"
    )
    daemon = start_daemon(config)
    try:
        wait_until(lambda: _ready(port) or daemon.poll() is not None, 60, "the daemon to be ready")
        code, status = http(port, "/v1/status")
    finally:
        assert stop_process(daemon, 30) == 0
    assert code == 200 and status["mqtt"] is None
    assert status["device"] == default_device_id()  # the same machine: the same id
    assert status["device"].startswith("edge-") and len(status["device"]) == len("edge-") + 12


def test_a_daemon_whose_api_port_is_taken_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
            f"api:\n  bind: 127.0.0.1\n  port: {port}\nstate_dir: {tmp_path / 'state'}\n"
            "logging:\n  level: WARNING\n  format: json\n"
        )
        done = run_cli("daemon", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"edgerun: error: the HTTP API could not listen on 127.0.0.1:{port} (Address already in use)"
    ], done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_run_retries_an_unreachable_stream_prints_the_summary_and_exits_0(sig: signal.Signals) -> None:
    with socket.socket() as closed:  # a loopback port nothing listens on: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.mjpg"
    run = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "run", str(DIGITS / "digits_int8.onnx"), "--source", url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stderr is not None
        before = []
        for line in run.stderr:  # bounded: the retries end the process within seconds
            before.append(line)
            if "attempt 1 of" in line:
                run.send_signal(sig)
                break
        assert any("attempt 1 of" in line for line in before), "".join(before)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    err = "".join(before) + err
    assert run.returncode == 0, err  # as for any stop of `run` (docs/pipelines.md)
    assert "digits 1.0.0 on cpu: 0 frames (0 ok, 0 failed, 0 dropped, 0 skipped)" in err
    assert err.rstrip().endswith(f"stopped by {sig.name}"), err
    assert "Traceback" not in err and "unreachable after" not in err and "attempt 3 of" not in err, err
    assert out == ""
