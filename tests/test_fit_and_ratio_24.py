"""Two silent or noisy outcomes a new user met.

``edgerun bench digits_fp32.onnx digits_int8.tflite`` printed two rows and nothing else: ``ratio_gaps`` looked
for an FP32/INT8 pair within one format, so a pair split across formats got no ratio and no line saying why
(nor did a pair one of which Ctrl-C stopped). ``edgerun run vibration_int8.tflite --source imgs`` (a folder of
JPEGs into a sensor model, which has no image preprocessing) failed one identical line per image, exit 1, where
a video into it is refused once before the run, exit 2; now a file source of images only is refused as well.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.bench import BenchResult, missing_ratios, ratio_gaps, speed_ratios
from edgerun.errors import ConfigError
from edgerun.sources import check_fits, open_source
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli
from tests.test_daemon import _in_process_daemon
from tests.test_sync import wait_until

VIBRATION = ROOT / "models" / "vibration" / "vibration_int8.tflite"
TENSOR = "serving_default_input:0 [1,256,3] int8 (scale 0.00914533, zero point -13)"


def _refusal(uri: str, images: int) -> str:
    return (
        f"edgerun: error: vibration takes no images: its input tensor {TENSOR} has no image preprocessing (its "
        f"card has no preprocess section), and {uri} gives only images ({images} file{'s' if images != 1 else ''}): "
        "give it .npy arrays, or give the model a card with a preprocess section"
    )


def _result(fmt: str, precision: str, **changes: object) -> BenchResult:
    """A bench figure as a child sends it back (the numbers matter only where a test says so)."""
    figures = BenchResult(
        model="digits",
        path=f"models/digits/digits_{precision}.{fmt}",
        format=fmt,
        precision=precision,
        delegate="cpu",
        threads=1,
        runs=50,
        load_ms=10.0,
        first_ms=1.0,
        p50_ms=0.02,
        p95_ms=0.03,
        p99_ms=0.04,
        mean_ms=0.02,
        throughput_per_s=50_000.0,
        peak_rss_mb=60.0,
    )
    return replace(figures, **changes)  # type: ignore[arg-type]


# -- a missing INT8/FP32 ratio is always explained -------------------------------------------------------------


def test_bench_of_fp32_onnx_and_int8_tflite_says_why_there_is_no_ratio() -> None:
    models = [str(DIGITS / "digits_fp32.onnx"), str(DIGITS / "digits_int8.tflite")]
    result = run_cli("bench", *models, "--runs", "20", "--no-progress")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5  # header, two rows, the sparse-p99 note, and the reason: once the rows alone
    assert lines[-1] == (
        "no INT8/FP32 ratio for digits: FP32 was measured as onnx, INT8 as tflite, and a ratio compares variants "
        "of one format: bench an FP32 and an INT8 file of the same format"
    )


def test_bench_json_gives_a_record_for_the_missing_ratio() -> None:
    models = [str(DIGITS / "digits_fp32.onnx"), str(DIGITS / "digits_int8.tflite")]
    result = run_cli("bench", *models, "--runs", "20", "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in records] == ["result", "result", "no_ratio"]  # the reason was text only, not in --json
    assert records[-1] == {
        "type": "no_ratio",
        "model": "digits",
        "format": None,
        "why": "formats",
        "reason": "no INT8/FP32 ratio for digits: FP32 was measured as onnx, INT8 as tflite, and a ratio compares "
        "variants of one format: bench an FP32 and an INT8 file of the same format",
    }


def test_a_pair_split_across_formats_gets_one_reason_and_a_format_with_a_ratio_gets_none() -> None:
    split = [_result("onnx", "fp32"), _result("tflite", "int8")]
    assert missing_ratios(split) == [
        {
            "model": "digits",
            "format": None,
            "why": "formats",
            "reason": "no INT8/FP32 ratio for digits: FP32 was measured as onnx, INT8 as tflite, and a ratio "
            "compares variants of one format: bench an FP32 and an INT8 file of the same format",
        }
    ]
    # FP32 in both formats, INT8 as TFLite alike: the TFLite ratio is the model's; the lone ONNX FP32 needs no line
    paired = [*split, _result("tflite", "fp32")]
    assert [r["format"] for r in speed_ratios(paired)] == ["tflite"] and ratio_gaps(paired) == []


def test_a_pair_one_of_which_ctrl_c_stopped_is_said_to_have_been_interrupted() -> None:
    results = [_result("tflite", "fp32"), _result("tflite", "int8", runs=7, interrupted=True)]
    assert speed_ratios(results) == []
    assert ratio_gaps(results) == ["no INT8/FP32 ratio for digits tflite: the INT8 run was interrupted"]


def test_a_pair_run_alike_whose_int8_p50_is_zero_is_said_to_be_untimed() -> None:
    results = [_result("onnx", "fp32"), _result("onnx", "int8", p50_ms=0.0)]
    assert speed_ratios(results) == []
    assert [gap["why"] for gap in missing_ratios(results)] == ["untimed"]
    assert ratio_gaps(results) == [
        "no INT8/FP32 ratio for digits onnx: run alike on cpu with 1 thread, INT8's p50 is 0 ms "
        "(a clock too coarse to time it)"
    ]


def test_a_pair_on_different_threads_keeps_its_line_and_every_gap_record_is_json() -> None:
    results = [_result("onnx", "fp32", threads=4), _result("onnx", "int8")]
    gaps = missing_ratios(results)
    assert [gap["reason"] for gap in gaps] == [
        "no INT8/FP32 ratio for digits onnx: FP32 ran on cpu with 4 threads, INT8 on cpu with 1 thread; "
        "give --delegate and --threads to run both alike"
    ]
    assert json.loads(json.dumps(gaps)) == gaps and gaps[0]["why"] == "not_alike"


# -- a file source of images only, into a model that takes no images ---------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for digit in (0, 1, 2):
        shutil.copy(SAMPLES / f"digit_{digit}.png", folder / f"d{digit}.png")
    return folder


@pytest.mark.parametrize("given", ["folder", "glob", "files"])
def test_images_only_into_a_model_with_no_image_preprocessing_are_refused_once_before_the_run(
    images: Path, given: str
) -> None:
    sources = {
        "folder": [str(images)],
        "glob": [str(images / "*.png")],
        "files": [str(images / "d0.png"), str(images / "d1.png")],
    }[given]
    result = run_cli("run", str(VIBRATION), "--source", *sources)
    assert result.returncode == 2  # once exit 1 after one "has no image preprocessing" line per image
    assert result.stderr.splitlines() == [_refusal(" ".join(sources), 2 if given == "files" else 3)]


def test_an_npy_array_among_the_images_keeps_the_run_going_as_before(images: Path) -> None:
    np.save(images / "window.npy", np.zeros((256, 3), np.float32))  # an array the sensor model takes
    result = run_cli("run", str(VIBRATION), "--source", str(images), "--sink", "jsonl")
    assert result.returncode == 1  # the images still fail, one line each, and the array is classified
    assert sum("has no image preprocessing" in line for line in result.stderr.splitlines()) == 3
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records if "output" in r] == [str(images / "window.npy")]


def test_the_check_reads_the_inputs_the_source_walked_and_leaves_out_those_that_yield_none(
    images: Path, tmp_path: Path
) -> None:
    with edgerun.load(VIBRATION) as model:
        source = open_source([str(images), str(tmp_path / "missing.npy"), str(tmp_path / "empty")])
        with pytest.raises(ConfigError, match=r"gives only images \(3 files\)"):
            check_fits(source, model)  # a missing array is no array the model can take
        arrays = tmp_path / "arrays"
        arrays.mkdir()
        np.save(arrays / "w.npy", np.zeros((256, 3), np.float32))
        check_fits(open_source([str(arrays)]), model)
        check_fits(open_source([str(images / "d0.png"), str(arrays / "w.npy")]), model)
        check_fits(open_source([str(tmp_path / "missing.png")]), model)  # fails as its own input
        with edgerun.load(DIGITS / "digits_int8.tflite") as digits:
            check_fits(open_source([str(images)]), digits)  # a model with image preprocessing takes them


def test_a_daemon_pipeline_of_images_into_a_sensor_model_waits_with_one_line_and_fails_no_frame(
    images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.jsonl"
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"vibration": str(VIBRATION)},
        {"imgs": {"source": str(images), "model": "vibration", "sinks": [str(out)], "restart_s": 0.2}},
    )
    daemon.start()
    try:
        said = f"pipeline imgs: {_refusal(str(images), 3).removeprefix('edgerun: error: ')}; retrying in 0.2 s"
        wait_until(lambda: any(said in r.getMessage() for r in list(caplog.records)), 30, "the refusal's line")
        assert daemon.runners["imgs"].state == "waiting"  # once "finished" after failing every image
        assert not out.exists()
        assert daemon.metrics.snapshot()["models"].get("vibration", {"errors": 0})["errors"] == 0
    finally:
        daemon.stop()
