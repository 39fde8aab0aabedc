"""``--window`` and ``--hop`` (a pipeline's ``window:`` and ``hop:``) cut sensor readings into windows:
given with any other source they are refused in one line, before anything runs.

Before, ``--hop`` with images, a video or an MQTT topic was ignored without a word, and ``--window``
with images said "window of 3 rows does not fit digits: it takes 8 rows", as if it applied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

VIBRATION = ROOT / "models/vibration/vibration_int8.tflite"
READINGS = ROOT / "models/vibration/samples/normal.csv"


@pytest.mark.parametrize(
    ("options", "given"),
    [
        (["--window", "3"], "--window applies"),
        (["--hop", "2"], "--hop applies"),
        (["--window", "8", "--hop", "4"], "--window and --hop apply"),
    ],
    ids=["window", "hop", "both"],
)
def test_run_refuses_window_and_hop_for_a_source_of_images(options: list[str], given: str) -> None:
    done = run_cli("run", str(DIGITS / "digits_int8.onnx"), "--source", str(SAMPLES), *options)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"edgerun: error: {given} to sensor sources only (a .csv or .jsonl file, or - for standard input), "
        f"and --source {SAMPLES} is none\n"
    )
    assert done.stdout == ""


def test_run_still_takes_window_and_hop_for_a_sensor_file() -> None:
    done = run_cli(
        "run", str(VIBRATION), "--source", str(READINGS), "--window", "256", "--hop", "128", "--max-frames", "3",
        "--sink", "jsonl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3


def test_a_pipeline_with_hop_on_a_folder_of_images_is_refused_by_config_check(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  m:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
        f"pipelines:\n  p:\n    source: {SAMPLES}\n    model: m\n    hop: 4\n"
    )
    done = run_cli("config", "check", str(config))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"edgerun: error: {config}: pipelines.p: hop applies to sensor sources only (a .csv or .jsonl file, "
        f"or - for standard input), and the source '{SAMPLES}' is none\n"
    )
