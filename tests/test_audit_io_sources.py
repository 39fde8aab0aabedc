"""Bad input into the sources: sensor rows, MQTT messages, and file inputs, read for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgerun.sources.files import FileSource
from edgerun.sources.mqtt import MqttSource, decode_message
from edgerun.sources.sensor import MAX_ROW_CHARS, SensorSource
from tests.conftest import ROOT, SAMPLES, Broker
from tests.test_sources import frames_while_publishing

VIBRATION = ROOT / "models" / "vibration"


def _frames(path: Path, text: str, window: int = 1) -> list[tuple[str | None, list[list[float]] | None]]:
    path.write_text(text)
    return [
        (f.error, None if f.data is None else f.data.tolist()) for f in SensorSource(str(path), window=window).frames()
    ]


def test_a_json_lines_integer_no_float_holds_is_a_bad_row_and_the_run_goes_on(tmp_path: Path) -> None:
    huge = "9" * 400  # once an OverflowError out of the source: the run stopped with a traceback
    for name, row in (("rows.jsonl", f"[{huge}, 1]"), ("named.jsonl", f'{{"x": {huge}, "y": 1}}')):
        first = "[1, 2]" if name == "rows.jsonl" else '{"x": 1, "y": 2}'
        last = "[3, 4]" if name == "rows.jsonl" else '{"x": 3, "y": 4}'
        got = _frames(tmp_path / name, f"{first}\n{row}\n{last}\n")
        assert got == [
            (None, [[1.0, 2.0]]),
            (f"{tmp_path / name} line 2: has a value beyond float32's range; row skipped", None),
            (None, [[3.0, 4.0]]),
        ]


def test_a_reading_beyond_float32_range_is_a_bad_row_not_an_infinite_window(tmp_path: Path) -> None:
    csv = tmp_path / "big.csv"  # once a window holding inf, refused whole by the model with no row named
    assert _frames(csv, "1,2\n3,-1e39\n5,6\n") == [
        (None, [[1.0, 2.0]]),
        (f"{csv} line 2: field 2 is beyond float32's range: '-1e39'; row skipped", None),
        (None, [[5.0, 6.0]]),
    ]
    rows = tmp_path / "big.jsonl"
    assert _frames(rows, "[1, 2]\n[1e39, 4]\n[5, 6]\n")[1] == (
        f"{rows} line 2: has a value beyond float32's range; row skipped",
        None,
    )
    assert _frames(tmp_path / "edge.csv", "3.4e38,-3.4e38\n")[0][0] is None  # float32's own largest values pass


def test_a_csv_row_with_more_fields_than_the_first_is_a_bad_row_not_cut_to_fit(tmp_path: Path) -> None:
    csv = tmp_path / "ragged.csv"  # no header: the extra field was dropped and the row read as if whole
    assert _frames(csv, "1,2\n3,4,5\n6,7\n") == [
        (None, [[1.0, 2.0]]),
        (f"{csv} line 2: has 3 fields, earlier rows have 2; row skipped", None),
        (None, [[6.0, 7.0]]),
    ]


def test_a_row_longer_than_the_limit_is_skipped_and_the_rows_after_it_still_count(tmp_path: Path) -> None:
    csv = tmp_path / "long.csv"
    long_row = "1," * MAX_ROW_CHARS + "1"
    got = _frames(csv, f"1,2\n{long_row}\n3,4\n{long_row}")  # in the middle, and last without its newline
    assert got == [
        (None, [[1.0, 2.0]]),
        (f"{csv} line 2: longer than {MAX_ROW_CHARS} characters; row skipped", None),
        (None, [[3.0, 4.0]]),
        (f"{csv} line 4: longer than {MAX_ROW_CHARS} characters; row skipped", None),
    ]


def test_a_row_on_standard_input_longer_than_the_limit_is_dropped_as_it_comes(tmp_path: Path) -> None:
    """A sender that writes 16 MiB without a newline: once held (and copied per 64 KiB read) whole."""
    rows = (VIBRATION / "samples" / "normal.csv").read_text().splitlines()[1:]
    good = "\n".join(",".join(r.split(",")[1:]) for r in rows[:256]) + "\n"
    cmd = [sys.executable, "-m", "edgerun", "run", str(VIBRATION / "vibration_int8.tflite"), "--source", "-"]
    data = b"0.5," * (64 * 65536) + b"0.5\n" + good.encode()  # 16 MiB of one row, then one window
    proc = subprocess.run(cmd, cwd=ROOT, input=data, capture_output=True, timeout=120)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 1, err  # one bad row: the run exits 1, having classified the window after it
    assert (
        err.decode().splitlines()[0] == f"edgerun: error: - line 1: longer than {MAX_ROW_CHARS} characters; row skipped"
    )
    assert "Traceback" not in err.decode()
    assert "1 ok, 1 failed" in err.decode() or b"1 ok, 1 failed" in out


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'["1", "2", "3"]', "not a rectangular JSON array of numbers"),  # once read as [1, 2, 3]
        (b"[true, false, true]", "not a rectangular JSON array of numbers"),  # once [1, 0, 1]
        (b"[true, 0.5]", "not a rectangular JSON array of numbers"),  # once [1.0, 0.5]: numpy makes it float
        (b"[[0.5, null], [1, 2]]", "not a rectangular JSON array of numbers"),
        (b"[null, 1, 2]", "not a rectangular JSON array of numbers"),  # once NaN, refused later without a reason
        (b"[1, " + b"9" * 400 + b", 3]", "NaN, infinite values or values beyond float32's range"),  # once OverflowError
        (b"[1e39, 1, 2]", "NaN, infinite values or values beyond float32's range"),  # once inf, and a warning
        (b"[NaN, 1, 2]", "NaN, infinite values or values beyond float32's range"),
    ],
)
def test_a_json_message_that_is_not_an_array_of_float32_numbers_is_a_decoding_error(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_message(payload, 1000)


def test_mqtt_messages_of_strings_or_huge_numbers_are_error_frames_and_the_source_keeps_receiving(
    broker: Broker,
) -> None:
    topic = f"test/audit/{time.monotonic_ns()}"
    source = MqttSource(f"{broker.url}/{topic}", queue=64)
    payloads = [b'["1", "2", "3"]', b"[1, " + b"9" * 400 + b", 3]", b"[1.0, 2.0, 3.0]"]
    got = frames_while_publishing(source, broker.port, topic, payloads, 6)
    assert len(got) >= 6
    reasons = (": not a rectangular JSON array of numbers", ": a JSON array with NaN, infinite values or values beyond")
    for frame in got:
        if frame.error is None:
            assert frame.data.tolist() == [1.0, 2.0, 3.0]  # never the strings read as numbers
        else:
            assert any(reason in frame.error for reason in reasons), frame.error
    assert any(f.error is None for f in got) and source.bad_messages >= 2


def test_an_input_named_twice_is_read_once(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        (folder / name).write_bytes((SAMPLES / "digit_3.png").read_bytes())
    source = FileSource([f"{folder}/**", str(folder / "a.png"), str(folder)])  # '**' matches the folder and each file
    assert [r.path for r in source.refs] == [str(folder / "a.png"), str(folder / "sub" / "b.png")]
    assert len(list(source.frames())) == 2


def test_a_device_or_a_link_loop_given_as_an_input_is_an_error_record_naming_it(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    os.symlink(loop.name, loop)
    refs = FileSource(["/dev/zero", str(loop), str(SAMPLES / "digit_3.png")]).refs  # /dev/zero was read without end
    assert [(r.path, r.error) for r in refs] == [
        ("/dev/zero", "/dev/zero: is a device, not a file"),
        (str(loop), f"{loop}: cannot read (Too many levels of symbolic links)"),
        (str(SAMPLES / "digit_3.png"), None),
    ]
    pipe = subprocess.run(  # a pipe is still an input: read to its end
        [sys.executable, "-m", "edgerun", "predict", str(ROOT / "models/digits/digits_int8.tflite"), "/dev/stdin"],
        cwd=ROOT,
        input=(SAMPLES / "digit_3.png").read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert pipe.returncode == 0, pipe.stderr
    assert json.dumps("/dev/stdin")[1:-1] in pipe.stdout.decode()
