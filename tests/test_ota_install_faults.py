"""Faults of the disk the model store is on, when an OTA update installs its model.

The store (``<state dir>/models``) may be on another filesystem than the downloads (a USB disk or
another partition mounted there): the downloaded blob cannot be renamed into the store (EXDEV) and
is copied instead. A full or read-only store fails the update (``failed``, a one-line reason naming
the step and the cause), leaves nothing of the new version in the store and keeps the old version
serving; the whole blob downloaded stays, and the same update published again installs from it.
The other filesystems are real tmpfs mounts (``small_disk``), filled with a real file and freed by
deleting it; the updates are real signed manifests through a real broker and agent.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgerun
from edgerun.ota.store import ModelStore
from tests.conftest import Broker, fill_disk
from tests.ota_helpers import Agent, StatusWatcher, make_key, model_with_card, publish, push_update, unique_model

ENDED = {"active", "rejected", "failed", "rolled_back"}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    return {"key": key, "public": public, "v1": v1}


@pytest.fixture(scope="module")
def watcher(broker: Broker) -> Iterator[StatusWatcher]:
    """One operator's view for the module (each test has a device of its own)."""
    w = StatusWatcher(broker.port)
    yield w
    w.close()


def state_with_store_on(disk: Path, tmp_path: Path) -> Path:
    """A state dir whose ``models`` folder (the store) is ``disk``, as a user's symlink to a mount puts it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").symlink_to(disk, target_is_directory=True)
    return state


def hidden(agent: Agent) -> list[str]:
    """Hidden folders (``.building``, ``.removing``) left in the store's ``versions``."""
    return sorted(p.name for p in (agent.store.root / "digits" / "versions").glob(".*"))


def assert_still_serving_1_0_0(agent: Agent, uid: str, sha256: str) -> None:
    assert not agent.store.installed("digits", "1.1.0")
    assert agent.store.versions("digits") == ["1.0.0"]
    assert hidden(agent) == []
    active = agent.store.active("digits")
    assert active is not None and active.version == "1.0.0", active
    assert agent.slot.primary.version == "1.0.0"
    assert agent.journal(uid)["state"] == "failed"
    assert (agent.state / "ota" / "downloads" / sha256 / "blob").is_file()  # kept: published again, it is reused


def test_an_update_installs_into_a_store_on_another_filesystem_by_copying_the_download(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, small_disk: Callable[[int], Path], tmp_path: Path
) -> None:
    device = f"exdev-{secrets.token_hex(3)}"
    usb = small_disk(4 << 20)
    agent = Agent(broker.port, state_with_store_on(usb, tmp_path), keys["v1"], keys["public"], device)
    try:
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        update = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0)
        record = watcher.wait_state(device, update["update_id"], ENDED, timeout=30)
        assert record["state"] == "active", record

        installed = agent.store.verified_file("digits", "1.1.0")
        assert installed.read_bytes() == v11.read_bytes()
        assert os.stat(installed).st_dev == os.stat(usb).st_dev != os.stat(agent.state / "ota").st_dev
        assert hidden(agent) == []
        assert not (agent.state / "ota" / "downloads" / update["sha256"]).exists()  # copied, then deleted
        serving = agent.slot.get()
        assert serving.version == "1.1.0"
        x = serving.constant_inputs()
        with edgerun.load(v11) as reference:
            np.testing.assert_array_equal(serving.run(*x)[0], reference.run(*x)[0])
    finally:
        agent.stop()


