"""The daemon's config, as an operator meets it through ``edgerun config check`` and ``edgerun daemon``.

- Every file the config names (model files, secrets, trusted keys, ``state_dir``) is taken from
  the config file's folder, with ``~`` expanded: never from the working directory, so a config
  checked in one folder runs the same under systemd. ``--state-dir`` stays relative to the
  working directory, with ``~`` expanded where no shell did.
- A value of the wrong type is refused, naming its key, not converted (``port: true`` was port 1).
- An empty file name is refused, naming its key (it was the config's own folder, or the default
  state directory).

Each command runs as a real process from a working directory other than the config's folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import DIGITS, SAMPLES, Broker, free_port, run_cli
from tests.ota_helpers import make_key
from tests.test_sync import wait_until

MODEL = DIGITS / "digits_int8.tflite"


def _folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``conf/`` (the config's folder), ``work/`` (the working directory) and ``home/`` ($HOME)."""
    folders = tuple(tmp_path / name for name in ("conf", "work", "home"))
    for folder in folders:
        folder.mkdir()
    return folders  # type: ignore[return-value]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home)}


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line an error is, with exit 2 and no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_relative_model_path_is_never_looked_up_in_the_working_directory(tmp_path: Path) -> None:
    """Checked from the folder holding the model, the config once passed, and then stopped under
    systemd (working directory /) with the model not found."""
    conf, work, _ = _folders(tmp_path)
    shutil.copy(MODEL, work / "m.tflite")  # only where the check is run from
    (conf / "c.yaml").write_text("models:\n  m:\n    path: m.tflite\n")
    line = _one_error(run_cli("config", "check", "../conf/c.yaml", cwd=work))
    assert line == "edgerun: error: ../conf/c.yaml: models.m.path: model file not found: ../conf/m.tflite"
    shutil.move(work / "m.tflite", conf / "m.tflite")  # beside the config: found from anywhere
    for cwd in (work, Path("/")):
        result = run_cli("config", "check", str(conf / "c.yaml"), cwd=cwd)
        assert result.returncode == 0 and result.stderr == "", result.stderr


def test_tilde_is_expanded_in_every_file_the_config_names(tmp_path: Path) -> None:
    conf, work, home = _folders(tmp_path)
    shutil.copy(MODEL, home / "m.tflite")
    (home / "mqtt-password").write_text("secret\n")
    (home / "api-token").write_text("a-token-of-enough-length\n")
    _, _, public = make_key(home)
    (conf / "c.yaml").write_text(
        "models:\n  m:\n    path: ~/m.tflite\n"
        "mqtt:\n  url: mqtt://dev@broker.example\n  password_file: ~/mqtt-password\n"
        f"ota:\n  trusted_keys: [~/{public.name}]\n"
        "api:\n  token_file: ~/api-token\n"
        "state_dir: ~/state\n"
    )
    result = run_cli("config", "check", str(conf / "c.yaml"), cwd=work, env=_env(home))
    assert result.returncode == 0 and result.stderr == "", result.stderr  # every file found: no warning
    for line in (
        f"    path: {home / 'm.tflite'}",
        f"  password_file: {home / 'mqtt-password'}",
        f"  - {public}",
        f"  token_file: {home / 'api-token'}",
        f"state_dir: {home / 'state'}",
    ):
        assert line in result.stdout.splitlines(), result.stdout
    assert not (work / "~").exists() and not (conf / "~").exists()


def test_a_home_directory_that_does_not_exist_is_refused_naming_the_key(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    user = "edgerun-no-such-user-20"
    (conf / "c.yaml").write_text(f"models:\n  m:\n    path: {MODEL}\nstate_dir: ~{user}/state\n")
    line = _one_error(run_cli("config", "check", "../conf/c.yaml", cwd=work))
    assert line == (
        f"edgerun: error: ../conf/c.yaml: state_dir: cannot expand ~{user} in ~{user}/state: "
        f"no user '{user}' in the password database"
    )


def test_a_relative_state_dir_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    (conf / "c.yaml").write_text(f"models:\n  m:\n    path: {MODEL}\nstate_dir: state\n")
    result = run_cli("config", "check", str(conf / "c.yaml"), cwd=work)
    assert result.returncode == 0, result.stderr
    assert f"state_dir: {conf / 'state'}" in result.stdout.splitlines(), result.stdout


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_the_daemon_keeps_its_state_under_home_for_a_tilde_state_dir(broker: Broker, tmp_path: Path) -> None:
    """``state_dir: ~/edgerun-state`` once made a folder named ``~`` in the daemon's working directory,
    and put the outbox and its lock there."""
    conf, work, home = _folders(tmp_path)
    port = free_port()
    config = conf / "edgerun.yaml"
    config.write_text(
        f"models:\n  m:\n    path: {MODEL}\n"
        f"mqtt:\n  url: mqtt://127.0.0.1:{broker.port}\n"
        f"api:\n  port: {port}\n"
        "device:\n  id: fixes-20\n"
        "state_dir: ~/edgerun-state\n"
    )
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
            cwd=work,
            env=_env(home),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_until(lambda: _ready(port) or proc.poll() is not None, 60, "the daemon to be ready")
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert (home / "edgerun-state" / "lock").is_file()  # claimed: the outbox is there
            assert not (work / "~").exists() and not (conf / "~").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "daemon.log").read_text()


