"""User errors in the less travelled commands (devices, bench, keys, ota, mqtt check, outbox, config check).

* A stdout that refuses output (``/dev/full``, a full disk) is one ``edgerun: error:`` line naming stdout and
  exit 1 for every command's table or line, not only for JSON records: never a traceback.
* ``mqtt check``: a host name no DNS can look up (a part over 63 characters) is its DNS step's one line; a TLS
  handshake that times out or is cut is said as the TLS step's, not as TCP's; ``--device-id ""`` and a bad
  ``--group`` are refused as ``run`` refuses them.
* ``keys generate``: a name too long for the filesystem is one line; a name that fits is written even where its
  temporary file's name would not have; ``NAME.pem`` is refused (it wrote ``NAME.pem.pem``); the line printed
  stays one line whatever the name holds.
* ``outbox``: a state directory that is a file, an outbox that is a folder, a name too long: one line each.
* ``devices``: a probed board name with line breaks and terminal escapes stays on its line.
* ``ota status``: a device's status record whose model entries are not mappings, or whose texts hold terminal
  escapes, is shown (escaped) in the table, not a traceback.

Real processes, a real Mosquitto, real models.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import DIGITS, ROOT, Broker, FakeTree, run_cli

MODEL = str(DIGITS / "digits_int8.tflite")
FULL_STDOUT = "edgerun: error: cannot write stdout: No space left on device\n"


def _to_full_stdout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``edgerun ARGS`` with its stdout on ``/dev/full`` (every write: ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "edgerun", *args],
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
        )


def _one_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one ``edgerun: error:`` line of a run that exited ``code``, without its prefix."""
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgerun: error: "), done.stderr
    return lines[0].removeprefix("edgerun: error: ")


# -- a stdout that refuses output ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["bench", MODEL, "--runs", "3"],
        ["devices"],
        ["devices", "--model", MODEL],
    ],
    ids=["bench-table", "devices", "devices-model"],
)
def test_a_table_to_a_full_stdout_is_one_error_line_naming_stdout(args: list[str]) -> None:
    done = _to_full_stdout(*args)
    assert (done.returncode, done.stderr) == (1, FULL_STDOUT)


