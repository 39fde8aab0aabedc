"""The HTTP API over real HTTP on loopback (uvicorn in a thread, the real digits model).

A predict body that stops arriving gets 408 and its connection closed, freeing its place; a body
that keeps arriving, however slowly, is answered. A large body's decoding, ``/v1/status`` and
``/metrics`` run off the event loop: ``/health`` is answered while they are held.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import uvicorn

import edgerun
from edgerun.api import DECODE_ON_LOOP_BYTES, create_app
from edgerun.config import ApiConfig
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, SAMPLES, free_port

PREDICT = "/v1/models/digits/predict"
DIGIT = json.dumps(np.load(SAMPLES / "digit_7.npy").tolist()).encode()  # a JSON array the model answers


@pytest.fixture(scope="module")
def slots() -> dict[str, ModelSlot]:
    return {"digits": ModelSlot(edgerun.load(DIGITS / "digits_int8.onnx"))}


@contextmanager
def _serving(
    slots: dict[str, ModelSlot],
    config: ApiConfig,
    metrics: Metrics | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[int]:
    """The API on a free loopback port, as the daemon serves it."""
    app = create_app(slots, metrics or Metrics(), config, status=status)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, {"content-type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _start_predict(port: int, declared: int, first: bytes) -> socket.socket:
    """A raw predict request: its headers (``Content-Length: declared``) and the first piece of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    sock.sendall(head.encode() + first)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout if it never does)."""
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:  # closed with a byte of ours unread: closed all the same
            return data
        if not piece:
            return data
        data += piece


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (its Content-Length read), on a connection the server keeps open."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"closed after {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    while len(body) < int(lengths[0].split(b":")[1]):
        piece = sock.recv(65536)
        assert piece, f"closed after {data!r}"
        body += piece
    return head + b"\r\n\r\n" + body


def _refusal(raw: bytes) -> tuple[int, str]:
    """(status, detail) of a raw HTTP response whose body is ``{"detail": ...}`` on one line."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\n" not in body.strip(), body
    return int(head.split()[1]), json.loads(body)["detail"]


def test_stalled_predict_bodies_get_408_and_their_connections_closed_and_free_their_places(
    slots: dict[str, ModelSlot],
) -> None:
    """Once: every place taken by an upload that stopped, and every predict 429 for as long as it idled."""
    with _serving(slots, ApiConfig(max_concurrency=2, body_timeout_s=0.5)) as port:
        stalled = [_start_predict(port, 100, b"[1,") for _ in range(2)]
        try:
            for sock in stalled:
                status, detail = _refusal(_read_until_closed(sock))
                assert (status, detail) == (408, "request body not received in time: nothing for 0.5 s")
        finally:
            for sock in stalled:
                sock.close()
        status, body = _request(port, "POST", PREDICT, DIGIT)
        assert status == 200, body
        assert json.loads(body)["output"][0]["label"] == "7"


