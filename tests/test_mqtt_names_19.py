"""MQTT names that can never work are refused in one line before anything connects.

Once an invalid source filter (``in/#/x``) connected, then ended the run with paho's traceback
(and the daemon retried it every 5 s for ever) while ``config check`` called it valid; a topic
prefix such as ``$SYS/x`` had every publish refused, one with a line break made the broker close
the connection again and again, a byte that is not UTF-8 ended in a traceback, and the command line
took a 70,000-character prefix the config caps at 64; ``--device-id`` took a name ending in a line
break; ``--metrics-interval 0.000001`` wrote ~450 metrics records a second. A retained message on a
source topic ran again at every start; a JSON integer past int64 but inside float32's range was
refused as "beyond float32's range".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import paho.mqtt.publish as mqtt_publish
import pytest

from edgerun.errors import ConfigError
from edgerun.sources.mqtt import decode_message, parse_mqtt_url
from edgerun.sync.topics import check_prefix
from tests.conftest import ROOT, SAMPLES, Broker, run_cli

MODEL = str(ROOT / "models" / "digits" / "digits_fp32.onnx")
IMAGE = str(SAMPLES / "digit_7.png")
HASH_RULE = "'#' may only be a whole level, the last one (in/#)"
PLUS_RULE = "'+' may only be a whole level (in/+/temp)"
CONTROL = "on which the broker closes the connection"


def _one_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 2, nothing on stdout, and ``message`` as the only line on stderr (no traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"edgerun: error: {message}"], result.stderr[-2000:]


def _config(tmp_path: Path, *, source: str = "camera:0", mqtt: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"models:\n  digits:\n    path: {MODEL}\n"
        f"pipelines:\n  p1:\n    source: {source}\n    model: digits\n"
        "api:\n  enabled: false\n" + (f"mqtt:\n  url: mqtt://127.0.0.1:9\n  {mqtt}\n" if mqtt else "")
    )
    return path


BAD_FILTERS = [
    ("in/#/x", HASH_RULE),
    ("in/a#", HASH_RULE),
    ("in/a+", PLUS_RULE),
    ("+a/x", PLUS_RULE),
    ("in/\x07", f"it holds the control character or non-character '\\x07', {CONTROL}"),
    ("in/\ufffe", f"it holds the control character or non-character '\\ufffe', {CONTROL}"),
]


@pytest.mark.parametrize(("topic", "rule"), BAD_FILTERS)
def test_an_invalid_source_filter_is_one_line_and_exit_2_before_connecting(
    broker: Broker, tmp_path: Path, topic: str, rule: str
) -> None:
    source = f"{broker.url}/{topic}"
    result = run_cli("run", MODEL, "--source", source, "--max-frames", "1", "--state-dir", str(tmp_path))
    _one_error(result, f"MQTT source topic {topic!r} is not a valid subscription filter: {rule}")


def test_a_source_filter_past_mqtts_65535_bytes_is_refused_with_its_size(broker: Broker, tmp_path: Path) -> None:
    topic = "in/" + "é" * 40_000  # 40,003 characters, 80,003 bytes of UTF-8
    result = run_cli("run", MODEL, "--source", f"{broker.url}/{topic}", "--state-dir", str(tmp_path))
    _one_error(
        result,
        f"MQTT source topic {topic[:32]!r}... (40003 characters) is not a valid subscription filter: "
        "it is 80003 bytes of UTF-8, more than MQTT's 65535",
    )


@pytest.mark.parametrize(("topic", "rule"), BAD_FILTERS[:3])
def test_config_check_refuses_an_invalid_source_filter_naming_the_pipelines_source(
    tmp_path: Path, topic: str, rule: str
) -> None:
    path = _config(tmp_path, source=f"'mqtt://127.0.0.1:9/{topic}'")
    result = run_cli("config", "check", str(path))
    _one_error(
        result, f"{path}: pipelines.p1.source: MQTT source topic {topic!r} is not a valid subscription filter: {rule}"
    )


@pytest.mark.parametrize("topic", ["in/#", "#", "in/+/x", "+", "+/+/#", "$SYS/#", "in//x", "in/é"])
def test_every_filter_mqtt_allows_is_taken(topic: str) -> None:
    assert parse_mqtt_url(f"mqtt://127.0.0.1/{topic}") == ("127.0.0.1", 1883, topic)


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ("topic_prefix: '$SYS/x'", "mqtt.topic_prefix: topic prefix '$SYS/x' is invalid: a leading '$' is reserved"),
        ("metrics_interval_s: 0.000001", "mqtt.metrics_interval_s: Input should be greater than or equal to 1"),
    ],
)
def test_a_daemon_config_that_can_never_work_is_refused_at_start(tmp_path: Path, mqtt: str, message: str) -> None:
    """Once the daemon started, and logged a traceback every 5 s or had every publish refused."""
    path = _config(tmp_path, source="'mqtt://127.0.0.1:9/in/#/x'", mqtt=mqtt)
    result = run_cli("daemon", "--config", str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert f"pipelines.p1.source: MQTT source topic 'in/#/x' is not a valid subscription filter: {HASH_RULE}" in line
    assert message in line


LONG = "a" * 70_000
BAD_PREFIXES = [
    ("$SYS/x", "topic prefix '$SYS/x' is invalid: a leading '$' is reserved for the broker's own topics"),
    ("a\nb", f"topic prefix 'a\\nb' is invalid: it holds the control character or non-character '\\n', {CONTROL}"),
    (
        "a\x7fb",
        f"topic prefix 'a\\x7fb' is invalid: it holds the control character or non-character '\\x7f', {CONTROL}",
    ),
    ("\udcff", "topic prefix '\\udcff' is invalid: it is not valid UTF-8"),  # the byte 0xff, as argv gives it
    (LONG, "topic prefix 'aaaaaaaaaaaaaaaa'... (70000 characters) is invalid: it is longer than 64 characters"),
    ("a" * 65, "topic prefix 'aaaaaaaaaaaaaaaa'... (65 characters) is invalid: it is longer than 64 characters"),
    ("fleet/#", "topic prefix 'fleet/#' is invalid: no wildcards, no leading or trailing '/'"),  # as before
]


@pytest.mark.parametrize(("prefix", "message"), BAD_PREFIXES, ids=lambda v: v[:12] if isinstance(v, str) else v)
def test_a_topic_prefix_that_can_never_work_is_one_line_and_exit_2(
    broker: Broker, tmp_path: Path, prefix: str, message: str
) -> None:
    args = ["--mqtt", broker.url, "--mqtt-prefix", prefix, "--device-id", "dev19", "--publish-results"]
    result = run_cli("predict", MODEL, IMAGE, *args, "--state-dir", str(tmp_path))
    _one_error(result, message)


@pytest.mark.parametrize(("prefix", "message"), [p for p in BAD_PREFIXES if p[0] not in (LONG, "fleet/#")])
def test_config_check_refuses_the_same_prefixes_with_the_same_words(tmp_path: Path, prefix: str, message: str) -> None:
    escaped = "".join(c if " " <= c < "\x7f" and c not in '"\\' else f"\\u{ord(c):04x}" for c in prefix)
    path = _config(tmp_path, mqtt=f'topic_prefix: "{escaped}"')  # YAML's escapes: the same text as from argv
    result = run_cli("config", "check", str(path))
    _one_error(result, f"{path}: mqtt.topic_prefix: {message}")


def test_the_prefix_cap_is_the_configs_own_on_both_paths() -> None:
    assert check_prefix("a" * 64) == "a" * 64
    with pytest.raises(ConfigError, match="longer than 64 characters"):
        check_prefix("a" * 65)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--device-id", "dev\n", "device name 'dev\\n' is invalid"),
        ("--device-id", "", "device name '' is invalid"),
        ("--group", "g1\n", "group name 'g1\\n' is invalid"),
    ],
)
def test_a_device_or_group_name_off_the_protocols_rule_is_one_line(
    broker: Broker, tmp_path: Path, option: str, value: str, message: str
) -> None:
    """Once ``dev\\n`` passed (``$`` matches before a final line break) and "" meant the default id."""
    args = ["--mqtt", broker.url, option, value]
    result = run_cli("predict", MODEL, IMAGE, *args, "--state-dir", str(tmp_path))
    _one_error(result, f"{message}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit")


@pytest.mark.parametrize("interval", ["0.000001", "0.5", "3601"])
def test_a_metrics_interval_outside_1_to_3600_seconds_is_one_line_naming_the_bounds(
    broker: Broker, tmp_path: Path, interval: str
) -> None:
    args = ["--mqtt", broker.url, "--device-id", "dev19", "--metrics-interval", interval]
    result = run_cli("predict", MODEL, IMAGE, *args, "--state-dir", str(tmp_path))
    _one_error(result, f"--metrics-interval must be between 1 and 3600, got {float(interval):g}")


def test_config_check_refuses_a_metrics_interval_under_a_second(tmp_path: Path) -> None:
    path = _config(tmp_path, mqtt="metrics_interval_s: 0.000001")
    result = run_cli("config", "check", str(path))
    _one_error(result, f"{path}: mqtt.metrics_interval_s: Input should be greater than or equal to 1")


def test_a_json_integer_past_int64_runs_when_float32_holds_it() -> None:
    array = decode_message(b"[123456789012345678901234567890, 1]", 1024)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, np.array([1.2345679e29, 1], np.float32))
    nested = decode_message(b"[[-123456789012345678901234567890], [2.5]]", 1024)
    np.testing.assert_array_equal(nested, np.array([[-1.2345679e29], [2.5]], np.float32))


@pytest.mark.parametrize("number", [10**39, -(10**39), 10**400])
def test_a_json_integer_past_float32s_range_is_still_refused_as_such(number: int) -> None:
    with pytest.raises(ValueError, match="values beyond float32's range"):
        decode_message(f"[{number}, 1]".encode(), 4096)


def test_a_retained_message_is_skipped_with_one_info_line_and_a_new_one_runs(
    own_broker: Broker, tmp_path: Path
) -> None:
    """Once the broker's retained reading ran as a new input at every start and every daemon restart."""
    three, seven = (SAMPLES / "digit_3.png").read_bytes(), (SAMPLES / "digit_7.png").read_bytes()
    host = {"hostname": "127.0.0.1", "port": own_broker.port}
    mqtt_publish.single("cam/a", three, qos=1, retain=True, **host)  # kept by the broker from before the run
    sink = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "edgerun", "-v", "run", MODEL, "--source", f"{own_broker.url}/cam/#"]
    command += ["--max-frames", "1", "--sink", str(sink), "--state-dir", str(tmp_path / "state")]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as run:
        assert run.stderr is not None
        lines = []
        for line in run.stderr:
            lines.append(line)
            if "MQTT source subscribed to cam/#" in line:  # the broker sent its retained message with the SUBACK
                mqtt_publish.single("cam/b", seven, qos=1, **host)
        assert run.wait() == 0, "".join(lines)
    records = [line for line in sink.read_text().splitlines() if line]
    assert len(records) == 1 and '"input": "cam/b#0"' in records[0] and '"label": "7"' in records[0], records
    skipped = [line for line in lines if "skipping retained messages" in line]
    assert (
        len(skipped) == 1 and skipped[0].startswith("INFO edgerun.sources.mqtt: ") and "(first on cam/a)" in skipped[0]
    )


def test_a_model_card_or_manifest_name_with_a_final_newline_is_refused() -> None:
    # msgspec matches patterns with Python's re, whose $ also matches before a final newline: 'digits\n' passed
    from edgerun.card import parse_card
    from edgerun.errors import CardError, UpdateRejected
    from edgerun.ota.manifest import parse_manifest

    with pytest.raises(CardError, match="name"):
        parse_card({"name": "digits\n", "version": "1.0.0", "task": "classification"}, "test")
    with pytest.raises(CardError, match="version"):
        parse_card({"name": "digits", "version": "1.0.0\n", "task": "classification"}, "test")
    assert parse_card({"name": "digits", "version": "1.0.0", "task": "classification"}, "test").name == "digits"
    from tests.test_fuzz_ota import MANIFEST

    assert parse_manifest(dict(MANIFEST)).model == "digits"
    for field, value in (("model", "digits\n"), ("version", "2.0.0\n"), ("update_id", "u1\n")):
        with pytest.raises(UpdateRejected, match=field):
            parse_manifest({**MANIFEST, field: value})
    with pytest.raises(UpdateRejected, match="sha256"):
        parse_manifest({**MANIFEST, "sha256": MANIFEST["sha256"] + "\n"})