def test_outbox_mqtt_check_and_ota_status_to_a_full_stdout_are_one_error_line_naming_stdout(
    broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert run_cli("run", MODEL, "--source", str(DIGITS / "samples"), "--max-frames", "1",
                   "--mqtt", "mqtt://127.0.0.1:1", "--state-dir", str(state)).returncode in (0, 1)  # fmt: skip
    assert (state / "outbox.sqlite").is_file()
    for args in (
        ["outbox", "--state-dir", str(state)],
        ["mqtt", "check", "--mqtt", broker.url, "--device-id", "sweep-check"],
        ["ota", "status", "--mqtt", broker.url, "--wait", "0"],
    ):
        done = _to_full_stdout(*args)
        assert (done.returncode, done.stderr) == (1, FULL_STDOUT), args


def test_keys_generate_to_a_full_stdout_says_so_in_one_line_and_the_keys_are_written(tmp_path: Path) -> None:
    done = _to_full_stdout("keys", "generate", str(tmp_path / "op"))
    assert (done.returncode, done.stderr) == (1, FULL_STDOUT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op.pem", "op.pub.pem"]


def test_config_check_printing_more_than_stdouts_buffer_to_a_full_stdout_is_one_error_line(tmp_path: Path) -> None:
    """Its output (100 models, ~16 KiB) fills stdout's 8 KiB buffer while it prints: the failed write was a
    traceback then (the output a shell gives a Python program, not unbuffered)."""
    config = tmp_path / "device.yaml"
    models = "".join(f"  m{i}:\n    path: {MODEL}\n" for i in range(100))
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmodels:\n{models}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = _to_full_stdout("config", "check", str(config), env=env)
    assert (done.returncode, done.stderr) == (1, FULL_STDOUT)


# -- mqtt check ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "broker..example"], ids=["long-part", "empty-part"])
def test_mqtt_check_of_a_host_name_no_dns_can_look_up_is_its_dns_step_in_one_line(host: str) -> None:
    done = run_cli("mqtt", "check", "--mqtt", f"mqtt://{host}:1884", "--device-id", "sweep-check")
    assert _one_error(done, 1).startswith(f"DNS: cannot look up {host}: not a valid host name (")
    assert done.stdout == ""


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener takes connections (the kernel's backlog) and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_mqtt_check_of_a_tls_handshake_never_answered_names_the_tls_step_not_tcp(silent_port: int) -> None:
    done = run_cli("mqtt", "check", "--mqtt", f"mqtts://127.0.0.1:{silent_port}", "--timeout", "1",
                   "--device-id", "sweep-check")  # fmt: skip
    assert "ok    tcp      connected to" in done.stdout
    assert _one_error(done, 1) == (
        f"TLS: no answer to the TLS handshake from 127.0.0.1:{silent_port} in 1 s (does that port speak TLS?)"
    )


def test_mqtt_check_of_a_silent_plain_port_says_where_and_how_long_it_waited(silent_port: int) -> None:
    done = run_cli("mqtt", "check", "--mqtt", f"mqtt://127.0.0.1:{silent_port}", "--timeout", "1",
                   "--device-id", "sweep-check")  # fmt: skip
    assert _one_error(done, 1) == f"no CONNACK from 127.0.0.1:{silent_port} in 1 s (is it an MQTT broker?)"


def test_mqtt_check_with_tls_on_a_plain_mqtt_port_asks_whether_the_port_speaks_tls(broker: Broker) -> None:
    done = run_cli("mqtt", "check", "--mqtt", f"mqtts://127.0.0.1:{broker.port}", "--timeout", "5",
                   "--device-id", "sweep-check")  # fmt: skip
    error = _one_error(done, 1)
    assert error.startswith(f"TLS handshake with 127.0.0.1:{broker.port} failed: the connection was closed"), error
    assert error.endswith("does that port speak TLS? (a plain MQTT port closes on a TLS hello)")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--device-id", "", "device name '' is invalid"), ("--group", "a/+", "group name 'a/+' is invalid")],
)
def test_mqtt_check_refuses_a_device_id_or_group_run_would_refuse(
    broker: Broker, option: str, value: str, message: str
) -> None:
    done = run_cli("mqtt", "check", "--mqtt", broker.url, option, value)
    assert _one_error(done, 2).startswith(message)
    assert done.stdout == ""  # refused before anything connects


# -- keys generate -------------------------------------------------------------------------------------------


def test_keys_generate_with_a_name_too_long_for_the_filesystem_is_one_line(tmp_path: Path) -> None:
    name = tmp_path / ("k" * 300)
    done = run_cli("keys", "generate", str(name))
    assert _one_error(done, 2) == f"cannot write the key pair {name}.pem: File name too long"
    assert list(tmp_path.iterdir()) == []


def test_keys_generate_writes_a_long_name_that_fits_even_where_its_temporary_name_would_not(tmp_path: Path) -> None:
    name = tmp_path / ("k" * 244)  # k*244.pub.pem is 252 characters: it fits in 255, ".k*244.pub.pem.XXXXXXXX.tmp" not
    done = run_cli("keys", "generate", str(name))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name.name}.pem", f"{name.name}.pub.pem"]


@pytest.mark.parametrize("name", ["op.pem", "op.pub.pem"])
def test_keys_generate_refuses_a_name_with_its_extension_and_writes_nothing(tmp_path: Path, name: str) -> None:
    (tmp_path / "op.pem").write_text("the operator's key\n")
    done = run_cli("keys", "generate", name, cwd=tmp_path)
    assert _one_error(done, 2) == (
        f"key name '{name}' ends in .pem: give it without the extension (op, and op.pem and op.pub.pem are written)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op.pem"]


def test_keys_generate_prints_one_line_whatever_the_name_holds(tmp_path: Path) -> None:
    done = run_cli("keys", "generate", "two\nlines", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and "private key two\\nlines.pem" in done.stdout
    assert (tmp_path / "two\nlines.pem").is_file()


# -- outbox --------------------------------------------------------------------------------------------------


def test_outbox_of_a_state_directory_that_is_a_file_says_so(tmp_path: Path) -> None:
    file = tmp_path / "state"
    file.write_text("not a folder\n")
    assert _one_error(run_cli("outbox", "--state-dir", str(file)), 2) == f"--state-dir {file} is not a directory"
    env = {**os.environ, "EDGERUN_STATE_DIR": str(file)}
    assert _one_error(run_cli("outbox", env=env), 2) == f"the state directory {file} is not a directory"


def test_outbox_that_is_a_folder_is_named_as_one_not_as_a_disk_error(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").mkdir()
    done = run_cli("outbox", "--state-dir", str(tmp_path))
    assert _one_error(done, 2) == f"cannot read the outbox {tmp_path / 'outbox.sqlite'}: it is a directory, not a file"


def test_outbox_of_a_state_directory_name_too_long_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / ("s" * 300)
    done = run_cli("outbox", "--state-dir", str(folder))
    assert _one_error(done, 2) == f"cannot read the outbox {folder / 'outbox.sqlite'}: File name too long"


# -- devices -------------------------------------------------------------------------------------------------


def test_devices_shows_a_board_name_with_line_breaks_and_escapes_on_its_own_line(fake_tree: FakeTree) -> None:
    fake_tree.file("proc/device-tree/model", "Raspberry Pi 5\n\x1b[31mred\n")
    done = run_cli("devices", "--probe-root", str(fake_tree.root))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("device:      Raspberry Pi 5\\n\\x1b[31mred ("), lines[0]
    assert lines[1].startswith("cpu:") and "\x1b" not in done.stdout


# -- ota status ----------------------------------------------------------------------------------------------


def test_ota_status_shows_a_devices_odd_status_record_escaped_in_its_row(own_broker: Broker) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", own_broker.port)
    client.loop_start()
    try:
        records = {
            "edgerun/d1/status": b'{"state": "online", "models": {"m": {"version": "1\\u001b[31m", "delegate": 0}}}',
            "edgerun/d3/status": b'{"state": "online", "models": {"m": "not a mapping"}}',
            "edgerun/d4/ota/status": b'{"update_id": "u1", "state": "failed", "reason": "bad\\u001b[2J\\nline"}',
        }
        for topic, payload in records.items():
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    done = run_cli("ota", "status", "--mqtt", own_broker.url, "--wait", "1")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert sorted(rows) == ["d1", "d3", "d4"] and "\x1b" not in done.stdout
    assert "m 1\\x1b[31m (0)" in rows["d1"]
    assert "m ? (?)" in rows["d3"]
    assert rows["d4"].endswith("u1 failed bad\\x1b[2J\\nline")
