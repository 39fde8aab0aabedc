"""Audit of the wire contract (PROTOCOL.md): what a device says when it refuses a signed document.

PROTOCOL.md: "Every rejection names its reason in plain words". A field that breaks one of the
name, version, id or digest rules used to be refused with the schema library's own words, a
regular expression with doubled backslashes ("Expected `str` matching regex
'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\\\\Z' - at `$.command_id`"), which an operator with
``mosquitto_sub`` cannot read. The device here is a real ``OtaAgent`` on a real broker.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_command, build_manifest
from tests.conftest import Broker
from tests.ota_helpers import Agent, StatusWatcher, _card, make_key, model_with_card, publish


@pytest.fixture
def device(broker: Broker, tmp_path: Path) -> Any:
    """An OTA agent serving digits 1.0.0, a watcher of its records, and the operator's key."""
    key, _, public = make_key(tmp_path)
    model = model_with_card(tmp_path / "v1", "digits_int8.onnx", "digits.onnx")
    name = f"audit-{secrets.token_hex(3)}"
    agent = Agent(broker.port, tmp_path / "state", model, public, name)
    watcher = StatusWatcher(broker.port)
    try:
        yield name, key, model, watcher
    finally:
        agent.stop()
        watcher.close()


def _refusal(broker: Broker, device: Any, topic: str, document: dict[str, Any], ident: str) -> str:
    name, key, _, watcher = device
    publish(broker.port, f"edgerun/{name}/{topic}", seal(document, key))
    record = watcher.wait_state(name, ident, {"rejected"}, timeout=30)
    return str(record["reason"])


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("command_id", "op:42", "an id of 1 to 128 characters from A-Z a-z 0-9 . _ and -"),
        ("model", "Digits", "a name of 1 to 64 characters from a-z 0-9 . _ and -"),
        ("version", "1.0", "a version MAJOR.MINOR.PATCH"),
    ],
)
def test_a_command_with_a_malformed_field_is_refused_in_words_not_with_a_regular_expression(
    broker: Broker, device: Any, field: str, value: str, words: str
) -> None:
    name = device[0]
    command = build_command("activate", model="digits", devices=[name], groups=[], version="1.0.0")
    command[field] = value
    reason = _refusal(broker, device, "cmd", command, command["command_id"] if field != "command_id" else value)
    assert reason.startswith("invalid command: "), reason
    assert words in reason, reason
    assert f"`$.{field}`" in reason, reason  # where, as before
    assert "regex" not in reason and "\\" not in reason, reason


def test_a_manifest_with_a_malformed_digest_is_refused_in_words(broker: Broker, device: Any) -> None:
    name, _, model, _ = device
    manifest = build_manifest(
        model,
        model="digits",
        version="1.1.0",
        fmt="onnx",
        card=_card(model),
        devices=[name],
        groups=[],
        prefix="edgerun",
    )
    manifest["sha256"] = manifest["sha256"].upper()
    reason = _refusal(broker, device, "ota/manifest", manifest, manifest["update_id"])
    assert reason == "invalid manifest: Expected a SHA-256 of 64 lowercase hex digits - at `$.sha256`", reason
