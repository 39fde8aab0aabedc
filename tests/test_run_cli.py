"""`edgerun run` and batch `edgerun predict` as real processes: sensors, video, signals, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLES, run_cli
from tests.test_pipeline import damaged_video
from tests.test_sources import make_video

VIBRATION = ROOT / "models" / "vibration"
CLASSES = ["normal", "imbalance", "misalignment", "bearing_fault", "looseness"]


@pytest.mark.parametrize("model", ["vibration_int8.tflite", "vibration_fp32.onnx"])
def test_the_documented_vibration_example_classifies_every_sample_window(model: str, tmp_path: Path) -> None:
    for name in CLASSES:
        out = tmp_path / f"{name}.jsonl"
        result = run_cli(
            "run", str(VIBRATION / model), "--source", str(VIBRATION / "samples" / f"{name}.csv"), "--sink", str(out)
        )
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 8
        assert {r["output"][0]["label"] for r in records} == {name}
        assert "8 frames (8 ok, 0 failed" in result.stderr


def test_a_window_the_model_does_not_accept_is_refused_before_starting() -> None:
    result = run_cli(
        "run",
        str(VIBRATION / "vibration_int8.tflite"),
        "--source",
        str(VIBRATION / "samples" / "normal.csv"),
        "--window",
        "100",
    )
    assert result.returncode == 2
    assert "window of 100 rows does not fit vibration" in result.stderr and "Traceback" not in result.stderr
    assert "it takes 256 rows" in result.stderr


def test_bad_csv_rows_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    lines = (VIBRATION / "samples" / "imbalance.csv").read_text().splitlines()
    lines[10] = "0.0100,0.1,oops,0.2"
    lines[20] = "0.0200,0.1,,0.2"
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("run", str(VIBRATION / "vibration_fp32.tflite"), "--source", str(path), "--sink", "jsonl")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")]
    assert len(errors) == 2 and "line 11" in errors[0] and "line 21" in errors[1]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum("error" in r for r in records) == 2
    assert sum("output" in r for r in records) >= 7


def test_sigterm_stops_a_stdin_sensor_run_cleanly_with_outputs_flushed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgerun",
            "run",
            str(VIBRATION / "vibration_int8.tflite"),
            "--source",
            "-",
            "--sink",
            str(out),
            "--sink",
            str(tmp_path / "out.csv"),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    rows = (VIBRATION / "samples" / "misalignment.csv").read_text().splitlines()
    proc.stdin.write("\n".join(rows[: 1 + 256 * 3]) + "\n")  # header and three windows; stdin stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"][0]["label"] for r in records] == ["misalignment"] * 3
    csv_rows = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_rows[0].startswith("input,model,version") and len(csv_rows) == 4


def test_sigterm_stops_a_stdin_sensor_run_whose_sender_has_gone_quiet(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "edgerun", "run", str(VIBRATION / "vibration_int8.tflite"), "--source", "-"]
    proc = subprocess.Popen(
        [*command, "--sink", str(out)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        text = "\n".join((VIBRATION / "samples" / "looseness.csv").read_text().splitlines()[:257]) + "\n"
        cut = len(text) // 2 + 3  # in the middle of a line: the reader keeps the partial line
        for part in (text[:cut], text[cut:]):
            proc.stdin.write(part)
            proc.stdin.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # standard input stays open, and nothing more comes
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not stop on SIGTERM while its standard input was open and quiet")
        stderr = proc.stderr.read()
        assert proc.returncode == 0, stderr
        assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
        assert [json.loads(line)["output"][0]["label"] for line in out.read_text().splitlines()] == ["looseness"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stderr.close()


def test_the_last_stdin_row_counts_without_its_newline() -> None:
    rows = (VIBRATION / "samples" / "normal.csv").read_text().splitlines()[:257]
    result = subprocess.run(
        [sys.executable, "-m", "edgerun", "run", str(VIBRATION / "vibration_int8.tflite"), "--source", "-"],
        cwd=ROOT,
        input="\n".join(rows),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "1 frames (1 ok, 0 failed" in result.stderr


def test_a_model_that_does_not_take_sensor_windows_is_refused_before_starting() -> None:
    csv = VIBRATION / "samples" / "normal.csv"
    result = run_cli("run", str(ROOT / "models" / "digits" / "digits_int8.onnx"), "--source", str(csv))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edgerun: error: digits does not take sensor windows: its input tensor input [N,8,8,1] float32 is not "
        f"[batch, rows, channels], and {csv} gives windows of [rows, channels]"
    ]


def test_a_video_into_a_model_that_takes_no_images_is_refused_before_starting(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", frames=4)
    result = run_cli("run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(video))
    assert result.returncode == 2  # once exit 1 after one "does not fit" line per frame: forever, for a camera
    assert result.stderr.splitlines() == [
        "edgerun: error: vibration takes no images: its input tensor serving_default_input:0 [1,256,3] int8 "
        "(scale 0.00914533, zero point -13) has no image preprocessing (its card has no preprocess section), "
        f"and {video} gives video frames"
    ]


@pytest.mark.parametrize("header", [True, False])
def test_a_sensor_file_with_another_channel_count_than_the_model_is_refused_before_starting(
    tmp_path: Path, header: bool
) -> None:
    rows = (VIBRATION / "samples" / "normal.csv").read_text().splitlines()
    two = tmp_path / "two.csv"
    two.write_text("".join(",".join(r.split(",")[1:3]) + "\n" for r in rows[0 if header else 1 :]))
    result = run_cli("run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(two))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"edgerun: error: {two} has 2 channels per row, and vibration takes 3")
    assert "serving_default_input:0 [1,256,3]" in lines[0]


def test_an_annotated_video_plays_at_the_requested_rate_else_at_the_source_rate(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", frames=4)  # 30 frames per second
    model = str(ROOT / "models" / "digits" / "digits_int8.onnx")
    for fps, expected in ((["--fps", "50"], 50.0), ([], 30.0)):
        out = tmp_path / f"out{len(fps)}.avi"
        result = run_cli("run", model, "--source", str(video), "--sink", str(out), *fps)
        assert result.returncode == 0, result.stderr
        assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == expected


def test_a_video_runs_into_an_annotated_video_and_a_jsonl_file(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", frames=20, size=(96, 64))
    result = run_cli(
        "run",
        str(ROOT / "models" / "digits" / "digits_int8.onnx"),
        "--source",
        str(video),
        "--sink",
        str(tmp_path / "out.avi"),
        "--sink",
        str(tmp_path / "out.jsonl"),
        "--sink",
        str(tmp_path / "frames") + "/",
        "--max-frames",
        "15",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames"] == 15 and summary["stopped_by"] == "max frames"
    assert set(summary["stages_ms"]) == {"pre", "infer", "post", "total"}
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 15
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 15
    ok, frame = cap.read()
    assert ok and frame.shape == (64, 96, 3)
    assert frame[:10, :30].std() > 5  # the label box was drawn over the flat frame
    assert len(list((tmp_path / "frames").glob("*.jpg"))) == 15


def test_a_video_that_does_not_exist_is_one_clear_line() -> None:
    result = run_cli("run", str(ROOT / "models" / "digits" / "digits_int8.onnx"), "--source", "nowhere.mp4")
    assert result.returncode == 1
    assert result.stderr.strip() == "edgerun: error: video not found: nowhere.mp4"


def test_an_undecodable_video_is_one_line_without_opencv_or_ffmpeg_chatter(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)  # an mp4 header, no movie
    model = str(ROOT / "models" / "digits" / "digits_int8.onnx")
    result = run_cli("run", model, "--source", str(garbage))
    assert result.returncode == 1
    assert result.stderr.strip() == f"edgerun: error: cannot open video {garbage}: no decoder accepts it"
    # OpenCV's and FFmpeg's own lines are there for whoever asks for them
    chatty = run_cli("run", model, "--source", str(garbage), env={**os.environ, "OPENCV_LOG_LEVEL": "WARNING"})
    assert "moov atom not found" in chatty.stderr and chatty.stderr.strip().endswith("no decoder accepts it")


def test_a_negative_decoder_thread_count_is_one_clear_line(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", frames=2)
    model = str(ROOT / "models" / "digits" / "digits_int8.onnx")
    result = run_cli("run", model, "--source", str(video), "--decode-threads", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "edgerun: error: --decode-threads must be 0 (the decoder's choice) or more, got -1"
    result = run_cli("run", model, "--source", str(video), "--decode-threads", "0", "--sink", "jsonl")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_predict_in_batches_matches_one_by_one(tmp_path: Path) -> None:
    model = str(ROOT / "models" / "digits" / "digits_fp32.onnx")
    one = run_cli("predict", model, str(SAMPLES), "--json")
    many = run_cli("predict", model, str(SAMPLES), "--json", "--batch-size", "4")
    strip = [{k: v for k, v in json.loads(line).items() if k != "latency_ms"} for line in one.stdout.splitlines()]
    assert strip == [
        {k: v for k, v in json.loads(line).items() if k != "latency_ms"} for line in many.stdout.splitlines()
    ]


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir()
    names = []
    for i in range(n):
        path = folder / f"{i:05d}_{i % 10}.png"
        path.write_bytes((SAMPLES / f"digit_{i % 10}.png").read_bytes())
        names.append(str(path))
    return names


def test_a_killed_batch_run_resumes_and_every_input_appears_exactly_once(tmp_path: Path) -> None:
    images = _images(tmp_path / "imgs", 3000)
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "edgerun",
        "predict",
        str(ROOT / "models" / "digits" / "digits_int8.tflite"),
        str(tmp_path / "imgs"),
        "--output",
        str(out),
        "--json",
        "--resume",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.wait()
    first = out.read_text().count("\n")
    assert 0 < first < 3000, "the run must be killed half-way for this test to mean anything"
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = [r["input"] for r in records]
    assert sorted(inputs) == images  # every input exactly once
    assert all(r["output"][0]["label"] == Path(r["input"]).stem[-1] for r in records)


def test_resume_needs_an_output_file_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    model = str(ROOT / "models" / "digits" / "digits_int8.tflite")
    result = run_cli("predict", model, str(SAMPLES), "--resume")
    assert result.returncode == 2 and "--resume needs --output" in result.stderr
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"hello": 1}\n')
    result = run_cli("predict", model, str(SAMPLES), "--resume", "--output", str(foreign))
    assert result.returncode == 2 and "line 1 is not an edgerun record" in result.stderr


def test_predict_reads_npy_windows_for_the_sensor_model(tmp_path: Path) -> None:
    rows = np.loadtxt(VIBRATION / "samples" / "looseness.csv", delimiter=",", skiprows=1, dtype=np.float32)
    np.save(tmp_path / "w.npy", rows[:256, 1:])
    result = run_cli("predict", str(VIBRATION / "vibration_int8.onnx"), str(tmp_path / "w.npy"), "--json")
    assert json.loads(result.stdout)["output"][0]["label"] == "looseness"
    assert os.path.exists(tmp_path / "w.npy")


@pytest.mark.parametrize("sink", ["vib.mp4", "vibimgs/"])
def test_a_sensor_source_into_an_annotated_sink_is_refused_before_anything_is_written(
    tmp_path: Path, sink: str
) -> None:
    csv = VIBRATION / "samples" / "normal.csv"
    result = run_cli(
        "run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(csv), "--sink", sink, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edgerun: error: --sink {sink}: an annotated sink needs image frames, and the sensor source {csv} gives "
        "windows of readings, with no image to draw on (use stdout, jsonl, FILE.jsonl or FILE.csv)"
    ]
    assert list(tmp_path.iterdir()) == []  # no video, no empty folder


def test_an_array_input_among_images_is_one_warning_per_annotated_sink_and_the_run_still_succeeds(
    tmp_path: Path,
) -> None:
    model = str(ROOT / "models" / "digits" / "digits_int8.tflite")
    result = run_cli("run", model, "--source", str(SAMPLES), "--sink", "out.avi", "--sink", "outimgs/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "11 frames (11 ok, 0 failed" in result.stderr
    npy = SAMPLES / "digit_7.npy"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        f"WARNING edgerun.sinks.annotate: out.avi: {npy} has no image to draw on; not written",
        f"WARNING edgerun.sinks.annotate: outimgs/: {npy} has no image to draw on; not written",
    ]
    assert int(cv2.VideoCapture(str(tmp_path / "out.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    assert len(list((tmp_path / "outimgs").glob("*.jpg"))) == 10


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_truncated_or_corrupt_video_is_reported_and_the_run_exits_1(tmp_path: Path, damage: str) -> None:
    model = str(ROOT / "models" / "digits" / "digits_int8.tflite")
    whole = run_cli("run", model, "--source", str(damaged_video(tmp_path / "whole.avi", "none")), "--sink", "jsonl")
    assert whole.returncode == 0, whole.stderr
    assert "30 frames (30 ok, 0 failed" in whole.stderr and "WARNING" not in whole.stderr
    video = damaged_video(tmp_path / "half.avi", damage)
    result = run_cli("run", model, "--source", str(video), "--sink", "jsonl", "--json")
    assert result.returncode == 1
    *records, summary = (json.loads(line) for line in result.stdout.splitlines())
    decoded = summary["ok"]
    assert 0 < decoded < 30 and summary["errors"] == 1 and summary["stopped_by"] == "end of input"
    message = f"{video}: decoding stopped at frame {decoded} of 30 (truncated or corrupt video)"
    assert records[-1] == {"input": f"{video}#{decoded}", "error": message}
    assert result.stderr.splitlines()[0] == f"edgerun: error: {message}"  # once, then the summary
    assert "WARNING" not in result.stderr and result.stderr.count(message) == 1


@pytest.mark.parametrize(
    "option",
    [["--fps", "nan"], ["--fps", "inf"], ["--fps=-inf"], ["--fps", "0"], ["--camera-fps", "nan"]],
    ids=["fps-nan", "fps-inf", "fps-minus-inf", "fps-0", "camera-fps-nan"],
)
def test_a_rate_that_is_not_a_positive_finite_number_is_an_option_error(option: list[str]) -> None:
    model = str(ROOT / "models" / "digits" / "digits_int8.tflite")
    result = run_cli("run", model, "--source", str(SAMPLES), *option)
    assert result.returncode == 2
    name, value = option[0].split("=")[0], option[-1].split("=")[-1]
    assert result.stderr.splitlines() == [f"edgerun: error: {name} must be a positive number, got {value}"]


@pytest.mark.parametrize("sink", ["data.csv", "./data.csv"])
def test_a_sink_that_is_the_source_file_is_refused_and_the_source_left_intact(tmp_path: Path, sink: str) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes((VIBRATION / "samples" / "normal.csv").read_bytes())
    model = str(VIBRATION / "vibration_int8.tflite")
    result = run_cli("run", model, "--source", str(data), "--sink", sink, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"edgerun: error: --sink {sink} is the source file {data}: writing it would damage the input"
    ]
    assert data.read_bytes() == (VIBRATION / "samples" / "normal.csv").read_bytes()  # no results appended


def test_a_sensor_csv_with_a_byte_order_mark_reads_its_header(tmp_path: Path) -> None:
    data = tmp_path / "excel.csv"
    data.write_bytes(b"\xef\xbb\xbf" + (VIBRATION / "samples" / "normal.csv").read_bytes())
    result = run_cli("run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(data), "--sink", "jsonl")
    assert result.returncode == 0, result.stderr  # once: "has 4 channels per row" (the time column unseen)
    assert [json.loads(line)["output"][0]["label"] for line in result.stdout.splitlines()] == ["normal"] * 8


def test_a_sensor_source_that_is_a_directory_is_named_as_such(tmp_path: Path) -> None:
    folder = tmp_path / "data.csv"
    folder.mkdir()
    result = run_cli("run", str(VIBRATION / "vibration_int8.tflite"), "--source", str(folder))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"edgerun: error: sensor file is a directory, not a file: {folder}"]


@pytest.mark.parametrize(("where", "reason"), [("missing/out.mp4", "No such file or directory"), ("d.mp4", None)])
def test_an_annotated_video_that_cannot_be_written_is_one_line_with_the_reason(
    tmp_path: Path, where: str, reason: str | None
) -> None:
    (tmp_path / "d.mp4").mkdir()
    model = str(ROOT / "models" / "digits" / "digits_int8.tflite")
    result = run_cli("run", model, "--source", str(SAMPLES), "--sink", where, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"edgerun: error: cannot write {where}: {reason or 'Is a directory'}"]


def test_a_csv_sink_takes_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"d\xff.png")  # a Latin-1 name on a UTF-8 system
    (folder / name).write_bytes((SAMPLES / "digit_3.png").read_bytes())
    out = tmp_path / "out.csv"
    result = run_cli(
        "run", str(ROOT / "models" / "digits" / "digits_int8.tflite"), "--source", str(folder), "--sink", str(out)
    )
    assert result.returncode == 0, result.stderr  # once: the sink stopped the run with a UnicodeEncodeError
    assert "Traceback" not in result.stderr
    assert os.fsencode(folder / name) + b",digits,1.0.0," in out.read_bytes()
