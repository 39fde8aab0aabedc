"""An Edge TPU-compiled model (``X_edgetpu.tflite``) without a card of its own takes its CPU twin's (``X.tflite``'s).

The Edge TPU is faked only where the hardware is: a ``/dev/apex_0`` in a probe tree, with no libedgetpu
installed, so the Edge TPU is tried, fails, and the CPU runs the twin. The compiled model is a copy of the
plain one (the delegate fails before its custom op would matter), as in tests/test_select.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edgerun
from edgerun.card import load_card
from tests.conftest import DIGITS, SAMPLES, FakeTree, run_cli

DIGIT_3 = SAMPLES / "digit_3.png"


@pytest.fixture
def tpu_root(tmp_path: Path) -> Path:
    """A probe tree with an Edge TPU's device node (libedgetpu is not installed here)."""
    return FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0").root


@pytest.fixture
def compiled(tmp_path: Path) -> Path:
    """``digits_int8.tflite`` and its card, with ``digits_int8_edgetpu.tflite`` beside them and no card of its own."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_int8.tflite")
    shutil.copy(DIGITS / "digits_int8.tflite.card.yaml", folder / "digits_int8.tflite.card.yaml")
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_int8_edgetpu.tflite")
    return folder / "digits_int8_edgetpu.tflite"


def _own_card(compiled: Path, name: str, version: str) -> Path:
    """A card of the compiled model's own: its twin's under another name and version."""
    text = (compiled.parent / "digits_int8.tflite.card.yaml").read_text()
    text = text.replace("name: digits\n", f"name: {name}\n").replace("version: 1.0.0\n", f"version: {version}\n")
    own = compiled.with_name(compiled.name + ".card.yaml")
    own.write_text(text)
    return own


def test_a_compiled_model_without_a_card_falls_back_to_the_cpu_with_its_twin_s_card(
    compiled: Path, tpu_root: Path, tmp_path: Path
) -> None:
    twin = compiled.with_name("digits_int8.tflite")
    twin_card = twin.with_name(twin.name + ".card.yaml")
    with edgerun.load(compiled, probe_root=tpu_root, state_dir=tmp_path / "state") as model:
        assert model.selection.path == twin and model.delegate == "xnnpack"
        assert any(a.delegate == "edgetpu" and a.status == "failed" for a in model.selection.attempts)
        assert (model.name, model.version) == ("digits", "1.0.0")
        assert model.card_path == twin_card
        assert model.card == load_card(twin_card)  # labels, preprocessing, postprocessing: all the twin's
        got = model.predict(DIGIT_3).output
    assert got[0]["label"] == "3"
    assert len(got) == 3  # the card's top_k, not an inferred card's 5
    with edgerun.load(twin, probe_root=tpu_root, state_dir=tmp_path / "state") as direct:
        assert direct.card_path == twin_card  # the plain model (Edge TPU tried through its partner): its own card
        assert direct.predict(DIGIT_3).output == got


def test_a_card_of_the_compiled_model_s_own_wins_and_the_twin_s_serves_once_it_is_gone(
    compiled: Path, tpu_root: Path, tmp_path: Path
) -> None:
    own = _own_card(compiled, "digits-edgetpu", "2.0.0")
    with edgerun.load(compiled, probe_root=tpu_root, state_dir=tmp_path / "state") as model:
        assert (model.name, model.version, model.card_path) == ("digits-edgetpu", "2.0.0", own)
    own.unlink()
    with edgerun.load(compiled, probe_root=tpu_root, state_dir=tmp_path / "state") as model:
        assert (model.name, model.version) == ("digits", "1.0.0")


def test_the_twin_s_card_comes_before_a_card_yaml_in_the_folder(compiled: Path, tpu_root: Path, tmp_path: Path) -> None:
    (compiled.parent / "card.yaml").write_text("name: other\nversion: 9.9.9\ntask: raw\n")
    with edgerun.load(compiled, probe_root=tpu_root, state_dir=tmp_path / "state") as model:
        assert (model.name, model.version, model.card.task) == ("digits", "1.0.0", "classification")


def test_predict_heads_its_output_with_the_twin_s_card_name_and_version(
    compiled: Path, tpu_root: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "predict", str(compiled), str(DIGIT_3), "--probe-root", str(tpu_root), "--state-dir", str(tmp_path / "state")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "# digits 1.0.0 (tflite) on xnnpack"
    assert lines[1].split()[1] == "3"


def test_the_daemon_with_ota_on_serves_and_stores_a_compiled_model_under_its_twin_s_card(
    compiled: Path, tmp_path: Path
) -> None:
    """The daemon's own loading (this machine has no Edge TPU: the twin runs on the CPU), through the OTA
    store it seeds at a first start: the version installed is the card's, and so is the card stored with it."""
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon
    from tests.ota_helpers import make_key

    _, _, public = make_key(tmp_path)
    config = parse_config(
        {
            "models": {"digits": {"path": str(compiled)}},
            "api": {"enabled": False},
            "mqtt": {"url": "mqtt://127.0.0.1:1"},  # never connected: the daemon is not started
            "ota": {"trusted_keys": [str(public)]},
            "state_dir": str(tmp_path / "state"),
        },
        "test",
    )
    daemon = Daemon(config)
    with daemon._serve("digits", config.models["digits"]) as model:
        assert (model.name, model.version) == ("digits", "1.0.0")
        assert model.predict(DIGIT_3).output[0]["label"] == "3"
    store = daemon._store()
    assert store is not None
    active = store.active("digits")
    assert active is not None and active.version == "1.0.0"
    stored = store.model_file("digits", "1.0.0")
    twin_card = load_card(compiled.with_name("digits_int8.tflite.card.yaml"))
    assert load_card(stored.with_name(stored.name + ".card.yaml")) == twin_card


def test_a_sighup_reloads_a_compiled_model_whose_twin_s_card_changed(tmp_path: Path) -> None:
    """The daemon watches every place ``find_card`` looks: the twin's card of ``X_edgetpu.tflite`` too."""
    from tests.test_daemon import http
    from tests.test_reload_fixes_20 import API_CONFIG, _Daemon

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits.tflite")
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_edgetpu.tflite")
    card = (DIGITS / "digits_int8.tflite.card.yaml").read_text()
    (folder / "digits.tflite.card.yaml").write_text(card)
    config = tmp_path / "edgerun.yaml"
    compiled = folder / "digits_edgetpu.tflite"
    config.write_text(
        API_CONFIG.format(model=compiled, bind="127.0.0.1", port=0, state=tmp_path / "state", format="text")
    )
    daemon = _Daemon(config)
    try:
        port = daemon.ready_port()
        assert http(port, "/v1/models")[1]["digits"]["version"] == "1.0.0"
        (folder / "digits.tflite.card.yaml").write_text(card.replace("version: 1.0.0", "version: 2.0.0"))
        daemon.reload(1)
        assert http(port, "/v1/models")[1]["digits"]["version"] == "2.0.0"
        assert f"SIGHUP: model digits: {compiled} or its card changed on disk; reloading it" in daemon.text()
        daemon.stop()
    finally:
        daemon.close()
