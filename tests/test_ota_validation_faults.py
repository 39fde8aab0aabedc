"""Faults while an OTA update validates its new version: a kill, a damaged copy, a vendor error.

An update whose process is killed while it validates the new version resumes from the store.

By then the update had installed its version and deleted the download, so the restarted device
validates the copy in the store (hashed against its manifest first) instead of fetching the blob
again over what may be a metered link. A copy damaged since is downloaded again and replaced.

The first device is an agent in a process of its own whose model loader (the accelerator's load,
a hardware boundary) never returns for the new version, so the kill lands during validation for
sure; it is killed with SIGKILL. The restarted device is a real ``edgerun run`` over a real broker.

A loader that fails with an error of its own kind (a vendor delegate's exception, not edgerun's)
rejects the update with the step and the error in one line, and leaves nothing of it behind.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Broker
from tests.ota_helpers import (
    Agent,
    Device,
    StatusWatcher,
    load_digits,
    make_key,
    model_with_card,
    publish,
    push_update,
    unique_model,
)

ENDED = {"active", "rejected", "failed", "rolled_back"}

STUCK_IN_VALIDATION = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests.ota_helpers import Agent, load_digits

    port, state, model, public, device, marker = sys.argv[1:]

    def load(path, card):
        if "1.1.0" in str(path):  # the new version: its load never ends
            Path(marker).write_text("validating")
            time.sleep(3600)
        return load_digits(path, card)

    Agent(int(port), Path(state), Path(model), Path(public), device, load=load)
    time.sleep(3600)
    """
)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    return {"key": key, "public": public, "v1": v1}


@pytest.fixture
def watcher(broker: Broker) -> Iterator[StatusWatcher]:
    w = StatusWatcher(broker.port)
    yield w
    w.close()


def killed_while_validating(broker: Broker, keys: dict[str, Any], base: Path, device: str, model: Path) -> dict:
    """Push ``model`` as digits 1.1.0 to an agent that hangs in validating it, then SIGKILL that agent."""
    marker = base / "validating"
    state = base / device  # where ``Device`` puts the state of ``device``
    args = (broker.port, state, keys["v1"], keys["public"], device, marker)
    command = [sys.executable, "-c", STUCK_IN_VALIDATION, *map(str, args)]
    agent = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (state / "ota" / "journal").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)  # subscribed soon after: the retained manifest reaches it either way
        update = push_update(broker.port, keys["key"], model, "1.1.0", device, probation_s=0)
        while not marker.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), agent.stderr.read().decode() if agent.poll() is not None else "no validation began"
    finally:
        agent.kill()
        agent.wait()
    journal = json.loads((state / "ota" / "journal" / f"{update['update_id']}.json").read_text())
    assert journal["state"] == "validating", journal
    assert not (state / "ota" / "downloads" / update["sha256"]).exists()  # installed, so deleted
    return update


def clear_chunks(port: int, update: dict) -> None:
    blob = update["source"]["mqtt"]
    for i in range(blob["chunks"]):
        publish(port, f"{blob['topic']}/{i}", b"", retain=True)


def test_an_update_killed_during_validation_is_validated_from_the_store_after_the_restart(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, tmp_path: Path
) -> None:
    device = f"resval-{secrets.token_hex(3)}"
    v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
    update = killed_while_validating(broker, keys, tmp_path, device, v11)
    clear_chunks(broker.port, update)  # nothing left to download: the store's copy is all there is

    restarted = Device(broker.port, tmp_path, keys["v1"], keys["public"], device=device)
    try:
        record = watcher.wait_state(device, update["update_id"], ENDED, timeout=30)
        assert record["state"] == "active", (record, restarted.log()[-2000:])
        watcher.wait_online_version(device, "1.1.0")
        assert "is in the store already (installed before a restart)" in restarted.log()
        states = [r["state"] for r in watcher.ota(device) if r.get("update_id") == update["update_id"]]
        assert "downloading" not in states[states.index("validating") :], states
        installed = tmp_path / device / "models" / "digits" / "versions" / "1.1.0" / "model.onnx"
        assert installed.read_bytes() == v11.read_bytes()
    finally:
        restarted.stop()


def test_a_copy_damaged_in_the_store_after_the_kill_is_downloaded_again(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, tmp_path: Path
) -> None:
    device = f"resdmg-{secrets.token_hex(3)}"
    v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
    update = killed_while_validating(broker, keys, tmp_path, device, v11)
    installed = tmp_path / device / "models" / "digits" / "versions" / "1.1.0" / "model.onnx"
    damaged = bytearray(installed.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    installed.write_bytes(bytes(damaged))  # a flipped bit on the card since; the chunks are still retained

    restarted = Device(broker.port, tmp_path, keys["v1"], keys["public"], device=device)
    try:
        record = watcher.wait_state(device, update["update_id"], ENDED, timeout=30)
        assert record["state"] == "active", (record, restarted.log()[-2000:])
        log = restarted.log()
        assert "the copy in the store is unusable" in log and "is corrupt: sha256" in log, log[-2000:]
        assert installed.read_bytes() == v11.read_bytes()
    finally:
        restarted.stop()
    clear_chunks(broker.port, update)


def test_a_vendor_error_while_loading_the_new_version_rejects_it_and_leaves_nothing_behind(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, tmp_path: Path
) -> None:
    device = f"vendor-{secrets.token_hex(3)}"

    def load(path: Path, card: Any) -> Any:
        if "1.1.0" in str(path):  # the accelerator's own exception, not one of edgerun's
            raise RuntimeError("NPU delegate: status 0x1f\nsee the vendor log")
        return load_digits(path, card)

    agent = Agent(broker.port, tmp_path / "state", keys["v1"], keys["public"], device, load=load)
    try:
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        update = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=0)
        record = watcher.wait_state(device, update["update_id"], ENDED, timeout=30)
        assert record["state"] == "rejected", record
        assert record["reason"] == (
            "unexpected error while validating: RuntimeError: NPU delegate: status 0x1f"  # its first line
        ), record
        assert agent.journal(update["update_id"])["state"] == "rejected"  # never resumed at a restart
        assert agent.store.versions("digits") == ["1.0.0"]
        assert not (agent.state / "ota" / "downloads" / update["sha256"]).exists()
        assert agent.slot.get().version == "1.0.0"
        x = agent.slot.get().constant_inputs()
        assert agent.slot.get().run(*x)[0].shape == (1, 10)
        clear_chunks(broker.port, update)
    finally:
        agent.stop()
