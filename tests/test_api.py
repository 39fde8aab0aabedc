"""The HTTP API in-process (FastAPI's test client over the real app and real models)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient

import edgerun
from edgerun.api import Batcher, create_app
from edgerun.config import ApiConfig
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES, npy_bytes

TOKEN = "a-long-enough-test-token"


@pytest.fixture(scope="module")
def slots() -> dict[str, ModelSlot]:
    return {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}


@pytest.fixture
def client(slots: dict[str, ModelSlot]) -> Iterator[TestClient]:
    app = create_app(slots, Metrics(), ApiConfig(max_request_mb=0.01, batch_max_size=4, batch_max_wait_ms=5))
    with TestClient(app) as c:
        yield c


def test_predict_takes_image_bytes_npy_and_json_and_answers_like_predict_json(client: TestClient) -> None:
    for body, kind in (
        ((SAMPLES / "digit_3.png").read_bytes(), "image/png"),
        (npy_bytes(np.load(SAMPLES / "digit_7.npy")), "application/octet-stream"),
        (json.dumps(np.load(SAMPLES / "digit_7.npy").tolist()).encode(), "application/json"),
    ):
        r = client.post("/v1/models/digits/predict", content=body, headers={"content-type": kind})
        assert r.status_code == 200, r.text
        record = r.json()
        assert set(record) == {"input", "model", "version", "delegate", "output", "latency_ms"}
        assert record["output"][0]["label"] in {"3", "7"}


@pytest.mark.parametrize(
    ("path", "body", "kind", "status", "message"),
    [
        ("/v1/models/nope/predict", b"x", "image/png", 404, "no model named 'nope'"),
        ("/v1/models/digits/predict", b"not an image", "image/png", 422, "not a decodable image"),
        ("/v1/models/digits/predict", b"[1, 2, 3]", "application/json", 422, "does not fit"),
        ("/v1/models/digits/predict", b"[1, [2]]", "application/json", 422, "not a"),
        (  # once [1.0, 1.0, 0.0, 2.0]: strings and booleans cast to numbers
            "/v1/models/digits/predict",
            b'["1", true, false, 2]',
            "application/json",
            422,
            "body is not a rectangular JSON array of numbers",
        ),
        ("/v1/models/digits/predict", b"", "image/png", 422, "empty body"),
        ("/v1/models/digits/predict", b"x" * 20000, "image/png", 413, "over the"),
        (  # once cast to float32 as it was: infinities into the model, an answer out
            "/v1/models/digits/predict",
            npy_bytes(np.full((8, 8, 1), 1e300)),
            "application/octet-stream",
            422,
            "request: array has values beyond float32's range",
        ),
    ],
)
def test_bad_requests_get_a_4xx_with_one_clear_message(
    client: TestClient, path: str, body: bytes, kind: str, status: int, message: str
) -> None:
    r = client.post(path, content=body, headers={"content-type": kind})
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_requests_refused_as_unusable_are_not_counted_as_the_models_errors_on_either_path(
    slots: dict[str, ModelSlot],
) -> None:
    """A 422 is the client's: once counted, 25 bad requests during a probation rolled a good update back."""
    metrics = Metrics()
    with TestClient(create_app(slots, metrics, ApiConfig())) as c:
        as_json = {"content-type": "application/json"}
        assert c.post("/v1/models/digits/predict", content=b"[1, 2, 3]", headers=as_json).status_code == 422  # loop
        assert c.post("/v1/models/digits/predict", content=b"not an image").status_code == 422  # a pool thread
        assert c.post("/v1/models/nope/predict", content=b"[1]").status_code == 404  # no model: not its error
        assert (
            c.post("/v1/models/digits/predict", content=npy_bytes(np.load(SAMPLES / "digit_7.npy"))).status_code == 200
        )
    totals = metrics.totals()["digits@1.0.0"]
    assert (totals["errors"], totals["count"]) == (0, 1)


def test_models_health_ready_and_prometheus_metrics(client: TestClient) -> None:
    client.post("/v1/models/digits/predict", content=(SAMPLES / "digit_1.png").read_bytes())
    models = client.get("/v1/models").json()
    assert models["digits"]["version"] == "1.0.0" and models["digits"]["card"]["labels"][0] == "0"
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    text = client.get("/metrics").text
    assert 'edgerun_inferences_total{delegate="cpu",model="digits",version="1.0.0"} 1.0' in text
    assert 'stage="infer"' in text
    assert client.get("/openapi.json").json()["info"]["title"] == "edgerun"


