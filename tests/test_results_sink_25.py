"""The results sink loses no result to a batch the outbox refused, and a rate below 1 lets the first result through.

A daemon's retried pipeline counted the batch a full disk refused as given to the results sink, so the
retry never offered it again while the new sink left it behind: 63 of 360 results never reached the outbox,
and the pipeline said it finished. At ``--results-rate 0.5`` the bucket started half full, so nothing
passed for the first 2 s: ``predict`` of two inputs queued none.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgerun.sync.outbox import Outbox
from tests.conftest import DIGITS, SAMPLES, Broker, fill_disk, free_port, run_cli
from tests.test_daemon import http
from tests.test_sync import wait_until

IMAGES = 360


def _images(folder: Path) -> list[str]:
    """``IMAGES`` digit images, ``000.png`` on, made in a folder beside ``folder`` and renamed to it at once (a
    folder source waited for sees all of them or none); their paths, in the order the source reads them."""
    samples = sorted(SAMPLES.glob("*.png"))
    making = folder.with_name(folder.name + ".making")
    making.mkdir()
    for i in range(IMAGES):
        shutil.copy(samples[i % len(samples)], making / f"{i:03d}.png")
    os.rename(making, folder)
    return [str(folder / f"{i:03d}.png") for i in range(IMAGES)]


def _results(outbox_path: Path) -> list[tuple[int, str]]:
    """The results records queued in the outbox: ``(seq, source)``, in the order they are stored."""
    box = Outbox(outbox_path)
    try:
        return [
            (p.seq, json.loads(p.payload)["source"])
            for p in box.pending(limit=10 * IMAGES)
            if p.stream.startswith("results/")
        ]
    finally:
        box.close()


def _refused(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the daemon said its pipeline stopped on a batch the outbox refused (the run over, its sinks closed)."""
    return any(
        r.getMessage().startswith("pipeline folder: sink: could not queue records in the outbox")
        and "retrying in" in r.getMessage()
        for r in caplog.records
    )


