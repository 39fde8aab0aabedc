"""Sensor bad-row messages name the value as the file has it; `predict --output` writes only what its name says."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from edgerun.sources.sensor import SensorSource
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

VIBRATION = ROOT / "models" / "vibration"


def _errors(path: Path, text: str) -> list[str | None]:
    """Each frame of a one-row window over ``text``: its error message, or None for a good row."""
    path.write_text(text)
    return [frame.error for frame in SensorSource(str(path), window=1).frames()]


def _skipped(path: Path, line: int, why: str) -> str:
    return f"{path} line {line}: {why}; row skipped"


def test_a_bad_csv_value_after_a_time_column_is_named_by_its_column_in_the_file_and_its_header_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "timed.csv"  # the time column is dropped: once "field 2" for column 3, "field 3" for column 4
    assert _errors(path, "t,x,y,z\n0,1,2,3\n1,1,oops,3\n2,1,2,\n3,1,2,1e39\n") == [
        None,
        _skipped(path, 3, "field 3 ('y') is not a number: 'oops'"),
        _skipped(path, 4, "field 4 ('z') is missing"),
        _skipped(path, 5, "field 4 ('z') is beyond float32's range: '1e39'"),
    ]
    middle = tmp_path / "middle.csv"  # a time column between channels: the columns after it keep their numbers
    assert _errors(middle, "X,Time,Y\n1,0,2\n1,1,nope\n")[1] == _skipped(
        middle, 3, "field 3 ('Y') is not a number: 'nope'"
    )


def test_a_long_header_name_is_cut_in_a_bad_row_message_as_a_long_value_is(tmp_path: Path) -> None:
    name = "acceleration_x_in_metres_per_second_squared"  # 43 characters, said in every bad row's message
    path = tmp_path / "long.csv"
    assert _errors(path, f"t,{name}\n0,1\n1,oops\n")[1] == _skipped(
        path, 3, f"field 2 ({name[:20]!r}... (43 characters)) is not a number: 'oops'"
    )


def test_a_bad_csv_value_without_a_header_is_named_by_its_column_alone(tmp_path: Path) -> None:
    # Already right before: without a header no column is dropped, so the kept index was the column.
    path = tmp_path / "plain.csv"
    assert _errors(path, "1,2,3\n1,x,3\n1,2\n") == [
        None,
        _skipped(path, 2, "field 2 is not a number: 'x'"),
        _skipped(path, 3, "field 3 is missing"),
    ]


def test_the_cli_reports_a_bad_row_by_its_column_in_the_file(tmp_path: Path) -> None:
    rows = (VIBRATION / "samples" / "normal.csv").read_text().splitlines()  # t,x,y,z
    readings = tmp_path / "readings.csv"
    readings.write_text("\n".join([*rows[:6], "0.005,1.0,oops,2.0", *rows[6:257]]) + "\n")
    result = run_cli("run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(readings))
    assert result.returncode == 1  # one bad row; the window after it still ran
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")]
    assert errors == [f"edgerun: error: {readings} line 7: field 3 ('y') is not a number: 'oops'; row skipped"]
    assert "Traceback" not in result.stderr


def test_huge_and_odd_csv_numbers_are_each_reported_for_what_they_are(tmp_path: Path) -> None:
    digits = "1" * 400  # finite, only too large for float32 (and for any float): once "not finite"
    values = [digits, "1e400", "-1e400", "inf", "-Infinity", "nan", "0x10", "1_000"]
    path = tmp_path / "odd.csv"
    got = _errors(path, "x,y\n1,2\n" + "".join(f"1,{v}\n" for v in values))
    too_large = "field 2 ('y') is beyond float32's range"
    assert got[1:] == [
        _skipped(path, 3, f"{too_large}: '{digits[:20]}'... (400 characters)"),
        _skipped(path, 4, f"{too_large}: '1e400'"),
        _skipped(path, 5, f"{too_large}: '-1e400'"),
        _skipped(path, 6, "field 2 ('y') is not finite: 'inf'"),
        _skipped(path, 7, "field 2 ('y') is not finite: '-Infinity'"),
        _skipped(path, 8, "field 2 ('y') is not finite: 'nan'"),
        _skipped(path, 9, "field 2 ('y') is not a decimal number: '0x10'"),
        None,  # 1_000: Python's float() reads it as 1000, a good row
    ]


def test_huge_and_odd_json_lines_numbers_are_each_reported_for_what_they_are(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    rows = ["[1e400, 2]", '{"t": 0, "x": -1e400, "y": 2}', "[" + "9" * 5000 + ", 2]", "[NaN, 2]", "[1, -Infinity]"]
    got = _errors(path, "[1, 2]\n" + "\n".join(rows) + "\n")
    too_large, not_finite = "has a value beyond float32's range", "has a value that is not finite"
    assert got == [
        None,
        _skipped(path, 2, too_large),  # 1e400 and -1e400: once "not finite"
        _skipped(path, 3, too_large),
        _skipped(path, 4, too_large),  # over 4,300 digits: once "not valid JSON" (int()'s digit limit)
        _skipped(path, 5, not_finite),
        _skipped(path, 6, not_finite),
    ]


def test_predict_refuses_an_output_named_csv_before_anything_runs_and_leaves_a_csv_alone(tmp_path: Path) -> None:
    model, image = str(DIGITS / "digits_int8.tflite"), str(SAMPLES / "digit_3.png")
    out = tmp_path / "o.csv"  # once JSON Lines written under that name
    result = run_cli("predict", model, image, "--output", str(out))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"edgerun: error: --output {out} names a CSV file, but predict writes JSON Lines: name it FILE.jsonl, "
        "FILE.ndjson or FILE.json (edgerun run MODEL --source INPUT --sink FILE.csv writes CSV)"
    ]
    assert not out.exists()
    table = tmp_path / "table.csv"  # real CSV, from the sink that writes it: --resume must not read it as records
    assert run_cli("run", model, "--source", image, "--sink", str(table)).returncode == 0
    before = table.read_bytes()
    assert next(csv.reader(io.StringIO(before.decode(), newline="")))[0] == "input"
    resumed = run_cli("predict", model, image, "--output", str(table), "--resume")
    assert resumed.returncode == 2 and "names a CSV file" in resumed.stderr and len(resumed.stderr.splitlines()) == 1
    assert table.read_bytes() == before
    video = tmp_path / "o.MP4"
    refused = run_cli("predict", model, image, "--output", str(video))
    assert refused.returncode == 2 and f"--output {video} names a video file" in refused.stderr
    assert not video.exists()


def test_predict_still_writes_json_lines_to_a_jsonl_output(tmp_path: Path) -> None:
    # Already right before: the refusal is only for names of another format.
    out = tmp_path / "o.jsonl"
    result = run_cli("predict", str(DIGITS / "digits_int8.tflite"), str(SAMPLES / "digit_3.png"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith('{"input": ')
