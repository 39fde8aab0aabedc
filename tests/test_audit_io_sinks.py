"""Text sinks and `edgerun predict --output/--resume` against bad outputs, as real processes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgerun
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

MODEL = str(DIGITS / "digits_int8.tflite")


def _strict(line: str) -> Any:
    """``line`` parsed as JSON proper: ``NaN`` and ``Infinity`` are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("edgerun: error: "), stderr
    return lines[0]


def test_a_nan_in_a_models_output_is_written_as_null_so_every_line_is_json(tmp_path: Path) -> None:
    extreme = tmp_path / "extreme.npy"
    np.save(extreme, np.full((8, 8, 1), 3e38, np.float32))  # finite, but the float model's logits overflow
    out = tmp_path / "out.jsonl"
    result = run_cli("predict", str(DIGITS / "digits_fp32.onnx"), str(extreme), "--json", "--output", str(out))
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, out.read_text()):  # once `"score": NaN`, which no JSON parser but Python's reads
        (record,) = [_strict(line) for line in text.splitlines()]
        assert record["input"] == str(extreme)
        assert [o["score"] for o in record["output"]] == [None, None, None]


def test_a_full_disk_under_the_output_is_one_line_naming_the_file(small_disk: Callable[[int], Path]) -> None:
    disk = small_disk(64 * 1024)
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):  # the card fills up before the run
        while True:
            fh.write(b"x" * 4096)
    for inputs in ([str(SAMPLES / "digit_3.png")], [str(SAMPLES)]):  # run in the calling thread, and by a pipeline
        out = disk / "out.jsonl"
        result = run_cli("predict", MODEL, *inputs, "--output", str(out))
        assert result.returncode == 1
        line = _one_error_line(result.stderr)  # once a traceback (one input), or "sink: [Errno 28] ..." (a folder)
        assert line.endswith(f"cannot write {out}: No space left on device"), line
    table = disk / "out.csv"
    result = run_cli("run", MODEL, "--source", str(SAMPLES), "--sink", str(table))
    assert result.returncode == 2  # its header is written when the sink opens, before any input runs
    assert _one_error_line(result.stderr) == f"edgerun: error: cannot write {table}: No space left on device"
    assert table.stat().st_size == 0  # no torn header left to put the next run's rows under


def test_the_output_may_be_a_pipe(tmp_path: Path) -> None:
    result = subprocess.run(  # once "cannot write /dev/stdout: None" (a pipe has no size to look at), exit 2
        [sys.executable, "-m", "edgerun", "predict", MODEL, str(SAMPLES / "digit_3.png"), "--output", "/dev/stdout"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    records = [_strict(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["output"][0]["label"] for r in records] == ["3"]


def test_csv_rows_appended_after_a_torn_row_start_on_a_line_of_their_own(tmp_path: Path) -> None:
    table = tmp_path / "out.csv"
    header = "input,model,version,delegate,label,score,latency_ms,error\r\n"
    table.write_bytes((header + "x.png,digits,1.0.0,xnnpack,3,0.99").encode())  # a run killed mid-row
    result = run_cli("run", MODEL, "--source", str(SAMPLES / "digit_3.png"), "--sink", str(table))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(table.read_text(), newline="")))
    assert rows[0] == header.strip().split(",")
    assert rows[1] == ["x.png", "digits", "1.0.0", "xnnpack", "3", "0.99"]  # left as it was, not merged into
    assert rows[2][0] == str(SAMPLES / "digit_3.png") and rows[2][4] == "3" and len(rows) == 3


def test_resume_refuses_a_file_that_holds_another_models_results_and_leaves_it_alone(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = str(SAMPLES / "digit_3.png")
    older = {"input": done, "model": "digits", "version": "0.9.0", "delegate": "cpu", "output": [], "latency_ms": 1.0}
    out.write_text(json.dumps(older) + "\n")
    before = out.read_bytes()
    result = run_cli("predict", MODEL, str(SAMPLES), "--output", str(out), "--resume")
    assert result.returncode == 2 and result.stdout == ""  # once exit 0: digit_3 skipped as done by 0.9.0
    line = _one_error_line(result.stderr)
    assert line == (
        f"edgerun: error: {out} holds results of digits 0.9.0, not of digits 1.0.0: cannot resume from it with "
        "this model (give it another --output)"
    )
    assert out.read_bytes() == before
    out.write_text(
        json.dumps({**older, "version": "1.0.0"}) + "\n" + json.dumps({"input": "y.png", "error": "e"}) + "\n"
    )
    resumed = run_cli("predict", MODEL, str(SAMPLES), "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr  # the same model (error records carry none): resumed
    inputs = [_strict(line)["input"] for line in out.read_text().splitlines()]
    assert sorted(inputs) == sorted({done, "y.png", *(str(p) for p in SAMPLES.iterdir())})


def test_an_input_whose_name_holds_a_line_break_stays_one_line_on_screen(tmp_path: Path) -> None:
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes((SAMPLES / "digit_3.png").read_bytes())
    broken = tmp_path / "bad\nname.png"
    broken.write_bytes(b"not a png")
    done = run_cli("predict", str(DIGITS / "digits_int8.onnx"), str(odd), str(broken))
    table = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(table) == 1 and "two\\nlines.png" in table[0], done.stdout
    assert len(errors) == 1 and "bad\\nname.png" in errors[0] and errors[0].startswith("edgerun: error: "), done.stderr


def _one_page_left(disk: Path) -> None:
    """Fill ``disk`` with one file, then free one 4 KiB page of it: room for a few records, then a full card."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 4096)
    os.truncate(filler, filler.stat().st_size - 4096)


def test_a_record_the_full_disk_cuts_short_is_cut_off_so_the_file_holds_whole_records(
    small_disk: Callable[[int], Path],
) -> None:
    from edgerun.errors import PipelineError
    from edgerun.sinks.base import Result
    from edgerun.sinks.text import CsvSink, JsonlSink
    from edgerun.sources.base import Frame

    disk = small_disk(64 * 1024)
    _one_page_left(disk)
    model = edgerun.load(MODEL)
    output = model.predict(SAMPLES / "digit_3.png").output
    for sink_type, name in ((JsonlSink, "out.jsonl"), (CsvSink, "out.csv")):
        path = disk / name
        sink = sink_type(str(path))
        written = 0
        with pytest.raises(PipelineError, match=f"cannot write {path}: No space left on device"):
            for i in range(1000):  # some 20 records fill the page; one is cut short by the full disk
                record = {"input": f"img_{i:03d}.png", "model": "digits", "version": "1.0.0", "delegate": "cpu"}
                sink.publish(
                    Result(Frame(None, 0.0, record["input"], i), {**record, "output": output, "latency_ms": 0.2})
                )
                written += 1
        sink.close()
        text = path.read_text()
        assert text.endswith("\n")  # once the beginning of the record the disk refused
        if sink_type is JsonlSink:
            assert [json.loads(line)["input"] for line in text.splitlines()] == [
                f"img_{i:03d}.png" for i in range(written)
            ]
        else:
            rows = list(csv.reader(io.StringIO(text)))
            assert [row[0] for row in rows] == ["input"] + [f"img_{i:03d}.png" for i in range(written)]
            assert all(len(row) == len(CsvSink.COLUMNS) for row in rows)
        path.unlink()  # the page again, for the next sink
