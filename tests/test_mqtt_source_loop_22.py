"""An MQTT source whose filter matches the device's own records on the broker it publishes to is refused
before anything connects (``edgerun run`` and a daemon config alike).

Before, ``edgerun run MODEL --source mqtt://B/# --mqtt mqtt://B`` took the device's own status, metrics
and results for inputs: each an error frame, counted in the metrics, whose next record came back as one
more, and a run that ended with exit 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.errors import ConfigError
from edgerun.sources.mqtt import check_not_own_records
from edgerun.sync.topics import Topics
from tests.conftest import DIGITS, run_cli

MODEL = str(DIGITS / "digits_int8.onnx")
TOPICS = Topics("edgerun", "loop1")


@pytest.mark.parametrize(
    ("source", "heard"),
    [
        ("mqtt://127.0.0.1:1/#", "edgerun/loop1/status"),
        ("mqtt://localhost:1/edgerun/loop1/#", "edgerun/loop1/status"),
        ("mqtt://127.0.0.1:1/edgerun/+/metrics", "edgerun/loop1/metrics"),
        ("mqtt://127.0.0.1:1/edgerun/+/results/+", "edgerun/loop1/results/MODEL"),
        ("mqtt://user:pw@127.0.0.1:1/+/+/ota/status", "edgerun/loop1/ota/status"),
    ],
)
def test_run_refuses_an_mqtt_source_that_hears_the_device_s_own_records(source: str, heard: str) -> None:
    done = run_cli("run", MODEL, "--source", source, "--mqtt", "mqtt://localhost:1", "--device-id", "loop1")
    assert done.returncode == 2, done.stderr
    filter_ = source.rpartition(":1/")[2]
    assert done.stderr == (
        f"edgerun: error: the MQTT source's filter {filter_!r} matches {heard}, where this device publishes its "
        "own records on the same broker: each would come back as an input; subscribe outside edgerun/loop1/\n"
    )


@pytest.mark.parametrize(
    "source",
    [
        "mqtt://127.0.0.1:1884/#",  # another broker (port)
        "mqtt://10.0.0.9:1883/#",  # another broker (host)
        "mqtt://127.0.0.1:1883/sensors/#",  # outside the device's topics
        "mqtt://127.0.0.1:1883/edgerun/other/#",  # another device's
        "mqtt://127.0.0.1:1883/edgerun/loop1/cmd",  # what the device subscribes to, never publishes
        "camera:0",  # no MQTT source at all
    ],
)
def test_a_source_on_another_broker_or_outside_the_device_s_topics_passes(source: str) -> None:
    check_not_own_records(source, ("localhost", 1883), TOPICS)


def test_a_results_filter_naming_one_model_is_not_taken_for_all_models() -> None:
    """A model's own results are matched through a wildcard only: no model name is known this early."""
    check_not_own_records("mqtt://127.0.0.1:1883/edgerun/loop1/results/other", ("127.0.0.1", 1883), TOPICS)
    with pytest.raises(ConfigError, match="matches edgerun/loop1/results/MODEL"):
        check_not_own_records("mqtt://127.0.0.1:1883/edgerun/loop1/results/#", ("127.0.0.1", 1883), TOPICS)


def test_config_check_refuses_such_a_pipeline(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "device:\n  id: loop1\nmqtt:\n  url: mqtt://127.0.0.1:1883\n"
        f"models:\n  m:\n    path: {MODEL}\n"
        "pipelines:\n  p:\n    source: mqtt://localhost:1883/edgerun/loop1/#\n    model: m\n"
    )
    done = run_cli("config", "check", str(config))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"edgerun: error: {config}: pipelines.p.source: the MQTT source's filter 'edgerun/loop1/#' matches "
        "edgerun/loop1/status, where this device publishes its own records on the same broker: each would come "
        "back as an input; subscribe outside edgerun/loop1/\n"
    )
