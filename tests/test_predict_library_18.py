"""Defects an exploring tester found in ``predict``, ``run`` and the library API, each refused or reported in one
line now: an output onto the model or its card, ``--resume`` from a device or a pipe, a refused resume that still
cut the file, a file named ``.npy`` that is none, NUL characters and other unusable values in ``edgerun.load``,
links to nothing inside an input folder, ``config check`` of a file named like a command, a sensor file given to
``predict``, float64 values past float32's range, and OpenCV's import counted in the first image's latency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.errors import ConfigError, EdgerunError, InputError
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

VIBRATION = ROOT / "models" / "vibration"


def _only_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def own_model(tmp_path: Path) -> Path:
    """A copy of the FP32 digits model with its card, in a folder of the test's own."""
    shutil.copy(DIGITS / "digits_fp32.onnx", tmp_path / "m.onnx")
    shutil.copy(DIGITS / "digits_fp32.onnx.card.yaml", tmp_path / "m.onnx.card.yaml")
    return tmp_path / "m.onnx"


# -- an output onto the model file or its card -------------------------------------------------------------


@pytest.mark.parametrize("target", ["m.onnx", "m.onnx.card.yaml", "./m.onnx"])
def test_predict_refuses_an_output_that_is_the_model_file_or_its_card_and_leaves_both_whole(
    own_model: Path, target: str
) -> None:
    """Once exit 0, with records appended to the protobuf or the YAML: every later load failed."""
    before = {p.name: p.read_bytes() for p in own_model.parent.iterdir()}
    done = run_cli("predict", "m.onnx", str(SAMPLES / "digit_3.png"), "--output", target, cwd=own_model.parent)
    assert done.returncode == 2
    what = "card" if target.endswith(".yaml") else "model file"
    assert _only_error(done.stderr).startswith(f"edgerun: error: --output {target} is the {what} ")
    assert "writing it would damage the model" in done.stderr
    assert {p.name: p.read_bytes() for p in own_model.parent.iterdir()} == before


# -- --resume ------------------------------------------------------------------------------------------------


def test_resume_from_a_device_is_refused_in_one_line_without_reading_it() -> None:
    """/dev/full was read until the kernel killed the process (rc 137)."""
    done = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES / "digit_3.png"),
                   "--output", "/dev/full", "--resume")  # fmt: skip
    assert done.returncode == 2
    assert _only_error(done.stderr) == (
        "edgerun: error: cannot resume from /dev/full: it is not a regular file (--resume reads what --output holds)"
    )


def test_resume_from_a_named_pipe_is_refused_in_one_line(tmp_path: Path) -> None:
    """Once "cannot resume from ff.jsonl: None" (an UnsupportedOperation's strerror)."""
    os.mkfifo(tmp_path / "ff.jsonl")
    done = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES / "digit_3.png"),
                   "--output", "ff.jsonl", "--resume", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "cannot resume from ff.jsonl: it is not a regular file" in _only_error(done.stderr)


def _torn_file(folder: Path) -> tuple[Path, bytes]:
    first = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES / "digit_3.png"), "--json")
    out = folder / "other.jsonl"
    out.write_text(first.stdout + '{"input": "/x/digit_4.png", "model": "dig')  # a line torn by a kill
    return out, out.read_bytes()


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        (str(VIBRATION / "vibration_fp32.onnx"), 2, "holds results of digits 1.0.0, not of vibration 1.0.0"),
        ("/nonexistent/typo.onnx", 1, "model file not found: /nonexistent/typo.onnx"),
    ],
)
def test_a_refused_resume_leaves_the_torn_line_in_place(tmp_path: Path, model: str, code: int, message: str) -> None:
    """docs/pipelines.md: such a file is refused and left untouched; the torn line was cut first."""
    out, before = _torn_file(tmp_path)
    done = run_cli("predict", model, str(SAMPLES / "digit_4.npy"), "--output", str(out), "--resume")
    assert done.returncode == code
    assert message in _only_error(done.stderr)
    assert out.read_bytes() == before


