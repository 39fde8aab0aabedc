"""The local HTTP API (FastAPI): predict, models, health, readiness and Prometheus metrics.

Bound to 127.0.0.1 by default; the config refuses any other address without a
bearer token. FastAPI reads the endpoints' annotations at run time, so its
types are imported at module level here. Every error is one clear message
(``{"detail": ...}``) with nothing about the models for a caller without the token: a
4xx for a request at fault, a 500 where the runtime fails on a valid input, and a 503
with ``Retry-After`` where a batched request gets no answer within ``PREDICT_WAIT_S``
(a model call stuck, more requests queued than the model serves) or an isolated model
cools down after crashing on every delegate (the seconds left); the API goes on. A 503
without it where an isolated model's call fails once the daemon's stop began. ``HEAD`` is
answered wherever ``GET`` is, as that ``GET`` without its body (``_Guard``).

A predict body must keep arriving: a pause of over ``api.body_timeout_s`` between its pieces, or
the whole of it taking longer than twice that plus one second per ``BODY_MIN_RATE`` bytes received,
is a 408 and the connection is closed; a stalled upload never holds one of the ``max_concurrency``
places for long. Decoding a body over ``DECODE_ON_LOOP_BYTES`` (JSON, .npy) and the heavier
handlers (``/v1/status``, ``/metrics``) run in the thread pool, never on the event loop.

Predict is the hot path and is answered as plain ASGI by ``_Predictor``, in
front of FastAPI's routing (the route stays declared, for the OpenAPI document,
and answers through the same ``_Predictor`` if ever reached). An array request
to a model whose requests take well under a millisecond runs on the event loop
itself: any hand-off to a thread costs more than such a model. Other requests
run in the thread pool, and concurrent ones to a model whose batch dimension is
dynamic are grouped into batches (``batch_max_size`` within
``batch_max_wait_ms``) by one batching thread per model, which ends when the
model's name is removed (``ModelSlot.retire``).

A request holds the model it runs (``ModelSlot.hold``) from preparing its input
to its answer, so a model swapped out meanwhile stops its worker only after it;
nothing here keeps a model in use once its request is answered.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import queue
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from edgerun.config import ApiConfig
from edgerun.errors import EdgerunError, InputError, quoted
from edgerun.inputs import NPY_ERRORS, NPY_MAGIC, json_array, load_npy, npy_reason
from edgerun.isolation import IsolatedBackend
from edgerun.model import Model
from edgerun.ota.slot import ModelSlot
from edgerun.sinks.base import result_record
from edgerun.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["BODY_MIN_RATE", "BUSY_RETRY_S", "DECODE_ON_LOOP_BYTES", "PREDICT_WAIT_S", "Batcher", "create_app"]

#: Seconds a request handed to a model's batching thread waits for its answer (its turn in the
#: queue and the call itself); one that waits longer is answered 503 (its input left out if not yet run).
PREDICT_WAIT_S = 60.0

#: The ``Retry-After`` (seconds) of that 503. Not 1: the requests queued behind one stuck call are given
#: up within the same second, and ``Retry-After: 1`` sent them all back together a second later, into the
#: queue that had just failed them. A model a minute behind does not catch up in a second, and an isolated
#: worker whose call hangs is killed and restarted (or moved to its next delegate), which takes seconds.
BUSY_RETRY_S = 5

#: Bytes per second a predict body must average once its allowance (twice ``api.body_timeout_s``)
#: is spent: its deadline moves one second later for each 8 KiB received. A client on a poor link
#: (50 KB/s: a 1 MB image in 20 s) is never cut; one trickling a byte at a time is, after 20 s.
BODY_MIN_RATE = 8 * 1024

#: A body up to this size is decoded on the event loop (a JSON array this long parses in ~0.15 ms,
#: about what a hand-off to a thread costs); a larger one in the thread pool, where an 8 MB JSON
#: array's ~0.3 s no longer stalls every other request, ``/health`` included.
DECODE_ON_LOOP_BYTES = 8 * 1024


class Batcher:
    """Groups concurrent requests to one model into batch calls."""

    def __init__(self, max_size: int, max_wait_s: float) -> None:
        self._queue: queue.Queue[tuple[Model, np.ndarray, Future[Any]] | None] = queue.Queue()
        self._max_size, self._max_wait = max_size, max_wait_s
        self._count_lock = threading.Lock()
        self.pending = 0  # submitted and not answered: the requests that could share a call
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="api-batcher", daemon=True)
        self._thread.start()

    def submit(self, model: Model, tensor: np.ndarray) -> Future[Any]:
        """Queue one batch-of-one tensor; the future gives ``(outputs, row, infer_ms)``. After ``close``
        the tensor is run at once, in the caller's thread: the future comes back answered."""
        future: Future[Any] = Future()
        with self._count_lock:  # queued before close()'s end marker, or not at all
            closed = self._closed
            if not closed:
                self.pending += 1
                future.add_done_callback(self._done)
                self._queue.put((model, tensor, future))
        if closed:
            _run_group(model, [(tensor, future)])
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._count_lock:
            self.pending -= 1

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            for model, group in _by_model(batch):
                _run_group(model, group)
            del batch, model, group  # waiting for the next request, the thread holds no model

    def _next_batch(self) -> list[tuple[Model, np.ndarray, Future[Any]]] | None:
        """The requests for the next calls, or None once closed and drained."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self._max_wait
        # Wait only for requests already in flight: a lone request never waits.
        while len(batch) < min(self._max_size, self.pending):
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.0, remaining)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def close(self) -> None:
        """Stop the batching thread after what is queued; later submissions run in their caller's thread."""
        with self._count_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)


