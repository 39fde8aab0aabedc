"""``edgerun ota rollback --wait [--timeout S]``: the command follows the devices' ``P/ID/ota/status`` records
of its own ``command_id`` for up to S seconds, prints one line per device as it answers, and exits 0 only when every
target reported ``rolled_back``; 1 when one refused or failed it, or S ran out; 3 when none failed but a
target was not online (a command is not retained). It shares ``publish --wait``'s machinery, group rules
(``--answer-within``) included. Every device here is a real ``edgerun run`` process on a real Mosquitto.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgerun import __version__
from tests.conftest import ROOT, Broker, run_cli
from tests.ota_helpers import Device, StatusWatcher, make_key, model_with_card, publish, push_update, unique_model

NOTHING_ONLINE = 3
#: Bounds a command that should end by itself; reached only by a hung test (the waits here are seconds).
HUNG_S = 120
NOTHING_EARLIER = "digits has no previous version to roll back to: 1.0.0 is the earliest in its history"


def rollback(broker: Broker, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgerun ota rollback --model digits`` with ``args``, which must end within ``HUNG_S``."""
    argv = [sys.executable, "-m", "edgerun", "ota", "rollback", "--model", "digits", "--key", str(key),
            "--mqtt", broker.url, *args]  # fmt: skip
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=HUNG_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"rollback still running after {HUNG_S} s (stdout: {exc.stdout!r})")


def command_id(out: str) -> str:
    """The id in the line ``command ID: rollback of digits sent to ...``, the first line of the output."""
    match = re.match(r"command (\S+): rollback of digits sent to ", out)
    assert match, out
    return match.group(1)


def device_line(out: str, device: str) -> list[str]:
    """The lines of ``out`` about ``device``'s answer: its name, then the state and reason."""
    return [" ".join(line.split()[1:]) for line in out.splitlines() if line.split()[:1] == [device]]


def updated(port: int, key: Any, folder: Path, device: str, watcher: StatusWatcher) -> None:
    """Update ``device`` from digits 1.0.0 to 1.1.0 (no probation), so a rollback has somewhere to go."""
    model = unique_model(folder / device, "digits_int8.onnx")
    manifest = push_update(port, key, model, "1.1.0", device, probation_s=0)
    assert watcher.wait_state(device, manifest["update_id"], {"active", "rejected", "failed"})["state"] == "active"
    watcher.wait_online_version(device, "1.1.0")


def online_record_without_groups() -> bytes:
    """The retained ``P/ID/status`` of a device online whose edgerun names no groups (an older release)."""
    models = {"digits": {"version": "1.0.0", "format": "onnx", "delegate": "cpu"}}
    record = {"schema": 1, "state": "online", "ts": int(time.time()), "runtime": __version__, "models": models}
    return json.dumps({**record, "accelerators": []}).encode()


def test_a_rollback_with_wait_prints_the_device_s_answer_and_exits_0_once_it_rolled_back(
    own_broker: Broker, tmp_path: Path
) -> None:
    key, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    watcher = StatusWatcher(own_broker.port)
    dev = Device(own_broker.port, tmp_path / "state", v1, public, device="devr")
    try:
        watcher.wait_online_version("devr", "1.0.0")
        updated(own_broker.port, key, tmp_path, "devr", watcher)
        done = rollback(own_broker, private, "--device", "devr", "--wait", "--timeout", "60")
        assert done.returncode == 0, done.stdout + done.stderr + dev.log()[-2000:]
        ident = command_id(done.stdout)
        assert device_line(done.stdout, "devr") == ["rolled_back rollback command; serving 1.0.0 again"], done.stdout
        assert len(done.stdout.splitlines()) == 2 and done.stderr == "", done.stdout + done.stderr
        # It said so because the device did: its record of this command, and the model it serves.
        assert watcher.wait_state("devr", ident, {"rolled_back"})["version"] == "1.1.0"
        watcher.wait_online_version("devr", "1.0.0")
    finally:
        dev.stop()
        watcher.close()


