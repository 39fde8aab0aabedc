"""Daemon configs: every shipped file loads; every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.config import default_config, load_config
from edgerun.errors import ConfigError
from tests.conftest import ROOT, run_cli

CONFIGS = sorted((ROOT / "device-configs").glob("*.yaml"))


def test_there_is_a_config_for_each_device_the_project_supports() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"rpi4", "rpi5", "rpi5-coral", "jetson-nano", "jetson-orin-nano", "intel-x86", "generic-x86-64"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_device_config_is_valid_and_its_models_exist(path: Path) -> None:
    config = load_config(path)
    for model in config.models.values():
        assert Path(model.path).is_file(), model.path
    assert path.read_text().lstrip().startswith("#")  # each begins with its install notes


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MODEL = f"models:\n  digits:\n    path: {ROOT}/models/digits/digits_int8.tflite\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MODEL + "colour: red\n", "colour: unknown key"),
        (MODEL.replace("models:", "model:"), "models: Field required; model: unknown key"),
        (
            MODEL.replace("path:", "threads: 100\n    path:"),
            "models.digits.threads: Input should be less than or equal to 64",
        ),
        (MODEL + "api:\n  bind: 0.0.0.0\n", "api: api.bind 0.0.0.0 is not loopback: a token"),
        (MODEL + "pipelines:\n  cam:\n    source: camera:0\n    model: nope\n", "no model named 'nope'"),
        (MODEL + "ota:\n  trusted_keys: [k.pem]\n", "ota.trusted_keys needs mqtt"),
        (
            MODEL + "pipelines:\n  photos:\n    source: photos/\n    model: digits\n    prepare_workers: 0\n",
            "pipelines.photos.prepare_workers: Input should be greater than or equal to 1",
        ),
        ("models: {}\n", "models: Dictionary should have at least 1 item"),
        (MODEL + "device:\n  id: ../evil\n", "device.id: String should match pattern"),
        ("models: [oops\n", "not valid YAML at line 2"),
        ("- just\n- a list\n", "the config must be a mapping"),
    ],
)
def test_config_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_config_check_prints_the_effective_config_or_one_line_and_exit_2(tmp_path: Path) -> None:
    ok = run_cli("config", "check", str(ROOT / "device-configs" / "rpi5.yaml"))
    assert ok.returncode == 0 and "max_request_mb: 8.0" in ok.stdout and "batch_max_wait_ms" in ok.stdout
    bad = run_cli("config", "check", str(_write(tmp_path, MODEL + "api:\n  port: 99999\n")))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("edgerun: error: ") and "api.port" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_built_in_default_serves_the_sample_digits_model_offline() -> None:
    config = default_config()
    assert list(config.models) == ["digits"] and Path(config.models["digits"].path).is_file()
    assert config.mqtt is None and config.api.bind == "127.0.0.1" and not config.pipelines