def test_a_token_is_required_and_nothing_leaks_without_it(slots: dict[str, ModelSlot]) -> None:
    app = create_app(slots, Metrics(), ApiConfig(bind="0.0.0.0", token=TOKEN))
    with TestClient(app) as c:
        for headers in ({}, {"authorization": "Bearer wrong-token-of-some-length"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and "digits" not in r.text
            assert c.post("/v1/models/digits/predict", content=b"x", headers=headers).status_code == 401
        assert c.get("/health").status_code == 200
        good = {"authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/models", headers=good).status_code == 200


def test_concurrent_requests_to_a_dynamic_batch_model_are_batched_and_correct(slots: dict[str, ModelSlot]) -> None:
    model = slots["digits"].primary
    batcher = Batcher(max_size=8, max_wait_s=0.05)
    tensors = [model.prepare(SAMPLES / f"digit_{d}.png") for d in range(8)]

    def burst() -> int:
        """Eight threads submit at once; each answer checked; the largest call's batch size."""
        futures: list = [None] * 8
        start = threading.Barrier(8)

        def send(i: int) -> None:
            start.wait()
            futures[i] = batcher.submit(model, tensors[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(timeout=10) for f in futures]
        for digit, (outputs, row, _) in enumerate(results):
            assert int(np.argmax(outputs[0][row])) == digit
        return max(outputs[0].shape[0] for outputs, _, _ in results)

    # A lone request never waits: where the scheduler runs each thread's submit after the previous
    # answer (4 test workers on 2 cores), a burst gives calls of one. Some burst of 20 forms a batch.
    sizes = []
    for _ in range(20):
        sizes.append(burst())
        if sizes[-1] > 1:
            break
    batcher.close()
    assert sizes[-1] > 1, sizes  # at least one real batch was formed


def test_concurrent_array_requests_share_calls_on_the_event_loop_and_each_gets_its_own_answer(
    slots: dict[str, ModelSlot],
) -> None:
    model = slots["digits"].primary
    assert model.run_ms is not None and model.run_ms < 0.5  # cheap enough to run on the loop
    bodies = [npy_bytes(model.prepare(SAMPLES / f"digit_{d}.png")) for d in range(10)] * 2
    app = create_app(slots, Metrics(), ApiConfig(batch_max_size=8))

    async def burst() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://edgerun") as c:
            return await asyncio.gather(*(c.post("/v1/models/digits/predict", content=b) for b in bodies))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 20
    assert [r.json()["output"][0]["label"] for r in answers] == [str(d) for d in range(10)] * 2
    assert 1 < app.state.predictor.largest_batch <= 8  # batches were formed, none over the limit


def test_too_many_requests_in_progress_get_429(slots: dict[str, ModelSlot]) -> None:
    app = create_app(slots, Metrics(), ApiConfig(max_concurrency=1, batch_max_size=1))
    body = (SAMPLES / "digit_2.png").read_bytes()
    codes: list[int] = []
    with TestClient(app) as c:

        def hit() -> None:
            for _ in range(20):
                codes.append(c.post("/v1/models/digits/predict", content=body).status_code)

        threads = [threading.Thread(target=hit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(codes) == {200, 429}  # some served, the rest refused while one was in progress


def test_the_bearer_scheme_is_accepted_in_any_case_and_the_token_only_exactly(slots: dict[str, ModelSlot]) -> None:
    app = create_app(slots, Metrics(), ApiConfig(bind="0.0.0.0", token=TOKEN))
    with TestClient(app) as c:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):  # RFC 7235: the auth-scheme is case-insensitive
            headers = {"authorization": f"{scheme} {TOKEN}"}
            assert c.get("/v1/models", headers=headers).status_code == 200, scheme
            body = (SAMPLES / "digit_4.png").read_bytes()
            assert c.post("/v1/models/digits/predict", content=body, headers=headers).status_code == 200, scheme
        wrong = (f"Basic {TOKEN}", f"Bearer {TOKEN.upper()}", f"Bearer{TOKEN}", "Bearer", f"Bearer\t{TOKEN}", TOKEN)
        for header in (*wrong, f"bearer {TOKEN}x", f"BEARER {TOKEN} "):
            assert c.get("/v1/models", headers={"authorization": header}).status_code == 401, header
