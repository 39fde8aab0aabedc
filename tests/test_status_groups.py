"""A device's retained ``P/ID/status`` names its groups, and ``ota publish --wait --group G`` uses them.

The record carries ``"groups": [...]`` (``--group`` of ``edgerun run``, ``device.groups`` of the daemon; ``[]``
for none), docs/protocol-notes.md. A device online whose record names its groups and not G is no target: the
wait neither follows it nor gives it ``--answer-within`` to answer. A record with no ``groups`` (an older
edgerun) keeps that answer window, and so does a member, which may take no updates. Every device here is a
real ``edgerun run`` or ``edgerun daemon`` process on a real Mosquitto; the older edgerun's record is
published as such a device published it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgerun import __version__
from tests.conftest import ROOT, Broker, run_cli, start_daemon, stop_process
from tests.ota_helpers import Device, StatusWatcher, make_key, model_with_card, publish, unique_model

NOTHING_FOLLOWED = 3
#: Bounds a command that should end by itself; reached only by a hung test.
HUNG_S = 300


def publish_argv(broker: Broker, key: Path, model: Path, *args: str) -> list[str]:
    """``edgerun ota publish MODEL --model digits --version 1.1.0 --group lab --wait`` with ``args``."""
    return [
        sys.executable, "-m", "edgerun", "ota", "publish", str(model), "--model", "digits", "--version", "1.1.0",
        "--key", str(key), "--mqtt", broker.url, "--group", "lab", "--wait", *args,
    ]  # fmt: skip


def finish(argv: list[str], *devices: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end (it must end by itself)."""
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=HUNG_S)
    except subprocess.TimeoutExpired as exc:
        logs = "".join(d.log()[-1500:] for d in devices)
        pytest.fail(f"publish --wait still waiting after {HUNG_S} s: {exc.stdout!r}{logs}")


class PlainDevice:
    """``edgerun run`` with ``--mqtt`` and ``--group`` but no ``--ota-key``: a member that takes no updates."""

    def __init__(self, port: int, state: Path, model: Path, device: str, groups: tuple[str, ...]) -> None:
        self.device = device
        self.err = state / f"{device}.err"
        state.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "edgerun", "-v", "run", str(model),
            "--source", f"mqtt://127.0.0.1:{port}/edgerun/{device}/input", "--sink", str(state / f"{device}.jsonl"),
            "--mqtt", f"mqtt://127.0.0.1:{port}", "--device-id", device, "--state-dir", str(state / device),
            *[a for g in groups for a in ("--group", g)],
        ]  # fmt: skip
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    def stop(self) -> int:
        return stop_process(self.proc, 20)

    def log(self) -> str:
        return self.err.read_text(errors="replace")


DAEMON_CONFIG = """
device:
  id: {device}
  groups: [lab, east, lab]
models:
  digits:
    path: {model}
mqtt:
  url: mqtt://127.0.0.1:{port}
ota:
  trusted_keys: [{key}]
api:
  enabled: false
state_dir: {state}
logging:
  format: text
"""


class DaemonDevice:
    """``edgerun daemon`` as a device in groups lab and east."""

    def __init__(self, port: int, folder: Path, model: Path, public: Path, device: str) -> None:
        self.device = device
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "edgerun.yaml"
        config.write_text(DAEMON_CONFIG.format(device=device, model=model, port=port, key=public, state=folder / "s"))
        self.err = folder / "daemon.err"
        with open(self.err, "wb") as err:
            self.proc = start_daemon(config, stderr=err)

    def stop(self) -> int:
        return stop_process(self.proc, 20)

    def log(self) -> str:
        return self.err.read_text(errors="replace")


def older_status(port: int, device: str) -> None:
    """The retained ``online`` record of an older edgerun, which named no groups."""
    models = {"digits": {"version": "1.0.0", "format": "onnx", "delegate": "cpu"}}
    record = {"schema": 1, "state": "online", "ts": int(time.time()), "runtime": "0.9.0", "models": models}
    publish(port, f"edgerun/{device}/status", json.dumps({**record, "accelerators": []}).encode(), retain=True)


