"""A daemon pipeline retried after a failure publishes its results as promptly as on its first run."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from tests.conftest import ROOT, SAMPLES, Broker
from tests.test_sync import Collector, wait_until

pytestmark = pytest.mark.slow


def test_a_retried_pipeline_publishes_a_lone_result_of_its_quiet_source_without_waiting_for_the_next(
    broker: Broker, tmp_path: Path, small_disk: Callable[[int], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The first run ends on a full disk (its JSON Lines sink), closing every sink; the retry's result
    sink must be a live one, whose flusher commits a result the source sent alone. Before, the retry
    reused the closed sink: with its flusher thread gone, the result waited for a next one."""
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    disk = small_disk(1 << 20)
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # the whole card: the first record fails
        try:
            while True:
                fh.write(b"x" * 4096)
        except OSError:
            pass
    topic = "retry-test/in"
    config = parse_config(
        {
            "device": {"id": "retry-dev"},
            "models": {"digits": {"path": str(ROOT / "models/digits/digits_int8.onnx"), "publish_results": True}},
            "pipelines": {
                "cam": {
                    "source": f"mqtt://127.0.0.1:{broker.port}/{topic}",
                    "model": "digits",
                    "sinks": [str(disk / "out.jsonl")],
                    "restart_s": 0.1,
                }
            },
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"},
            "api": {"enabled": False},
            "state_dir": str(tmp_path / "state"),
        },
        "test",
    )
    first, second = (SAMPLES / "digit_4.png").read_bytes(), (SAMPLES / "digit_7.png").read_bytes()
    results = Collector(broker.port, "edgerun/retry-dev/results/#")

    def subscribed(times: int) -> Callable[[], bool]:
        return lambda: sum(f"subscribed to {topic}" in r.getMessage() for r in caplog.records) >= times

    daemon = Daemon(config)
    daemon.start()
    try:
        wait_until(subscribed(1), 30, "the source to subscribe")
        publish.single(topic, first, qos=1, hostname="127.0.0.1", port=broker.port)
        wait_until(lambda: any("No space left" in r.getMessage() for r in caplog.records), 30, "the full disk")
        os.unlink(filler)
        wait_until(subscribed(2), 30, "the retried source to subscribe")
        publish.single(topic, second, qos=1, hostname="127.0.0.1", port=broker.port)
        # one result, then nothing: it must reach the broker while the source is quiet
        wait_until(lambda: "7" in _labels(results), 30, "the retried run's result")
        assert daemon.runners["cam"].state == "running"
    finally:
        daemon.stop()
        results.close()


def _labels(results: Collector) -> list[str]:
    return [r["output"][0]["label"] for r in results.on("edgerun/retry-dev/results/digits")]
