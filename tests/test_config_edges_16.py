"""Broker host names, YAML error lines, and configs or cards that are not files: edges left by the fifteenth
session's fuzzing."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from edgerun.card import CARD_MAX_BYTES, load_card
from edgerun.config import CONFIG_MAX_BYTES, load_config, parse_config
from edgerun.errors import CardError, ConfigError
from edgerun.sources.mqtt import parse_mqtt_url
from edgerun.sync.settings import MqttSettings
from tests.conftest import ROOT, run_cli

DIGITS = ROOT / "models" / "digits" / "digits_int8.tflite"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mqtt://bro\x00ker", "'mqtt://bro\\x00ker'"),
        ("mqtt://bro ker:1883", "'mqtt://bro ker:1883'"),
        ("mqtt://bro<ker>", "'mqtt://bro<ker>'"),
    ],
)
def test_a_broker_host_no_resolver_takes_is_refused_before_anything_connects(url: str, shown: str) -> None:
    """Once a NUL or a space in the host passed ``config check`` and the command line, and reached the resolver."""
    message = f"MQTT URL has a bad host name: {shown}"
    with pytest.raises(ConfigError) as err:
        MqttSettings.from_url(url)
    assert str(err.value).startswith(message), str(err.value)
    data = {"models": {"m": {"path": str(DIGITS)}}, "mqtt": {"url": url}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "c.yaml")
    assert f"mqtt.url: {message}" in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("mqtt://broker.local", "broker.local"),
        ("mqtt://10.0.0.7:1884", "10.0.0.7"),
        ("mqtt://[::1]:1883", "::1"),
        ("mqtt://bröker", "bröker"),
        ("mqtt://हिन्दी.example", "हिन्दी.example"),  # combining marks: IDNA takes them, isalnum() does not
        ("mqtt://cafe\u0301.example", "cafe\u0301.example"),
        ("mqtt://user:pa ss@broker", "broker"),  # a space in the password is not in the host
    ],
)
def test_host_names_addresses_and_international_names_are_taken(url: str, host: str) -> None:
    assert MqttSettings.from_url(url).host == host


@pytest.mark.parametrize("url", ["mqtt://bro\x01ker:1883/t", "mqtt://bro\tker/t", "mqtt://bro<ker/t"])
def test_an_mqtt_source_refuses_the_host_names_the_broker_url_refuses(url: str) -> None:
    """The source's own URL parser once let a control character through to the resolver and the log."""
    with pytest.raises(ConfigError, match="MQTT source URL has a bad host or port"):
        parse_mqtt_url(url)


def test_the_command_line_refuses_a_bad_broker_host_in_one_line_before_the_model_loads(tmp_path: Path) -> None:
    result = run_cli("run", str(DIGITS), "--source", str(tmp_path / "none.png"), "--mqtt", "mqtt://a b")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["edgerun: error: MQTT URL has a bad host name: 'mqtt://a b'"]


def test_a_control_character_after_non_ascii_text_in_a_card_is_given_its_own_line(tmp_path: Path) -> None:
    """libyaml gives a reader error's place in bytes: after 'é' (two bytes) the line counted was a later one."""
    card = tmp_path / "m.tflite.card.yaml"
    shutil.copy(DIGITS.with_name(DIGITS.name + ".card.yaml"), card)
    lines = card.read_text(encoding="utf-8").splitlines()
    text = "\n".join([f"# {'é' * 300}", lines[0] + "\x01", *lines[1:]]) + "\n"
    card.write_text(text, encoding="utf-8")
    with pytest.raises(CardError) as err:
        load_card(card)
    assert "not valid YAML at line 2: character '\\x01' is not allowed" in str(err.value), str(err.value)


DEVICE = "cannot read config /dev/zero: is a device, not a file"


def test_a_device_given_as_the_config_is_refused_in_one_line_instead_of_read_for_ever() -> None:
    """``edgerun config check /dev/zero`` once read until the memory ran out."""
    with pytest.raises(ConfigError, match=f"^{DEVICE}$"):
        load_config("/dev/zero")
    result = run_cli("config", "check", "/dev/zero")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"edgerun: error: {DEVICE}"]


def test_a_config_or_a_card_over_its_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "c.yaml"
    big.write_bytes(b"#" * (CONFIG_MAX_BYTES + 1))
    with pytest.raises(ConfigError, match=r"c\.yaml: larger than 1 MiB, more than any config$"):
        load_config(big)
    card = tmp_path / "m.tflite.card.yaml"
    card.write_bytes(b"#" * (CARD_MAX_BYTES + 1))
    with pytest.raises(CardError, match=r"m\.tflite\.card\.yaml: larger than 16 MiB, more than any card$"):
        load_card(card)


def test_a_card_over_a_mib_loads_as_the_store_writes_one_from_a_full_ota_envelope(tmp_path: Path) -> None:
    """The store writes an OTA card as indented, ASCII-escaped JSON: up to ~2.3x the 1 MiB envelope."""
    card = tmp_path / "m.tflite.card.yaml"
    shutil.copy(DIGITS.with_name(DIGITS.name + ".card.yaml"), card)
    with card.open("a", encoding="utf-8") as fh:
        fh.write("# " + "\\u00e9" * (400 << 10) + "\n")  # 2.4 MB of escapes, as a comment
    assert card.stat().st_size > 2 << 20
    assert load_card(card).labels == load_card(DIGITS.with_name(DIGITS.name + ".card.yaml")).labels


def test_a_config_read_from_a_pipe_is_read_to_its_end(tmp_path: Path) -> None:
    """Process substitution (``config check <(...)``) gives a pipe: it is read, not refused."""
    text = f"models:\n  m:\n    path: {DIGITS}\n"
    read, write = os.pipe()
    with os.fdopen(write, "w") as fh:
        fh.write(text)
    try:
        config = load_config(f"/proc/self/fd/{read}")
    finally:
        os.close(read)
    assert list(config.models) == ["m"]


def test_a_control_character_is_given_its_line_whichever_yaml_reader_reads_the_card(tmp_path: Path) -> None:
    """libyaml's byte offset once landed, by chance, on the same character a line later."""
    card = tmp_path / "m.tflite.card.yaml"
    card.write_text("éé\x01\n\x01\n", encoding="utf-8")
    with pytest.raises(CardError, match="not valid YAML at line 1: character"):
        load_card(card)


def test_an_ipv6_zone_in_a_broker_url_reaches_the_resolver_as_it_takes_it() -> None:
    """A URL spells the zone ``%25`` (RFC 6874); the resolver takes ``fe80::1%lo`` and not ``%25lo``."""
    host = MqttSettings.from_url("mqtt://[fe80::1%25lo]:1883").host
    assert host == "fe80::1%lo"
    assert parse_mqtt_url("mqtt://[fe80::1%25lo]:1883/t") == ("fe80::1%lo", 1883, "t")
    assert socket.getaddrinfo(host, 1883, proto=socket.IPPROTO_TCP)[0][4][0] == "fe80::1"
