"""Daemon configs: every shipped file loads; every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.config import default_config, load_config, parse_config
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
            MODEL.replace("path:", "threads: 300\n    path:"),
            "models.digits.threads: Input should be less than or equal to 256",
        ),
        (MODEL + "api:\n  bind: 0.0.0.0\n", "api: api.bind 0.0.0.0 is not loopback: a token"),
        (MODEL + "pipelines:\n  cam:\n    source: camera:0\n    model: nope\n", "no model named 'nope'"),
        (MODEL + "ota:\n  trusted_keys: [k.pem]\n", "ota.trusted_keys needs mqtt"),
        (
            MODEL + "pipelines:\n  photos:\n    source: photos/\n    model: digits\n    prepare_workers: 0\n",
            "pipelines.photos.prepare_workers: Input should be greater than or equal to 1",
        ),
        ("models: {}\n", "models: Dictionary should have at least 1 item"),
        (MODEL + "    delegate: []\n", "models.digits.delegate: an empty preference order: name at least one delegate"),
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00bad", "not UTF-8 text (byte 0xff at offset 0, line 1)"),
        (MODEL.encode() + b"device:\n  id: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset"),
    ],
    ids=["binary", "latin-1"],
)
def test_a_config_that_is_not_utf8_is_one_line_naming_the_file_and_exit_2(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{path}: not UTF-8 text"):
        load_config(path)
    for args in (("config", "check", str(path)), ("daemon", "--config", str(path))):
        result = run_cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"edgerun: error: {path}: {message}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ("http://x:99999", "mqtt.url: MQTT URL must start with mqtt:// or mqtts://, got 'http://x:99999'"),
        ("mqtt://x:99999", "mqtt.url: MQTT URL has a bad port: 'mqtt://x:99999'"),
        ("mqtt://x/topic", "mqtt.url: MQTT broker URL takes no path"),
    ],
)
def test_a_broker_url_the_command_line_would_refuse_is_refused_in_the_config_too(
    tmp_path: Path, mqtt: str, message: str
) -> None:
    path = _write(tmp_path, MODEL + f"mqtt:\n  url: {mqtt!r}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2 and result.stderr.startswith(f"edgerun: error: {path}: {message}")


@pytest.mark.parametrize("key", ["fps", "camera_fps"])
def test_a_rate_the_command_line_refuses_is_refused_in_a_pipeline_too(tmp_path: Path, key: str) -> None:
    """Once fps: 1.0e-300 passed config check and the pipeline died of it in the daemon, with a traceback."""
    pipeline = f"pipelines:\n  cam:\n    source: camera:0\n    model: digits\n    {key}: 1.0e-300\n"
    result = run_cli("config", "check", str(_write(tmp_path, MODEL + pipeline)))
    assert result.returncode == 2
    assert f"pipelines.cam.{key}: Input should be greater than or equal to 0.0001" in result.stderr


@pytest.mark.parametrize("prefix", ["fleet/+/x", "fleet/#", "/fleet", "fleet/"])
def test_a_topic_prefix_the_link_would_refuse_is_refused_by_config_check(tmp_path: Path, prefix: str) -> None:
    """Once config check passed it and the daemon stopped at start (exit 2) on the same prefix."""
    path = _write(tmp_path, MODEL + f"mqtt:\n  url: mqtt://127.0.0.1\n  topic_prefix: {prefix!r}\n")
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edgerun: error: {path}: mqtt.topic_prefix: topic prefix {prefix!r} is invalid: "
        "no wildcards, no leading or trailing '/'"
    ]


def test_config_check_reports_every_missing_model_file_in_one_line_and_exit_2(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        MODEL
        + "".join(f"  m{i}:\n    path: /nonexistent/m{i}.tflite\n" for i in range(4))
        + "  rel:\n    path: rel.onnx\n",
    )
    load_config(path)  # valid as a schema: the daemon's own load reports a missing file as a model error
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip() == (
        f"edgerun: error: {path}: models.m0.path: model file not found: /nonexistent/m0.tflite; "
        "models.m1.path: model file not found: /nonexistent/m1.tflite; "
        "models.m2.path: model file not found: /nonexistent/m2.tflite (and 2 more errors)"
    )


def test_config_check_finds_a_relative_model_where_the_daemon_would(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "m.tflite").write_bytes((ROOT / "models/digits/digits_int8.tflite").read_bytes())
    beside = tmp_path / "conf" / "c.yaml"
    beside.write_text("models:\n  digits:\n    path: m.tflite\n")
    assert run_cli("config", "check", str(beside), cwd=tmp_path).returncode == 0  # from the config's folder
    elsewhere = tmp_path / "c.yaml"
    elsewhere.write_text("models:\n  digits:\n    path: conf/m.tflite\n")
    assert run_cli("config", "check", str(elsewhere), cwd=tmp_path / "conf").returncode == 0
    missing = tmp_path / "conf" / "gone.yaml"
    missing.write_text("models:\n  digits:\n    path: gone.tflite\n")
    result = run_cli("config", "check", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"models.digits.path: model file not found: {tmp_path / 'conf' / 'gone.tflite'}"
    )


def test_config_check_passes_every_shipped_device_config_from_the_repo_root() -> None:
    for path in CONFIGS:
        shown = path.relative_to(ROOT)
        result = run_cli("config", "check", str(shown), cwd=ROOT)
        assert result.returncode == 0, result.stderr
        config = load_config(path)
        mqtt = config.mqtt
        files = [("mqtt.ca_file", mqtt and mqtt.ca_file), ("mqtt.cert_file", mqtt and mqtt.cert_file)]
        files += [("mqtt.key_file", mqtt and mqtt.key_file), ("api.token_file", config.api.token_file)]
        files += [("mqtt.password_file", mqtt and mqtt.password_file)]
        files += [(f"ota.trusted_keys[{i}]", key) for i, key in enumerate(config.ota.trusted_keys)]
        missing = [(key, file) for key, file in files if file and not Path(file).exists()]  # installed on the device
        waits = []  # a pipeline's inbox and results folder, made on the device (/var/lib/edgerun)
        for name, p in config.pipelines.items():
            wait = f"the pipeline waits for it (tried every {p.restart_s:g} s)"
            if p.source.startswith("/") and not p.source.startswith("/dev/") and not Path(p.source).exists():
                waits.append(f"edgerun: warning: {shown}: pipelines.{name}.source {p.source} is not there: {wait}")
            waits += [
                f"edgerun: warning: {shown}: pipelines.{name}.sinks[{i}] {sink}: its folder is not there: {wait}"
                for i, sink in enumerate(p.sinks)
                if sink.startswith("/") and not sink.endswith("/") and not Path(sink).parent.is_dir()
            ]
        assert (
            result.stderr.splitlines()
            == [
                f"edgerun: warning: {shown}: {key} {file} is not there: the daemon stops at start until it is"
                for key, file in missing
            ]
            + waits
        )


def test_a_sink_the_command_line_would_refuse_is_refused_in_the_config_without_touching_the_disk(
    tmp_path: Path,
) -> None:
    pipeline = "pipelines:\n  cam:\n    source: camera:0\n    model: digits\n    sinks: [{}]\n"
    good = _write(tmp_path, MODEL + pipeline.format(f"{tmp_path}/r.jsonl, {tmp_path}/frames/"))
    assert run_cli("config", "check", str(good)).returncode == 0
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "frames").exists()
    bad = _write(tmp_path, MODEL + pipeline.format("out.txt"))
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2 and result.stderr.startswith(f"edgerun: error: {bad}: pipelines.cam.sinks")
    assert "unknown sink 'out.txt'" in result.stderr


def test_an_annotated_sink_on_a_sensor_pipeline_is_refused_in_the_config() -> None:
    data = {
        "models": {"vib": {"path": str(ROOT / "models" / "vibration" / "vibration_int8.tflite")}},
        "pipelines": {"line": {"source": "readings.csv", "model": "vib", "sinks": ["r.jsonl", "frames.mp4"]}},
    }
    with pytest.raises(ConfigError, match=r"sink 'frames\.mp4' draws on images, and the sensor source 'readings\.csv'"):
        parse_config(data, "c.yaml")


@pytest.mark.parametrize("sink", ["data.csv", "./data.csv"])
def test_a_sink_that_is_the_source_file_is_refused_in_the_config_naming_the_pipeline(tmp_path: Path, sink: str) -> None:
    original = (ROOT / "models" / "vibration" / "samples" / "normal.csv").read_bytes()
    data = tmp_path / "data.csv"
    data.write_bytes(original)
    vibration = ROOT / "models" / "vibration" / "vibration_int8.tflite"
    path = _write(
        tmp_path,
        f"models:\n  vib:\n    path: {vibration}\n"
        f"pipelines:\n  line:\n    source: {data}\n    model: vib\n    sinks: [jsonl, {sink}]\n",
    )
    message = f"pipelines.line: sink '{sink}' is the source file {data}: writing it would damage the input"
    for args in (("config", "check", str(path)), ("daemon", "--config", str(path))):
        result = run_cli(*args, cwd=tmp_path)  # the sink's path is taken from the daemon's folder
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.splitlines() == [f"edgerun: error: {path}: {message}"]
    assert data.read_bytes() == original


def test_a_config_nested_too_deeply_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "models: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: not valid YAML: nested too deeply"


def test_config_check_refuses_what_the_daemon_would_refuse_at_start_about_the_outbox_and_trusted_keys(
    tmp_path: Path,
) -> None:
    """config check passed these, and the daemon then stopped at start (after loading, or after connecting)."""
    key = tmp_path / "op.pem"
    assert run_cli("keys", "generate", str(tmp_path / "op")).returncode == 0
    mqtt = "mqtt:\n  url: mqtt://127.0.0.1:1\n"
    small = _write(tmp_path, MODEL + mqtt + "  outbox_max_mb: 0.001\n")
    refused = run_cli("config", "check", str(small))
    assert refused.returncode == 2
    assert "mqtt.outbox_max_mb: Input should be greater than or equal to 0.00390625" in refused.stderr
    private = _write(tmp_path, MODEL + mqtt + f"ota:\n  trusted_keys: [{key}]\n")  # the private key, not the .pub
    refused = run_cli("config", "check", str(private))
    assert refused.returncode == 2
    assert f"trusted key {key} is a private key: give the public one ({tmp_path / 'op.pub.pem'})" in refused.stderr
    missing = _write(tmp_path, MODEL + mqtt + f"ota:\n  trusted_keys: [{tmp_path / 'nowhere.pub.pem'}]\n")
    noted = run_cli("config", "check", str(missing))
    assert noted.returncode == 0, noted.stderr
    assert noted.stderr.splitlines() == [
        f"edgerun: warning: {missing}: ota.trusted_keys[0] {tmp_path / 'nowhere.pub.pem'} is not there: "
        "the daemon stops at start until it is"
    ]


def test_the_daemon_reads_its_trusted_keys_before_anything_starts(tmp_path: Path) -> None:
    """Once read only when OTA started, after the broker link: the daemon ran, then stopped."""
    assert run_cli("keys", "generate", str(tmp_path / "op")).returncode == 0
    config = _write(
        tmp_path,
        MODEL + "mqtt:\n  url: mqtt://127.0.0.1:1\n"
        f"ota:\n  trusted_keys: [{tmp_path / 'op.pem'}]\napi:\n  enabled: false\nstate_dir: {tmp_path / 'state'}\n",
    )
    done = run_cli("daemon", "--config", str(config))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # nothing loaded, nothing connected before it
    assert lines[0] == (
        f"edgerun: error: {config}: ota.trusted_keys[0]: trusted key {tmp_path / 'op.pem'} is a private key: "
        f"give the public one ({tmp_path / 'op.pub.pem'})"
    )
