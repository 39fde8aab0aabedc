"""Audit of the daemon config: values that validated and then failed or misbehaved in the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import edgerun
from edgerun.api import create_app
from edgerun.config import ApiConfig, load_config
from edgerun.errors import ConfigError
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, ROOT, run_cli

MODEL = f"models:\n  digits:\n    path: {ROOT}/models/digits/digits_int8.tflite\n"


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_an_empty_token_file_on_an_exposed_bind_is_refused_not_an_open_api(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(content)
    config = ApiConfig(bind="0.0.0.0", token_file=str(token_file))
    slots = {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}
    with pytest.raises(ConfigError, match=r"api.token_file .*api-token: the token has 0 characters"):
        create_app(slots, Metrics(), config)  # the daemon starts its API with this: exit 2, one line
    check = run_cli(
        "config", "check", str(_write(tmp_path, MODEL + f"api:\n  bind: 0.0.0.0\n  token_file: {token_file}\n"))
    )
    assert check.returncode == 2 and "the token has 0 characters" in check.stderr, check.stderr


def test_a_short_token_in_a_token_file_is_refused_as_the_token_field_refuses_it(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("abc\n")
    with pytest.raises(ConfigError, match="the token has 3 characters; at least 16 are needed"):
        ApiConfig(bind="0.0.0.0", token_file=str(token_file)).resolved_token()


def test_a_token_file_with_a_good_token_still_guards_the_api(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("  a-long-enough-file-token\n")
    slots = {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}
    with TestClient(create_app(slots, Metrics(), ApiConfig(bind="0.0.0.0", token_file=str(token_file)))) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer a-long-enough-file-token"}).status_code == 200


@pytest.mark.parametrize(
    "token",
    [" padded-token-0123456789 ", "line\nbreak-0123456789", "tab\tinside-0123456789", "h\u00e9llo-0123456789xx"],
    ids=["padded", "newline", "tab", "non-ascii"],
)
def test_a_token_no_client_can_send_is_refused_by_the_config(tmp_path: Path, token: str) -> None:
    escaped = token.replace("\n", "\\n").replace("\t", "\\t")
    path = _write(tmp_path, MODEL + f'api:\n  bind: 0.0.0.0\n  token: "{escaped}"\n')
    with pytest.raises(ConfigError, match=r"api.token: String should match pattern"):
        load_config(path)


def test_a_token_file_with_a_token_no_client_can_send_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("two words-0123456789\n")
    with pytest.raises(ConfigError, match="spaces, control or non-ASCII characters"):
        ApiConfig(bind="0.0.0.0", token_file=str(token_file)).resolved_token()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (MODEL + MODEL.removeprefix("models:\n"), "line 4: duplicate key 'digits'"),
        (
            MODEL
            + "pipelines:\n  cam:\n    source: a/\n    model: digits\n  cam:\n    source: b/\n    model: digits\n",
            "line 8: duplicate key 'cam'",
        ),
        (MODEL + "api:\n  port: 8471\n  port: 8472\n", "line 6: duplicate key 'port'"),
    ],
    ids=["model", "pipeline", "field"],
)
def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"not valid YAML at {where}"):
        load_config(path)


def test_yaml_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    text = MODEL.replace("digits:\n", "digits: &m\n") + "  other:\n    <<: *m\n    threads: 2\n"
    config = load_config(_write(tmp_path, text))
    assert config.models["other"].threads == 2 and config.models["other"].path == config.models["digits"].path


@pytest.mark.parametrize(
    "delegate", ["edgtpu", "[edgtpu, cpu]", "[xnnpack, CPU]"], ids=["name", "in-an-order", "wrong-case"]
)
def test_an_unknown_delegate_is_refused_by_config_check_as_the_daemon_refuses_it(tmp_path: Path, delegate: str) -> None:
    path = _write(tmp_path, MODEL + f"    delegate: {delegate}\n")
    with pytest.raises(ConfigError, match=r"models.digits.delegate: unknown delegate '(edgtpu|CPU)'; known: auto"):
        load_config(path)
    assert run_cli("config", "check", str(path)).returncode == 2


def test_known_delegates_and_orders_still_validate(tmp_path: Path) -> None:
    for delegate in ("auto", "fastest", "xnnpack", "[edgetpu, xnnpack, cpu]"):
        load_config(_write(tmp_path, MODEL + f"    delegate: {delegate}\n"))


def test_a_relative_token_file_and_mqtt_files_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "api-token").write_text("a-long-enough-file-token\n")
    path = _write(
        folder,
        MODEL
        + "api:\n  bind: 0.0.0.0\n  token_file: api-token\n"
        + "mqtt:\n  url: mqtts://dev@broker.example:8883\n  ca_file: ca.pem\n  password_file: mqtt-pass\n",
    )
    config = load_config(path)  # the working directory is not the config's folder
    assert config.api.resolved_token() == "a-long-enough-file-token"
    assert config.mqtt is not None
    assert (config.mqtt.ca_file, config.mqtt.password_file) == (str(folder / "ca.pem"), str(folder / "mqtt-pass"))
