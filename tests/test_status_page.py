"""The status page in a real headless Chromium against a real daemon: it loads, shows real figures, updates."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLES, free_port, start_daemon
from tests.test_daemon import _ready, http
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, profile: Path, budget_ms: int) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (its timers and fetches have run)."""
    assert CHROMIUM, "chromium is not installed (apt-get install -y chromium)"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_status_page_shows_the_real_figures_and_updates(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"device:\n  id: page-dev\nmodels:\n  digits:\n    path: {ROOT}/models/digits/digits_int8.tflite\n"
        f"api:\n  port: {port}\nstate_dir: {tmp_path}/state\n"
    )
    proc = start_daemon(config)
    try:
        wait_until(lambda: _ready(port), 60, "the daemon")
        for _ in range(7):
            assert http(port, "/v1/models/digits/predict", (SAMPLES / "digit_4.png").read_bytes())[0] == 200
        first = render(f"http://127.0.0.1:{port}/", tmp_path / "profile1", 3000)
        assert "page-dev" in first
        row = re.search(r"<tr><td>digits</td><td>1\.0\.0</td><td>xnnpack</td><td>(\d+)</td>", first)
        assert row is not None, first[:3000]
        assert int(row.group(1)) == 7  # the real count of the predictions above
        assert "MQTT: <span" in first and ">off<" in first
        updates_first = int(re.search(r'id="updates">(\d+)<', first).group(1))  # type: ignore[union-attr]
        for _ in range(5):
            http(port, "/v1/models/digits/predict", (SAMPLES / "digit_4.png").read_bytes())
        time.sleep(0.5)
        second = render(f"http://127.0.0.1:{port}/", tmp_path / "profile2", 7000)
        updates_second = int(re.search(r'id="updates">(\d+)<', second).group(1))  # type: ignore[union-attr]
        assert updates_second > updates_first >= 1  # it polls and redraws
        assert re.search(r"<tr><td>digits</td><td>1\.0\.0</td><td>xnnpack</td><td>12</td>", second)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
