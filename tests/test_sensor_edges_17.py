"""Sensor files refused before the run when their rows cannot be read; named pipes read as streams, devices refused."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgerun
from edgerun.errors import ConfigError, SourceError
from edgerun.sources.sensor import SensorSource
from tests.conftest import ROOT, run_cli

VIBRATION = ROOT / "models" / "vibration"
MODEL = VIBRATION / "vibration_int8.tflite"
NORMAL = VIBRATION / "samples" / "normal.csv"  # t,x,y,z: a time column and 3 channels, 2048 rows


@pytest.fixture(scope="module")
def vibration() -> Iterator[edgerun.Model]:
    with edgerun.load(str(MODEL)) as model:
        yield model


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()


# --- a file whose rows cannot be read as its header says ------------------------------------------


def test_a_semicolon_separated_sensor_file_is_refused_before_the_run_saying_it_may_not_be_comma_separated(
    tmp_path: Path,
) -> None:
    semi = tmp_path / "semi.csv"  # once 2048 lines of "row skipped", then exit 1
    semi.write_text(NORMAL.read_text().replace(",", ";"))
    result = run_cli("run", str(MODEL), "--source", str(semi))
    assert result.returncode == 2, result.stderr
    [line] = _error_lines(result)
    assert line.startswith(f"edgerun: error: {semi}: none of its first 100 data rows can be read (line 2: field 1 ")
    assert "separated by ';', not commas" in line
    assert result.stdout == ""


def test_a_header_split_by_another_separator_than_its_rows_is_refused_before_the_run(tmp_path: Path) -> None:
    mixed = tmp_path / "semih.csv"  # once 300 lines of "has 3 fields, the header has 1", then exit 1
    mixed.write_text("t;x;y;z\n" + "1,2,3\n" * 300)
    result = run_cli("run", str(MODEL), "--source", str(mixed))
    assert result.returncode == 2, result.stderr
    assert _error_lines(result) == [
        f"edgerun: error: {mixed}: none of its first 100 data rows can be read (line 2: has 3 fields, the header "
        "has 1): its first line 't;x;y;z' has ';' and no comma: the file may be separated by ';', not commas, and a "
        "sensor CSV must be comma-separated"
    ]


def test_a_short_file_of_rows_that_cannot_be_read_is_refused_naming_its_first_bad_row(
    tmp_path: Path, vibration: edgerun.Model
) -> None:
    words = tmp_path / "words.csv"  # commas, but no numbers: no separator to suggest
    words.write_text("t,x,y,z\n0,a,b,c\n# a comment is no row\n\n1,d,e,f\n")
    with pytest.raises(ConfigError) as caught:
        SensorSource(str(words), window=256).check_model(vibration)
    assert str(caught.value) == (
        f"{words}: none of its 2 data rows can be read (line 2: field 2 ('x') is not a number: 'a')"
    )
    tabs = tmp_path / "tabs.csv"  # its first line is read as a header: it is no number
    tabs.write_text("0.1\t0.2\t0.3\n0.4\t0.5\t0.6\n")
    with pytest.raises(ConfigError) as caught:
        SensorSource(str(tabs), window=256).check_model(vibration)
    assert str(caught.value) == (
        f"{tabs}: its one data row cannot be read (line 2: field 1 ('0.1\\t0.2\\t0.3') is not a number: "
        "'0.4\\t0.5\\t0.6'): its first line '0.1\\t0.2\\t0.3' has tabs and no comma: the file may be separated "
        "by tabs, not commas, and a sensor CSV must be comma-separated"
    )
    tabs.write_text("0.1\t0.2\t0.3\n")  # that line alone: a header of one channel
    with pytest.raises(ConfigError, match=r"has 1 channel per row, and vibration takes 3 .* separated by tabs, not"):
        SensorSource(str(tabs), window=256).check_model(vibration)
    lines = tmp_path / "semi.jsonl"
    lines.write_text("1;2;3\n" * 5)
    with pytest.raises(
        ConfigError, match=r"^\S+semi.jsonl: none of its 5 data rows can be read \(line 1: not valid JSON\)$"
    ):
        SensorSource(str(lines), window=256).check_model(vibration)


@pytest.mark.parametrize(("header", "channels"), [("x,y", 2), ("time,a,b,c,d", 4), ("t", 0)])
def test_a_header_gives_the_channel_count_even_with_no_data_row_after_it(
    tmp_path: Path, header: str, channels: int
) -> None:
    path = tmp_path / "header.csv"  # once passed by the check, then "ended after 0 readable data rows", exit 1
    path.write_text(header + "\n")
    result = run_cli("run", str(MODEL), "--source", str(path))
    assert result.returncode == 2, result.stderr
    [line] = _error_lines(result)
    assert line.startswith(f"edgerun: error: {path} has {channels} channels per row, and vibration takes 3 (input")


def test_a_header_alone_that_fits_still_ends_the_run_as_an_input_shorter_than_a_window(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("t,x,y,z\n")
    result = run_cli("run", str(MODEL), "--source", str(path))
    assert result.returncode == 1, result.stderr
    assert "the input ended after 0 readable data rows, fewer than one window of 256 rows" in result.stderr


def test_bad_rows_before_good_ones_are_still_reported_row_by_row_and_the_run_goes_on(tmp_path: Path) -> None:
    rows = NORMAL.read_text().splitlines()
    path = tmp_path / "late.csv"
    path.write_text("\n".join([rows[0], *["0;1;2;3"] * 20, *rows[1:257]]) + "\n")
    result = run_cli("run", str(MODEL), "--source", str(path), "--sink", "jsonl")
    assert result.returncode == 1, result.stderr  # the bad rows count as failed frames
    skipped = [line for line in _error_lines(result) if line.endswith("; row skipped")]
    assert len(skipped) == 20
    assert [json.loads(line)["output"][0]["label"] for line in result.stdout.splitlines() if '"output"' in line] == [
        "normal"
    ]


# --- a named pipe, a device ----------------------------------------------------------------------


def _write_later(fifo: Path, chunks: list[str], pause: float = 0.05) -> threading.Thread:
    """A thread that opens ``fifo`` for writing (waiting for its reader), writes ``chunks`` apart, and closes it."""

    def write() -> None:
        try:
            with open(fifo, "w", encoding="utf-8") as out:
                for chunk in chunks:
                    out.write(chunk)
                    out.flush()
                    time.sleep(pause)
        except BrokenPipeError:  # the reader gave up (a failed test): its assertions say why
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def _release(fifo: Path) -> None:
    """Let a reader or a writer still waiting to open ``fifo`` (a failed test) go on, so no thread waits for ever."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never waits; a writer waiting for a reader opens
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader waiting for a writer opens, then ends
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
    finally:
        os.close(reader)


