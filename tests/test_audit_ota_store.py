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
from edgerun.card import ModelCard, load_card
from edgerun.errors import EdgerunError
from edgerun.files import sha256_file
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


def _outputs(model: Model) -> np.ndarray:
    return model.run(*model.constant_inputs())[0]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "edgerun.ota.serving"]


def test_a_file_given_again_under_the_active_version_replaces_the_copy_given_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon's ``path`` changed (SIGHUP, restart) to another file whose card gives the same version:
    it was served while the store kept the first file under that version, so a later rollback to that
    version would have brought back other bytes than those that had served."""
    store = ModelStore(tmp_path / "models")
    int8 = model_with_card(tmp_path / "a", "digits_int8.onnx", "digits.onnx")
    serve_from_store(int8, store, load).close()
    fp32 = model_with_card(tmp_path / "b", "digits_fp32.onnx", "digits.onnx")  # its card says 1.0.0 too
    with caplog.at_level(logging.WARNING, logger="edgerun.ota.serving"):
        served = serve_from_store(fp32, store, load)
    with served, edgerun.load(int8) as first, edgerun.load(fp32) as reference:
        assert not np.array_equal(_outputs(first), _outputs(reference))
        np.testing.assert_array_equal(_outputs(served), _outputs(reference))
    assert store.verified_file("digits", "1.0.0").read_bytes() == fp32.read_bytes()
    assert _warnings(caplog) == [
        f"model store: digits 1.0.0 replaced by {fp32} (the same version, other bytes; give a new file a version "
        "of its own in its card, so that a rollback can tell the two apart)"
    ]

    caplog.clear()
    same = model_with_card(tmp_path / "c", "digits_fp32.onnx", "digits.onnx")  # the same bytes elsewhere: served
    with caplog.at_level(logging.INFO, logger="edgerun.ota.serving"), serve_from_store(same, store, load):
        pass
    assert [r for r in caplog.records if r.name == "edgerun.ota.serving"] == []


def test_a_file_given_under_the_version_an_update_installed_does_not_replace_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModelStore(tmp_path / "models")
    update = model_with_card(tmp_path / "ota", "digits_int8.onnx", "digits.onnx")
    record = {"update_id": "digits-1.0.0-0a1b2c3d", "sha256": sha256_file(update), "size": update.stat().st_size}
    card = load_card(update.with_name("digits.onnx.card.yaml")).to_dict()
    store.install("digits", "1.0.0", "onnx", update, record, card)  # as the agent installs a downgrade to 1.0.0
    store.activate("digits", "1.0.0")
    given = model_with_card(tmp_path / "b", "digits_fp32.onnx", "digits.onnx")
    with caplog.at_level(logging.WARNING, logger="edgerun.ota.serving"):
        served = serve_from_store(given, store, load)
    with served, edgerun.load(update) as reference:
        np.testing.assert_array_equal(_outputs(served), _outputs(reference))
    assert store.verified_file("digits", "1.0.0").read_bytes() == update.read_bytes()
    assert _warnings(caplog) == [
        f"model store: {given} is not the digits 1.0.0 that an OTA update installed (the same version, other "
        "bytes): serving the update's; give the new file a version of its own in its card, or send it as an OTA update"
    ]


def test_a_version_whose_record_was_removed_by_hand_serves_the_file_given(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModelStore(tmp_path / "models")
    int8 = model_with_card(tmp_path / "a", "digits_int8.onnx", "digits.onnx")
    serve_from_store(int8, store, load).close()
    (store.version_dir("digits", "1.0.0") / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="edgerun.ota.serving"), serve_from_store(int8, store, load) as served:
        assert served.version == "1.0.0"
    assert len(_warnings(caplog)) == 1 and "the record of digits 1.0.0 cannot be read" in _warnings(caplog)[0]
