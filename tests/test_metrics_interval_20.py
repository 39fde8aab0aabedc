"""The metrics interval is bounded where a library user sets it, not only on the CLI and in config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgerun.sync.outbox import Outbox
from edgerun.sync.publish import MetricsPublisher
from edgerun.sync.service import SyncService
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics


@pytest.mark.parametrize("interval", [math.nan, math.inf, 0.0, -1.0])
def test_the_metrics_timer_refuses_an_interval_that_is_not_a_positive_number(tmp_path: Path, interval: float) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        with pytest.raises(ValueError, match="metrics interval must be a positive number of seconds"):
            MetricsPublisher(Metrics(), outbox, None, Topics("edgerun", "dev"), interval_s=interval)
    finally:
        outbox.close()


@pytest.mark.parametrize("interval", [0.001, 0.99, 3601.0, math.nan, math.inf])
def test_a_sync_service_takes_the_interval_the_cli_and_config_take_and_claims_nothing_otherwise(
    tmp_path: Path, interval: float
) -> None:
    state = tmp_path / "state"
    settings = MqttSettings(host="127.0.0.1", port=1)  # never dialled: the service is not started
    with pytest.raises(ValueError, match=r"metrics interval must be 1-3600 s"):
        SyncService(settings, device_id="dev", state_dir=state, metrics=Metrics(), interval_s=interval)
    assert not state.exists()  # refused before the state folder was claimed or the outbox created


@pytest.mark.parametrize("interval", [1.0, 3600.0])
def test_the_bounds_themselves_are_taken(tmp_path: Path, interval: float) -> None:
    service = SyncService(
        MqttSettings(host="127.0.0.1", port=1),
        device_id="dev",
        state_dir=tmp_path,
        metrics=Metrics(),
        interval_s=interval,
    )
    # never started (as where the OTA agent failed to start before the link connected): it queues no
    # last metrics record, which would wait in the outbox with a WARNING, and releases the folder
    service.stop(flush_timeout_s=0.1)
    assert service.undelivered == 0
    SyncService(MqttSettings(host="127.0.0.1", port=1), device_id="dev", state_dir=tmp_path, metrics=Metrics()).stop()
