"""Refusals that named the wrong reason, and a health check some checkers could not make.

Found by exploring the daemon by hand: an empty JSON body was "not a rectangular JSON array", an
array of 200 dimensions too, an integer of 5,000 digits was not "beyond float32's range" as
``1e999`` was, a 60 KB model name came back whole in the 404, ``HEAD /health`` was 405, and a
JSON array after a UTF-8 BOM was taken over HTTP but refused over MQTT. Real app, real model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

import edgerun
from edgerun.api import create_app
from edgerun.config import ApiConfig
from edgerun.errors import QUOTE_MAX
from edgerun.inputs import json_array
from edgerun.ota.slot import ModelSlot
from edgerun.sources.mqtt import decode_message
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES

PREDICT = "/v1/models/digits/predict"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    slots = {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}
    with TestClient(create_app(slots, Metrics(), ApiConfig())) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "empty body"),
        (b"[" * 200 + b"1" + b"]" * 200, "body is a JSON array of more than 64 dimensions"),
        (b"[" + b"9" * 5000 + b"]", "body is a JSON array with NaN, infinite values or values beyond"),
        (b"[" + b"9" * 40 + b"]", "body is a JSON array with NaN, infinite values or values beyond"),  # past int64
        (b"[[1, 2], [3]]", "body is not a rectangular JSON array of numbers"),  # ragged: as before
    ],
)
def test_a_json_body_is_refused_for_what_is_wrong_with_it(client: TestClient, body: bytes, detail: str) -> None:
    r = client.post(PREDICT, content=body, headers=JSON)
    assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text


def test_a_long_model_name_is_cut_in_the_404(client: TestClient) -> None:
    name = "m" * 60_000
    r = client.post(f"/v1/models/{name}/predict", content=b"[1]", headers=JSON)
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert detail.startswith("no model named 'mmm") and "..." in detail and len(detail) < QUOTE_MAX + 30, detail


def test_health_answers_head_as_get(client: TestClient) -> None:
    assert client.head("/health").status_code == 200
    assert client.get("/health").json() == {"status": "ok"}


def test_a_json_array_after_a_utf8_bom_is_the_same_array_over_http_and_mqtt(client: TestClient) -> None:
    array = np.load(SAMPLES / "digit_7.npy")
    body = b"\xef\xbb\xbf" + str(array.tolist()).encode()
    over_mqtt = decode_message(body, 1 << 20)
    np.testing.assert_array_equal(over_mqtt, json_array(body[3:]))
    r = client.post(PREDICT, content=body, headers=JSON)
    assert r.status_code == 200 and r.json()["output"][0]["label"] == "7", r.text
