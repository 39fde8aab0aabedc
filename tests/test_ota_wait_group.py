"""``edgerun ota publish --group G --wait`` with devices online that are not members of G.

A device's status record names its groups (docs/protocol-notes.md): one that names them and not G is no
target and is not waited for at all. A device whose record names no groups (an older edgerun) or a member
shows itself by answering the manifest on ``P/ID/ota/status``; one that has not answered within
``--answer-within`` seconds of being free to (the wait began, it came online, or it ended the update it was
busy with) is no longer waited for (tests/test_status_groups.py). Every device here is a real ``edgerun run``
process on a real Mosquitto.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Broker, run_cli, stop_process
from tests.ota_helpers import Device, StatusWatcher, make_key, model_with_card, publish, push_update, unique_model

NOTHING_FOLLOWED = 3
#: Bounds a command that should end by itself; reached only by a hung test (the fix's waits are seconds).
HUNG_S = 240


def publish_argv(broker: Broker, key: Path, model: Path, *args: str) -> list[str]:
    """``edgerun ota publish MODEL --model digits --version 1.1.0`` with ``args``."""
    return [
        sys.executable, "-m", "edgerun", "ota", "publish", str(model), "--model", "digits", "--version", "1.1.0",
        "--key", str(key), "--mqtt", broker.url, *args,
    ]  # fmt: skip


def release_chunks(port: int, manifest: dict[str, Any], model: Path) -> None:
    """Publish, retained, the chunks of ``manifest`` (an update of ``model`` pushed without them)."""
    blob, data = manifest["source"]["mqtt"], model.read_bytes()
    size = blob["chunk_size"]
    for i in range(blob["chunks"]):
        publish(port, f"{blob['topic']}/{i}", data[i * size : (i + 1) * size], retain=True)


def finish(cli: subprocess.Popen[str], *devices: Device) -> tuple[str, str]:
    """The output of ``cli`` once it has ended by itself."""
    try:
        return cli.communicate(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        stop_process(cli, 10)
        out, err = cli.communicate()
        logs = "".join(d.log()[-1500:] for d in devices)
        pytest.fail(f"publish --wait still waiting after {HUNG_S} s: {out}{err}{logs}")


def test_a_group_whose_devices_online_are_all_other_devices_ends_without_waiting_for_them(
    own_broker: Broker, tmp_path: Path
) -> None:
    """The defect: devb, online, is in no group; lab has no member at all. The wait used to last the whole
    --timeout (every device online might have been a member) and end with exit 1, "timed out". devb's
    record says it is in no group, so it is not waited for at all."""
    _, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = unique_model(tmp_path / "v2", "digits_int8.onnx")
    watcher = StatusWatcher(own_broker.port)
    devb = Device(own_broker.port, tmp_path / "state", v1, public, device="devb")
    try:
        watcher.wait_online_version("devb", "1.0.0")
        argv = publish_argv(own_broker, private, v2, "--group", "lab", "--wait", "--timeout", "90")
        cli = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = finish(cli, devb)
        assert cli.returncode == NOTHING_FOLLOWED, out + err
        assert "timed out" not in err and "Traceback" not in err, err
        lines = out.splitlines()
        assert lines[1:] == [
            "no device online is in group lab: the members will act on the retained update when they connect"
        ], out
        assert not watcher.ota("devb")  # it was right: devb never heard of the update
    finally:
        devb.stop()
        watcher.close()


def test_a_member_busy_with_another_update_is_followed_after_it_and_a_device_of_no_group_is_named(
    own_broker: Broker, tmp_path: Path
) -> None:
    """deva and devc are in lab, devb in no group. devc is downloading another update whose chunks are held
    back until well after --answer-within has passed since the wait began; deva answers and ends at once.
    The wait used to end as soon as deva ended (the first member to answer made the others' silence count
    as not belonging): devc was never followed. Now devc, busy, is given its time once it is free: it
    answers, is followed to active; devb, whose record names no group, is never waited for nor named."""
    key, private, public = make_key(tmp_path)
    port = own_broker.port
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    other = unique_model(tmp_path / "other", "digits_fp32.onnx")
    v2 = unique_model(tmp_path / "v2", "digits_int8.onnx")
    watcher = StatusWatcher(port)
    state = tmp_path / "state"
    devices = [
        Device(port, state, v1, public, device="deva", groups=("lab",)),
        Device(port, state, v1, public, device="devb"),
        Device(port, state, v1, public, device="devc", groups=("lab",)),
    ]
    cli: subprocess.Popen[str] | None = None
    try:
        for device in devices:
            watcher.wait_online_version(device.device, "1.0.0")
        held = push_update(port, key, other, "1.0.5", "devc", chunks=range(0), probation_s=0)
        watcher.wait_state("devc", held["update_id"], {"downloading"})
        argv = publish_argv(
            own_broker, private, v2, "--group", "lab", "--wait", "--answer-within", "2", "--probation", "0",
            "--timeout", "180",
        )  # fmt: skip
        cli = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ended = watcher.wait_state("deva", None, {"active"}, timeout=HUNG_S)
        time.sleep(3)  # past the 2 s deva and devb had to answer, counted from the start of the wait
        release_chunks(port, held, other)
        watcher.wait_state("devc", held["update_id"], {"active"}, timeout=HUNG_S)
        out, err = finish(cli, *devices)
        assert cli.returncode == 0, out + err
        lines = out.splitlines()
        assert any(line.split()[:2] == ["deva", "active"] for line in lines), out
        assert any(line.split()[:2] == ["devc", "active"] for line in lines), out
        assert watcher.wait_state("devc", ended["update_id"], {"active"})["version"] == "1.1.0"
        assert not any("devb" in line for line in lines), out
        assert not any(line.startswith(("deva is", "devc is", "no member", "no device")) for line in lines), out
    finally:
        if cli is not None and cli.poll() is None:
            stop_process(cli, 10)
        for device in devices:
            device.stop()
        watcher.close()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "3601"])
def test_answer_within_out_of_bounds_is_refused_in_one_line(tmp_path: Path, value: str) -> None:
    _, private, _ = make_key(tmp_path)
    model = model_with_card(tmp_path / "m", "digits_fp32.onnx", "digits.onnx")
    argv = ["ota", "publish", str(model), "--model", "digits", "--version", "1.1.0", "--key", str(private)]
    done = run_cli(*argv, "--group", "lab", "--mqtt", "mqtt://127.0.0.1:1", "--wait", "--answer-within", value)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("edgerun: error: --answer-within must be"), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
