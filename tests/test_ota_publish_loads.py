"""``ota publish`` loads the model with its card before publishing: a file the runtime cannot read or
a card of another model is refused in one line, and nothing reaches the broker (it was published,
and every device downloaded it only to reject it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT, Broker, run_cli
from tests.test_audit_ota_operator import retained
from tests.test_runtime_errors_15 import _absent, _shadow

VIBRATION_CARD = ROOT / "models/vibration/vibration_int8.tflite.card.yaml"


def _publish(model: Path, key: Path, broker: Broker, *extra: str) -> tuple[int, str]:
    done = run_cli(
        "ota", "publish", str(model), "--model", "digits", "--version", "1.1.0", "--device", "dev1",
        "--key", str(key), "--mqtt", broker.url, *extra,
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    return done.returncode, done.stderr.strip()


@pytest.mark.parametrize("name", ["digits_int8.onnx", "digits_int8.tflite"])
def test_a_truncated_model_file_is_refused_and_nothing_is_published(
    tmp_path: Path,
    own_broker: Broker,
    key_pair: Path,
    name: str,
) -> None:
    model = tmp_path / name
    model.write_bytes((DIGITS / name).read_bytes()[:3000])
    shutil.copy(DIGITS / f"{name}.card.yaml", tmp_path / f"{name}.card.yaml")
    code, stderr = _publish(model, key_pair, own_broker)
    assert code == 1
    assert len(stderr.splitlines()) == 1 and stderr.startswith("edgerun: error: "), stderr
    assert "cannot load" in stderr and name in stderr, stderr
    assert retained(own_broker.port) == {}


def test_a_card_of_another_model_is_refused_and_nothing_is_published(
    own_broker: Broker,
    key_pair: Path,
) -> None:
    code, stderr = _publish(DIGITS / "digits_int8.onnx", key_pair, own_broker, "--card", str(VIBRATION_CARD))
    assert code == 1
    assert stderr == "edgerun: error: card of digits has 5 labels, but output logits [N,10] float32 gives 10 classes"
    assert retained(own_broker.port) == {}


def test_a_model_whose_runtime_this_machine_lacks_is_published_with_a_warning(
    tmp_path: Path, own_broker: Broker, key_pair: Path
) -> None:
    """An operator's laptop may have no TFLite interpreter (none is installed on Windows): the load check cannot
    run there, and refusing would stop every TFLite update from it."""
    no_tflite = {name: _absent(name) for name in ("ai_edge_litert", "tflite_runtime", "tensorflow")}
    done = run_cli(
        "ota", "publish", str(DIGITS / "digits_int8.tflite"), "--model", "digits", "--version", "1.1.0",
        "--device", "dev1", "--key", str(key_pair), "--mqtt", own_broker.url, env=_shadow(tmp_path, no_tflite),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warning = done.stderr.strip()
    assert warning.startswith(f"edgerun: warning: {DIGITS / 'digits_int8.tflite'} not loaded here (")
    assert warning.endswith("); each device checks it as it installs it") and len(warning.splitlines()) == 1
    assert "edgerun/dev1/ota/manifest" in retained(own_broker.port)
