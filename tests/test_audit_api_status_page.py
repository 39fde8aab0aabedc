"""Audit of the status page in a real headless Chromium against a real daemon with a token."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLES, free_port, npy_bytes, start_daemon
from tests.test_status_page import CHROMIUM, render
from tests.test_sync import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

TOKEN = "page-token-with<odd>chars"  # visible ASCII; `<` and `>` are percent-encoded in a URL's hash
REQUESTS = 5000  # more than the 4,096 latency samples a model keeps


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ready", headers={"authorization": f"Bearer {TOKEN}"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def test_the_page_says_a_poll_was_refused_and_counts_every_inference(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {ROOT}/models/digits/digits_int8.onnx\n"
        f"api:\n  port: {port}\n  token: '{TOKEN}'\nstate_dir: {tmp_path}/state\n"
    )
    proc = start_daemon(config)
    try:
        wait_until(lambda: _ready(port), 60, "the daemon")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # one kept-alive connection
        body = npy_bytes(np.load(SAMPLES / "digit_7.npy"))
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/octet-stream"}
        for _ in range(REQUESTS):
            conn.request("POST", "/v1/models/digits/predict", body, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()

        refused = render(f"http://127.0.0.1:{port}/", tmp_path / "profile1", 3000)
        error = re.search(r'<div id="error" class="bad">([^<]*)</div>', refused)
        assert error is not None and "HTTP 401" in error.group(1), refused[:3000]
        assert 'id="mqtt">-<' in refused and 'id="accelerators">-<' in refused  # nothing made up from a 401

        shown = render(f"http://127.0.0.1:{port}/#token={TOKEN}", tmp_path / "profile2", 5000)
        assert re.search(r'<div id="error" class="bad"></div>', shown), shown[:3000]
        row = re.search(r"<tr><td>digits</td><td>1\.0\.0</td><td>[a-z]+</td><td>(\d+)</td>", shown)
        assert row is not None, shown[:3000]
        assert int(row.group(1)) == REQUESTS  # the real count, not the 4,096 samples kept
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
