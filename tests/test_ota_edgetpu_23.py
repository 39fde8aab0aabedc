"""OTA and Coral Edge TPU pairs (``X_edgetpu.tflite`` compiled for the Edge TPU, ``X.tflite`` its CPU twin).

An update carries one model file (PROTOCOL.md), which a device keeps in its store as ``model.tflite``: there a
compiled file has no ``_edgetpu`` name, so the Edge TPU is never tried with it, and the CPU cannot run its
``edgetpu-custom-op``. So ``ota publish`` refuses a compiled file and names its twin, and a Coral device with OTA
on is given ``X.tflite`` (the compiled file beside it), whose store keeps the twin.

The compiled models here are copies of the plain one: no test machine has an Edge TPU or its compiler, and the
Edge TPU's delegate fails (no libedgetpu) before a compiled model's custom op would matter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edgerun
from edgerun.card import ModelCard
from edgerun.files import sha256_file
from edgerun.model import Model
from edgerun.ota.serving import serve_from_store
from edgerun.ota.store import ModelStore
from tests.conftest import DIGITS, Broker, FakeTree, run_cli
from tests.test_audit_ota_operator import retained


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    """``digits_int8.tflite`` and its card, with ``digits_int8_edgetpu.tflite`` beside them: the plain file."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("digits_int8.tflite", "digits_int8.tflite.card.yaml"):
        shutil.copy(DIGITS / name, folder / name)
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_int8_edgetpu.tflite")
    return folder / "digits_int8.tflite"


def test_publishing_an_edge_tpu_compiled_model_is_refused_naming_its_twin_and_nothing_is_sent(
    pair: Path, own_broker: Broker, key_pair: Path
) -> None:
    compiled = pair.with_name("digits_int8_edgetpu.tflite")
    done = run_cli(
        "ota", "publish", str(compiled), "--model", "digits", "--version", "1.1.0", "--device", "dev1",
        "--key", str(key_pair), "--mqtt", own_broker.url,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"edgerun: error: {compiled} is compiled for the Edge TPU: an update carries one model file, which every "
        f"device must run: publish {pair} (PROTOCOL.md has no Edge TPU pair)"
    )
    assert retained(own_broker.port) == {}


def test_a_coral_device_given_the_plain_file_tries_the_edge_tpu_and_its_store_keeps_the_cpu_twin(
    pair: Path, tmp_path: Path
) -> None:
    """What docs/ota.md tells a Coral user with OTA on to do (no behaviour of this change: it pins the advice)."""
    tpu_root = FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0").root  # libedgetpu is not installed

    def load(path: Path, card: ModelCard | None) -> Model:
        return edgerun.load(path, card=card, probe_root=tpu_root, state_dir=tmp_path / "state")

    store = ModelStore(tmp_path / "state" / "models")
    with serve_from_store(pair, store, load) as model:
        tried = {a.delegate: a for a in model.selection.attempts}
        assert tried["edgetpu"].status == "failed"
        assert Path(tried["edgetpu"].path) == pair.with_name("digits_int8_edgetpu.tflite")
    record = store.manifest("digits", "1.0.0")
    assert record["source"] == str(pair) and record["sha256"] == sha256_file(pair)


def test_a_coral_device_given_the_compiled_file_keeps_its_cpu_twin_in_the_store(pair: Path, tmp_path: Path) -> None:
    """Given ``X_edgetpu.tflite`` with ``X.tflite`` beside it, the store keeps the twin, which the CPU can run
    after a rollback; it used to keep the compiled file, which runs nowhere from there."""
    compiled = pair.with_name("digits_int8_edgetpu.tflite")
    shutil.copy(DIGITS / "digits_fp32.tflite", compiled)  # other bytes than the twin's, to tell them apart
    tpu_root = FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0").root  # libedgetpu is not installed

    def load(path: Path, card: ModelCard | None) -> Model:
        return edgerun.load(path, card=card, probe_root=tpu_root, state_dir=tmp_path / "state")

    store = ModelStore(tmp_path / "state" / "models")
    with serve_from_store(compiled, store, load) as model:
        assert model.name == "digits" and model.version == "1.0.0"  # the twin's card
    record = store.manifest("digits", "1.0.0")
    assert record["sha256"] == sha256_file(pair) and record["size"] == pair.stat().st_size
    assert sha256_file(store.verified_file("digits", "1.0.0")) == sha256_file(pair)
    with serve_from_store(compiled, store, load):  # a restart: the given pair matches the store's copy
        pass
    assert store.manifest("digits", "1.0.0") == record
