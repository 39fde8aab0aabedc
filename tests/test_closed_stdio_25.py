"""The CLI started with standard descriptors closed (``>&-``, ``2>&-``, ``<&-``), as the real processes.

Each command runs with the descriptors really closed in the child (``preexec_fn`` closes them after
``subprocess`` has set them up, just before ``exec``): ``stdout=subprocess.DEVNULL`` would be an open
``/dev/null``, which is not what a shell's ``>&-`` gives.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT

ONNX = DIGITS / "digits_int8.onnx"
TFLITE = DIGITS / "digits_int8.tflite"
SAMPLES = DIGITS / "samples"
ROWS = len(list(SAMPLES.iterdir()))  # 11: ten PNGs and one .npy


def edgerun(*args: str | Path, closed: tuple[int, ...]) -> subprocess.CompletedProcess[str]:
    """``python -m edgerun ARGS`` with the descriptors ``closed`` closed, as ``>&-`` (1) or ``2>&-`` (2)
    leaves them; what it wrote on the others captured."""

    def close() -> None:
        for fd in closed:
            os.close(fd)

    return subprocess.run(
        [sys.executable, "-m", "edgerun", *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=close,
    )


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder of three good digits, then two files that are no images, then one more good digit."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for n in (1, 2, 3):
        shutil.copy(SAMPLES / f"digit_{n}.png", folder / f"digit_{n}.png")
    (folder / "e_bad.png").write_bytes(b"junk")
    (folder / "f_bad.png").write_bytes(b"junk")
    shutil.copy(SAMPLES / "digit_4.png", folder / "z_digit_4.png")
    return folder


def test_a_tflite_run_into_a_csv_file_with_stderr_closed_writes_every_row_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "r2.csv"
    result = edgerun("run", TFLITE, "--source", SAMPLES, "--sink", out, closed=(2,))
    assert result.returncode == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert len(rows) == 1 + ROWS and rows[0][0] == "input"


def test_predict_with_stderr_closed_processes_every_input_after_a_failed_one(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "r3.jsonl"
    result = edgerun("predict", ONNX, mixed, "--output", out, closed=(2,))
    assert result.returncode == 1  # two inputs failed, the others were processed: their error lines thrown away
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("error" in r) for r in records] == [False, False, False, True, True, False]
    assert result.stdout.splitlines()[-1].startswith("# 4 ok, 2 failed in ")


def test_a_batch_predict_with_stderr_closed_processes_every_input_too(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "r3.jsonl"
    result = edgerun("predict", ONNX, mixed, "--output", out, "--batch-size", "2", closed=(2,))
    assert result.returncode == 1
    assert len(out.read_text().splitlines()) == 6
    assert result.stdout.splitlines()[-1].startswith("# 4 ok, 2 failed in ")


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_predict_with_stdout_closed_is_one_line_before_anything_runs(as_json: bool, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = edgerun("predict", ONNX, SAMPLES, "--output", out, *(["--json"] if as_json else []), closed=(1,))
    assert result.returncode == 1
    assert result.stderr == (
        "edgerun: error: standard output is closed: predict writes its results there, with --output too "
        "(>FILE keeps them, >/dev/null throws them away)\n"
    )
    assert not out.exists()  # refused before anything ran: no file made


def test_a_run_into_a_csv_file_with_stdout_closed_writes_it_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "r1.csv"
    result = edgerun("run", ONNX, "--source", SAMPLES, "--sink", out, closed=(1,))
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 1 + ROWS
    assert result.stderr.startswith(f"# digits 1.0.0 on cpu: {ROWS} frames ({ROWS} ok, 0 failed")
    assert "Traceback" not in result.stderr


def test_a_run_with_every_standard_descriptor_closed_writes_only_its_rows_into_the_csv_file(
    mixed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.csv"
    result = edgerun("run", ONNX, "--source", mixed, "--sink", out, closed=(0, 1, 2))
    assert result.returncode == 1  # two inputs failed
    rows = list(csv.reader(out.read_text().splitlines()))  # no error line, no summary: they had fds of their own
    assert [len(row) for row in rows] == [8] * 7
    assert [bool(row[-1]) for row in rows[1:]] == [False, False, False, True, True, False]


@pytest.mark.parametrize("sinks", [(), ("--sink", "jsonl"), ("--json",)], ids=["table", "jsonl", "json"])
def test_a_run_onto_stdout_with_stdout_closed_is_one_line_before_anything_runs(
    sinks: tuple[str, ...], tmp_path: Path
) -> None:
    out = tmp_path / "r.csv"
    files = ("--sink", str(out)) if sinks else ()  # the table: stdout, the default sink, alone
    result = edgerun("run", ONNX, "--source", SAMPLES, *files, *sinks, closed=(1,))
    assert result.returncode == 1
    assert result.stderr == (
        "edgerun: error: standard output is closed: run writes its results there (--sink FILE writes them to a "
        "file) (>FILE keeps them, >/dev/null throws them away)\n"
    )
    assert not out.exists()  # refused before any sink opened


def test_a_table_command_with_stdout_closed_fails_as_on_a_full_disk() -> None:
    result = edgerun("devices", closed=(1,))
    assert result.returncode == 1
    assert result.stderr == "edgerun: error: cannot write stdout: Bad file descriptor\n"


@pytest.mark.parametrize("args", [("--version",), ("predict", "--help")], ids=["version", "help"])
def test_help_and_version_with_stdout_closed_fail_as_any_command_whose_output_is_stdout(args: tuple[str, ...]) -> None:
    result = edgerun(*args, closed=(1,))
    assert result.returncode == 1
    assert result.stderr == "edgerun: error: cannot write stdout: Bad file descriptor\n"  # no "Exception ignored"


def test_a_closed_stdin_still_reads_as_closed_for_run_source_dash() -> None:
    result = edgerun("run", DIGITS.parent / "vibration" / "vibration_fp32.onnx", "--source", "-", closed=(0,))
    assert result.returncode == 1
    assert result.stderr == "edgerun: error: source -: standard input cannot be read: it is closed\n"


def test_an_output_in_a_missing_folder_is_refused_before_the_header(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(ONNX), str(SAMPLES), "--output", "nodir/o.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "edgerun: error: cannot write nodir/o.jsonl: No such file or directory\n"


def test_predict_given_dash_names_dev_stdin_and_run_source_dash(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(ONNX), "-"],
        cwd=tmp_path,
        input=(SAMPLES / "digit_3.png").read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "edgerun: error: -: no such file or directory (to read an image from standard input, name it "
        "/dev/stdin; edgerun run MODEL --source - reads sensor readings from it)\n"
    )


def test_predict_reads_an_image_from_dev_stdin(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(ONNX), "/dev/stdin", "--json"],
        cwd=tmp_path,
        input=(SAMPLES / "digit_3.png").read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"][0]["label"] == "3"
