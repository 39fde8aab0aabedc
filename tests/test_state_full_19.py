"""A state directory on a full filesystem is refused in one line, by every command that uses it.

With the state directory on a full disk, ``edgerun config check`` passed (an empty temporary file
needs no block), and then ``edgerun daemon`` with ``mqtt`` died with a traceback writing its pid into
``<state_dir>/lock``, as did ``run --mqtt``, ``predict --mqtt`` and ``run --ota-key``; the locked
descriptor stayed open, so a process that went on after the error kept the directory locked. Now
writing is tried for real (a page written and synced), each command ends with one line naming the
folder and the reason (exit 2), and nothing stays locked: once space is freed the same command works.
Real tmpfs mounts filled to their last page, real processes and a real broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgerun.errors import ConfigError
from edgerun.state import claim_state_dir, release_state_dir
from tests.conftest import DIGITS, Broker, fill_disk, free_port, run_cli, start_daemon
from tests.ota_helpers import make_key
from tests.test_state_claim import claimed_elsewhere
from tests.test_sync import Collector, wait_until

MODEL = DIGITS / "digits_int8.tflite"
IMAGE = DIGITS / "samples" / "digit_3.png"
FULL = "No space left on device"


def only_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``edgerun: error:`` line of ``result``'s stderr, which holds nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgerun: error: "), result.stderr
    return lines[0]


def write_config(tmp_path: Path, state: Path, broker: Broker, device: str) -> Path:
    config = tmp_path / "device.yaml"
    config.write_text(
        f"device: {{id: {device}}}\n"
        f"models:\n  digits:\n    path: {MODEL}\n"
        f"mqtt:\n  url: mqtt://127.0.0.1:{broker.port}\n"
        f"api:\n  port: {free_port()}\n"
        f"state_dir: {state}\n"
    )
    return config


@pytest.fixture
def full_state(small_disk: Callable[[int], Path]) -> Iterator[tuple[Path, Path]]:
    """``(state, filler)``: an existing, empty state directory on a 1 MiB tmpfs filled to its last
    page; delete ``filler`` to free the disk."""
    disk = small_disk(1 << 20)
    state = disk / "state"
    state.mkdir()
    yield state, fill_disk(disk)


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "to-be-created"])
def test_config_check_refuses_a_state_dir_on_a_full_disk_and_passes_once_space_is_freed(
    full_state: tuple[Path, Path], tmp_path: Path, broker: Broker, exists: bool
) -> None:
    state, filler = full_state
    if not exists:
        state = state / "edgerun"
    config = write_config(tmp_path, state, broker, "full19-check")
    watched = state if exists else state.parent  # where the check writes
    before = sorted(watched.rglob("*"))

    refused = run_cli("config", "check", str(config))

    assert refused.returncode == 2, refused.stderr
    verb = "cannot write in it" if exists else "cannot create it"
    assert only_error_line(refused) == f"edgerun: error: {config}: state_dir {state}: {verb}: {FULL}"
    assert sorted(watched.rglob("*")) == before  # nothing left behind
    filler.unlink()
    passed = run_cli("config", "check", str(config))
    assert passed.returncode == 0, passed.stderr
    assert sorted(watched.rglob("*")) == before


def test_a_daemon_with_mqtt_on_a_full_state_dir_stops_in_one_line_and_starts_once_space_is_freed(
    full_state: tuple[Path, Path], tmp_path: Path, broker: Broker
) -> None:
    state, filler = full_state
    device = f"full19-{time.monotonic_ns()}"
    config = write_config(tmp_path, state, broker, device)

    refused = run_cli("daemon", "--config", str(config))

    assert refused.returncode == 2, refused.stderr
    assert only_error_line(refused) == f"edgerun: error: {config}: state_dir {state}: cannot write in it: {FULL}"
    filler.unlink()
    topic = f"edgerun/{device}/status"
    collector = Collector(broker.port, topic)
    daemon = start_daemon(config)
    try:
        wait_until(lambda: any(m.get("state") == "online" for m in collector.on(topic)), 60, "the daemon online")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        collector.close()
    assert claimed_elsewhere(state).returncode == 0


def claiming_commands(state: Path, broker: Broker, tmp_path: Path) -> dict[str, list[str]]:
    """Each command besides the daemon that claims the state directory, over one image."""
    mqtt = ["--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--device-id", f"full19-{time.monotonic_ns()}"]
    mqtt += ["--state-dir", str(state)]
    _, _, public = make_key(tmp_path)
    return {
        "run --mqtt": ["run", str(MODEL), "--source", str(IMAGE), *mqtt],
        "predict --mqtt": ["predict", str(MODEL), str(IMAGE), *mqtt],
        "run --ota-key": ["run", str(MODEL), "--source", str(IMAGE), *mqtt, "--ota-key", str(public)],
    }


@pytest.mark.parametrize("command", ["run --mqtt", "predict --mqtt", "run --ota-key"])
def test_each_command_claiming_a_full_state_dir_stops_in_one_line_and_works_once_space_is_freed(
    full_state: tuple[Path, Path], tmp_path: Path, broker: Broker, command: str
) -> None:
    state, filler = full_state
    args = claiming_commands(state, broker, tmp_path)[command]

    refused = run_cli(*args)

    assert refused.returncode == 2, refused.stderr
    assert only_error_line(refused) == f"edgerun: error: state_dir {state}: cannot write in it: {FULL}"
    filler.unlink()
    worked = run_cli(*args)
    assert worked.returncode == 0, worked.stderr
    assert claimed_elsewhere(state).returncode == 0


def test_a_state_dir_used_before_its_disk_filled_is_refused_too(
    small_disk: Callable[[int], Path], broker: Broker, tmp_path: Path
) -> None:
    # The lock file of an earlier run holds a pid: truncating it frees the block the new pid takes,
    # so writing the pid alone succeeds on the full disk; the outbox then failed after the model loaded.
    disk = small_disk(1 << 20)
    state = disk / "state"
    state.mkdir()
    (state / "lock").write_text("12345\n")
    filler = fill_disk(disk)
    args = claiming_commands(state, broker, tmp_path)["run --mqtt"]

    refused = run_cli(*args)

    assert refused.returncode == 2, refused.stderr
    assert only_error_line(refused) == f"edgerun: error: state_dir {state}: cannot write in it: {FULL}"
    filler.unlink()
    assert run_cli(*args).returncode == 0


def test_a_claim_refused_for_a_full_disk_leaves_the_state_dir_unlocked(full_state: tuple[Path, Path]) -> None:
    state, filler = full_state
    with pytest.raises(ConfigError) as refused:
        claim_state_dir(state)
    assert str(refused.value) == f"state_dir {state}: cannot write in it: {FULL}"
    filler.unlink()
    assert claimed_elsewhere(state).returncode == 0  # no descriptor of this process holds the lock
    claim_state_dir(state)  # and this process claims it once space is freed
    try:
        assert claimed_elsewhere(state).returncode == 1
    finally:
        release_state_dir(state)


def test_a_filesystem_with_free_blocks_but_no_free_inodes_is_named_as_such(tmp_path: Path, broker: Broker) -> None:
    disk = tmp_path / "inodes"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=16,mode=0755", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        state = disk / "state"
        state.mkdir()
        taken = []
        while True:  # every inode taken, by empty files: the blocks stay free
            try:
                (disk / f"f{len(taken)}").touch()
            except OSError:
                break
            taken.append(disk / f"f{len(taken)}")
        assert os.statvfs(disk).f_bavail > 0
        config = write_config(tmp_path, state, broker, "full19-inodes")

        refused = run_cli("config", "check", str(config))

        assert refused.returncode == 2, refused.stderr
        assert only_error_line(refused) == (
            f"edgerun: error: {config}: state_dir {state}: cannot write in it: {FULL} (no free inodes: see df -i)"
        )
        taken.pop().unlink()
        assert run_cli("config", "check", str(config)).returncode == 0
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_an_ota_folder_that_cannot_be_made_is_one_line_not_a_traceback(tmp_path: Path, broker: Broker) -> None:
    # the OTA agent makes state/ota/journal and state/ota/downloads at start; a file where the folder goes stands
    # in for a disk with no inode left (both were an OSError traceback from OtaAgent.__init__)
    state = tmp_path / "state"
    state.mkdir()
    (state / "ota").write_text("not a folder")
    args = claiming_commands(state, broker, tmp_path)["run --ota-key"]
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.stderr
    assert only_error_line(refused) == (
        f"edgerun: error: state_dir {state}: cannot create {state / 'ota' / 'journal'}: Not a directory"
    )