def test_a_slow_body_that_keeps_arriving_is_answered_and_a_trickle_is_cut_at_the_rate_limit(
    slots: dict[str, ModelSlot],
) -> None:
    """A piece every 0.25 s (under the 1 s pause) for 3 s, past twice the pause: 24 KiB there moves the
    whole body's deadline to 5 s. A byte every 0.25 s never pauses too long, yet falls behind 8 KiB/s."""
    padded = DIGIT + b" " * (24 * 1024 - len(DIGIT))  # whitespace: still the same JSON array
    pieces = [padded[i : i + 2048] for i in range(0, len(padded), 2048)]
    with _serving(slots, ApiConfig(max_concurrency=4, body_timeout_s=1.0)) as port:
        trickle = _start_predict(port, 100, b"[")
        stop = threading.Event()

        def trickling() -> None:
            while not stop.wait(0.25):
                try:
                    trickle.sendall(b"1")
                except OSError:  # closed by the server
                    return

        feeder = threading.Thread(target=trickling, daemon=True)
        feeder.start()
        slow = _start_predict(port, len(padded), pieces[0])
        try:
            for piece in pieces[1:]:
                time.sleep(0.25)
                slow.sendall(piece)
            raw = _read_response(slow)
            assert raw.startswith(b"HTTP/1.1 200"), raw
            assert json.loads(raw.partition(b"\r\n\r\n")[2])["output"][0]["label"] == "7"
            status, detail = _refusal(_read_until_closed(trickle))
            assert status == 408 and "bytes so far, under 8192 bytes/s beyond the first 2 s" in detail, detail
        finally:
            stop.set()
            feeder.join(timeout=30)
            slow.close()
            trickle.close()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Gate:
    """Holds the first call made while armed until the test opens it (at most 15 s), noting whether
    that call ran on an event loop and whether the test opened it in time."""

    def __init__(self) -> None:
        self.armed = False
        self.entered, self.opened = threading.Event(), threading.Event()
        self.on_loop: bool | None = None
        self.opened_in_time = False

    def hold(self) -> None:
        if not self.armed:
            return
        self.armed = False
        self.on_loop = _on_event_loop()
        self.entered.set()
        self.opened_in_time = self.opened.wait(15)

    def health_answered_while_held(self, port: int, start: Callable[[], Any]) -> None:
        """Arm, ``start`` (in a thread) the request that reaches the gate, get ``/health`` while it is
        held there, then let it go; ``start``'s request must still be answered 200."""
        results: list[tuple[int, bytes]] = []
        self.armed = True
        thread = threading.Thread(target=lambda: results.append(start()), daemon=True)
        thread.start()
        assert self.entered.wait(30), "the request never reached the gate"
        try:
            health = _request(port, "GET", "/health")  # on the event loop held by the gate: after 15 s
        finally:
            self.opened.set()
            thread.join(timeout=60)
        assert health == (200, b'{"status":"ok"}')
        assert results and results[0][0] == 200, results
        assert self.on_loop is False, "the work ran on the event loop"
        assert self.opened_in_time, "/health was not answered while the work was held"


class _GatedClock:
    """``Metrics``'s clock (``time.monotonic``), held once by a gate: what a snapshot asks first."""

    def __init__(self, gate: _Gate) -> None:
        self.gate = gate

    def __call__(self) -> float:
        self.gate.hold()
        return time.monotonic()


@pytest.mark.parametrize("path", ["/v1/status", "/metrics"])
def test_status_and_metrics_are_worked_out_off_the_event_loop(slots: dict[str, ModelSlot], path: str) -> None:
    """Once: a 42 ms snapshot per /v1/status poll on the loop, every predict waiting behind it."""
    gate = _Gate()
    metrics = Metrics(clock=_GatedClock(gate))
    with _serving(slots, ApiConfig(), metrics, status=lambda: {"metrics": metrics.snapshot(300.0)}) as port:
        assert _request(port, "POST", PREDICT, DIGIT)[0] == 200  # something to work out
        gate.health_answered_while_held(port, lambda: _request(port, "GET", path))


class _GatedDecoder(json.JSONDecoder):
    """The standard library's JSON decoder, held once by a gate."""

    def __init__(self, gate: _Gate) -> None:
        super().__init__()
        self.gate = gate

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        self.gate.hold()
        return super().decode(s, *args, **kwargs)


def test_a_large_json_body_is_decoded_off_the_event_loop(
    slots: dict[str, ModelSlot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once: 30 bodies of 8 MB parsed on the loop, /health answered only 2 s later."""
    gate = _Gate()
    monkeypatch.setattr(json, "_default_decoder", _GatedDecoder(gate))  # what json.loads(body) uses
    large = DIGIT + b" " * (4 * DECODE_ON_LOOP_BYTES)
    with _serving(slots, ApiConfig()) as port:
        gate.health_answered_while_held(port, lambda: _request(port, "POST", PREDICT, large))