def test_a_quoted_tilde_in_state_dir_option_is_the_home_directory(tmp_path: Path) -> None:
    """``--state-dir '~/s'`` (or ``--state-dir=~/s``, which no shell expands) made a folder named ``~``."""
    _, work, home = _folders(tmp_path)
    args = ["predict", str(MODEL), str(SAMPLES / "digit_3.png"), "--state-dir", "~/s"]
    result = run_cli(*args, cwd=work, env=_env(home))
    assert result.returncode == 0, result.stderr
    assert list((home / "s" / "cards").glob("*.json"))  # the model card's cache went there
    assert not (work / "~").exists()
    (home / "f").write_text("")
    line = _one_error(
        run_cli("predict", str(MODEL), str(SAMPLES / "digit_3.png"), "--state-dir=~/f", cwd=work, env=_env(home))
    )
    assert line == "edgerun: error: --state-dir ~/f is not a directory"


WRONG_TYPES = [
    ("api:\n  port: true\n", "api.port: Input should be a valid integer"),
    ("api:\n  port: yes\n", "api.port: Input should be a valid integer"),
    ("api:\n  enabled: 'off'\n", "api.enabled: Input should be a valid boolean"),
    (
        "api:\n  max_concurrency: '8'\n",
        "api.max_concurrency: Input should be a valid integer (YAML reads '8' as a string: write 8)",
    ),
    ("  threads: true\n", "models.m.threads: Input should be a valid integer"),
    ("  threads: 2.5\n", "models.m.threads: Input should be a valid integer"),
    ("  strict_accelerator: 1\n", "models.m.strict_accelerator: Input should be a valid boolean"),
    ("  publish_results: 'on'\n", "models.m.publish_results: Input should be a valid boolean"),
    ("mqtt:\n  url: mqtt://h\n  results_qos: true\n", "mqtt.results_qos: Input should be 0 or 1, not a boolean"),
    ("mqtt:\n  url: mqtt://h\n  keepalive_s: false\n", "mqtt.keepalive_s: Input should be a valid integer"),
    ("ota:\n  keep: '3'\n", "ota.keep: Input should be a valid integer (YAML reads '3' as a string: write 3)"),
    (
        "mqtt:\n  url: mqtt://h\n  outbox_max_mb: 1e3\n",
        "mqtt.outbox_max_mb: Input should be a valid number (YAML reads '1e3' as a string: write 1000.0)",
    ),
    (  # Python's own spelling has no dot here, which YAML would read as text again (said "write 5e-20")
        "mqtt:\n  url: mqtt://h\n  outbox_max_mb: 5e-20\n",
        "mqtt.outbox_max_mb: Input should be a valid number (YAML reads '5e-20' as a string: write 5.0e-20)",
    ),
]


@pytest.mark.parametrize(("extra", "message"), WRONG_TYPES, ids=[m.split(":")[0] for _, m in WRONG_TYPES])
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(tmp_path: Path, extra: str, message: str) -> None:
    conf, work, _ = _folders(tmp_path)
    model_key = extra.startswith("  ")  # goes under models.m
    (conf / "c.yaml").write_text(f"models:\n  m:\n    path: {MODEL}\n" + ("  " if model_key else "") + extra)
    line = _one_error(run_cli("config", "check", "../conf/c.yaml", cwd=work))
    assert line == f"edgerun: error: ../conf/c.yaml: {message}"


def test_yaml_booleans_and_integers_for_floats_stay_accepted_and_a_yes_port_does_not(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    text = (
        f"models:\n  m:\n    path: {MODEL}\n    strict_accelerator: no\n    publish_results: yes\n    threads: 2\n"
        "pipelines:\n  p:\n    source: in.csv\n    model: m\n    fps: 10\n"
        "ota:\n  max_mb: 300\n"
        "api:\n  enabled: false\n  port: 8471\n"
    )
    (conf / "c.yaml").write_text(text)
    result = run_cli("config", "check", str(conf / "c.yaml"), cwd=work)
    assert result.returncode == 0, result.stderr
    for line in ("    fps: 10.0", "  max_mb: 300.0", "    publish_results: true", "  enabled: false", "  port: 8471"):
        assert line in result.stdout.splitlines(), result.stdout
    (conf / "c.yaml").write_text(text.replace("port: 8471", "port: yes"))  # was port 1
    line = _one_error(run_cli("config", "check", "../conf/c.yaml", cwd=work))
    assert line == "edgerun: error: ../conf/c.yaml: api.port: Input should be a valid integer"


EMPTY = [
    ("models:\n  m:\n    path: ''\n", "models.m.path"),
    (f"models:\n  m:\n    path: {MODEL}\nstate_dir: ''\n", "state_dir"),
    (f"models:\n  m:\n    path: {MODEL}\napi:\n  token_file: ''\n", "api.token_file"),
    (f"models:\n  m:\n    path: {MODEL}\nmqtt:\n  url: mqtts://h\n  ca_file: ''\n", "mqtt.ca_file"),
    (f"models:\n  m:\n    path: {MODEL}\nmqtt:\n  url: mqtt://h\n  password_file: ''\n", "mqtt.password_file"),
    (f"models:\n  m:\n    path: {MODEL}\nmqtt:\n  url: mqtt://h\nota:\n  trusted_keys: ['']\n", "ota.trusted_keys.0"),
]


@pytest.mark.parametrize(("text", "key"), EMPTY, ids=[key for _, key in EMPTY])
def test_an_empty_file_name_is_refused_naming_its_key(tmp_path: Path, text: str, key: str) -> None:
    conf, work, _ = _folders(tmp_path)
    (conf / "c.yaml").write_text(text)
    line = _one_error(run_cli("config", "check", "../conf/c.yaml", cwd=work))
    assert line == f"edgerun: error: ../conf/c.yaml: {key}: an empty string names no file"
