"""Inputs at their edges: image bombs when the application imported cv2 first, resumed paths spelled
another way, sensor lines cut by the writer."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from edgerun.sources.sensor import SensorSource
from tests.conftest import DIGITS, ROOT, SAMPLES

#: Every bomb declares 9000 x 9000 pixels: 81 Mpx, over the 64 Mpx limit.
SIDE = 9000
LIMIT_MESSAGE = "image has more than 67,108,864 pixels; not decoded"


def _env() -> dict[str, str]:
    """This checkout's edgerun in a child process, whatever its working directory, and OpenCV's limit
    not set (edgerun sets it in this process's environment when it imports cv2 here)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    path = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _python(script: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def _edgerun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgerun", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


# --- image bombs when the application imported cv2 first ---------------------------------------


def _png_bomb(side: int) -> bytes:
    """A real, complete gray PNG of side x side black pixels: small encoded, side**2 bytes decoded."""
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_DECODE = """
import logging, sys
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
if sys.argv[2] == "cv2 first":
    import cv2  # the application's own import, before edgerun's
import edgerun
from edgerun.errors import InputError
from edgerun.processing.image import decode_image
for _ in range(2):
    try:
        print(decode_image(open(sys.argv[1], "rb").read(), "bomb.png").shape)
    except InputError as exc:
        print(exc)
"""


def test_an_application_that_imported_cv2_first_is_told_once_which_limit_opencv_keeps(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(SIDE))
    first = _python(_DECODE, str(bomb), "edgerun first")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"bomb.png: {LIMIT_MESSAGE}"] * 2
    assert first.stderr == ""
    late = _python(_DECODE, str(bomb), "cv2 first")
    assert late.returncode == 0, late.stderr
    assert late.stdout.splitlines() == [f"({SIDE}, {SIDE}, 3)"] * 2  # OpenCV's own 1 Gpx limit: it decodes
    assert late.stderr.splitlines() == [  # once nothing: edgerun's 64 Mpx claimed, and not in force
        "WARNING edgerun.opencv: cv2 was imported before edgerun: OpenCV decodes images of up to 1,073,741,824 "
        "pixels, not edgerun's 67,108,864; set OPENCV_IO_MAX_IMAGE_PIXELS before importing cv2 to bound them"
    ]


