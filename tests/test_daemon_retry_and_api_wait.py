"""A daemon file pipeline retried after a full disk, and a predict request whose model call is stuck."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edgerun.api
from edgerun.isolation import IsolatedBackend
from edgerun.sources import open_source
from tests.conftest import ROOT, SAMPLES, free_port
from tests.test_daemon import DIGITS_INT8, _in_process_daemon
from tests.test_sources import make_video
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow

VIBRATION = ROOT / "models" / "vibration"


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file, then free ``leave`` bytes of it (whole 4 KiB pages): room for a few records."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"x" * 4096)
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def _images(folder: Path) -> tuple[Path, str, dict[str, Any]]:
    """150 PNGs and one broken image (an error record is delivered too: never redone)."""
    images = sorted(SAMPLES.glob("*.png"))
    inputs = folder / "in"
    inputs.mkdir()
    for i in range(150):
        shutil.copy(images[i % len(images)], inputs / f"img_{i:03d}.png")
    (inputs / "img_broken.png").write_bytes(b"not an image")
    return DIGITS_INT8, str(inputs), {}


def _video(folder: Path) -> tuple[Path, str, dict[str, Any]]:
    """150 frames, then a truncated end: decoding stops before the frame count declared (an error record)."""
    video = make_video(folder / "whole.avi", frames=150)
    data = video.read_bytes()
    cut = folder / "in.avi"
    cut.write_bytes(data[: len(data) * 9 // 10])
    return DIGITS_INT8, str(cut), {}


def _sensor(folder: Path) -> tuple[Path, str, dict[str, Any]]:
    """Windows of 256 rows every 8 rows, and one bad row (an error record)."""
    rows = (VIBRATION / "samples" / "normal.csv").read_text().splitlines()
    csv = folder / "readings.csv"
    csv.write_text("\n".join([*rows[:1000], "1,2", *rows[1000:]]) + "\n")
    return VIBRATION / "vibration_int8.tflite", str(csv), {"hop": 8}


@pytest.mark.parametrize("inputs", [_images, _video, _sensor], ids=["images", "video", "sensor"])
def test_a_file_pipeline_retried_after_its_disk_filled_writes_every_input_once(
    tmp_path: Path,
    small_disk: Callable[[int], Path],
    caplog: pytest.LogCaptureFixture,
    inputs: Callable[[Path], tuple[Path, str, dict[str, Any]]],
) -> None:
    model, source, options = inputs(tmp_path)
    expected = [f.source_id for f in open_source(source, window=256, hop=options.get("hop")).frames()]
    disk = small_disk(1 << 20)
    filler = _fill(disk, 2 * 4096)  # some 25 records fit, then the card is full
    out = disk / "out.jsonl"
    healthy = tmp_path / "healthy.jsonl"  # a second sink on a disk with room: it must not get any twice either
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"m": str(model)},
        {"files": {"source": source, "model": "m", "sinks": [str(out), str(healthy)], "restart_s": 0.2, **options}},
    )
    daemon.start()
    try:
        wait_until(
            lambda: any("No space left on device; retrying in 0.2 s" in r.getMessage() for r in caplog.records),
            60,
            "the sink to fail on the full disk",
        )
        assert out.stat().st_size > 0  # it failed part way, with records already written
        filler.unlink()  # space freed: the next retry goes on
        wait_until(lambda: daemon.runners["files"].state == "finished", 60, "the pipeline to finish")
    finally:
        daemon.stop()
    for sink in (out, healthy):
        records = [json.loads(line) for line in sink.read_text().splitlines()]  # once a torn line of its own
        counts = Counter(r["input"] for r in records)
        assert counts == Counter(expected), sink  # each input exactly once, none written twice
        assert sum("error" in r for r in records) == 1


def _post(port: int, body: bytes) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` to the digits model: status, headers and the JSON answer (the text where it is not JSON)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/digits/predict", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _lower(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, _lower(exc.headers), json.loads(raw)
        except ValueError:
            return exc.code, _lower(exc.headers), raw.decode(errors="replace")


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _concurrently(port: int, body: bytes, n: int) -> tuple[list[threading.Thread], list[Any]]:
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(_post(port, body))) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, answers


def test_a_request_whose_model_call_is_stuck_gets_a_503_with_retry_after_and_the_api_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    monkeypatch.setattr(edgerun.api, "PREDICT_WAIT_S", 1.0)
    config = parse_config(
        {
            "models": {"digits": {"path": str(DIGITS_INT8)}},
            "api": {"port": free_port()},
            "isolation": "process",  # the model runs in a worker process, which is made to hang
            "state_dir": str(tmp_path / "state"),
        },
        "test",
    )
    daemon = Daemon(config)
    daemon.start()
    body = (SAMPLES / "digit_3.png").read_bytes()
    try:
        port = daemon.api_port
        assert port is not None and _post(port, body)[0] == 200
        backend = daemon.slots["digits"].primary.backend
        assert isinstance(backend, IsolatedBackend)
        worker = backend.process
        os.kill(worker.pid, signal.SIGSTOP)  # a model call stuck (a wedged accelerator, a runtime deadlock)
        try:
            threads, answers = _concurrently(port, body, 3)  # the ones that meet another in flight are batched
            deadline = time.monotonic() + 20
            while not answers and time.monotonic() < deadline:  # bounded: the stuck call answers none of them
                time.sleep(0.05)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        for t in threads:
            t.join(timeout=60)
        codes = sorted(status for status, _, _ in answers)
        assert 503 in codes, answers
        assert set(codes) <= {200, 503}, answers  # once a 500 "Internal Server Error" and a traceback
        for status, headers, answer in answers:
            if status == 503:
                assert answer == {"detail": "model digits gave no answer in 1 s (busy, or a call stuck); retry shortly"}
                assert headers["retry-after"] == "5"
        refused = [r for r in caplog.records if "gave a request no answer in 1 s" in r.getMessage()]
        assert len(refused) == codes.count(503) and all(r.levelname == "WARNING" for r in refused)
        threads, answers = _concurrently(port, body, 3)  # the model back: served, batched ones included
        for t in threads:
            t.join(timeout=60)
        assert [(status, answer["output"][0]["label"]) for status, _, answer in answers] == [(200, "3")] * 3
    finally:
        daemon.stop()
