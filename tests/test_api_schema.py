"""Property-based tests of the HTTP API, in-process over ASGI (no server, no network).

Schemathesis fuzzes every operation of the API's own OpenAPI document; since that
document cannot describe predict's raw body (FastAPI's ``request: Request``), a
hand-written Hypothesis test posts random bytes, JSON and .npy bodies under random
content types. Every run is bounded and derandomized. The inputs that once got a
500 (found by probing the body decoder's edge cases) and the document's gaps
(found by schemathesis) are kept as explicit cases.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

import edgerun
from edgerun.api import create_app
from edgerun.config import ApiConfig
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES, npy_bytes

TOKEN = "a-long-enough-test-token"
PREDICT = "/v1/models/digits/predict"
PUBLIC = ("/", "/health", "/docs", "/openapi.json")
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# The document is the same for any set of models, so it is read at collection time from an
# app without models (cheap); the requests go to the real app of the fixtures below, and
# test_the_fuzzed_document_is_the_one_the_real_app_serves keeps the two the same.
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", create_app({}, Metrics(), ApiConfig()))
PREDICT_SCHEMA = SCHEMA.include(path_regex="/predict$")


@pytest.fixture(scope="module")
def slots() -> dict[str, ModelSlot]:
    return {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}


@pytest.fixture(scope="module")
def app(slots: dict[str, ModelSlot]) -> Iterator[FastAPI]:
    application = create_app(slots, Metrics(), ApiConfig(max_request_mb=1))
    yield application
    for batcher in application.state.predictor.batchers.values():
        batcher.close()


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def token_app(slots: dict[str, ModelSlot]) -> FastAPI:
    return create_app(slots, Metrics(), ApiConfig(bind="0.0.0.0", token=TOKEN))


@pytest.fixture(scope="module")
def token_client(token_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(token_app, raise_server_exceptions=False) as c:
        yield c


VALID = (SAMPLES / "digit_3.png").read_bytes()


def _assert_answer_is_200_or_a_clear_4xx(r: Any) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    if r.status_code == 200:
        record = r.json()
        assert set(record) == {"input", "model", "version", "delegate", "output", "latency_ms"}, record
        assert record["model"] == "digits" and isinstance(record["output"], list)
    else:
        assert 400 <= r.status_code < 500, r.status_code
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail.strip(), r.text


def _assert_still_serving(client: TestClient) -> None:
    r = client.post(PREDICT, content=VALID, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["output"][0]["label"] == "3", r.text


# --- schemathesis over the OpenAPI document -------------------------------------------------


def test_the_fuzzed_document_is_the_one_the_real_app_serves(client: TestClient) -> None:
    assert client.get("/openapi.json").json() == SCHEMA.raw_schema


@SCHEMA.parametrize()
@FUZZ
def test_no_operation_answers_5xx_and_documented_responses_match_their_schema(case: Any, app: FastAPI) -> None:
    case.call_and_validate(app=app, checks=[not_a_server_error, content_type_conformance, response_schema_conformance])


@PREDICT_SCHEMA.parametrize()
@settings(FUZZ, max_examples=10)
def test_predict_answers_only_status_codes_its_document_declares(case: Any, app: FastAPI) -> None:
    case.call_and_validate(app=app, checks=[status_code_conformance])


def test_a_422_from_predict_matches_the_documented_422_schema(app: FastAPI) -> None:
    case = SCHEMA["/v1/models/{name}/predict"]["POST"].Case(path_parameters={"name": "digits"})
    response = case.call_and_validate(app=app, checks=[response_schema_conformance])  # empty body -> 422
    assert response.status_code == 422


@SCHEMA.parametrize()
@settings(FUZZ, max_examples=25)
def test_without_the_token_every_operation_but_health_answers_401(case: Any, token_app: FastAPI) -> None:
    response = case.call(app=token_app)
    if case.path in PUBLIC:  # schemathesis also tries undeclared methods, which get 405
        declared = ("GET", "HEAD") if case.path == "/health" else ("GET",)  # HEAD /health: some health checkers
        assert response.status_code == (200 if case.method.upper() in declared else 405), response.text
    else:
        assert response.status_code == 401, response.text
        assert response.json() == {"detail": "missing or wrong bearer token"}
        headers = {k.lower(): v for k, v in response.headers.items()}
        assert headers["www-authenticate"] == ["Bearer"] and "digits" not in response.text


def test_the_status_page_docs_and_document_stay_public_with_a_token(token_client: TestClient) -> None:
    for path in PUBLIC:
        assert token_client.get(path).status_code == 200, path
    assert token_client.get("/v1/status").status_code == 401
    assert token_client.get("/v1/status", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    # once a second documentation page that, unlike /docs, asked for the token
    assert token_client.get("/redoc", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 404


@FUZZ
@given(
    authorization=st.one_of(
        st.text(alphabet=string.printable.strip() + " ", max_size=40),
        st.builds(lambda s: f"Bearer {s}", st.text(alphabet=string.ascii_letters + string.digits + "-", max_size=30)),
        st.sampled_from([TOKEN, f"Basic {TOKEN}", f"Bearer  {TOKEN}", f"Bearer {TOKEN} ", f"Bearer {TOKEN[:-1]}"]),
    ),
    path=st.sampled_from(["/v1/models", "/v1/status", "/ready", "/metrics", PREDICT]),
)
def test_no_authorization_header_but_the_exact_token_opens_the_api(
    token_client: TestClient, authorization: str, path: str
) -> None:
    assume(not (authorization[:7].lower() == "bearer " and authorization[7:].lstrip(" ") == TOKEN))  # any case, 1*SP
    r = token_client.request(
        "POST" if path == PREDICT else "GET", path, content=VALID, headers={"authorization": authorization}
    )
    assert r.status_code == 401 and "digits" not in r.text, r.text


# --- hand-written bodies for predict --------------------------------------------------------

NAN_LIKE = ["NaN", "nan", "-NaN", "Infinity", "-Infinity", "inf", "1e999", "-1e999", "0x10", "1_000", " 1 ", "", "e"]
# Integers beyond float64 range are a known 500 (pinned below), so the random JSON stays inside it.
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(),  # NaN and +-Infinity included: json.dumps writes them as NaN/Infinity, which json.loads reads
    st.text(max_size=8),
    st.sampled_from(NAN_LIKE),
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=40,
)
MODEL_SHAPED = st.sampled_from([(8, 8, 1), (1, 8, 8, 1), (2, 8, 8, 1), (4, 8, 8, 1), (8, 8), (1, 8, 8), (64,)])
ODD_FLOATS = st.floats(width=32) | st.sampled_from([float("nan"), float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e39])
MODEL_ARRAYS = hnp.arrays(np.float64, MODEL_SHAPED, elements=ODD_FLOATS)
NUMERIC_DTYPES = st.sampled_from(
    ["<f4", "<f8", "<f2", ">f4", "|i1", "<i4", "<i8", "|u1", "<u2", "<u8", "|b1", "<c8", "<U3", "|S2", "<M8[s]"]
)
NPY_ARRAYS = MODEL_ARRAYS | hnp.arrays(
    NUMERIC_DTYPES.map(np.dtype),
    st.one_of(MODEL_SHAPED, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)),
)


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    array = draw(NPY_ARRAYS)
    body = npy_bytes(array)
    how = draw(st.sampled_from(["whole", "whole", "truncated", "flipped"]))
    if how == "truncated":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif how == "flipped":
        at = draw(st.integers(0, min(len(body), 128) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    return body


MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF", b"II*\x00", b"\x93NUMPY", b"["]
BODIES = st.one_of(
    st.binary(max_size=1024),
    st.builds(lambda m, rest: m + rest, st.sampled_from(MAGIC), st.binary(max_size=512)),
    st.builds(lambda rest: b"\xff\xd8\xff" + rest + b"\xff\xd9", st.binary(max_size=512)),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.lists(JSON_VALUES, max_size=3).map(lambda v: json.dumps(v).encode()),
    MODEL_ARRAYS.map(lambda a: json.dumps(a.tolist()).encode()),
    st.text(max_size=200).map(str.encode),
    npy_bodies(),
    st.just(VALID),
)
CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON ;x=1",
            "image/png",
            "image/jpeg",
            "application/octet-stream",
            "application/x-npy",
            "text/plain",
            "multipart/form-data; boundary=x",
            ";",
            "",
        ]
    ),
    st.text(alphabet=string.printable.strip() + " ", max_size=40),
)


@settings(FUZZ, max_examples=300)
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_any_body_to_predict_gets_200_or_a_4xx_with_a_detail_and_the_app_keeps_serving(
    client: TestClient, body: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    _assert_answer_is_200_or_a_clear_4xx(client.post(PREDICT, content=body, headers=headers))
    _assert_still_serving(client)


OCTET = "application/octet-stream"


def npy_with_header(header: bytes) -> bytes:
    """A version 1.0 .npy whose header dictionary is ``header`` (padded as numpy pads it), then some data."""
    padded = header + b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + bytes(16)


EDGE_CASES = [
    pytest.param(
        b"[1" + b"0" * 400 + b"]",
        "application/json",
        id="json-integer-beyond-float64",
    ),
    pytest.param(
        b"[" * 5000 + b"]" * 5000,
        "application/json",
        id="json-nested-5000-deep",
    ),
    pytest.param(
        npy_bytes(np.zeros((0, 8, 8, 1), np.float32)),
        OCTET,
        id="npy-empty-batch",
    ),
    *(
        pytest.param(
            npy_bytes(np.zeros(shape, np.uint8)),
            OCTET,
            id=f"npy-uint8-{'x'.join(map(str, shape))}",
        )
        for shape in [(5, 5, 1), (5, 5, 2), (0, 5, 3), (5, 0)]
    ),
    *(  # numpy's header parser lets tokenize.TokenError through (once a 500)
        pytest.param(npy_with_header(header), OCTET, id=f"npy-header-{name}")
        for name, header in [("unclosed-quote", b"'''\x00"), ("nul-in-dict", b"{'descr': '<f4', }\x00'''")]
    ),
    pytest.param(npy_bytes(np.full((8, 8, 1), 1e300)), OCTET, id="npy-float64-beyond-float32"),
]


@pytest.mark.parametrize(("body", "content_type"), EDGE_CASES)
def test_edge_case_bodies_get_a_4xx_not_a_500(client: TestClient, body: bytes, content_type: str) -> None:
    _assert_answer_is_200_or_a_clear_4xx(client.post(PREDICT, content=body, headers={"content-type": content_type}))
    _assert_still_serving(client)
