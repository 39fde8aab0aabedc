"""A frame no model could take (unreadable, not an image, not numbers, a bad message or sensor row) is a
failed frame of the run, and not an error of the model: OTA probation judges a model by its metrics' error
rate, and 25 garbage messages on an MQTT source rolled a good update back. Nor does an array of another shape
than the input's, which no version takes (an update must keep it). A frame the model's card cannot prepare
(no image preprocessing) still counts against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgerun
from edgerun.pipeline import Pipeline
from edgerun.sources.files import FileSource
from tests.conftest import DIGITS, ROOT, SAMPLES
from tests.test_daemon import _in_process_daemon
from tests.test_pipeline import ListSink
from tests.test_sync import wait_until

VIBRATION = ROOT / "models" / "vibration"


def test_unusable_inputs_fail_their_frames_and_do_not_count_against_the_model(tmp_path: Path) -> None:
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    np.save(tmp_path / "nan.npy", np.full((8, 8, 1), np.nan, np.float32))
    # numbers of a shape digits does not take: no version of it would (an update must keep its input's shape)
    np.save(tmp_path / "wide.npy", np.zeros((4, 9, 9, 1), np.float32))
    inputs = [str(SAMPLES / "digit_1.png"), *(str(tmp_path / n) for n in ("corrupt.png", "nan.npy", "wide.npy"))]
    inputs.append(str(tmp_path / "missing.png"))
    sink = ListSink()
    pipeline = Pipeline(FileSource(inputs), edgerun.load(DIGITS / "digits_int8.tflite"), [sink])
    summary = pipeline.run()
    assert (summary.frames, summary.ok, summary.errors) == (5, 1, 4)  # the run counts every failed frame
    assert [r.ok for r in sink.results] == [True, False, False, False, False]
    entry = pipeline.metrics.snapshot()["models"]["digits"]
    assert (entry["count"], entry["errors"]) == (1, 0)  # once 4: each of them was the model's error


def test_an_image_for_a_model_whose_card_gives_no_image_preprocessing_counts_against_that_model(
    tmp_path: Path,
) -> None:
    """The card's doing (a version whose card dropped its preprocess section fails every camera frame): OTA
    probation must still see it, as a decoded frame and as image bytes alike."""
    model = edgerun.load(VIBRATION / "vibration_int8.tflite")  # a sensor model: its card has no preprocessing
    np.save(tmp_path / "frame.npy", np.zeros((24, 32, 3), np.uint8))  # a decoded frame, as a camera gives it
    sink = ListSink()
    pipeline = Pipeline(FileSource([str(SAMPLES / "digit_1.png"), str(tmp_path / "frame.npy")]), model, [sink])
    summary = pipeline.run()
    assert (summary.frames, summary.errors) == (2, 2)
    assert all("has no image preprocessing" in r.record["error"] for r in sink.results)
    assert pipeline.metrics.snapshot()["models"]["vibration"]["errors"] == 2


def test_a_daemon_pipeline_over_an_empty_folder_counts_no_error_against_its_model(tmp_path: Path) -> None:
    """Once one error of the model in its first metrics record, for a folder with nothing in it yet."""
    (tmp_path / "inbox").mkdir()
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"digits": str(DIGITS / "digits_int8.tflite")},
        {"inbox": {"source": str(tmp_path / "inbox"), "model": "digits"}},
    )
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["inbox"].state == "finished", 30, "the empty folder's pipeline to end")
        assert daemon.metrics.snapshot()["models"].get("digits", {"errors": 0})["errors"] == 0
    finally:
        daemon.stop()