def _by_model(items: Sequence[tuple[Model, np.ndarray, Any]]) -> Iterator[tuple[Model, list[tuple[np.ndarray, Any]]]]:
    """The (tensor, future) pairs of each model version and tensor shape, in arrival order: one call never mixes
    two models, nor tensors that do not stack (a model whose dimensions past the batch are dynamic too)."""
    for model, shape in {(id(m), t.shape): (m, t.shape) for m, t, _ in items}.values():
        yield model, [(t, f) for m, t, f in items if m is model and t.shape == shape]


def _run_group(model: Model, group: Sequence[tuple[np.ndarray, Any]]) -> None:
    """One call for a group of batch-of-one tensors; each future gets ``(outputs, row, infer_ms)``.

    Works with thread futures and asyncio futures alike (``set_result``/``set_exception``). A future
    already done was given up (a client gone, a request that stopped waiting): its input is not run.
    """
    group = [(t, f) for t, f in group if not f.done()]
    if not group:
        return
    t0 = time.perf_counter()
    try:
        outputs = model.run(np.concatenate([t for t, _ in group]) if len(group) > 1 else group[0][0])
    except BaseException as exc:
        for _, f in group:
            _settle(f, exc, error=True)
        return
    share = (time.perf_counter() - t0) * 1e3 / len(group)
    for row, (_, f) in enumerate(group):
        _settle(f, (outputs, row, share))


def _settle(future: Any, value: Any, *, error: bool = False) -> None:
    """Give ``future`` its result (or exception) unless it was given up meanwhile: a request that
    stopped waiting cancels its thread future from another thread, between any check and the set."""
    try:
        if error:
            future.set_exception(value)
        else:
            future.set_result(value)
    except (InvalidStateError, asyncio.InvalidStateError):
        pass


#: What predict is sent instead of a body it takes (a form, ``curl -F``/``-d`` without ``-H``): a 415.
_TAKEN = (
    "send image bytes or a .npy as the body (curl --data-binary @FILE), "
    "a JSON array with content-type: application/json"
)


def _decode_body(body: bytes, content_type: str) -> Any:
    """Request body -> what ``Model.prepare`` takes: image bytes, a .npy array, or a JSON array.

    ``_Refused`` 415 for a multipart form (``curl -F``) and for a JSON array sent as another type
    (``curl -d``): taken as image bytes, each was "not a decodable image", which misled. Image bytes
    under ``application/x-www-form-urlencoded`` are taken: ``curl --data-binary @FILE`` and Python's
    ``urllib`` send that type unless told another.
    """
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise InputError("empty body")
    if body.startswith(NPY_MAGIC):
        return _load_npy(body)
    if kind == "application/json":
        try:
            return json_array(body)
        except ValueError as exc:
            raise InputError(f"body is {exc}") from None
    if kind.startswith("multipart/"):
        raise _Refused(415, f"a body of type {quoted(kind)} is not taken: {_TAKEN}")
    if body[:1] == b"[":  # no image format starts so; a JSON array does
        raise _Refused(415, f"a JSON array sent as {quoted(kind)}: {_TAKEN}")
    return body  # image bytes, decoded (and checked) by the model's preprocessing


