"""The HTTP API against HTTP's rules, over real HTTP on loopback (uvicorn in a thread, real models).

Found by reading the API against RFC 9110 and Prometheus' conventions: a bearer token after two
spaces was refused, ``HEAD`` was 405 everywhere but ``/health``, the 503 given after a minute's wait
told clients to come back in one second, latency was a gauge with ``quantile="p95"`` in
milliseconds, and a query parameter on predict (``?top_k=5``) was dropped without a word.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import edgerun
import edgerun.api
from edgerun.config import ApiConfig
from edgerun.errors import QUOTE_MAX
from edgerun.isolation import IsolatedBackend, load_isolated
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES
from tests.test_api_fixes_20 import _serving

TOKEN = "a-long-enough-test-token"
PREDICT = "/v1/models/digits/predict"
IMAGE = (SAMPLES / "digit_3.png").read_bytes()
GETS = ("/", "/health", "/ready", "/v1/models", "/v1/status", "/metrics", "/docs", "/openapi.json")


@pytest.fixture(scope="module")
def slots() -> dict[str, ModelSlot]:
    return {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}


def _call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: status, headers (names in lower case) and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# --- 1. Authorization: the scheme, one or more spaces, the token -----------------------------------


def test_a_bearer_token_after_several_spaces_opens_the_api_and_a_tab_does_not(slots: dict[str, ModelSlot]) -> None:
    """RFC 9110 11.4: ``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``."""
    with _serving(slots, ApiConfig(bind="0.0.0.0", token=TOKEN)) as port:
        for header in (f"Bearer {TOKEN}", f"Bearer  {TOKEN}", f"bearer    {TOKEN}"):
            auth = {"authorization": header}
            assert _call(port, "GET", "/v1/models", headers=auth)[0] == 200, header
            assert _call(port, "POST", PREDICT, IMAGE, auth)[0] == 200, header
        for header in (f"Bearer\t{TOKEN}", f"Bearer \t{TOKEN}", f"Bearer{TOKEN}", "Bearer  ", f"Bearer  {TOKEN}x"):
            status, _, body = _call(port, "GET", "/v1/models", headers={"authorization": header})
            assert status == 401 and b"digits" not in body, header


# --- 2. HEAD wherever GET -------------------------------------------------------------------------


def test_head_answers_every_get_route_with_its_status_and_headers_and_no_body(slots: dict[str, ModelSlot]) -> None:
    with _serving(slots, ApiConfig()) as port:
        for path in GETS:
            status, headers, _ = _call(port, "GET", path)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("HEAD", path)
                head = conn.getresponse()
                assert head.read() == b""
                same = {k.lower(): v for k, v in head.getheaders()}
                # a body sent after all would be read here as the next response's status line
                conn.request("GET", "/health")
                after = conn.getresponse()
                assert (after.status, json.loads(after.read())) == (200, {"status": "ok"}), path
            finally:
                conn.close()
            assert head.status == status == 200, path
            drop = {"date"}
            assert {k: v for k, v in same.items() if k not in drop} == {
                k: v for k, v in headers.items() if k not in drop
            }, path


def test_head_needs_the_token_where_get_does_and_is_405_where_there_is_no_get(slots: dict[str, ModelSlot]) -> None:
    with _serving(slots, ApiConfig(bind="0.0.0.0", token=TOKEN)) as port:
        for path in ("/v1/status", "/v1/models", "/metrics", "/ready"):
            status, headers, body = _call(port, "HEAD", path)
            assert (status, headers["www-authenticate"], body) == (401, "Bearer", b""), path
            assert _call(port, "HEAD", path, headers={"authorization": f"Bearer {TOKEN}"})[0] == 200, path
        for path in ("/health", "/", "/docs", "/openapi.json"):  # public, as their GET
            assert _call(port, "HEAD", path)[0] == 200, path
        status, headers, body = _call(port, "HEAD", PREDICT, headers={"authorization": f"Bearer {TOKEN}"})
        assert (status, headers["allow"], body) == (405, "POST", b"")
        assert _call(port, "HEAD", "/nothing-here", headers={"authorization": f"Bearer {TOKEN}"})[0] == 404


# --- 3. Retry-After on the 503 of a request that waited PREDICT_WAIT_S -----------------------------


def test_a_request_that_waited_for_a_stuck_model_is_told_to_retry_after_5_s_not_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every request queued behind one stuck call is answered in the same second: ``Retry-After: 1``
    sent them all back a second later, into the queue that had just failed them."""
    monkeypatch.setattr(edgerun.api, "PREDICT_WAIT_S", 1.0)  # the minute's wait, shortened
    model = load_isolated(DIGITS / "digits_int8.onnx", delegates=["cpu"])
    slot = ModelSlot(model)
    try:
        with _serving({"digits": slot}, ApiConfig()) as port:
            assert _call(port, "POST", PREDICT, IMAGE)[0] == 200
            backend = model.backend
            assert isinstance(backend, IsolatedBackend)
            worker = backend.process
            assert worker.pid is not None
            answers: list[tuple[int, dict[str, str], bytes]] = []
            os.kill(worker.pid, signal.SIGSTOP)  # a model call stuck (a wedged accelerator, a runtime deadlock)
            try:
                threads = [
                    threading.Thread(target=lambda: answers.append(_call(port, "POST", PREDICT, IMAGE)))
                    for _ in range(3)
                ]
                for t in threads:
                    t.start()
                deadline = time.monotonic() + 20
                while not any(a[0] == 503 for a in answers) and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            for t in threads:
                t.join(timeout=60)
    finally:
        slot.retire()
    refused = [(headers, json.loads(body)) for status, headers, body in answers if status == 503]
    assert refused, answers
    for headers, answer in refused:
        assert headers["retry-after"] == str(edgerun.api.BUSY_RETRY_S) == "5"
        assert answer == {"detail": "model digits gave no answer in 1 s (busy, or a call stuck); retry shortly"}


