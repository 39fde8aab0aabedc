"""Audit of the model store's seeding: on a full disk (a real tmpfs), and by a file of the active version."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.card import ModelCard
from edgerun.errors import EdgerunError
from edgerun.model import Model
from edgerun.ota.serving import serve_from_store
from edgerun.ota.store import ModelStore
from tests.conftest import DIGITS, Broker
from tests.ota_helpers import Agent, StatusWatcher, make_key, model_with_card, push_update, unique_model


def load(path: Path, card: ModelCard | None) -> Model:
    return edgerun.load(path, card=card)


def test_a_first_start_on_a_full_disk_refuses_in_one_line_and_leaves_the_store_empty(
    small_disk: Callable[[int], Path],
) -> None:
    store = ModelStore(small_disk(64 * 1024) / "models")  # the model is 120 KB
    with pytest.raises(EdgerunError, match=r"cannot put digits .* in the model store .*No space left on device"):
        serve_from_store(DIGITS / "digits_fp32.onnx", store, load)
    assert store.active("digits") is None
    assert store.versions("digits") == []
    assert list((store.root / "digits" / "versions").iterdir()) == []  # no half-built folder left


def test_a_rejected_update_of_the_rollback_target_s_version_never_deletes_it(broker: Broker, tmp_path: Path) -> None:
    """A downgrade to the version ``active.json`` names as the one to roll back to, with bytes that are
    not a model: the update is rejected, and the version a rollback needs is still there, intact."""
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    device = f"keep-{secrets.token_hex(3)}"
    agent = Agent(broker.port, tmp_path / "state", v1, public, device)
    watcher = StatusWatcher(broker.port)
    try:
        v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
        update = push_update(broker.port, key, v11, "1.1.0", device, probation_s=0)
        assert watcher.wait_state(device, update["update_id"], {"active", "rejected", "failed"})["state"] == "active"
        assert agent.store.active("digits").previous == ["1.0.0"]
        bad = unique_model(tmp_path / "bad", "digits_fp32.onnx")
        bad.write_bytes(os.urandom(3000))
        update = push_update(broker.port, key, bad, "1.0.0", device, allow_downgrade=True, probation_s=0)
        record = watcher.wait_state(device, update["update_id"], {"active", "rejected", "failed"})
        assert record["state"] == "rejected", record
        assert "installed here already, with other bytes" in record["reason"], record
        assert agent.store.verified_file("digits", "1.0.0").read_bytes() == v1.read_bytes()
    finally:
        agent.stop()
        watcher.close()


def test_a_file_of_the_active_version_with_other_bytes_is_not_served_in_its_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon's ``path`` changed (SIGHUP, restart) to another file whose card gives the active
    version: it was served while the store kept the first file under that version, so a later
    rollback or activation of it would have brought back other bytes than those that had served."""
    store = ModelStore(tmp_path / "models")
    int8 = model_with_card(tmp_path / "a", "digits_int8.onnx", "digits.onnx")
    serve_from_store(int8, store, load).close()
    other = model_with_card(tmp_path / "b", "digits_fp32.onnx", "digits.onnx")  # its card says 1.0.0 too
    with caplog.at_level(logging.WARNING, logger="edgerun.ota.serving"):
        served = serve_from_store(other, store, load)
    with served, edgerun.load(int8) as reference, edgerun.load(other) as fp32:
        x = served.constant_inputs()
        assert not np.array_equal(reference.run(*x)[0], fp32.run(*x)[0])
        np.testing.assert_array_equal(served.run(*x)[0], reference.run(*x)[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"model store: {other} is not the digits 1.0.0 in the store (the same version, other bytes): serving the "
        "store's; give the new file a version of its own in its card, or send it as an OTA update"
    ]

    caplog.clear()
    same = model_with_card(tmp_path / "c", "digits_int8.onnx", "digits.onnx")  # the same bytes elsewhere: served
    with caplog.at_level(logging.INFO, logger="edgerun.ota.serving"), serve_from_store(same, store, load):
        pass
    assert [r for r in caplog.records if r.name == "edgerun.ota.serving"] == []