def test_a_daemon_whose_outbox_refused_a_batch_queues_every_result_once_and_in_order_after_the_retry(
    small_disk: Callable[[int], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    state = small_disk(1 << 20)  # a small SD card: the outbox's state dir
    images, out = tmp_path / "images", tmp_path / "out.jsonl"
    config = parse_config(
        {
            "device": {"id": "full-batch-dev"},
            "models": {"digits": {"path": str(DIGITS / "digits_fp32.onnx"), "publish_results": True}},
            # the folder is not there yet: the pipeline waits for it while the disk is filled
            "pipelines": {"folder": {"source": str(images), "model": "digits", "sinks": [str(out)], "restart_s": 0.2}},
            # the broker stopped: nothing leaves the outbox, so it holds every result queued
            "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "metrics_interval_s": 3600},
            "api": {"port": 0},
            "state_dir": str(state),
        },
        "test",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        runner = daemon.runners["folder"]
        wait_until(lambda: runner.state == "waiting", 30, "the pipeline to wait for its folder")
        filler = fill_disk(state)
        paths = _images(images)
        wait_until(lambda: _refused(caplog), 60, "the outbox to refuse a batch")
        filler.unlink()
        wait_until(lambda: runner.state == "finished", 60, "the pipeline to finish")
        code, status = http(daemon.api_port, "/v1/status")
        assert code == 200 and status["pipelines"] == {"folder": "finished"}
    finally:
        daemon.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "edgerun.daemon"]
    assert any("pipeline folder: sink: could not queue records in the outbox" in m for m in warnings), warnings
    assert f"pipeline folder: source ended after {IMAGES} frames" in warnings
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == paths  # each input once
    queued = _results(state / "outbox.sqlite")
    # every input's result, once, in the order of the inputs, numbered without a gap
    assert [source for _, source in queued] == paths, (len(queued), len(paths))
    assert [seq for seq, _ in queued] == list(range(1, IMAGES + 1))


@pytest.mark.logs_errors
def test_results_a_stopped_daemon_could_not_queue_are_said_in_one_line(
    small_disk: Callable[[int], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop that comes while the disk is still full (each retry refused again) says how many results were
    never queued, rather than dropping them unsaid."""
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    state = small_disk(1 << 20)
    images, out = tmp_path / "images", tmp_path / "out.jsonl"
    config = parse_config(
        {
            "device": {"id": "full-stop-dev"},
            "models": {"digits": {"path": str(DIGITS / "digits_fp32.onnx"), "publish_results": True}},
            "pipelines": {"folder": {"source": str(images), "model": "digits", "sinks": [str(out)], "restart_s": 0.2}},
            "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "metrics_interval_s": 3600},
            "api": {"port": 0},
            "state_dir": str(state),
        },
        "test",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        runner = daemon.runners["folder"]
        wait_until(lambda: runner.state == "waiting", 30, "the pipeline to wait for its folder")
        fill_disk(state)
        _images(images)
        wait_until(lambda: _refused(caplog), 60, "the outbox to refuse a batch")
        time.sleep(0.5)  # a few retries, each refused again
    finally:
        daemon.stop()
    said = [
        m
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.name == "edgerun.daemon"
        and (m := re.fullmatch(r"pipeline folder: (\d+) result\(s\) never queued in the outbox: (.*)", r.getMessage()))
    ]
    assert len(said) == 1 and "the disk is full" in said[0][2], said
    # the JSON Lines sink holds each input the results sink took, and the one whose batch the outbox refused
    assert int(said[0][1]) == len(out.read_text().splitlines()) - 1 > 0
    assert _results(state / "outbox.sqlite") == []


def test_predict_at_half_a_result_per_second_queues_the_first_of_two_results(tmp_path: Path, broker: Broker) -> None:
    done = run_cli(
        "predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES / "digit_1.png"), str(SAMPLES / "digit_2.png"),
        "--mqtt", broker.url, "--publish-results", "--results-rate", "0.5", "--state-dir", str(tmp_path / "state"),
        "--device-id", "rate-first-dev", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "# MQTT: 1 results queued, 1 over --results-rate; everything delivered"


def test_a_results_sink_at_half_a_result_per_second_queues_the_first_result_at_once(
    tmp_path: Path, broker: Broker
) -> None:
    import edgerun
    from edgerun.sinks.base import Result, result_record
    from edgerun.sources.base import Frame
    from edgerun.sync.link import MqttLink
    from edgerun.sync.publish import ResultsSink
    from edgerun.sync.settings import MqttSettings
    from edgerun.sync.topics import Topics

    outbox = Outbox(tmp_path / "outbox.sqlite")
    topics = Topics("edgerun", "rate-sink-dev")
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port), topics, outbox)
    link.start()
    try:
        with edgerun.load(DIGITS / "digits_fp32.onnx") as model:
            results = [
                Result(Frame(None, time.time(), name, 0), result_record(model, name, model.predict(path).output, 1.0))
                for name, path in (("one", SAMPLES / "digit_1.png"), ("two", SAMPLES / "digit_2.png"))
            ]
        sink = ResultsSink(outbox, link, topics, max_per_s=0.5)
        for result in results:  # two at once
            sink.publish(result)
        sink.close()
        assert (sink.queued, sink.skipped) == (1, 1)
        assert link.wait_drained(20)  # delivered: the broker acknowledged it
    finally:
        link.stop(flush_timeout_s=2)
        outbox.close()


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_a_results_sink_refuses_a_rate_that_would_skip_every_result(tmp_path: Path, rate: float) -> None:
    from edgerun.sync.publish import ResultsSink
    from edgerun.sync.topics import Topics

    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        with pytest.raises(ValueError, match="results rate must be a positive number of results per second"):
            ResultsSink(outbox, None, Topics("edgerun", "dev"), max_per_s=rate)
    finally:
        outbox.close()