def _parsed(head: bytes, content_type: str) -> bool:
    """Whether ``_decode_body`` parses a body that starts with ``head`` (a .npy or JSON array), rather than
    handing its bytes on (an image)."""
    return head.startswith(NPY_MAGIC) or content_type.split(";")[0].strip().lower() == "application/json"


def _decode_parts(parts: list[bytes], content_type: str) -> Any:
    """``_decode_body`` of a body received in ``parts``, joined once (a body sent in many small pieces
    is not copied per piece), here: in the thread pool for a large body, the copy too."""
    return _decode_body(parts[0] if len(parts) == 1 else b"".join(parts), content_type)


def _load_npy(body: bytes) -> np.ndarray:
    """A .npy body as an array, its header checked against the bytes that follow it first
    (``load_npy``: a hundred bytes declaring a terabyte were a ``MemoryError``, a 500)."""
    import io

    try:
        return load_npy(io.BytesIO(body), len(body))
    except NPY_ERRORS as exc:
        raise InputError(f"body is not a plain numeric .npy array: {npy_reason(exc)}") from None


_PREDICT = re.compile(r"^/v1/models/([^/]+)/predict$")
_JSON = (b"content-type", b"application/json")


async def _send_json(send: Any, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _dumps(data: Any) -> bytes:
    """``data`` as JSON; a NaN or infinite number (a float model's output overflowing) as ``null``, as
    the JSONL sink and the outbox write it: ``NaN`` is not JSON, and strict readers refused the answer."""
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        from edgerun.sinks.text import nan_as_null

        return json.dumps(nan_as_null(data), separators=(",", ":")).encode()


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _Refused(Exception):
    def __init__(self, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class _Deadline:
    """Cancels the current task at a loop time that can be moved: ``asyncio.timeout`` is Python 3.11+.

    The task is cancelled only from a timer callback, so only while it waits (for a body piece):
    the ``CancelledError`` always lands in the code that set the deadline, which checks ``expired``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        self._loop, self._task, self.expired = loop, task, False
        self._timer = loop.call_at(when, self._expire)

    def move(self, when: float) -> None:
        self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)

    def stop(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def forget_cancel(self) -> None:
        """Once its ``CancelledError`` is handled: the task is no longer being cancelled (3.11+ counts)."""
        if sys.version_info >= (3, 11):
            self._task.uncancel()


class _Predictor:
    """``POST /v1/models/{name}/predict``: one input (image bytes, .npy, JSON array) in, one record out."""

    #: A model whose warm-up call took less than this answers array requests on the event
    #: loop: handing a request to a thread and back costs ~50-100 us, more than such a model.
    #: Never a model in an isolated worker: a crashed worker's restart would stall the loop.
    INLINE_MS = 0.5

    def __init__(self, slots: dict[str, ModelSlot], metrics: Metrics, config: ApiConfig) -> None:
        self.slots, self.metrics, self.config = slots, metrics, config
        self.max_bytes = int(config.max_request_mb * 1024 * 1024)
        self.batchers: dict[str, Batcher] = {}
        self._batchers_lock = threading.Lock()
        self._threaded = 0  # requests in the thread pool now: with one alone, no batching hand-off
        self._gathered: list[tuple[Model, np.ndarray, asyncio.Future[Any]]] = []  # for the next loop turn
        self.largest_batch = 0  # the most requests one call on the event loop has carried

    async def asgi(self, name: str, scope: Any, receive: Any, send: Any) -> None:
        """Answer a request straight from the ASGI scope."""
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
        declared = headers.get(b"content-length", b"").decode("latin-1") or None
        try:
            status, body, extra = await self.answer(
                name, content_type, declared, self._chunks(receive), scope["query_string"]
            )
        except _ClientGone:
            return
        await _send_json(send, status, body, *extra)

    @staticmethod
    async def _chunks(receive: Any) -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    async def answer(
        self, name: str, content_type: str, declared: str | None, chunks: AsyncIterator[bytes], query: bytes
    ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        """(status, JSON body, extra headers) for one request; every refusal is ``{"detail": "<one line>"}``.
        ``query`` is the URL's query string, percent-encoded."""
        try:
            slot = self.slots.get(name)
            if slot is None:
                raise _Refused(404, f"no model named '{quoted(name)}'")
            if query:
                _refuse_query(query)
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise _Refused(413, f"request of {declared} bytes is over the {self.max_bytes}-byte limit")
            parts = await self._receive(chunks)
            # parsing a large JSON or .npy body would hold up every other request: in the thread pool;
            # image bytes are only joined here (decoded by the model's preprocessing, off the loop anyway)
            parsed = _parsed(parts[0] if parts else b"", content_type)
            small = not parsed or sum(map(len, parts)) <= DECODE_ON_LOOP_BYTES
            if small:
                data = _decode_parts(parts, content_type)
            else:
                data = await run_in_threadpool(_decode_parts, parts, content_type)
            del parts
            # once per request: an A/B split never mixes two models; held until answered, so a swap
            # meanwhile stops the model's worker only after this request
            model = slot.hold()
            try:
                if small and isinstance(data, np.ndarray) and self._cheap(model):
                    record = await self._infer_on_loop(model, data)
                else:
                    self._threaded += 1
                    try:
                        record = await run_in_threadpool(self._infer, slot, model, data)
                    finally:
                        self._threaded -= 1
            except InputError:  # the request's fault (422), not the model's: never counted against an update
                raise
            except EdgerunError as exc:
                backend = model.backend
                if isinstance(backend, IsolatedBackend) and backend.stopping:  # the daemon's stop: not the model's
                    raise _Refused(503, f"model {name}: the daemon is stopping; {exc}") from None
                self.metrics.error(model.name, model.version, model.delegate)
                left = backend.cooling_down_s if isinstance(backend, IsolatedBackend) else 0.0
                if left > 0:  # crashed on every delegate (counted: an update that does so is rolled back)
                    raise _Refused(503, str(exc), (b"retry-after", str(max(1, math.ceil(left))).encode())) from None
                raise
            finally:
                model.let_go()
            return 200, _dumps(record), ()
        except _Refused as exc:
            return exc.status, _dumps({"detail": exc.detail}), exc.headers
        except InputError as exc:
            return 422, _dumps({"detail": str(exc)}), ()
        except EdgerunError as exc:
            return 500, _dumps({"detail": str(exc)}), ()

    async def _receive(self, chunks: AsyncIterator[bytes]) -> list[bytes]:
        """The body's pieces; ``_Refused`` 413 past ``max_bytes``, 408 (closing the connection) where it
        pauses over ``body_timeout_s`` or falls behind ``BODY_MIN_RATE`` once its allowance is spent."""
        loop = asyncio.get_running_loop()
        pause = self.config.body_timeout_s
        allowance = loop.time() + 2 * pause  # the whole body's deadline, before any byte arrives
        parts: list[bytes] = []
        size = 0
        stalled = True  # which limit the deadline now set is: a pause, or the whole body's
        deadline = _Deadline(loop, loop.time() + pause)
        try:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > self.max_bytes:
                    raise _Refused(413, f"request is over the {self.max_bytes}-byte limit")
                idle, whole = loop.time() + pause, allowance + size / BODY_MIN_RATE
                stalled = idle <= whole
                deadline.move(min(idle, whole))
        except asyncio.CancelledError:
            if not deadline.expired:
                raise  # cancelled from outside (the server stopping): not ours to answer
            deadline.forget_cancel()
            why = (
                f"nothing for {pause:g} s"
                if stalled
                else f"{size} bytes so far, under {BODY_MIN_RATE} bytes/s beyond the first {2 * pause:g} s"
            )
            raise _Refused(408, f"request body not received in time: {why}", (b"connection", b"close")) from None
        finally:
            deadline.stop()
        return parts

    def _cheap(self, model: Model) -> bool:
        fast = model.run_ms is not None and model.run_ms < self.INLINE_MS
        return fast and not isinstance(model.backend, IsolatedBackend)

    def _infer(self, slot: ModelSlot, model: Model, data: Any) -> dict[str, Any]:
        """In a pool thread: concurrent requests go through the model's batching thread."""
        tensor, pre = self._prepare(model, data)
        batcher = self._batcher(slot) if self._threaded > 1 and model.batchable else None
        if batcher is not None:
            outputs, row, infer = self._wait(slot.name, batcher.submit(model, tensor))
        else:
            outputs, row, infer = self._run_alone(model, tensor)
        return self._record(model, outputs, row, pre, infer)

    @staticmethod
    def _wait(name: str, future: Future[Any]) -> Any:
        """The batching thread's answer, or ``_Refused(503)`` after ``PREDICT_WAIT_S``; the request
        given up is cancelled, so the batching thread leaves its input out if it has not run it yet."""
        try:
            return future.result(timeout=PREDICT_WAIT_S)
        except TimeoutError:
            future.cancel()
            log.warning(
                "API: model %s gave a request no answer in %g s (a call stuck, or too many queued)",
                name,
                PREDICT_WAIT_S,
            )
            raise _Refused(
                503,
                f"model {name} gave no answer in {PREDICT_WAIT_S:g} s (busy, or a call stuck); retry shortly",
                (b"retry-after", str(BUSY_RETRY_S).encode()),
            ) from None

    async def _infer_on_loop(self, model: Model, data: np.ndarray) -> dict[str, Any]:
        """On the event loop: requests that arrive in the same turn of the loop share one call."""
        tensor, pre = self._prepare(model, data)
        if self.config.batch_max_size > 1 and model.batchable:
            future = asyncio.get_running_loop().create_future()
            if not self._gathered:
                asyncio.get_running_loop().call_soon(self._flush)
            self._gathered.append((model, tensor, future))
            outputs, row, infer = await future
        else:
            outputs, row, infer = self._run_alone(model, tensor)
        return self._record(model, outputs, row, pre, infer)

    def _flush(self) -> None:
        gathered, self._gathered = self._gathered, []
        size = self.config.batch_max_size
        for model, group in _by_model(gathered):
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                self.largest_batch = max(self.largest_batch, len(chunk))
                _run_group(model, chunk)

    @staticmethod
    def _prepare(model: Model, data: Any) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        tensor = model.prepare(data, name="request")
        if tensor.shape[:1] != (1,):
            raise InputError(f"a request carries one input (batch of 1), got a batch of {tensor.shape[0]}")
        return tensor, (time.perf_counter() - t0) * 1e3

    @staticmethod
    def _run_alone(model: Model, tensor: np.ndarray) -> tuple[list[np.ndarray], int, float]:
        t0 = time.perf_counter()
        outputs = model.run(tensor)
        return outputs, 0, (time.perf_counter() - t0) * 1e3

    def _record(self, model: Model, outputs: list[np.ndarray], row: int, pre: float, infer: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        output = model.postprocess(outputs, row)
        post = (time.perf_counter() - t0) * 1e3
        total = pre + infer + post
        self.metrics.record(
            model.name, model.version, model.delegate, {"pre": pre, "infer": infer, "post": post, "total": total}
        )
        return result_record(model, "request", output, total)

    def _batcher(self, slot: ModelSlot) -> Batcher | None:
        """The batching thread of ``slot``'s name, started on first use; it ends when the slot is retired
        (the name removed), and a name served again later gets a new one."""
        if self.config.batch_max_size <= 1:
            return None
        name = slot.name
        with self._batchers_lock:  # two pool threads asking at once start one thread, not two
            batcher = self.batchers.get(name)
            if batcher is None:
                batcher = Batcher(self.config.batch_max_size, self.config.batch_max_wait_ms / 1000)
                self.batchers[name] = batcher
                new = True
            else:
                new = False
        if new:
            slot.when_retired(lambda: self._end_batcher(name, batcher))
        return batcher

    def _end_batcher(self, name: str, batcher: Batcher) -> None:
        """Close ``batcher`` (what it has queued is still run) and forget it, unless a newer one serves ``name``."""
        with self._batchers_lock:
            if self.batchers.get(name) is batcher:
                del self.batchers[name]
        batcher.close()


def _refuse_query(query: bytes) -> None:
    """``_Refused`` 422 naming the parameters in ``query`` (a query string), if it names any: predict
    takes none, and one a client believes it takes (``?top_k=5``) was dropped without a word."""
    from urllib.parse import parse_qsl

    names = dict.fromkeys(k for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    if names:
        plural = "s" if len(names) > 1 else ""
        given = quoted(", ".join(f"'{k}'" for k in names))
        why = "predict takes no query parameters, only the body"
        raise _Refused(422, f"unknown query parameter{plural} {given}: {why}")


def _bearer_matches(header: bytes, token: bytes) -> bool:
    """True for ``Bearer <token>`` with the scheme in any case (RFC 7235: the auth-scheme is
    case-insensitive); one or more spaces (RFC 9110 11.4: ``1*SP``, tabs not), then the token
    exactly, compared in constant time."""
    scheme, _, credentials = header.partition(b" ")
    match = hmac.compare_digest(credentials.lstrip(b" "), token)  # no copy where one space came
    return match and scheme.lower() == b"bearer"


def _bodiless(send: Any) -> Any:
    """``send`` with every piece of the body emptied: a ``HEAD`` answered as its ``GET`` (RFC 9110 9.3.2).
    uvicorn leaves it out too, knowing the method; this does not depend on the server."""

    async def send_head(message: Any) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_head


class _Guard:
    """Bearer token, concurrency limit and the predict fast path, as plain ASGI middleware.

    Starlette's ``@app.middleware("http")`` wraps every request in a second task
    and stream; that alone cost a third of the requests per second in
    benchmarks/bench_daemon.py. Plain ASGI only looks at the scope.

    ``HEAD`` is handed on as ``GET`` with the body left out, before the token is checked: every
    ``GET`` route answers it, with the status and headers of its ``GET`` and behind the same token
    (FastAPI's routes declare ``GET`` alone, and answered ``HEAD`` 405).
    """

    PUBLIC = frozenset({"/", "/health", "/docs", "/openapi.json"})  # the page holds no data itself

    def __init__(self, app: Any, token: str | None, max_concurrency: int, predictor: _Predictor) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self._max = max_concurrency
        self._predictor = predictor
        self._in_flight = 0  # one event loop: no lock needed between awaits

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "HEAD":
            scope, send = {**scope, "method": "GET"}, _bodiless(send)
        path = scope["path"]
        token = self._token
        if token is not None and path not in self.PUBLIC:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not _bearer_matches(given, token):
                detail = _dumps({"detail": "missing or wrong bearer token"})
                await _send_json(send, 401, detail, (b"www-authenticate", b"Bearer"))
                return
        predict = _PREDICT.match(path) if method == "POST" else None
        if predict is None:
            await self.app(scope, receive, send)
            return
        if self._in_flight >= self._max:
            detail = _dumps({"detail": "too many requests in progress; retry shortly"})
            await _send_json(send, 429, detail, (b"retry-after", b"1"))
            return
        self._in_flight += 1
        try:
            await self._predictor.asgi(predict.group(1), scope, receive, send)
        finally:
            self._in_flight -= 1


class Detail(BaseModel):
    """An error: one line saying what is wrong."""

    detail: str


class PredictRecord(BaseModel):
    """One result, as ``edgerun predict --json`` prints it."""

    input: str
    model: str
    version: str
    delegate: str
    output: Any
    latency_ms: float


_ERRORS = {
    401: "missing or wrong bearer token",
    404: "no model of that name",
    408: "the body stopped arriving (a pause over api.body_timeout_s, or too slow); the connection is closed",
    413: "request over the size limit",
    415: "a multipart form, or a JSON array sent as another content-type; send the body itself",
    422: "the input cannot be used (undecodable, wrong shape or type), or a query parameter was given (none is taken)",
    429: "too many requests in progress",
    500: "the runtime failed on a valid input",
    503: "the model cannot answer now: no answer in time (a call stuck, or too many requests), or an isolated model "
    "cooling down after crashing on every delegate (retry after Retry-After seconds), or the daemon stopping",
}


def create_app(
    slots: dict[str, ModelSlot],
    metrics: Metrics,
    config: ApiConfig,
    *,
    ready: Callable[[], bool] = lambda: True,
    status: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    """The FastAPI application serving ``slots``."""
    from edgerun import __version__

    predictor = _Predictor(slots, metrics, config)
    app = FastAPI(
        title="edgerun",
        version=__version__,
        description="Local inference API of an edgerun device: predict, models, health, metrics.",
        redoc_url=None,  # one documentation page (/docs), public as the document it renders
    )
    app.state.predictor = predictor
    app.add_middleware(
        _Guard, token=config.resolved_token(), max_concurrency=config.max_concurrency, predictor=predictor
    )

    @app.post(
        "/v1/models/{name}/predict",
        summary="Run one input (image bytes, .npy or a JSON array)",
        response_model=PredictRecord,
        responses={code: {"model": Detail, "description": text} for code, text in _ERRORS.items()},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                        "description": "a .npy array",
                    },
                    "application/json": {"schema": {"type": "array", "items": {}}},
                },
            }
        },
    )
    async def predict(name: str, request: Request) -> Any:
        # Reached only where the guard does not answer first (it serves every POST here).
        content_type = request.headers.get("content-type", "application/octet-stream")
        status, body, extra = await predictor.answer(
            name, content_type, request.headers.get("content-length"), request.stream(), request.scope["query_string"]
        )
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in extra}
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    @app.get("/v1/models", summary="Models served: version, format, delegate, tensors, card")
    async def models() -> Any:
        return {
            name: {**slot.primary.describe(), **({"candidate": slot.describe()["candidate"]} if slot.candidate else {})}
            for name, slot in slots.items()
        }

    @app.get("/", summary="The status page", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Any:
        from edgerun.status_page import PAGE

        return HTMLResponse(PAGE)

    @app.get("/health", summary="Alive")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/ready", summary="Every model loaded, warmed and able to answer")
    async def readiness() -> Any:
        if not ready():
            return JSONResponse({"ready": False}, status_code=503)
        # a model cooling down (its isolated worker crashed on every delegate) answers nothing now
        cooling = sorted(n for n, s in list(slots.items()) if not s.primary.available)
        if cooling:
            return JSONResponse({"ready": False, "cooling_down": cooling}, status_code=503)
        return {"ready": True, "models": {n: s.describe() for n, s in slots.items()}}

    @app.get("/v1/status", summary="The device: models, MQTT link, outbox, OTA events, inferences since start")
    def device_status() -> Any:  # a plain def: FastAPI runs it in the thread pool (a snapshot takes ms)
        inferences: dict[str, int] = {}  # exact, all versions of a model together (the window's count is capped)
        for (name, _), (count, _) in metrics.counters().items():
            inferences[name] = inferences.get(name, 0) + count
        return {**(status() if status is not None else {}), "inferences": inferences}

    @app.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
    def prometheus() -> Response:  # in the thread pool, like /v1/status
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(_Collector(metrics))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Collector:
    """Prometheus view of ``Metrics.totals()``.

    Latency is a summary per stage in seconds (``edgerun_stage_latency_seconds``: quantiles 0.5, 0.95
    and 0.99, ``_count`` and ``_sum``) with the largest in a gauge beside it. ``_sum`` is the exact
    sum (``Metrics.sums()``), not the rounded mean times the count, which could fall between two
    scrapes: Prometheus takes a sum that falls for a reset.
    """

    QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

        labels = ["model", "version", "delegate"]
        count = CounterMetricFamily("edgerun_inferences", "Inferences done", labels=labels)
        errors = CounterMetricFamily("edgerun_errors", "Inputs that failed", labels=labels)
        dropped = CounterMetricFamily("edgerun_dropped_frames", "Frames dropped by live sources", labels=labels)
        name = "edgerun_stage_latency_seconds"
        latency = SummaryMetricFamily(name, "Latency since start by stage", labels=[*labels, "stage"])
        largest = GaugeMetricFamily(
            "edgerun_stage_latency_max_seconds", "Largest latency since start by stage", labels=[*labels, "stage"]
        )
        totals = self.metrics.totals()
        sums = self.metrics.sums()  # taken after: it holds every model of ``totals``
        for t in totals.values():
            key = [t["model"], t["version"], t["delegate"]]
            count.add_metric(key, t["count"])
            errors.add_metric(key, t["errors"])
            dropped.add_metric(key, t["dropped"])
            for stage, summary in t["stages_ms"].items():
                if not summary:
                    continue
                n, sum_ms = sums[(t["model"], t["version"])][stage]
                values = dict(zip(labels, key, strict=True), stage=stage)
                for quantile, figure in self.QUANTILES:
                    latency.add_sample(name, {**values, "quantile": quantile}, summary[figure] / 1000)
                latency.add_metric([*key, stage], n, sum_ms / 1000)
                largest.add_metric([*key, stage], summary["max"] / 1000)
        yield from (count, errors, dropped, latency, largest)
