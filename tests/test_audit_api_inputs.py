"""Audit of predict's request bodies over real HTTP on loopback: a .npy header that lies about its size."""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import uvicorn

import edgerun
from edgerun.api import create_app
from edgerun.config import ApiConfig
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES, free_port, npy_bytes


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from serve_slots({"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))})


def serve_slots(slots: dict[str, ModelSlot]) -> Iterator[int]:
    """The API over ``slots`` on a free loopback port, in a thread of this process, until the generator ends."""
    app = create_app(slots, Metrics(), ApiConfig())
    chosen = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=chosen, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    yield chosen
    server.should_exit = True
    thread.join(timeout=30)


def _post(port: int, body: bytes) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/models/digits/predict", body, {"content-type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "shape",
    [(1 << 40,), (1 << 20, 1 << 20), (1 << 32, 8, 8, 1), (1 << 16, 8, 8, 1)],
    ids=["a-terabyte", "2d-terabyte", "16-gib-batch", "16-mib-batch"],
)
def test_a_npy_header_declaring_more_data_than_the_body_has_is_a_422_not_a_500(
    port: int, shape: tuple[int, ...]
) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    body = header.getvalue() + np.zeros(64, np.float32).tobytes()  # a few hundred bytes in all
    status, answer = _post(port, body)
    assert status == 422, answer
    assert "header declares" in answer["detail"] and "and 256 follow it" in answer["detail"], answer
    assert _post(port, npy_bytes(np.load(SAMPLES / "digit_7.npy")))[0] == 200  # still serving


def test_a_npy_body_whose_header_matches_its_data_is_still_answered(port: int) -> None:
    status, answer = _post(port, npy_bytes(np.load(SAMPLES / "digit_7.npy")))
    assert status == 200 and answer["output"][0]["label"] == "7", answer  # type: ignore[index]
