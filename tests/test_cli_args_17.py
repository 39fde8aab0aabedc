"""Command-line values refused in one line naming the flag, exit 2, before a model loads or a broker is dialled.

Counts past what the code can hold (``--max-frames``, ``--window``), an ``ota publish --version``
or ``--via`` that the manifest schema would refuse, and an empty string where a path (or a URL)
is expected, which must not quietly mean the current directory or the default.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES, free_port, run_cli

VIBRATION = ROOT / "models" / "vibration"
SENSOR_RUN = ["run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(VIBRATION / "samples" / "normal.csv")]
#: One past the largest signed 64-bit count, the pipeline's --max-frames bound.
PAST_INT64 = str(2**63)


def _one_error_line(stderr: str) -> str:
    """The only line on stderr, an ``edgerun: error:`` line (no traceback, no log line before it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgerun: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def operator_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Ed25519 private key from ``edgerun keys generate``."""
    base = tmp_path_factory.mktemp("keys") / "operator"
    result = run_cli("keys", "generate", str(base))
    assert result.returncode == 0, result.stderr
    return base.with_name("operator.pem")


@pytest.fixture
def silent_broker_url() -> str:
    """An MQTT URL where nothing listens: a command that dialled it would say the connection was refused."""
    return f"mqtt://127.0.0.1:{free_port()}"


# -- defect 1: counts past the range the code accepts ------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-frames", PAST_INT64, f"--max-frames must be between 1 and {2**63 - 1}, got {PAST_INT64}"),
        # a window is a deque's maxlen, a C ssize_t
        ("--window", str(sys.maxsize + 1), f"--window must be between 1 and {sys.maxsize}, got {sys.maxsize + 1}"),
    ],
)
def test_a_count_past_what_the_code_holds_is_refused_naming_the_flag_before_the_model_loads(
    flag: str, value: str, message: str
) -> None:
    """Once the model loaded (an INFO line), then exit 1 with "max frames must be a whole number...",
    or exit 2 with "window of ... rows does not fit"; a model with a dynamic row count overflowed a deque."""
    result = run_cli("-v", *SENSOR_RUN, flag, value)
    assert result.returncode == 2
    assert result.stdout == ""
    assert _one_error_line(result.stderr) == f"edgerun: error: {message}"


def test_the_largest_max_frames_is_still_taken_and_the_run_ends_with_its_input() -> None:
    result = run_cli(*SENSOR_RUN, "--max-frames", str(2**63 - 1), "--sink", "jsonl")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 8
    assert "stopped by end of input" in result.stderr


# -- defect 2: ota publish --version (and --via) checked as the manifest will be ----------------------


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("1.1", "--version 1.1 is not a version: use MAJOR.MINOR.PATCH (1.1.0)"),
        ("2", "--version 2 is not a version: use MAJOR.MINOR.PATCH (2.0.0)"),
        ("v1.2.3", "--version v1.2.3 is not a version: use MAJOR.MINOR.PATCH (1.2.3)"),
        ("01.2.3", "--version 01.2.3 is not a version: use MAJOR.MINOR.PATCH (1.2.3)"),
        (
            "1.2.3.4",
            "--version 1.2.3.4 is not a version: use MAJOR.MINOR.PATCH, three whole numbers of up to 9 digits (1.0.0)",
        ),
        (
            "1.1234567890.0",
            "--version 1.1234567890.0 is not a version: use MAJOR.MINOR.PATCH, "
            "three whole numbers of up to 9 digits (1.0.0)",
        ),
        (
            "latest",
            "--version latest is not a version: use MAJOR.MINOR.PATCH, three whole numbers of up to 9 digits (1.0.0)",
        ),
        ("", "--version is an empty string"),
    ],
)
def test_ota_publish_refuses_a_version_that_is_not_major_minor_patch_before_anything_connects(
    operator_key: Path, silent_broker_url: str, version: str, message: str
) -> None:
    """Once exit 1 and the schema's own words: "invalid manifest: Expected `str` matching regex ... $.version"."""
    result = run_cli(
        *("ota", "publish", str(DIGITS / "digits_int8.tflite"), "--model", "digits", "--version", version),
        *("--device", "dev1", "--key", str(operator_key), "--mqtt", silent_broker_url),
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert _one_error_line(result.stderr) == f"edgerun: error: {message}"


def test_ota_publish_takes_a_major_minor_patch_version_on_to_the_broker(
    operator_key: Path, silent_broker_url: str
) -> None:
    """The check refuses no valid version: this publish gets as far as dialling the (absent) broker."""
    result = run_cli(
        *("ota", "publish", str(DIGITS / "digits_int8.tflite"), "--model", "digits", "--version", "1.1.0"),
        *("--device", "dev1", "--key", str(operator_key), "--mqtt", silent_broker_url),
    )
    assert result.returncode == 2
    assert "refused" in _one_error_line(result.stderr)  # the TCP connection: the options all passed


@pytest.mark.parametrize(
    ("via", "message"),
    [
        ("", "--via is an empty string"),
        (
            "ftp://host/model.tflite",
            "--via ftp://host/model.tflite is neither mqtt nor an https://, http:// or file://",
        ),
        ("https://host/a\nb", "--via https://host/a\\nb holds a control character: percent-encode it"),
    ],
)
def test_ota_publish_refuses_a_via_the_manifest_would_refuse_naming_the_flag(
    operator_key: Path, silent_broker_url: str, via: str, message: str
) -> None:
    """Once exit 1 and "invalid manifest: source url must be https://, http:// or file:// - at `$.source`"."""
    result = run_cli(
        *("ota", "publish", str(DIGITS / "digits_int8.tflite"), "--model", "digits", "--version", "1.1.0"),
        *("--device", "dev1", "--key", str(operator_key), "--mqtt", silent_broker_url, "--via", via),
    )
    assert result.returncode == 2
    assert message in _one_error_line(result.stderr)


# -- defect 3: an empty string where a path (or URL) is expected --------------------------------------


def test_config_check_of_an_empty_string_names_it_rather_than_the_current_directory() -> None:
    """Once "cannot read config .: Is a directory"."""
    result = run_cli("config", "check", "")
    assert result.returncode == 2
    assert _one_error_line(result.stderr) == "edgerun: error: config FILE is an empty string"


def test_a_daemon_given_an_empty_config_path_refuses_it_instead_of_running_the_default() -> None:
    """Once ``--config ''`` meant no config: the sample daemon started and ran until stopped."""
    result = run_cli("daemon", "--config", "")
    assert result.returncode == 2
    assert _one_error_line(result.stderr) == "edgerun: error: --config is an empty string"


def _publish(*extra: str, model_file: str = str(DIGITS / "digits_int8.tflite"), key: str) -> list[str]:
    return [
        *("ota", "publish", model_file, "--model", "digits", "--version", "1.1.0", "--device", "dev1"),
        *("--key", key, *extra),
    ]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("model_file", "MODEL_FILE is an empty string"),  # once "model path is a directory, not a model file: ."
        ("key", "--key is an empty string"),  # once "cannot read key : Is a directory"
        ("card", "--card is an empty string"),  # once the card beside the model, quietly
        ("validate_with", "--validate-with is an empty string"),  # once ": no such file", exit 1
        ("mqtt_ca", "--mqtt-ca is an empty string"),  # once "MQTT ca file not found: "
        ("mqtt_cert", "--mqtt-cert is an empty string"),  # once "mutual TLS needs both ..."
        ("rollback_key", "--key is an empty string"),
        ("status_mqtt_key", "--mqtt-key is an empty string"),
    ],
)
def test_ota_commands_refuse_an_empty_path_naming_the_flag_before_anything_connects(
    operator_key: Path, silent_broker_url: str, case: str, message: str
) -> None:
    key, mqtt = str(operator_key), ["--mqtt", silent_broker_url]
    args = {
        "model_file": _publish(*mqtt, model_file="", key=key),
        "key": _publish(*mqtt, key=""),
        "card": _publish(*mqtt, "--card", "", key=key),
        "validate_with": _publish(*mqtt, "--validate-with", "", key=key),
        "mqtt_ca": _publish(*mqtt, "--mqtt-ca", "", key=key),
        "mqtt_cert": _publish(*mqtt, "--mqtt-cert", "", key=key),
        "rollback_key": ["ota", "rollback", "--model", "digits", "--device", "dev1", "--key", "", *mqtt],
        "status_mqtt_key": ["ota", "status", "--wait", "0", "--mqtt-key", "", *mqtt],
    }[case]
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert _one_error_line(result.stderr) == f"edgerun: error: {message}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # once a run without any broker, exit 0: "" read as "no --mqtt"
        (["run", "--mqtt", ""], "--mqtt is an empty string"),
        (["predict", "--mqtt", ""], "--mqtt is an empty string"),
        (["run", "--mqtt", "MQTT", "--mqtt-ca", ""], "--mqtt-ca is an empty string"),
        (["predict", "--mqtt", "MQTT", "--mqtt-key", ""], "--mqtt-key is an empty string"),
        (["mqtt", "--mqtt", "MQTT", "--mqtt-cert", ""], "--mqtt-cert is an empty string"),
        # once "cannot read trusted key : Is a directory"
        (["run", "--mqtt", "MQTT", "--ota-key", ""], "--ota-key is an empty string"),
    ],
)
def test_model_commands_refuse_an_empty_broker_url_or_file_before_the_model_loads(
    silent_broker_url: str, args: list[str], message: str
) -> None:
    command, rest = args[0], [silent_broker_url if a == "MQTT" else a for a in args[1:]]
    model, image = str(DIGITS / "digits_int8.tflite"), str(SAMPLES / "digit_3.png")
    prefix = {
        "run": ["-v", "run", model, "--source", image],
        "predict": ["-v", "predict", model, image],
        "mqtt": ["mqtt", "check", "--timeout", "1"],
    }[command]
    result = run_cli(*prefix, *rest)
    assert result.returncode == 2
    assert result.stdout == ""
    assert _one_error_line(result.stderr) == f"edgerun: error: {message}"


def test_a_daemon_pipeline_window_past_what_a_window_holds_is_refused_by_config_check(tmp_path: Path) -> None:
    config = tmp_path / "w.yaml"
    config.write_text(
        f"models:\n  v:\n    path: {VIBRATION / 'vibration_int8.tflite'}\npipelines:\n  p:\n"
        f"    source: {VIBRATION / 'samples' / 'normal.csv'}\n    model: v\n    window: {2**63}\n"
    )
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"edgerun: error: {config}: pipelines.p.window: Input should be less than or equal to {2**63 - 1}"
    )
