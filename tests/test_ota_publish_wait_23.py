"""``edgerun ota publish --wait`` against targets that are not online: a device whose retained status says
``offline``, one with no status at all, a group with no device online. None of them is waited for (each acts
on the retained manifest when it connects): the command ends at once, names them, and exits 3 where no
targeted device was online; one that comes online during the wait is followed to its end. Also
``--mqtt-prefix``, the devices' name for the topic prefix, on the operator's commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgerun import __version__
from tests.conftest import DIGITS, ROOT, Broker, run_cli, stop_process
from tests.ota_helpers import Device, StatusWatcher, model_with_card, publish
from tests.test_audit_ota_operator import retained

MODEL = DIGITS / "digits_fp32.onnx"  # its card, digits_fp32.onnx.card.yaml, lies beside it
NOTHING_ONLINE = 3
#: How long a ``--wait --timeout 30`` that should end at once may take: start-up, the model loaded on the
#: CPU, the publish. Well short of the 30 s it would take if it waited out its timeout.
PROMPT_S = 20


@pytest.fixture
def key(tmp_path: Path) -> Path:
    done = run_cli("keys", "generate", str(tmp_path / "keys" / "operator"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "keys" / "operator.pem"


def status_record(state: str) -> bytes:
    """A device's retained ``P/ID/status`` record, as PROTOCOL.md gives it and the device's MQTT link writes it."""
    if state == "offline":
        return json.dumps({"schema": 1, "state": "offline", "ts": int(time.time())}).encode()
    models = {"digits": {"version": "1.0.0", "format": "onnx", "delegate": "cpu"}}
    record = {"schema": 1, "state": "online", "ts": int(time.time()), "runtime": __version__, "models": models}
    return json.dumps({**record, "accelerators": []}).encode()


def publish_cli(broker: Broker, key: Path, *args: str, model: Path = MODEL) -> list[str]:
    """The ``edgerun ota publish`` command line of digits 1.1.0 with ``args``."""
    return [
        sys.executable, "-m", "edgerun", "ota", "publish", str(model), "--model", "digits", "--version", "1.1.0",
        "--key", str(key), "--mqtt", broker.url, *args,
    ]  # fmt: skip


def run_prompt(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; it must end within ``PROMPT_S``."""
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=PROMPT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still waiting after {PROMPT_S} s (stdout: {exc.stdout!r})")


def test_wait_for_an_offline_device_ends_at_once_naming_it_with_exit_3(own_broker: Broker, key: Path) -> None:
    publish(own_broker.port, "edgerun/devu/status", status_record("offline"), retain=True)
    done = run_prompt(publish_cli(own_broker, key, "--device", "devu", "--wait", "--timeout", "30"))
    assert done.returncode == NOTHING_ONLINE, done.stdout + done.stderr
    assert "devu is offline: it will act on the retained update when it reconnects\n" in done.stdout
    assert "timed out" not in done.stderr and "Traceback" not in done.stderr
    # What it will act on is there: the manifest, retained.
    assert "edgerun/devu/ota/manifest" in retained(own_broker.port, "edgerun/+/ota/manifest")


def test_wait_for_a_device_with_no_status_at_all_ends_at_once_naming_it(own_broker: Broker, key: Path) -> None:
    done = run_prompt(publish_cli(own_broker, key, "--device", "devx", "--wait", "--timeout", "30"))
    assert done.returncode == NOTHING_ONLINE, done.stdout + done.stderr
    line = "devx has no status record under prefix edgerun: it will act on the retained update when it connects\n"
    assert line in done.stdout


def test_wait_for_a_group_with_no_device_online_ends_at_once(own_broker: Broker, key: Path) -> None:
    publish(own_broker.port, "edgerun/devu/status", status_record("offline"), retain=True)
    done = run_prompt(publish_cli(own_broker, key, "--group", "lab", "--wait", "--timeout", "30"))
    assert done.returncode == NOTHING_ONLINE, done.stdout + done.stderr
    line = "no device is online: the members of group lab will act on the retained update when they connect\n"
    assert line in done.stdout


def test_a_device_that_comes_online_during_the_wait_is_followed_and_the_absent_are_named(
    own_broker: Broker, key: Path, tmp_path: Path
) -> None:
    """devb is offline when the update goes out (a real device stopped with SIGTERM) and started again during
    the wait; deva is online (its records written by hand, as a device writes them) and ends while devb is
    still on probation, so the wait ends only if it follows devb; devc never reported anything."""
    public = key.with_name("operator.pub.pem")
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = model_with_card(tmp_path / "v2", "digits_int8.onnx", "digits.onnx")
    port = own_broker.port
    watcher = StatusWatcher(port)
    devb = Device(port, tmp_path / "state", v1, public, device="devb")
    cli: subprocess.Popen[str] | None = None
    try:
        watcher.wait_online_version("devb", "1.0.0")
        assert devb.stop() == 0  # a clean stop: its retained status is now offline
        assert watcher.status("devb")[-1]["state"] == "offline"
        publish(port, "edgerun/deva/status", status_record("online"), retain=True)
        argv = publish_cli(own_broker, key, "--device", "deva", "--device", "devb", "--device", "devc",
                           "--probation", "5", "--wait", "--timeout", "120", model=v2)  # fmt: skip
        cli = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while "edgerun/devb/ota/manifest" not in retained(port, "edgerun/devb/ota/manifest", 0.2):
            assert time.monotonic() < deadline and cli.poll() is None, "the manifest never came"
        devb = Device(port, tmp_path / "state", v1, public, device="devb")
        on_probation = watcher.wait_state("devb", None, {"probation"})
        assert cli.poll() is None  # deva holds the wait open so far
        uid = on_probation["update_id"]
        done = {"schema": 1, "update_id": uid, "model": "digits", "version": "1.1.0", "state": "active", "ts": 1}
        publish(port, "edgerun/deva/ota/status", json.dumps(done).encode(), retain=True)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, out + err + devb.log()[-2000:]
        lines = out.splitlines()
        assert any(line.split()[:2] == ["devb", "active"] and "probation passed" in line for line in lines), out
        assert any(line.split()[:2] == ["deva", "active"] for line in lines), out
        assert (
            "devc has no status record under prefix edgerun: it will act on the retained update when it connects"
            in lines
        )
        assert not any("devb is offline" in line for line in lines)
    finally:
        if cli is not None and cli.poll() is None:
            stop_process(cli, 10)
        devb.stop()
        watcher.close()


def test_publish_wait_help_names_every_state_that_ends_the_wait() -> None:
    done = run_cli("ota", "publish", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "until each reports active, rejected, failed or rolled_back" in text


@pytest.mark.parametrize("option", ["--mqtt-prefix", "--prefix"])
def test_mqtt_prefix_names_the_topic_prefix_as_prefix_does(own_broker: Broker, key: Path, option: str) -> None:
    publish(own_broker.port, "fleet2/devp/status", status_record("offline"), retain=True)
    done = run_cli(*publish_cli(own_broker, key, "--device", "devp", option, "fleet2")[3:])
    assert done.returncode == 0, done.stderr
    assert "published to fleet2/devp/ota/manifest" in done.stdout
    manifests = retained(own_broker.port, "+/+/ota/manifest")
    assert list(manifests) == ["fleet2/devp/ota/manifest"]
    table = run_cli("ota", "status", "--mqtt", own_broker.url, option, "fleet2", "--wait", "0.5")
    assert table.returncode == 0, table.stderr
    assert any(line.split()[:2] == ["devp", "no"] for line in table.stdout.splitlines()), table.stdout
