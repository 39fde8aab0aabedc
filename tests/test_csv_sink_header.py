"""A CSV sink onto a file that holds another table, or one file named twice as a sink, is refused.

Rows were appended under the other table's header (``a,b`` over eight columns of results), after
a line break added to its last line: a spreadsheet or a script reading that file got rows it
could not place. One file named twice as a sink (`--sink out.jsonl --sink ./out.jsonl`) got every
record twice. Real CLI runs, real files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import DIGITS, SAMPLES, run_cli

HEADER = "input,model,version,delegate,label,score,latency_ms,error"


def run_into(sink: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "run", str(DIGITS / "digits_int8.tflite"), "--source", str(SAMPLES / "digit_3.png"), "--sink", str(sink)
    )


def test_a_csv_sink_onto_another_table_is_refused_and_the_file_is_untouched(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_bytes(b"a,b\r\n1,2")  # no line break at its end: one used to be added
    result = run_into(other)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"edgerun: error: {other} holds another table (its first line starts 'a,b', not edgerun's {HEADER}): "
        "name a new file, or one that edgerun wrote"
    )
    assert other.read_bytes() == b"a,b\r\n1,2"


def test_a_csv_sink_edgerun_wrote_is_appended_to_and_an_empty_file_gets_the_header(tmp_path: Path) -> None:
    ours = tmp_path / "ours.csv"
    ours.touch()
    for _ in range(2):
        result = run_into(ours)
        assert result.returncode == 0, result.stderr
    lines = ours.read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 3 and all(line.split(",")[4] == "3" for line in lines[1:])


def test_one_file_named_twice_as_a_sink_is_refused_on_the_command_line_and_in_a_config(tmp_path: Path) -> None:
    # Every record went into the file twice.
    out = tmp_path / "out.jsonl"
    again = tmp_path / "sub" / ".." / "out.jsonl"
    (tmp_path / "sub").mkdir()
    result = run_cli(
        "run", str(DIGITS / "digits_int8.tflite"), "--source", str(SAMPLES), "--sink", str(out), "--sink", str(again)
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"edgerun: error: --sink {again} names the file of --sink {out} again: each record would be written twice"
    )
    assert not out.exists()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  d:\n    path: {DIGITS / 'digits_int8.tflite'}\npipelines:\n  p:\n    source: {SAMPLES}\n"
        f"    model: d\n    sinks: [{out}, stdout, jsonl, {again}]\n"
    )
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2, result.stderr
    assert f"sink '{again}' names the file of sink '{out}' again" in result.stderr