# --- 4. Latency in /metrics as a Prometheus summary in seconds -------------------------------------


def _families(port: int) -> dict[str, Any]:
    status, headers, body = _call(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain"), headers
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_latency_is_a_summary_in_seconds_with_numeric_quantiles_count_sum_and_a_max_gauge(
    slots: dict[str, ModelSlot],
) -> None:
    metrics = Metrics()
    with _serving(slots, ApiConfig(), metrics) as port:
        status, _, body = _call(port, "POST", PREDICT, IMAGE)
        assert status == 200
        answered_ms = json.loads(body)["latency_ms"]
        families = _families(port)
    assert "edgerun_latency_ms" not in families
    summary = families["edgerun_stage_latency_seconds"]
    assert summary.type == "summary"
    where = {"model": "digits", "version": "1.0.0", "delegate": "cpu"}
    by_stage: dict[str, dict[str, float]] = {}
    for s in summary.samples:
        assert {k: v for k, v in s.labels.items() if k in where} == where
        key = s.name.removeprefix("edgerun_stage_latency_seconds") + s.labels.get("quantile", "")
        by_stage.setdefault(s.labels["stage"], {})[key] = s.value
    assert set(by_stage) == {"pre", "infer", "post", "total"}
    for stage, values in by_stage.items():
        assert set(values) == {"0.5", "0.95", "0.99", "_count", "_sum"}, stage
        assert values["_count"] == 1 and values["0.5"] == values["0.99"] > 0, stage
    totals = metrics.totals()["digits@1.0.0"]["stages_ms"]["total"]
    assert by_stage["total"]["0.5"] == pytest.approx(totals["p50"] / 1000)
    assert by_stage["total"]["_sum"] == pytest.approx(answered_ms / 1000, rel=1e-3)  # seconds, not ms
    maximum = families["edgerun_stage_latency_max_seconds"]
    assert maximum.type == "gauge"
    assert {s.labels["stage"]: s.value for s in maximum.samples}["total"] == pytest.approx(totals["max"] / 1000)


def test_the_latency_sum_is_exact_and_never_goes_down_as_inferences_are_added(slots: dict[str, ModelSlot]) -> None:
    """A sum worked out as the rounded mean (0.1 us) times the count fell by 1 ms here: Prometheus
    reads a summary's ``_sum`` falling as a counter reset, and ``rate()`` shows a spike."""
    metrics = Metrics()
    stages = {"pre": 1.00006, "infer": 1.00006, "post": 1.00006, "total": 1.00006}
    for _ in range(20_000):
        metrics.record("digits", "1.0.0", "cpu", stages)
    with _serving(slots, ApiConfig(), metrics) as port:
        before = _stage_sample(_families(port), "total", "_sum")
        metrics.record("digits", "1.0.0", "cpu", dict.fromkeys(stages, 0.0))  # a much faster one
        after = _stage_sample(_families(port), "total", "_sum")
    assert before == pytest.approx(20_000 * 1.00006 / 1000, rel=1e-12)
    assert after >= before


def _stage_sample(families: dict[str, Any], stage: str, suffix: str) -> float:
    (value,) = (
        s.value
        for s in families["edgerun_stage_latency_seconds"].samples
        if s.name.endswith(suffix) and s.labels["stage"] == stage
    )
    return float(value)


# --- 5. Query parameters: refused on predict, which takes none; ignored on a GET -------------------


def test_a_query_parameter_on_predict_is_a_422_naming_it_and_a_get_ignores_one(slots: dict[str, ModelSlot]) -> None:
    metrics = Metrics()
    with _serving(slots, ApiConfig(), metrics) as port:
        status, _, body = _call(port, "POST", PREDICT + "?top_k=5", IMAGE)
        assert (status, json.loads(body)) == (
            422,
            {"detail": "unknown query parameter 'top_k': predict takes no query parameters, only the body"},
        )
        status, _, body = _call(port, "POST", PREDICT + "?top_k=5&threshold&top_k=2", IMAGE)
        assert (status, json.loads(body)["detail"]) == (
            422,
            "unknown query parameters 'top_k', 'threshold': predict takes no query parameters, only the body",
        )
        status, _, body = _call(port, "POST", PREDICT + "?" + "x" * 60_000, IMAGE)  # cut, as a long model name
        detail = json.loads(body)["detail"]
        assert status == 422 and "..." in detail and len(detail) < QUOTE_MAX + 100, detail
        assert _call(port, "POST", PREDICT + "?", IMAGE)[0] == 200  # nothing given
        for path in ("/metrics?name[]=edgerun_inferences", "/v1/status?_=1700000000", "/v1/models?x=1"):
            assert _call(port, "GET", path)[0] == 200, path  # scrapers and pollers add their own
    assert metrics.totals()["digits@1.0.0"]["errors"] == 0  # a refused request is not the model's error


def test_a_query_parameter_after_a_bad_token_is_still_a_401(slots: dict[str, ModelSlot]) -> None:
    with _serving(slots, ApiConfig(bind="0.0.0.0", token=TOKEN)) as port:
        status, _, body = _call(port, "POST", PREDICT + "?top_k=5", IMAGE)
        assert status == 401 and b"top_k" not in body