def test_a_resume_that_goes_ahead_cuts_the_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    out, before = _torn_file(tmp_path)
    done = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES / "digit_4.png"),
                   "--output", str(out), "--resume")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1])
    assert [json.loads(line)["output"][0]["label"] for line in lines] == ["3", "4"]


# -- inputs --------------------------------------------------------------------------------------------------


def test_a_file_named_npy_that_is_no_npy_is_said_to_have_no_npy_header_not_to_be_pickled(tmp_path: Path) -> None:
    """numpy's message suggested loading it "unsafely" with allow_pickle or pickle.load()."""
    shutil.copy(SAMPLES / "digit_3.png", tmp_path / "png.npy")
    (tmp_path / "csv.npy").write_text("1,2,3\n")
    done = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), "png.npy", "csv.npy", cwd=tmp_path)
    assert done.returncode == 1
    assert "pickle" not in done.stderr
    for name in ("png.npy", "csv.npy"):
        assert (
            f"edgerun: error: {name}: not a plain numeric .npy array (no .npy header: it does not begin with "
            "\\x93NUMPY)" in done.stderr.splitlines()
        )


def test_links_to_nothing_in_an_input_folder_are_reported_as_failed_inputs(tmp_path: Path) -> None:
    """They were left out without a word, where given on their own each is an error."""
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(SAMPLES / "digit_3.png", folder / "a.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "l1.png").symlink_to(folder / "l2.png")
    (folder / "l2.png").symlink_to(folder / "l1.png")
    (folder / "linked_dir.png").symlink_to(tmp_path)  # a link to a folder: not entered, not an input
    done = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), "d", "--no-progress", cwd=tmp_path)
    assert done.returncode == 1
    assert "# 1 ok, 3 failed" in done.stdout
    assert done.stderr.splitlines() == [
        "edgerun: error: d/dangling.png: no such file",
        "edgerun: error: d/l1.png: cannot read (Too many levels of symbolic links)",
        "edgerun: error: d/l2.png: cannot read (Too many levels of symbolic links)",
    ]


def test_a_sensor_file_given_to_predict_points_to_run() -> None:
    done = run_cli("predict", str(VIBRATION / "vibration_int8.tflite"), "models/vibration/samples/normal.csv")
    assert done.returncode == 1
    assert _only_error(done.stderr) == (
        "edgerun: error: models/vibration/samples/normal.csv: a sensor file is read in windows by "
        "'edgerun run MODEL --source models/vibration/samples/normal.csv'; predict takes images and .npy arrays"
    )


def test_config_check_of_a_file_named_like_a_command_checks_that_file(tmp_path: Path) -> None:
    """The first word naming a command used to pick the parser: "invalid choice: 'config'"."""
    (tmp_path / "predict").write_text("models:\n  m:\n    path: nowhere.onnx\n")
    done = run_cli("config", "check", "predict", cwd=tmp_path)
    assert done.returncode == 2
    assert _only_error(done.stderr).startswith("edgerun: error: predict: models.m.path: model file not found")


# -- the library ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> edgerun.Model:
    return edgerun.load(DIGITS / "digits_int8.tflite")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.predict("a\0.png"), InputError, "'a\\x00.png': holds a NUL character, which no file name can"),
        (lambda m: m.predict("a\0.npy"), InputError, "'a\\x00.npy': holds a NUL character, which no file name can"),
        (lambda m: edgerun.load("x\0.tflite"), ConfigError, "model path 'x\\x00.tflite' holds a NUL character"),
        (lambda m: edgerun.load(m.path, card="c\0.yaml"), ConfigError, "card 'c\\x00.yaml' holds a NUL character"),
        (lambda m: edgerun.load(m.path, state_dir="s\0"), ConfigError, "state_dir 's\\x00' holds a NUL character"),
        (lambda m: edgerun.load(m.path, card=""), ConfigError, "card is an empty string"),
        (lambda m: edgerun.load(m.path, strict="no"), ConfigError, "strict must be True or False, got 'no'"),
        (lambda m: edgerun.load(m.path, probe_root="/nonexistent"), ConfigError, "probe_root is not a directory"),
        (lambda m: m.postprocess([]), InputError, "0 output array(s) given; digits has 1"),
    ],
)
def test_unusable_library_arguments_raise_an_edgerun_error_naming_them(
    digits: edgerun.Model, call: object, error: type[EdgerunError], message: str
) -> None:
    """Bare ValueErrors (embedded null byte), an IndexError, or nothing at all (strict="no", a missing root)."""
    with pytest.raises(error) as caught:
        call(digits)  # type: ignore[operator]
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["digits_int8.tflite", "digits_fp32.tflite", "digits_fp32.onnx", "digits_int8.onnx"])
def test_float64_values_past_float32s_range_are_refused_without_a_numpy_warning(name: str) -> None:
    """Cast to infinity (FP32) or clipped (INT8), with numpy's RuntimeWarning on stderr, and an answer."""
    model = edgerun.load(DIGITS / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="array has values beyond float32's range"):
            model.run(np.full((1, 8, 8, 1), 1e300))
        assert model.postprocess(model.run(np.full((1, 8, 8, 1), 0.5)))  # float64 in range still runs