def test_a_device_with_nothing_to_roll_back_to_makes_the_wait_exit_1_naming_its_refusal(
    own_broker: Broker, tmp_path: Path
) -> None:
    """deva has 1.0.0 to go back to and rolls back; devb has only ever served 1.0.0 and refuses: the wait
    follows both to their answers, prints each, names devb's refusal on stderr and exits 1."""
    key, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    watcher = StatusWatcher(own_broker.port)
    devices = [Device(own_broker.port, tmp_path / "state", v1, public, device=d) for d in ("deva", "devb")]
    try:
        for device in devices:
            watcher.wait_online_version(device.device, "1.0.0")
        updated(own_broker.port, key, tmp_path, "deva", watcher)
        done = rollback(own_broker, private, "--device", "deva", "--device", "devb", "--wait", "--timeout", "60")
        assert done.returncode == 1, done.stdout + done.stderr
        assert device_line(done.stdout, "deva") == ["rolled_back rollback command; serving 1.0.0 again"], done.stdout
        assert device_line(done.stdout, "devb") == [f"rejected {NOTHING_EARLIER}"], done.stdout
        assert done.stderr == f"edgerun: error: devb: rejected: {NOTHING_EARLIER}\n", done.stderr
    finally:
        for device in devices:
            device.stop()
        watcher.close()


def test_a_device_that_does_not_answer_within_the_wait_makes_it_time_out_with_exit_1_naming_it(
    own_broker: Broker, tmp_path: Path
) -> None:
    """devc is downloading an update whose chunks are held back: its OTA worker takes the command only after
    it, so it does not answer within --timeout 3. The command was only late: once the chunks come, devc ends
    the update and then rolls back."""
    key, private, public = make_key(tmp_path)
    port = own_broker.port
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    held_model = unique_model(tmp_path / "held", "digits_int8.onnx")
    watcher = StatusWatcher(port)
    dev = Device(port, tmp_path / "state", v1, public, device="devc")
    try:
        watcher.wait_online_version("devc", "1.0.0")
        held = push_update(port, key, held_model, "1.0.5", "devc", chunks=range(0), probation_s=0)
        watcher.wait_state("devc", held["update_id"], {"downloading"})
        started = time.monotonic()
        done = rollback(own_broker, private, "--device", "devc", "--wait", "--timeout", "3")
        assert done.returncode == 1, done.stdout + done.stderr
        assert time.monotonic() - started < 60  # the 3 s and a start-up, not a hang
        ident = command_id(done.stdout)
        assert device_line(done.stdout, "devc") == [], done.stdout
        assert done.stderr == (
            f"edgerun: error: timed out after 3 s waiting for the devices to finish command {ident}: "
            "devc has not reported its end\n"
        ), done.stderr
        blob, data = held["source"]["mqtt"], held_model.read_bytes()
        size = blob["chunk_size"]
        for i in range(blob["chunks"]):
            publish(port, f"{blob['topic']}/{i}", data[i * size : (i + 1) * size], retain=True)
        assert watcher.wait_state("devc", held["update_id"], {"active", "rejected", "failed"})["state"] == "active"
        late = watcher.wait_state("devc", ident, {"rolled_back", "rejected", "failed"})
        assert late["reason"] == "rollback command; serving 1.0.0 again", late
    finally:
        dev.stop()
        watcher.close()