def test_a_full_store_fails_the_update_in_one_line_and_the_same_update_installs_once_space_is_back(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, small_disk: Callable[[int], Path], tmp_path: Path
) -> None:
    device = f"enospc-{secrets.token_hex(3)}"
    disk = small_disk(1 << 20)  # 1.0.0 (120 KB) is installed at the start; then the disk is filled
    agent = Agent(broker.port, state_with_store_on(disk, tmp_path), keys["v1"], keys["public"], device)
    try:
        filler = fill_disk(disk)
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        update = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0)
        uid = update["update_id"]
        record = watcher.wait_state(device, uid, ENDED, timeout=30)
        assert record["state"] == "failed", record
        assert record["reason"] == "cannot install digits 1.1.0 in the store: No space left on device", record
        assert_still_serving_1_0_0(agent, uid, update["sha256"])

        filler.unlink()  # space is back: the same file and version, published again, installs
        blob = update["source"]["mqtt"]
        for i in range(blob["chunks"]):  # its retained chunks cleared: the blob on the device is all there is
            publish(broker.port, f"{blob['topic']}/{i}", b"", retain=True)
        again = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0, chunks=range(0))
        assert again["update_id"] != uid
        record = watcher.wait_state(device, again["update_id"], ENDED, timeout=30)
        assert record["state"] == "active", record
        assert agent.slot.primary.version == "1.1.0"
        assert agent.store.verified_file("digits", "1.1.0").read_bytes() == v11.read_bytes()
        assert hidden(agent) == []
    finally:
        agent.stop()


def test_a_read_only_store_fails_the_update_in_one_line_and_a_kept_blob_damaged_since_is_fetched_again(
    broker: Broker,
    keys: dict[str, Any],
    watcher: StatusWatcher,
    small_disk: Callable[[int], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = f"erofs-{secrets.token_hex(3)}"
    disk = small_disk(1 << 20)
    agent = Agent(broker.port, state_with_store_on(disk, tmp_path), keys["v1"], keys["public"], device)
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        update = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0)
        record = watcher.wait_state(device, update["update_id"], ENDED, timeout=30)
        assert record["state"] == "failed", record
        assert record["reason"] == "cannot install digits 1.1.0 in the store: Read-only file system", record
        assert_still_serving_1_0_0(agent, update["update_id"], update["sha256"])

        # The blob kept on disk is damaged meanwhile: published again, the update fetches it anew (its
        # chunks are still retained), never installs the damaged copy.
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True, capture_output=True)
        kept = agent.state / "ota" / "downloads" / update["sha256"] / "blob"
        damaged = bytearray(kept.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        kept.write_bytes(bytes(damaged))
        with caplog.at_level(logging.WARNING, logger="edgerun.ota.transfer"):
            again = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0)
            record = watcher.wait_state(device, again["update_id"], ENDED, timeout=30)
        assert record["state"] == "active", record
        assert agent.store.verified_file("digits", "1.1.0").read_bytes() == v11.read_bytes()
        assert any("the blob on disk is not the manifest's" in r.getMessage() for r in caplog.records)
    finally:
        agent.stop()


def test_a_move_into_a_full_store_on_the_same_filesystem_leaves_the_downloaded_file_where_it_was(
    small_disk: Callable[[int], Path], tmp_path: Path
) -> None:
    """The rename needs no space, the card written after it does: the install fails, and the file it
    moved goes back to the caller, not away with the half-built folder."""
    disk = small_disk(1 << 20)
    store = ModelStore(disk / "models")
    v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
    blob = disk / "downloads" / "blob"
    blob.parent.mkdir()
    blob.write_bytes(v11.read_bytes())
    card = {"name": "digits", "version": "1.1.0"}
    filler = fill_disk(disk)
    with pytest.raises(OSError) as caught:
        store.install("digits", "1.1.0", "onnx", blob, {"sha256": "0" * 64}, card, move=True)
    assert caught.value.errno == errno.ENOSPC, caught.value
    assert blob.read_bytes() == v11.read_bytes()
    assert not store.installed("digits", "1.1.0")
    assert list((store.root / "digits" / "versions").iterdir()) == []

    filler.unlink()
    installed = store.install("digits", "1.1.0", "onnx", blob, {"sha256": "0" * 64}, card, move=True)
    assert installed.read_bytes() == v11.read_bytes() and not blob.exists()