def test_a_named_pipe_is_read_as_a_stream_until_its_writer_closes_it(tmp_path: Path) -> None:
    fifo = tmp_path / "live.csv"  # once "sensor file not found", exit 1
    os.mkfifo(fifo)
    rows = NORMAL.read_text().splitlines(keepends=True)[:257]  # the header and one window
    writer = _write_later(fifo, ["".join(rows[:100]), "".join(rows[100:])[:-30], "".join(rows[100:])[-30:]])
    try:
        result = run_cli("run", str(MODEL), "--source", str(fifo), "--sink", "jsonl")
    finally:
        _release(fifo)
    writer.join(10)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["output"][0]["label"] for line in result.stdout.splitlines()] == ["normal"]


def test_a_named_pipe_keeps_a_line_split_between_two_writes_whole(tmp_path: Path) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    writer = _write_later(fifo, ["[1, 2]\n[3, ", "4]\n", "[5, 6]"])  # the last line without its newline
    try:
        source = SensorSource(str(fifo), window=1)
        got = [f.data.tolist() if f.data is not None else f.error for f in source.frames()]
    finally:
        _release(fifo)
    writer.join(10)
    assert got == [[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]


def test_a_named_pipe_with_no_writer_blocks_neither_the_check_nor_a_stopped_run(
    tmp_path: Path, vibration: edgerun.Model
) -> None:
    fifo = tmp_path / "quiet.csv"
    os.mkfifo(fifo)
    source = SensorSource(str(fifo), window=256)
    checked = threading.Thread(target=source.check_model, args=(vibration,), daemon=True)
    checked.start()
    checked.join(5)
    try:
        assert not checked.is_alive(), "the model check waits for a writer that never comes"
        frames: list[object] = []
        reader = threading.Thread(target=lambda: frames.extend(source.frames()), daemon=True)
        reader.start()
        time.sleep(0.5)
        source.close()  # Ctrl-C, SIGTERM: the run stops though no writer ever came
        reader.join(5)
        assert not reader.is_alive(), "a run reading a named pipe with no writer could not be stopped"
        assert frames == []
    finally:
        _release(fifo)


def test_a_named_pipe_whose_writer_closes_at_once_is_an_input_shorter_than_a_window(tmp_path: Path) -> None:
    fifo = tmp_path / "empty.csv"
    os.mkfifo(fifo)
    writer = _write_later(fifo, [])
    try:
        with pytest.raises(SourceError, match="the input ended after 0 readable data rows"):
            list(SensorSource(str(fifo), window=4).frames())
    finally:
        _release(fifo)
    writer.join(10)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_given_as_a_sensor_file_is_refused_in_one_line_naming_it_a_device(tmp_path: Path, device: str) -> None:
    with pytest.raises(SourceError, match=f"^sensor file is a device, not a file: {device}$"):
        SensorSource(device, window=4)
    link = tmp_path / "device.csv"  # once "sensor file not found"
    link.symlink_to(device)
    result = run_cli("run", str(MODEL), "--source", str(link))
    assert result.returncode == 1
    assert _error_lines(result) == [f"edgerun: error: sensor file is a device, not a file: {link}"]


def test_a_sensor_file_name_too_long_for_the_system_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 300 + ".csv")  # once an OSError's traceback
    result = run_cli("run", str(MODEL), "--source", str(path))
    assert result.returncode == 1
    assert _error_lines(result) == [f"edgerun: error: sensor file cannot be read: {path}: File name too long"]


def test_standard_input_still_reads_as_a_stream() -> None:
    rows = NORMAL.read_text().splitlines(keepends=True)[:257]
    proc = subprocess.run(
        [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", "-", "--sink", "jsonl"],
        cwd=ROOT,
        input="".join(rows),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["output"][0]["label"] for line in proc.stdout.splitlines()] == ["normal"]