def wait_groups(watcher: StatusWatcher, device: str, timeout: float = 60) -> list[str]:
    """The ``groups`` of ``device``'s first ``online`` status record that has them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in watcher.status(device):
            if record.get("state") == "online" and "groups" in record:
                return record["groups"]
        time.sleep(0.05)
    raise AssertionError(f"{device}: no online status with groups in {timeout} s; saw {watcher.status(device)[-3:]}")


def test_the_status_record_names_the_groups_of_run_and_of_the_daemon_once_each(
    own_broker: Broker, tmp_path: Path
) -> None:
    _, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    watcher = StatusWatcher(own_broker.port)
    state = tmp_path / "state"
    devices: list[Any] = [
        Device(own_broker.port, state, v1, public, device="runlab", groups=("lab", "west", "lab")),
        Device(own_broker.port, state, v1, public, device="runnone"),
        DaemonDevice(own_broker.port, tmp_path / "daemon", v1, public, "daemonlab"),
    ]
    try:
        assert wait_groups(watcher, "runlab") == ["lab", "west"]
        assert wait_groups(watcher, "runnone") == []  # in no group: said, unlike an older edgerun's record
        assert wait_groups(watcher, "daemonlab") == ["lab", "east"]
        record = watcher.status("daemonlab")[-1]
        assert record["runtime"] == __version__ and "accelerators" in record and "models" in record
    finally:
        for device in devices:
            assert device.stop() == 0, device.log()[-2000:]
        watcher.close()
    offline = watcher.status("runlab")[-1]
    assert offline["state"] == "offline" and "groups" not in offline  # PROTOCOL.md's offline record, as it was


def test_devices_online_in_other_groups_only_are_not_waited_for_and_the_wait_ends_at_once(
    own_broker: Broker, tmp_path: Path
) -> None:
    """devo is in group other, devn in none, both online and taking updates; lab has no member online. The
    wait used to give each of them --answer-within (here an hour) to answer and so ran to --timeout: exit 1,
    "timed out". Now their records say they are not in lab: nothing to follow, exit 3 and a line that says
    so, without naming them as devices that did not answer."""
    _, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = unique_model(tmp_path / "v2", "digits_int8.onnx")
    watcher = StatusWatcher(own_broker.port)
    state = tmp_path / "state"
    devices = [
        Device(own_broker.port, state, v1, public, device="devo", groups=("other",)),
        Device(own_broker.port, state, v1, public, device="devn"),
    ]
    try:
        for device in devices:
            wait_groups(watcher, device.device)
        done = finish(publish_argv(own_broker, private, v2, "--answer-within", "3600", "--timeout", "60"), *devices)
        assert done.returncode == NOTHING_FOLLOWED, done.stdout + done.stderr
        assert "timed out" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        lines = done.stdout.splitlines()
        assert lines[1:] == [
            "no device online is in group lab: the members will act on the retained update when they connect"
        ], done.stdout
        assert not watcher.ota("devo") and not watcher.ota("devn")  # right: neither heard of the update
    finally:
        for device in devices:
            device.stop()
        watcher.close()


def test_members_are_followed_to_active_while_devices_of_other_groups_are_never_waited_for(
    own_broker: Broker, tmp_path: Path
) -> None:
    """deva (``edgerun run --group lab``) and devd (a daemon in lab and east) take the update; devo (group
    other) does not. The wait used to wait for devo's answer for --answer-within (an hour here) and end at
    --timeout with exit 1; now it ends when both members are active, exit 0, devo never named."""
    _, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = unique_model(tmp_path / "v2", "digits_int8.onnx")
    watcher = StatusWatcher(own_broker.port)
    state = tmp_path / "state"
    devices: list[Any] = [
        Device(own_broker.port, state, v1, public, device="deva", groups=("lab",)),
        Device(own_broker.port, state, v1, public, device="devo", groups=("other",)),
        DaemonDevice(own_broker.port, tmp_path / "daemon", v1, public, "devd"),
    ]
    try:
        for device in devices:
            wait_groups(watcher, device.device)
        argv = publish_argv(own_broker, private, v2, "--answer-within", "3600", "--probation", "0", "--timeout", "120")
        done = finish(argv, *devices)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert any(line.split()[:2] == ["deva", "active"] for line in lines), done.stdout
        assert any(line.split()[:2] == ["devd", "active"] for line in lines), done.stdout
        assert not any("devo" in line for line in lines), done.stdout
        assert "timed out" not in done.stderr, done.stderr
        assert not watcher.ota("devo")
    finally:
        for device in devices:
            device.stop()
        watcher.close()


def test_a_device_whose_record_names_no_groups_keeps_the_answer_window(own_broker: Broker, tmp_path: Path) -> None:
    """An older edgerun's record tells nothing of its groups: it may be a member, so it is given
    --answer-within to answer, then named, as before."""
    _, private, _ = make_key(tmp_path)
    v2 = unique_model(tmp_path / "v2", "digits_int8.onnx")
    older_status(own_broker.port, "devold")
    done = finish(publish_argv(own_broker, private, v2, "--answer-within", "1", "--timeout", "60"))
    assert done.returncode == NOTHING_FOLLOWED, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:] == [
        "devold is online but did not answer the update in 1 s: it is not in group lab, "
        "or it takes no updates (no OTA key)",
        "no member of group lab answered: those offline will act on the retained update when they connect",
    ], done.stdout


def test_a_member_that_takes_no_updates_is_named_as_such_after_the_answer_window(
    own_broker: Broker, tmp_path: Path
) -> None:
    """devm is in lab by its record but runs without --ota-key: it never answers, so it is given
    --answer-within and then named as a member that takes no updates (not as one maybe outside the group)."""
    _, private, _ = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v2 = unique_model(tmp_path / "v2", "digits_int8.onnx")
    watcher = StatusWatcher(own_broker.port)
    devm = PlainDevice(own_broker.port, tmp_path / "state", v1, "devm", ("lab",))
    try:
        assert wait_groups(watcher, "devm") == ["lab"]
        done = finish(publish_argv(own_broker, private, v2, "--answer-within", "1", "--timeout", "60"), devm)
        assert done.returncode == NOTHING_FOLLOWED, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[1:] == [
            "devm is in group lab but did not answer the update in 1 s: it takes no updates (no OTA key)",
            "no member of group lab answered: those offline will act on the retained update when they connect",
        ], done.stdout
    finally:
        devm.stop()
        watcher.close()


def test_ota_status_shows_each_devices_groups(own_broker: Broker, tmp_path: Path) -> None:
    """``lab,west`` for a device in two groups, ``-`` for one in none, ``?`` for an older edgerun's record."""
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    watcher = StatusWatcher(own_broker.port)
    state = tmp_path / "state"
    devices = [
        PlainDevice(own_broker.port, state, v1, "devlab", ("lab", "west")),
        PlainDevice(own_broker.port, state, v1, "devnone", ()),
    ]
    older_status(own_broker.port, "devold")
    try:
        for device in devices:
            wait_groups(watcher, device.device)
        table = run_cli("ota", "status", "--mqtt", own_broker.url, "--wait", "1")
        assert table.returncode == 0 and table.stderr == "", table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split()[:4] == ["device", "online", "groups", "models"]
        columns = {row.split()[0]: row.split()[1:4] for row in rows}
        assert columns == {
            "devlab": ["yes", "lab,west", "digits"],
            "devnone": ["yes", "-", "digits"],
            "devold": ["yes", "?", "digits"],
        }, table.stdout
        as_json = run_cli("ota", "status", "--mqtt", own_broker.url, "--wait", "1", "--json")
        assert as_json.returncode == 0, as_json.stderr
        groups = {r["device"]: r["groups"] for r in map(json.loads, as_json.stdout.splitlines())}
        assert groups == {"devlab": ["lab", "west"], "devnone": [], "devold": None}
    finally:
        for device in devices:
            device.stop()
        watcher.close()