def test_an_application_that_imported_cv2_first_with_its_own_limit_keeps_it_without_a_warning(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(SIDE))
    proc = subprocess.run(
        [sys.executable, "-c", _DECODE, str(bomb), "cv2 first"],
        cwd=ROOT,
        env={**_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(SIDE * SIDE - 1)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"bomb.png: image has more than {SIDE * SIDE - 1:,} pixels; not decoded"] * 2
    assert proc.stderr == ""


# --- predict --resume: one file, however its path is spelled ------------------------------------


def _samples(folder: Path, digits: range) -> None:
    (folder / "imgs").mkdir()
    for d in digits:
        shutil.copy(SAMPLES / f"digit_{d}.png", folder / "imgs" / f"digit_{d}.png")


def _recorded(path: Path) -> list[str]:
    return [json.loads(line)["input"] for line in path.read_text().splitlines()]


def test_resume_skips_inputs_done_under_another_spelling_of_their_path(tmp_path: Path) -> None:
    _samples(tmp_path, range(3))
    model = str(DIGITS / "digits_fp32.onnx")
    first = _edgerun("predict", model, "imgs/digit_0.png", "imgs/digit_1.png", "--output", "out.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    absolute = str(tmp_path / "imgs" / "digit_2.png")
    again = ["./imgs/digit_0.png", "imgs//digit_1.png", absolute]
    resumed = _edgerun("predict", model, *again, "--output", "out.jsonl", "--resume", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["input"] for line in resumed.stdout.splitlines()] == [absolute]
    assert _recorded(tmp_path / "out.jsonl") == ["imgs/digit_0.png", "imgs/digit_1.png", absolute]


def test_resume_over_the_folder_skips_the_files_done_by_name_with_a_leading_dot(tmp_path: Path) -> None:
    _samples(tmp_path, range(3))
    model = str(DIGITS / "digits_fp32.onnx")
    first = _edgerun("predict", model, "./imgs/digit_1.png", "--output", "out.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = _edgerun("predict", model, "imgs", "--output", "out.jsonl", "--resume", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming, 1 input(s) already done" in resumed.stdout
    assert _recorded(tmp_path / "out.jsonl") == ["./imgs/digit_1.png", "imgs/digit_0.png", "imgs/digit_2.png"]


def test_resume_refuses_a_file_whose_recorded_input_is_not_a_path(tmp_path: Path) -> None:
    _samples(tmp_path, range(1))
    out = tmp_path / "out.jsonl"
    out.write_text('{"input": 7, "model": "digits", "version": "1.0.0", "output": []}\n')
    model = str(DIGITS / "digits_fp32.onnx")
    resumed = _edgerun("predict", model, "imgs/digit_0.png", "--output", "out.jsonl", "--resume", cwd=tmp_path)
    assert resumed.returncode == 2
    assert resumed.stderr.splitlines() == [
        "edgerun: error: out.jsonl line 1 is not an edgerun record; cannot resume from it"
    ]  # once a traceback (a number has no path to compare)
    assert _recorded(out) == [7]


# --- sensor lines cut by their writer ------------------------------------------------------------


def _rows(source: SensorSource) -> list[object]:
    return [f.data.tolist()[0] if f.error is None else f.error for f in source.frames()]


def test_a_static_sensor_file_whose_last_line_lacks_its_newline_reads_that_line(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("x,y,z\n0.1,0.2,0.3\n0.4,0.5,0.625")
    (tmp_path / "s.jsonl").write_text("[0.1,0.2,0.3]\n[0.4,0.5,0.625]")
    for name in ("s.csv", "s.jsonl"):
        rows = _rows(SensorSource(str(tmp_path / name), window=1))
        assert rows == [pytest.approx([0.1, 0.2, 0.3]), pytest.approx([0.4, 0.5, 0.625])], name


def test_a_cut_last_line_that_does_not_parse_is_one_bad_row_naming_its_line(tmp_path: Path) -> None:
    cases = {
        "s.csv": ("x,y,z\n0.1,0.2,0.3\n0.4,0.5", "line 3: has 2 fields, the header has 3"),
        "n.csv": ("0.1,0.2,0.3\n0.4,0.5", "line 2: field 3 is missing"),
        "s.jsonl": ("[0.1,0.2,0.3]\n[0.4,0.5,0.", "line 2: not valid JSON"),
        "o.jsonl": ('{"x": 0.1, "y": 0.2}\n{"x": 0.4, "y', "line 2: not valid JSON"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        source = SensorSource(str(tmp_path / name), window=1)
        rows = _rows(source)
        assert rows[1:] == [f"{tmp_path / name} {message}; row skipped"], name
        assert source.bad_rows == 1


def test_a_sensor_file_written_on_after_its_cut_last_line_was_met_is_not_split_into_two_rows(tmp_path: Path) -> None:
    # The reader met the end of the file in the middle of a line; the writer then wrote the rest. The
    # line ended the reading there: its rest must not come back as a bad row of its own (line 4) with
    # the reading going on past the end it met.
    path = tmp_path / "growing.csv"
    path.write_text("x,y,z\n0.1,0.2,0.3\n0.4,0.5,0.")
    rows: list[object] = []
    source = SensorSource(str(path), window=1)
    for frame in source.frames():
        rows.append(frame.data.tolist()[0] if frame.error is None else frame.error)
        if len(rows) == 2:
            with path.open("a") as writer:
                writer.write("625\n0.7,0.8,0.9\n")
    assert source.bad_rows == 0
    assert rows == [pytest.approx([0.1, 0.2, 0.3]), pytest.approx([0.4, 0.5, 0.0])]


_STDIN_ROWS = """
import json
from edgerun.sources.sensor import SensorSource
for frame in SensorSource("-", window=1).frames():
    print(json.dumps(frame.data.tolist()[0] if frame.error is None else frame.error), flush=True)
"""


def test_a_standard_input_line_sent_in_two_pieces_is_parsed_once_its_newline_comes() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STDIN_ROWS],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write("x,y,z\n0.1,0.2,0.3\n0.4,0.5,0.")  # cut in the middle of a number
    proc.stdin.flush()
    time.sleep(0.5)  # the reader sees the cut line alone first
    stdout, stderr = proc.communicate("625\n0.7,0.8,0.9", timeout=60)  # the last line without its newline
    assert proc.returncode == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert rows == [pytest.approx([0.1, 0.2, 0.3]), pytest.approx([0.4, 0.5, 0.625]), pytest.approx([0.7, 0.8, 0.9])]


# --- .npy files whose header numpy's parser chokes on ----------------------------------------------


def _npy_with_header(header: bytes) -> bytes:
    padded = header + b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + bytes(16)


BROKEN_HEADERS = [b"'''\x00", b"{'descr': '<f4', }\x00'''"]  # tokenize.TokenError out of np.load


@pytest.mark.parametrize("header", BROKEN_HEADERS, ids=["unclosed-quote", "nul-in-dict"])
def test_a_npy_file_with_a_header_numpy_cannot_tokenize_is_one_error_line(tmp_path: Path, header: bytes) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_bytes(_npy_with_header(header))
    result = _edgerun("predict", str(DIGITS / "digits_fp32.onnx"), str(bad), str(SAMPLES / "digit_3.png"), cwd=ROOT)
    assert result.returncode == 1, result.stderr  # once a traceback, and the image after it never ran
    assert result.stderr.splitlines() == [f"edgerun: error: {bad}: not a plain numeric .npy array (malformed header)"]
    assert "digit_3.png" in result.stdout


@pytest.mark.parametrize("header", BROKEN_HEADERS, ids=["unclosed-quote", "nul-in-dict"])
def test_an_mqtt_message_of_a_npy_numpy_cannot_tokenize_is_a_plain_decoding_error(header: bytes) -> None:
    import base64

    from edgerun.sources.mqtt import decode_message

    with pytest.raises(ValueError, match=r"base64 \.npy that does not load"):  # once TokenError: the source died
        decode_message(base64.b64encode(_npy_with_header(header)), 1 << 20)
