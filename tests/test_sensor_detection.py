"""A sensor source's format follows its content where its name says another or nothing.

A named pipe called ``accel.csv`` that was fed JSON Lines was read as CSV: every row failed
(``p.csv line 2: field 1 ('[-0.01959') is not a number ...; row skipped``, 2,047 of them) and the
run ended with exit 1 after 0 readable rows. A regular file with no ``.csv``/``.jsonl`` suffix
holding readings (``readings``, ``/dev/stdin`` redirected from one) was read as an image and failed
as one (``vibration has no image preprocessing``, exit 1). Now the suffix names the format unless
the first data row plainly is the other one, and a regular file with any other suffix (or none)
whose first data row is a reading is a sensor file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import DIGITS, ROOT, run_cli
from tests.test_daemon_named_pipe import _write

MODEL = ROOT / "models/vibration/vibration_int8.tflite"
SAMPLE = ROOT / "models/vibration/samples/bearing_fault.csv"
WINDOW = 256  # the vibration model's input: [1, 256, 3]; the sample has 2,048 rows, 8 windows


def _arrays() -> str:
    """The sample as JSON Lines arrays, ``[x, y, z]``, one line each."""
    with SAMPLE.open(newline="") as f:
        return "".join(json.dumps([float(r["x"]), float(r["y"]), float(r["z"])]) + "\n" for r in csv.DictReader(f))


def _labels(stdout: str) -> list[str]:
    """Each result's top label from ``--sink jsonl``'s lines (error records left out)."""
    return [r["output"][0]["label"] for r in map(json.loads, stdout.splitlines()) if "output" in r]


def _run(*source: str, stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``edgerun run MODEL --source ... --sink jsonl`` as a real process, its standard input ``stdin`` (a file)."""
    with open(stdin if stdin is not None else os.devnull) as given:
        return subprocess.run(
            [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", *source, "--sink", "jsonl"],
            cwd=ROOT,
            stdin=given,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _run_on_pipe(fifo: Path, text: str) -> subprocess.CompletedProcess[str]:
    """The CLI run on the named pipe ``fifo`` while a thread writes ``text`` into it (each wait bounded)."""
    failed: list[BaseException] = []

    def write() -> None:
        try:
            _write(fifo, text, wait_s=60)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failed.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        done = _run(str(fifo))
    finally:
        writer.join(timeout=70)
    assert not writer.is_alive() and not failed, failed
    return done


def test_a_named_pipe_named_csv_that_is_fed_json_lines_is_read_as_json_lines(tmp_path: Path) -> None:
    fifo = tmp_path / "accel.csv"
    os.mkfifo(fifo)
    done = _run_on_pipe(fifo, _arrays())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "row skipped" not in done.stderr
    assert _labels(done.stdout) == ["bearing_fault"] * 8


def test_a_named_pipe_named_jsonl_that_is_fed_csv_with_a_header_is_read_as_csv(tmp_path: Path) -> None:
    fifo = tmp_path / "accel.jsonl"
    os.mkfifo(fifo)
    done = _run_on_pipe(fifo, SAMPLE.read_text())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "row skipped" not in done.stderr
    assert _labels(done.stdout) == ["bearing_fault"] * 8


def test_a_json_lines_pipe_whose_first_line_is_a_banner_stays_json_lines_and_reports_the_banner(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "accel.jsonl"
    os.mkfifo(fifo)
    done = _run_on_pipe(fifo, "sensor 4 starting, please wait\n" + _arrays())
    assert done.returncode == 1  # the banner is a bad row, as it always was; every window still ran
    assert "accel.jsonl line 1: not valid JSON; row skipped" in done.stderr
    assert done.stderr.count("row skipped") == 1
    assert _labels(done.stdout) == ["bearing_fault"] * 8


def test_a_csv_file_that_holds_json_lines_is_read_as_json_lines(tmp_path: Path) -> None:
    named = tmp_path / "readings.csv"
    named.write_text(_arrays())
    done = _run(str(named))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _labels(done.stdout) == ["bearing_fault"] * 8


def test_a_csv_whose_header_names_start_with_a_bracket_is_still_csv(tmp_path: Path) -> None:
    from edgerun.sources.sensor import SensorSource

    lines = SAMPLE.read_text().splitlines(keepends=True)
    named = tmp_path / "readings.csv"
    named.write_text("[t],[x],[y],[z]\n" + "".join(lines[1 : WINDOW + 1]))  # not JSON: a header, as before
    frames = list(SensorSource(str(named), window=WINDOW).frames())
    assert [f.error for f in frames] == [None]
    assert frames[0].data is not None and frames[0].data.shape == (WINDOW, 4)  # "[t]" is not the time column


def test_a_regular_file_with_no_sensor_suffix_is_read_by_its_content(tmp_path: Path) -> None:
    table, arrays, logged = tmp_path / "readings", tmp_path / "readings-json", tmp_path / "accel.log"
    shutil.copy(SAMPLE, table)
    arrays.write_text(_arrays())
    logged.write_text("# logged by the bench rig\n\n" + SAMPLE.read_text())
    for path in (table, arrays, logged):
        done = _run(str(path), "--window", str(WINDOW))
        assert done.returncode == 0, (path.name, done.stderr[-2000:])
        assert "row skipped" not in done.stderr
        assert _labels(done.stdout) == ["bearing_fault"] * 8, path.name


def test_standard_input_redirected_from_a_file_with_no_suffix_is_read_by_its_content(tmp_path: Path) -> None:
    table, arrays = tmp_path / "readings", tmp_path / "readings-json"
    shutil.copy(SAMPLE, table)
    arrays.write_text(_arrays())
    for given in (table, arrays):
        for source in ("-", "/dev/stdin"):  # /dev/stdin was read as an image and failed as one
            done = _run(source, stdin=given)
            assert done.returncode == 0, (given.name, source, done.stderr[-2000:])
            assert _labels(done.stdout) == ["bearing_fault"] * 8, (given.name, source)


def test_a_file_with_no_suffix_that_holds_no_readings_is_still_an_image_input(tmp_path: Path) -> None:
    from edgerun.sources.sensor import is_sensor_spec

    image = tmp_path / "digit"  # a PNG without its suffix: still an image
    shutil.copy(DIGITS / "samples" / "digit_3.png", image)
    done = run_cli("run", str(DIGITS / "digits_int8.tflite"), "--source", str(image), "--sink", "jsonl")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _labels(done.stdout) == ["3"]
    prose, header_alone, pgm = tmp_path / "notes", tmp_path / "header", tmp_path / "plain-pgm"
    prose.write_text("important user notes\n1, 2, 3\n")
    header_alone.write_text("t,x,y,z\n")
    pgm.write_text("P2\n# a plain PGM\n3 2\n255\n0 1 2\n3 4 5\n")  # its first row after the "header" is no reading
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # looked at, never opened: opening it would wait for a writer
    for path in (image, prose, header_alone, pgm, fifo, tmp_path, tmp_path / "missing"):
        assert not is_sensor_spec(str(path)), path.name
    unknown = run_cli("run", str(MODEL), "--source", str(prose))
    assert unknown.returncode == 1 and "vibration has no image preprocessing" in unknown.stderr  # as before


def test_a_file_of_readings_among_images_is_one_failed_input_not_a_refused_source(tmp_path: Path) -> None:
    """Looked into alone, a suffix-less file of readings is a sensor source; among several files (a glob, a
    folder's worth) it is what it is named as, an image input that fails, and the images still run: it was
    taken for a sensor file and the whole glob refused (exit 2), while ``predict`` over the same glob ran."""
    folder = tmp_path / "g"
    folder.mkdir()
    for digit in (0, 1):
        shutil.copy(DIGITS / "samples" / f"digit_{digit}.png", folder / f"digit_{digit}.png")
    (folder / "NOTES").write_text("1,2,3\n4,5,6\n")
    done = run_cli("run", str(DIGITS / "digits_int8.tflite"), "--source", f"{folder}/*", "--sink", "jsonl")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "is a sensor file" not in done.stderr and "NOTES" in done.stderr
    assert _labels(done.stdout) == ["0", "1"]