def test_a_target_not_online_is_named_and_the_wait_exits_3_though_the_others_rolled_back(
    own_broker: Broker, tmp_path: Path
) -> None:
    """devon rolls back; devoff is offline (stopped cleanly) and devx never connected. Nothing failed, but
    the rollback is not done everywhere: exit 3, not 0. devoff takes the command when it comes back, as its
    line says (the broker kept it in devoff's session)."""
    key, private, public = make_key(tmp_path)
    port = own_broker.port
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    state = tmp_path / "state"
    watcher = StatusWatcher(port)
    devices = {d: Device(port, state, v1, public, device=d) for d in ("devon", "devoff")}
    try:
        for name in devices:
            watcher.wait_online_version(name, "1.0.0")
            updated(port, key, tmp_path, name, watcher)
        assert devices["devoff"].stop() == 0
        assert watcher.status("devoff")[-1]["state"] == "offline"
        args = ("--device", "devon", "--device", "devoff", "--device", "devx", "--wait", "--timeout", "60")
        done = rollback(own_broker, private, *args)
        assert done.returncode == NOTHING_ONLINE, done.stdout + done.stderr
        ident = command_id(done.stdout)
        lines = done.stdout.splitlines()
        assert device_line(done.stdout, "devon") == ["rolled_back rollback command; serving 1.0.0 again"], done.stdout
        assert "devoff is offline: it will act on the command if it reconnects within 1 h (it then expires)" in lines
        assert (
            "devx has no status record under prefix edgerun: it gets the command only if it was connected before "
            "(a command is not retained)"
        ) in lines
        assert done.stderr == "", done.stderr
        devices["devoff"] = Device(port, state, v1, public, device="devoff")
        late = watcher.wait_state("devoff", ident, {"rolled_back", "rejected", "failed"})
        assert late["reason"] == "rollback command; serving 1.0.0 again", late
    finally:
        for device in devices.values():
            device.stop()
        watcher.close()


def test_a_group_rollback_follows_the_members_and_names_a_device_that_did_not_answer_in_answer_within(
    own_broker: Broker, tmp_path: Path
) -> None:
    """lab's deva rolls back; devn, in no group by its record, is not waited for nor named; devold's record
    names no groups (an older edgerun) and it never answers: after --answer-within 2 it is named, and the
    wait ends 0, as publish --wait's does for such a device."""
    key, private, public = make_key(tmp_path)
    port = own_broker.port
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    watcher = StatusWatcher(port)
    state = tmp_path / "state"
    devices = [
        Device(port, state, v1, public, device="deva", groups=("lab",)),
        Device(port, state, v1, public, device="devn"),
    ]
    try:
        for device in devices:
            watcher.wait_online_version(device.device, "1.0.0")
        updated(port, key, tmp_path, "deva", watcher)
        publish(port, "edgerun/devold/status", online_record_without_groups(), retain=True)
        done = rollback(own_broker, private, "--group", "lab", "--wait", "--timeout", "60", "--answer-within", "2")
        assert done.returncode == 0, done.stdout + done.stderr
        assert command_id(done.stdout)
        assert device_line(done.stdout, "deva") == ["rolled_back rollback command; serving 1.0.0 again"], done.stdout
        assert done.stdout.splitlines()[-1] == (
            "devold is online but did not answer the command in 2 s: it is not in group lab, or it takes no "
            "commands (no OTA key)"
        ), done.stdout
        assert "devn" not in done.stdout and done.stderr == "", done.stdout + done.stderr
        assert not watcher.ota("devn")  # it was right: devn never heard of the command
    finally:
        for device in devices:
            device.stop()
        watcher.close()


def test_without_wait_a_rollback_is_sent_and_ends_at_once_as_before(own_broker: Broker, tmp_path: Path) -> None:
    _, private, _ = make_key(tmp_path)
    done = rollback(own_broker, private, "--device", "devx")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"command {command_id(done.stdout)}: rollback of digits sent to edgerun/devx/cmd\n"
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--timeout", "0", "--timeout must be a positive number, got 0"),
        ("--timeout", "-1", "--timeout must be a positive number, got -1"),
        ("--timeout", "nan", "--timeout must be a positive number, got nan"),
        ("--timeout", "inf", "--timeout must be a positive number, got inf"),
        ("--answer-within", "3601", "--answer-within must be between 0 and 3600, got 3601"),
        ("--answer-within", "0", "--answer-within must be a positive number, got 0"),
    ],
)
def test_a_timeout_or_answer_within_out_of_bounds_is_refused_in_one_line(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    _, private, _ = make_key(tmp_path)
    argv = ["ota", "rollback", "--model", "digits", "--device", "dev1", "--key", str(private)]
    wait = ("--wait",) if option == "--timeout" else ("--wait", "--timeout", "5")
    done = run_cli(*argv, "--mqtt", "mqtt://127.0.0.1:1", *wait, option, value)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == f"edgerun: error: {message}\n", done.stderr
    assert done.stdout == ""
