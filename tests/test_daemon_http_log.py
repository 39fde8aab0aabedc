"""A request that is not valid HTTP reaches the daemon's log in the daemon's own format.

The HTTP server answers such a request itself (a plain-text 400, before any route); its WARNING
line came out through uvicorn's own handler as ``WARNING:  Invalid HTTP request received.``, the
one line of a ``logging.format: json`` daemon that a log collector could not parse.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from tests.conftest import DIGITS, free_port, start_daemon
from tests.test_daemon import _ready
from tests.test_sync import wait_until

CONFIG = """
models:
  digits:
    path: {model}
api:
  port: {port}
state_dir: {state}
logging:
  format: json
"""

NOT_HTTP = [
    b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nno colon in this header line\r\n\r\n",
    b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_requests_that_are_not_http_are_answered_400_and_logged_as_json_lines(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "edgerun.yaml"
    config.write_text(CONFIG.format(model=DIGITS / "digits_int8.tflite", port=port, state=tmp_path / "state"))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as err:
        proc = start_daemon(config, stderr=err)
    try:
        wait_until(lambda: _ready(port), 60, "the daemon to be ready")
        for request in NOT_HTTP:
            assert raw(port, request).startswith(b"HTTP/1.1 400 "), request
        assert _ready(port)  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line is JSON
    refused = [r for r in records if r["logger"] == "uvicorn.error" and "Invalid HTTP request" in r["msg"]]
    assert len(refused) == len(NOT_HTTP), records
    assert all(r["level"] == "WARNING" for r in refused)
