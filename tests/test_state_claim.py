"""One process owns a state directory's outbox and OTA store.

Two daemons given one state directory (a copied config, a unit started twice) each sent the
same outbox and took turns on the broker under one client id, each connection closing the other's
about once a second, without end; they also shared the OTA store and journal. The second is now
refused in one line, exit 2, and the first goes on undisturbed; the claim is a kernel lock, so a
killed owner leaves nothing stale behind. Real daemons, a real ``edgerun run`` and a real broker.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edgerun.state import claim_state_dir, release_state_dir
from tests.conftest import DIGITS, ROOT, Broker, free_port, run_cli, start_daemon
from tests.test_sync import Collector, wait_until

CONFIG = """
device:
  id: {device}
models:
  digits:
    path: {model}
mqtt:
  url: mqtt://127.0.0.1:{mqtt}
api:
  port: {port}
state_dir: {state}
"""


def daemon_config(tmp_path: Path, name: str, broker: Broker, state: Path, device: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    values = {"device": device, "model": DIGITS / "digits_int8.tflite", "mqtt": broker.port, "state": state}
    config.write_text(CONFIG.format(port=free_port(), **values))
    return config


def claimed_elsewhere(state: Path) -> subprocess.CompletedProcess[str]:
    """Another process's ``claim_state_dir(state)``: exit 0 when it got the claim, else its one line."""
    code = (
        "import sys; from pathlib import Path; from edgerun.errors import ConfigError\n"
        "from edgerun.state import claim_state_dir\n"
        "try:\n    claim_state_dir(Path(sys.argv[1]))\nexcept ConfigError as exc:\n    sys.exit(str(exc))\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(state)], cwd=ROOT, capture_output=True, text=True)


def test_a_second_daemon_on_the_same_state_dir_is_refused_and_the_first_keeps_its_connection(
    broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    device = f"claim-{time.monotonic_ns()}"
    topic = f"edgerun/{device}/status"
    collector = Collector(broker.port, topic)

    def onlines() -> list[dict]:
        return [m for m in collector.on(topic) if m.get("state") == "online"]

    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115
    first = start_daemon(daemon_config(tmp_path, "first", broker, state, device), stderr=log)
    try:
        wait_until(lambda: bool(onlines()), 60, "the first daemon online")
        second = run_cli("daemon", "--config", str(daemon_config(tmp_path, "second", broker, state, device)))
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (
            f"edgerun: error: {tmp_path / 'second.yaml'}: state_dir {state} is in use by another edgerun process "
            f"(pid {first.pid}): two processes would send one outbox twice and share one OTA store; give each its "
            "own state directory"
        )
        beside = run_cli(
            "run",
            str(DIGITS / "digits_int8.tflite"),
            "--source",
            str(DIGITS / "samples"),
            "--mqtt",
            f"mqtt://127.0.0.1:{broker.port}",
            "--device-id",
            device,
            "--state-dir",
            str(state),
        )
        assert beside.returncode == 2, beside.stderr
        assert f"state_dir {state} is in use by another edgerun process (pid {first.pid})" in beside.stderr
        assert "Traceback" not in beside.stderr
        time.sleep(2)  # a second connection under the same client id would have closed the first's by now
        assert first.poll() is None
        assert "connection to" not in (tmp_path / "first.log").read_text(), "the first daemon lost its connection"
        assert len(onlines()) == 1, onlines()
    finally:
        first.kill()  # SIGKILL: no clean release, the kernel ends the lock with the process
        first.wait()
        log.close()
        collector.close()
    assert claimed_elsewhere(state).returncode == 0


def test_claims_nest_in_one_process_and_the_last_release_frees_the_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    claim_state_dir(state)
    claim_state_dir(state)  # the daemon claims, then its MQTT link claims again
    try:
        refused = claimed_elsewhere(state)
        assert refused.returncode == 1
        assert refused.stderr.strip().startswith(f"state_dir {state} is in use by another edgerun process (pid ")
        release_state_dir(state)
        assert claimed_elsewhere(state).returncode == 1  # one claim is still held
    finally:
        release_state_dir(state)
    assert claimed_elsewhere(state).returncode == 0


def test_a_state_dir_that_cannot_be_created_is_one_line_not_a_traceback(broker: Broker, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.touch()
    result = run_cli(
        "run",
        str(DIGITS / "digits_int8.tflite"),
        "--source",
        str(DIGITS / "samples" / "digit_3.png"),
        "--mqtt",
        f"mqtt://127.0.0.1:{broker.port}",
        "--state-dir",
        str(afile / "sub"),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"edgerun: error: state_dir {afile / 'sub'}: cannot create it: Not a directory"


def test_a_sync_service_stopped_twice_gives_back_only_its_own_claim(broker: Broker, tmp_path: Path) -> None:
    from edgerun.sync.service import SyncService
    from edgerun.sync.settings import MqttSettings
    from edgerun.telemetry.metrics import Metrics

    state = tmp_path / "state"
    claim_state_dir(state)  # another holder in this process: a daemon's own claim
    try:
        settings = MqttSettings.from_url(f"mqtt://127.0.0.1:{broker.port}", client_id=f"twice-{time.monotonic_ns()}")
        service = SyncService(settings, device_id="twice", state_dir=state, metrics=Metrics())
        service.start()
        service.stop()
        service.stop()  # a try/finally that stops again
        assert claimed_elsewhere(state).returncode == 1  # the other holder's claim stands
    finally:
        release_state_dir(state)
    assert claimed_elsewhere(state).returncode == 0
