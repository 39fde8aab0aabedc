"""Audit of the HTTP API over real HTTP on loopback: answers a strict JSON reader can read, and bodies
sent in a form the API does not take (a multipart upload, a JSON array without its content type)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import edgerun
from edgerun.ota.slot import ModelSlot
from tests.conftest import DIGITS, SAMPLES
from tests.test_audit_api_inputs import serve_slots


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from serve_slots(
        {
            "digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx")),
            "digitsfp": ModelSlot(edgerun.load(DIGITS / "digits_fp32.tflite")),
        }
    )


def _post(port: int, model: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", f"/v1/models/{model}/predict", body, {"content-type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _strict_json(body: bytes) -> Any:
    """``body`` parsed as RFC 8259 JSON: ``NaN`` and ``Infinity`` (which Python's reader takes) refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(body, parse_constant=refuse)


def test_a_float_model_overflowing_to_nan_answers_valid_json_with_null_scores(port: int) -> None:
    # 3e38 is a finite float32, so the input is taken; the fp32 model's sums overflow to NaN
    body = json.dumps(np.full((8, 8, 1), 3e38).tolist()).encode()
    status, answer = _post(port, "digitsfp", body, "application/json")
    assert status == 200, answer
    record = _strict_json(answer)
    assert [row["score"] for row in record["output"]] == [None] * len(record["output"])
    assert record["latency_ms"] >= 0


def test_a_multipart_upload_is_refused_as_a_media_type_not_taken_saying_what_to_send(port: int) -> None:
    png = (SAMPLES / "digit_3.png").read_bytes()
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--XyZ--\r\n"
    )
    status, answer = _post(port, "digits", body, "multipart/form-data; boundary=XyZ")
    detail = _strict_json(answer)["detail"]
    assert status == 415, answer
    assert "multipart/form-data" in detail and "--data-binary" in detail and "\n" not in detail


def test_a_json_array_sent_as_a_form_as_curl_d_sends_it_is_told_to_use_application_json(port: int) -> None:
    body = json.dumps(np.full((8, 8, 1), 0.5).tolist()).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/octet-stream"):
        status, answer = _post(port, "digits", body, content_type)
        assert status == 415, (content_type, answer)
        assert "content-type: application/json" in _strict_json(answer)["detail"], content_type


def test_image_bytes_sent_as_a_urlencoded_form_as_curl_data_binary_and_urllib_send_them_are_answered(
    port: int,
) -> None:
    """``curl --data-binary @digit.png`` and ``urllib`` send ``application/x-www-form-urlencoded`` unless told
    another type: a first version of the 415 refused every such upload."""
    status, answer = _post(port, "digits", (SAMPLES / "digit_3.png").read_bytes(), "application/x-www-form-urlencoded")
    assert status == 200, answer
    assert _strict_json(answer)["output"][0]["label"] == "3"


def test_images_npy_and_json_arrays_are_still_answered_with_their_own_content_types(port: int) -> None:
    png = (SAMPLES / "digit_3.png").read_bytes()
    array = json.dumps(np.full((8, 8, 1), 0.5).tolist()).encode()
    npy = (SAMPLES / "digit_7.npy").read_bytes()
    for body, content_type in (
        (png, "image/png"),
        (png, "application/octet-stream"),
        (array, "application/json; charset=utf-8"),
        (npy, "application/octet-stream"),
        (npy, "multipart/form-data"),  # a .npy is known by its magic bytes whatever the type says
    ):
        status, answer = _post(port, "digits", body, content_type)
        assert status == 200, (content_type, answer)
        assert _strict_json(answer)["model"] == "digits"


def test_an_undecodable_image_is_still_a_422(port: int) -> None:
    status, answer = _post(port, "digits", b"\x00\x01 neither an image nor an array", "image/png")
    assert status == 422 and "not a decodable image" in _strict_json(answer)["detail"]


def test_the_openapi_document_declares_the_415(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/openapi.json")
        document = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert "415" in document["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