WARM = """
import sys
import edgerun
model = edgerun.load(sys.argv[1])
before = "cv2" in sys.modules
model.warm_images()
print(before, "cv2" in sys.modules)
"""


@pytest.mark.parametrize(
    ("model", "after"),
    [(DIGITS / "digits_fp32.onnx", "True"), (VIBRATION / "vibration_fp32.onnx", "False")],
)
def test_warm_images_imports_opencv_before_the_first_image_only_for_a_model_that_takes_images(
    model: Path, after: str
) -> None:
    """An ONNX model loads without OpenCV, so its first image's ``pre`` time held the ~20 ms import (17-41 ms
    reported for a 0.3 ms digit); predict, run and the daemon now warm the image path first. A model that
    takes no images does not pay for OpenCV."""
    done = subprocess.run([sys.executable, "-c", WARM, str(model)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", after]


# -- an annotated-images sink inside the source folder --------------------------------------------------------


@pytest.mark.parametrize("sink", ["imgs/", "imgs/out/", "./imgs/"])
def test_run_refuses_annotated_images_written_inside_the_source_folder(tmp_path: Path, sink: str) -> None:
    """Once accepted: the next run over the folder classified the last run's drawings too (4 frames, then 8)."""
    (tmp_path / "imgs").mkdir()
    for digit in range(2):
        shutil.copy(SAMPLES / f"digit_{digit}.png", tmp_path / "imgs")
    done = run_cli("run", str(DIGITS / "digits_int8.tflite"), "--source", "imgs", "--sink", sink, cwd=tmp_path)
    assert done.returncode == 2
    assert _only_error(done.stderr) == (
        f"edgerun: error: --sink {sink} is inside the source folder imgs: the next run over it would take its "
        "annotated images for inputs (write them outside the folder)"
    )
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["digit_0.png", "digit_1.png"]


def test_annotated_images_beside_a_source_of_named_files_or_outside_the_folder_are_written(tmp_path: Path) -> None:
    model = str(DIGITS / "digits_int8.tflite")
    for folder in ("named", "walked"):
        (tmp_path / folder).mkdir()
        shutil.copy(SAMPLES / "digit_0.png", tmp_path / folder)
    named = run_cli("run", model, "--source", "named/digit_0.png", "--sink", "named/", cwd=tmp_path)
    assert named.returncode == 0, named.stderr
    assert (tmp_path / "named" / "000000.jpg").is_file()
    outside = run_cli("run", model, "--source", "walked", "--sink", "drawn/", cwd=tmp_path)
    assert outside.returncode == 0, outside.stderr
    assert [p.name for p in (tmp_path / "drawn").iterdir()] == ["000000.jpg"]


def test_a_daemon_config_with_annotated_images_inside_its_source_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    config = tmp_path / "edgerun.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.tflite'}\n"
        f"pipelines:\n  p:\n    source: {tmp_path / 'imgs'}\n    model: digits\n    sinks: ['{tmp_path / 'imgs'}/']\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    done = run_cli("config", "check", str(config))
    assert done.returncode == 2
    assert "is inside the source folder" in _only_error(done.stderr)
