"""``predict --mqtt`` ends its summary with the ``# MQTT:`` line that docs/sync.md promises (it had none)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import DIGITS, SAMPLES, Broker, run_cli


def test_predict_with_published_results_says_what_went_to_the_broker(tmp_path: Path, own_broker: Broker) -> None:
    done = run_cli(
        "predict", str(DIGITS / "digits_int8.tflite"), str(SAMPLES), "--mqtt", own_broker.url, "--publish-results",
        "--device-id", "dev1", "--state-dir", str(tmp_path / "state"), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    inputs = len([p for p in SAMPLES.iterdir() if p.suffix in (".png", ".npy")])
    summary, mqtt = done.stdout.splitlines()[-2:]
    assert summary.startswith(f"# {inputs} ok, 0 failed in ")
    assert mqtt == f"# MQTT: {inputs} results queued, 0 over --results-rate; everything delivered"
