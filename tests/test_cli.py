"""The edgerun command end to end, as real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES, FakeTree, run_cli


def _assert_clean_errors(stderr: str, count: int) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == count, stderr
    assert all(line.startswith("edgerun: error: ") for line in lines), stderr


def test_version_and_help_for_every_command() -> None:
    assert run_cli("--version").stdout.startswith("edgerun ")
    for command in ("predict", "devices", "bench"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage: edgerun " + command in result.stdout


@pytest.mark.parametrize("model", ["digits_int8.tflite", "digits_int8.onnx"])
def test_predict_json_prints_one_record_per_input(model: str) -> None:
    result = run_cli("predict", str(DIGITS / model), str(SAMPLES), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 11  # ten PNGs and one .npy, walked in sorted order
    assert [r["input"] for r in records] == sorted(r["input"] for r in records)
    for r in records:
        assert set(r) == {"input", "model", "version", "delegate", "output", "latency_ms"}
        expected = Path(r["input"]).stem.split("_")[1]
        assert r["output"][0]["label"] == expected
        assert (r["model"], r["version"]) == ("digits", "1.0.0")
        assert r["latency_ms"] > 0


def test_a_reader_that_goes_away_ends_predict_quietly_with_exit_1() -> None:
    """``edgerun predict ... | head -1``: far more output than a pipe holds, then the reader closes."""
    cmd = [sys.executable, "-m", "edgerun", "predict", str(DIGITS / "digits_int8.tflite"), *[str(SAMPLES)] * 600]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("# digits 1.0.0")
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert stderr == ""


def test_predict_table_output_and_top_k() -> None:
    result = run_cli("predict", str(DIGITS / "digits_fp32.tflite"), str(SAMPLES / "digit_9.png"), "--top-k", "1")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if "digit_9.png" in line)
    assert line.split()[1] == "9" and "then" not in line
    assert "1 ok, 0 failed" in result.stdout


def test_bad_inputs_each_get_one_line_exit_1_and_the_good_ones_still_run(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "trunc.png").write_bytes((SAMPLES / "digit_1.png").read_bytes()[:100])
    (tmp_path / "text.jpg").write_text("hello")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 4), np.float32))
    (tmp_path / "nothing_here").mkdir()
    inputs = ["empty.png", "trunc.png", "text.jpg", "wrong.npy", "nothing_here", "missing.png"]
    result = run_cli(
        "predict",
        str(DIGITS / "digits_int8.tflite"),
        *[str(tmp_path / i) for i in inputs],
        str(SAMPLES / "digit_3.png"),
        "--json",
    )
    assert result.returncode == 1
    _assert_clean_errors(result.stderr, len(inputs))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [("error" in r) for r in records] == [True] * len(inputs) + [False]
    assert records[-1]["output"][0]["label"] == "3"
    assert "no usable files" in records[4]["error"]


#: ``edgerun ota publish`` with every required option; the key file is never read (the refusals come first).
OTA_PUBLISH = ["ota", "publish", str(DIGITS / "digits_int8.tflite"), "--model", "digits", "--version", "1.0.1"]
OTA_PUBLISH += ["--key", "k.pem", "--device", "d1", "--mqtt", "mqtt://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["predict", "NOTMODEL", "x.png"], 1, "neither an ONNX nor a TFLite"),
        (["predict", "missing.onnx", "x.png"], 1, "model file not found"),
        (["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--delegate", "warp"], 2, "unknown delegate 'warp'"),
        (["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--delegate", "cuda"], 1, "usable for this model"),
        (["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--threads", "0"], 2, "--threads"),
        (["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--top-k", "0"], 2, "--top-k must be at least 1"),
        (
            ["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--prepare-workers", "0"],
            2,
            "--prepare-workers must be at least 1, got 0",
        ),
        (
            ["run", str(DIGITS / "digits_int8.tflite"), "--source", "x.png", "--prepare-workers", "-1"],
            2,
            "--prepare-workers must be at least 1, got -1",
        ),
        (
            ["run", str(DIGITS / "digits_int8.tflite"), "--source", "x.png", "--fps", "-1"],
            2,
            "--fps must be a positive number",
        ),
        (["bench", str(DIGITS / "digits_int8.tflite"), "--delegate", "warp"], 2, "unknown delegate 'warp'; known"),
        (["mqtt", "check", "--mqtt", "mqtt://127.0.0.1", "--timeout", "nan"], 2, "--timeout must be a positive number"),
        (["mqtt", "check", "--mqtt", "mqtt://127.0.0.1", "--timeout", "0"], 2, "--timeout must be a positive number"),
        (["mqtt", "check", "--mqtt", "mqtt://[::1"], 2, "MQTT URL is malformed"),
        (["devices", "--probe-root", "/nonexistent"], 2, "--probe-root /nonexistent is not a directory"),
        (
            ["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--state-dir", str(SAMPLES / "digit_3.png")],
            2,
            "is not a directory",
        ),
        # an empty string is no path: once it walked the current directory, or wrote no --output at all
        (["predict", str(DIGITS / "digits_int8.tflite"), ""], 2, "an INPUT is an empty string"),
        (["predict", str(DIGITS / "digits_int8.tflite"), "x.png", "--output", ""], 2, "--output is an empty string"),
        (["run", str(DIGITS / "digits_int8.tflite"), "--source", ""], 2, "--source is an empty string"),
        (["devices", "--model", ""], 2, "--model is an empty string"),
        (["devices", "--state-dir", ""], 2, "--state-dir is an empty string"),  # once: the default, quietly
        (["outbox", "--state-dir", ""], 2, "--state-dir is an empty string"),
        # devices checks its options without --model too, instead of ignoring them
        (["devices", "--threads", "0"], 2, "--threads must be between 1 and 256, got 0"),
        (["devices", "--delegate", "warp"], 2, "unknown delegate 'warp'"),
        # values that once ended in a traceback (an allocation, a sleep or a socket timeout out of range)
        (["bench", str(DIGITS / "digits_int8.tflite"), "--runs", str(10**14)], 2, "--runs must be between 1 and"),
        (["mqtt", "check", "--mqtt", "mqtt://127.0.0.1", "--timeout", "1e300"], 2, "--timeout must be between 0"),
        (
            ["run", str(DIGITS / "digits_int8.tflite"), "--source", "x.png", "--fps", "1e-300"],
            2,
            "--fps must be between 0.0001 and 1000, got 1e-300",
        ),
        (["run", str(DIGITS / "digits_int8.tflite"), "--source", "x.png", "--width", "-5"], 2, "--width must be"),
        (
            ["run", str(DIGITS / "digits_int8.tflite"), "--source", "x.png", "--batch-size", "1000"],
            2,
            "--batch-size must be between 1 and 256, got 1000",
        ),
        (["ota", "status", "--mqtt", "mqtt://127.0.0.1:1", "--wait", "nan"], 2, "--wait must be between 0 and 3600"),
        (["ota", "clear", "--mqtt", "mqtt://127.0.0.1:1", "--wait", "-1"], 2, "--wait must be between 0 and 3600"),
        (["ota", "status", "--mqtt", "mqtt://127.0.0.1:1", "--prefix", "a/#"], 2, "topic prefix 'a/#' is invalid"),
        (
            [*OTA_PUBLISH, "--expires-in", "nan"],
            2,
            "--expires-in must be a positive number, got nan",
        ),
        (
            [*OTA_PUBLISH, "--expires-in=-100"],
            2,
            "--expires-in must be a positive number, got -100",  # once published, already expired
        ),
        # the rollout's bounds, named by the option typed rather than by the manifest field ($.rollout.probation_s)
        ([*OTA_PUBLISH, "--probation", "-1"], 2, "--probation must be between 0 and 604800, got -1"),
        ([*OTA_PUBLISH, "--probation", "nan"], 2, "--probation must be between 0 and 604800, got nan"),
        ([*OTA_PUBLISH, "--ab", "7"], 2, "--ab must be a fraction between 0 and 1 (both excluded), got 7"),
        ([*OTA_PUBLISH, "--ab", "0"], 2, "--ab must be a fraction between 0 and 1 (both excluded), got 0"),
        (
            ["ota", "rollback", "--model", "a/b#", "--key", "k.pem", "--device", "d1", "--mqtt", "mqtt://127.0.0.1:1"],
            2,
            "model name 'a/b#' is invalid",
        ),
    ],
)
def test_model_and_option_errors_are_one_line_with_the_right_exit_code(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "NOTMODEL").write_text("just text")
    result = run_cli(*args, cwd=tmp_path) if "NOTMODEL" in args else run_cli(*args)
    assert result.returncode == code
    assert result.stdout == ""  # refused before any output (bench's table header included)
    _assert_clean_errors(result.stderr, 1)
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "--mqtt", "notaurl://x"], "MQTT URL must start with mqtt:// or mqtts://, got 'notaurl://x'"),
        (["run", "--source", str(SAMPLES), "--mqtt", "mqtt://h", "--device-id", "a/b"], "device name 'a/b' is invalid"),
        (["predict", "--mqtt", "mqtt://h", "--metrics-interval", "0"], "--metrics-interval must be a positive number"),
        (["predict", "--mqtt", "mqtt://h", "--metrics-interval", "nan"], "--metrics-interval must be a positive"),
        (["predict", "--mqtt", "mqtt://h", "--results-rate", "-1"], "--results-rate must be a positive number, got -1"),
        (["predict", "--mqtt", "mqtt://[::1"], "MQTT URL is malformed: 'mqtt://[::1' (Invalid IPv6 URL)"),
        (["run", "--source", str(SAMPLES), "--mqtt", "mqtt://h:0"], "MQTT URL has a bad port: 'mqtt://h:0' (port 0)"),
        (["predict", "--mqtt", "mqtt://h", "--metrics-interval", "1e300"], "--metrics-interval must be between 1 and"),
        (["run", "--source", str(SAMPLES), "--ota-key", "k.pub.pem"], "OTA updates (--ota-key) need an MQTT broker"),
        (
            ["run", "--source", str(SAMPLES), "--mqtt", "mqtt://127.0.0.1:1", "--ota-key", "k.pub.pem"],
            "cannot read trusted key k.pub.pem: No such file or directory",  # not after dialling the broker
        ),
        (
            ["run", "--source", str(SAMPLES), "--mqtt", "mqtt://h", "--ota-key", "k.pub.pem", "--ota-keep", "0"],
            "--ota-keep must be between 1 and 20, got 0",  # once a ValueError traceback
        ),
    ],
)
def test_mqtt_options_are_refused_before_the_model_loads(args: list[str], message: str) -> None:
    model = str(DIGITS / "digits_int8.tflite")
    command, rest = args[0], args[1:]
    inputs = [str(SAMPLES / "digit_3.png")] if command == "predict" else []
    result = run_cli(command, model, *inputs, *rest)
    assert result.returncode == 2
    assert result.stdout == ""  # not even the "# digits 1.0.0 (tflite) on xnnpack" header
    _assert_clean_errors(result.stderr, 1)
    assert message in result.stderr


def test_resume_leaves_a_file_alone_unless_its_unterminated_tail_is_a_torn_record(tmp_path: Path) -> None:
    model, image = str(DIGITS / "digits_int8.tflite"), str(SAMPLES / "digit_3.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("important user notes, not jsonl")  # no newline: once taken for a torn record and cut
    result = run_cli("predict", model, image, "--resume", "--output", str(notes))
    assert result.returncode == 2 and result.stdout == ""
    _assert_clean_errors(result.stderr, 1)
    assert "ends in a line that is not an edgerun record; cannot resume from it" in result.stderr
    assert notes.read_text() == "important user notes, not jsonl"
    foreign_first = tmp_path / "foreign.jsonl"
    foreign_first.write_text('{"hello": 1}\n{"input": "x.png", "mod')  # refused before the torn tail is cut
    assert run_cli("predict", model, image, "--resume", "--output", str(foreign_first)).returncode == 2
    assert foreign_first.read_text().endswith('{"input": "x.png", "mod')
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"input": "other.png", "output": []}\n{"input": "digit_3.p')  # a run killed mid-line
    assert run_cli("predict", model, image, "--resume", "--output", str(torn)).returncode == 0
    assert [json.loads(line)["input"] for line in torn.read_text().splitlines()] == ["other.png", image]


def test_output_that_is_one_of_the_inputs_is_refused_and_left_intact(tmp_path: Path) -> None:
    image = tmp_path / "digit_3.png"
    shutil.copy(SAMPLES / "digit_3.png", image)
    for inputs in ([str(image)], [str(tmp_path)]):
        result = run_cli("predict", str(DIGITS / "digits_int8.tflite"), *inputs, "--output", str(image))
        assert result.returncode == 2 and result.stdout == ""
        _assert_clean_errors(result.stderr, 1)
        assert f"--output {image} is the input {image}: writing it would damage the input" in result.stderr
        assert image.read_bytes() == (SAMPLES / "digit_3.png").read_bytes()  # no records appended to the PNG


def test_predict_takes_no_ota_options_it_would_ignore() -> None:
    model, image = str(DIGITS / "digits_int8.tflite"), str(SAMPLES / "digit_3.png")
    result = run_cli("predict", model, image, "--mqtt", "mqtt://127.0.0.1:1", "--ota-key", "k.pub.pem")
    assert result.returncode == 2 and result.stdout == ""
    assert "unrecognized arguments: --ota-key k.pub.pem" in result.stderr


def test_a_card_that_is_a_folder_is_one_line_not_a_model_run_without_its_card(model_copy: Any) -> None:
    model = model_copy("digits_int8.onnx", "digits_int8.onnx")
    card = model.with_name(model.name + ".card.yaml")
    card.unlink()
    card.mkdir()  # once: skipped, and the model ran card-less as "digits_int8 0.0.0"
    result = run_cli("predict", str(model), str(SAMPLES / "digit_3.png"))
    assert result.returncode == 1 and result.stdout == ""
    _assert_clean_errors(result.stderr, 1)
    assert f"cannot read card {card}: Is a directory" in result.stderr


def test_a_card_that_is_not_utf8_text_is_one_line(model_copy: Any) -> None:
    model = model_copy("digits_int8.onnx", "digits_int8.onnx")
    card = model.with_name(model.name + ".card.yaml")
    card.write_bytes(b"name: d\xa6gits\n")
    for args in (["predict", str(model), str(SAMPLES / "digit_3.png")], ["devices", "--model", str(model)]):
        result = run_cli(*args)
        assert result.returncode == 1 and result.stdout == ""
        _assert_clean_errors(result.stderr, 1)
        assert f"{card}: not UTF-8 text (byte 0xa6 at offset 7, line 1)" in result.stderr


@pytest.mark.parametrize("source", ["digits_int8.tflite", "digits_fp32.onnx"])
def test_a_card_whose_labels_do_not_count_the_model_classes_is_one_line(model_copy: Any, source: str) -> None:
    model = model_copy(source, source)
    card = model.with_name(model.name + ".card.yaml")
    labels = "labels: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']"
    card.write_text(card.read_text().replace(labels, "labels: [a]"))  # one label for the model's 10 classes
    result = run_cli("predict", str(model), str(SAMPLES / "digit_3.png"))
    assert result.returncode == 1 and result.stdout == ""
    _assert_clean_errors(result.stderr, 1)
    assert "card of digits has 1 label, but output " in result.stderr and "gives 10 classes" in result.stderr


def test_a_tensor_output_counts_every_value_in_the_table(model_copy: Any) -> None:
    model = model_copy("digits_int8.onnx", "raw.onnx")
    card = model.with_name(model.name + ".card.yaml")
    card.write_text(card.read_text().replace("task: classification", "task: detection"))  # outputs shown raw
    result = run_cli("predict", str(model), str(SAMPLES / "digit_3.png"))
    assert result.returncode == 0, result.stderr
    assert "logits: 10 value(s)" in result.stdout  # a [1, 10] tensor, once counted as 1


def test_config_check_refuses_a_pipeline_mqtt_source_the_daemon_could_never_open(tmp_path: Path) -> None:
    config = tmp_path / "edgerun.yaml"
    for source, message in (
        ("mqtt://127.0.0.1:1", "MQTT source URL has no topic"),
        ("''", "an empty source names nothing"),
    ):
        config.write_text(
            f"models:\n  digits:\n    path: {DIGITS / 'digits_int8.tflite'}\n"
            f"pipelines:\n  p:\n    source: {source}\n    model: digits\n"
        )
        result = run_cli("config", "check", str(config))
        assert result.returncode == 2 and result.stdout == ""
        _assert_clean_errors(result.stderr, 1)
        assert f"pipelines.p.source: {message}" in result.stderr


def test_output_appended_to_a_file_without_a_final_newline_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("notes")
    result = run_cli("predict", str(DIGITS / "digits_int8.tflite"), str(SAMPLES / "digit_3.png"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    first, second = out.read_text().splitlines()
    assert first == "notes" and json.loads(second)["output"][0]["label"] == "3"


def test_run_over_a_sensor_file_shorter_than_one_window_fails_in_one_line(tmp_path: Path) -> None:
    rows = (ROOT / "models" / "vibration" / "samples" / "normal.csv").read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(rows[:101]) + "\n")  # the header and 100 rows; the model takes 256
    result = run_cli("run", str(ROOT / "models" / "vibration" / "vibration_int8.tflite"), "--source", str(short))
    assert result.returncode == 1
    _assert_clean_errors(result.stderr, 1)
    assert "the input ended after 100 readable data rows, fewer than one window of 256 rows" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_a_directory_that_cannot_be_listed_is_named_as_such() -> None:
    folder = Path(tempfile.mkdtemp(prefix="edgerun-locked-"))  # not under tmp_path, which nobody cannot reach
    try:
        shutil.copy(SAMPLES / "digit_3.png", folder)
        folder.chmod(0o000)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "edgerun"]
        result = subprocess.run(
            [*as_nobody, "predict", str(DIGITS / "digits_int8.tflite"), str(folder)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1
        _assert_clean_errors(result.stderr, 1)
        assert f"{folder}: cannot read directory: Permission denied" in result.stderr
    finally:
        folder.chmod(0o700)
        shutil.rmtree(folder)


def test_keys_generate_refuses_a_name_that_names_no_file(tmp_path: Path) -> None:
    for name in ("", "keys/"):
        result = run_cli("keys", "generate", name, cwd=tmp_path)
        assert result.returncode == 2
        _assert_clean_errors(result.stderr, 1)
        assert "names no file" in result.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("")
    result = run_cli("keys", "generate", "afile/operator", cwd=tmp_path)
    assert result.returncode == 2
    _assert_clean_errors(result.stderr, 1)
    assert "cannot write the key pair: afile is a file, not a folder" in result.stderr  # once "File exists"


def test_bench_of_models_that_all_fail_prints_no_table_header() -> None:
    result = run_cli("bench", "missing.onnx", "--runs", "3")
    assert result.returncode == 1 and result.stdout == ""
    _assert_clean_errors(result.stderr, 1)


def test_outbox_refuses_an_empty_file_instead_of_making_it_an_outbox(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").touch()
    result = run_cli("outbox", "--state-dir", str(tmp_path))
    assert result.returncode == 2 and "is an empty file, not an outbox" in result.stderr
    assert (tmp_path / "outbox.sqlite").stat().st_size == 0


def test_an_image_declaring_more_pixels_than_the_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    import cv2

    bomb = tmp_path / "bomb.png"
    cv2.imwrite(str(bomb), np.zeros((9000, 9000), np.uint8))  # 94 KB on disk, 81 Mpx (the limit is 64 Mpx)
    model = str(DIGITS / "digits_int8.tflite")
    result = run_cli("predict", model, str(bomb))
    assert result.returncode == 1
    _assert_clean_errors(result.stderr, 1)
    assert f"{bomb}: image has more than 67,108,864 pixels; not decoded" in result.stderr
    raised = run_cli("predict", model, str(bomb), env={**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": str(10**8)})
    assert raised.returncode == 0, raised.stderr  # the user's own limit wins


def test_usage_errors_exit_2() -> None:
    assert run_cli("predict").returncode == 2
    assert run_cli("frobnicate").returncode == 2


def test_devices_json_reports_the_fake_edge_tpu_and_the_fallback_for_a_model(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root").cpu("avx2 avx512_vnni").file("dev/apex_0")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(DIGITS / "digits_int8.tflite", models / "digits.tflite")
    shutil.copy(DIGITS / "digits_int8.tflite", models / "digits_edgetpu.tflite")
    result = run_cli("devices", "--probe-root", str(tree.root), "--model", str(models / "digits.tflite"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"]["edgetpu"] == ["pcie:/dev/apex_0"]
    assert "avx512_vnni" in report["device"]["cpu_features"]
    selection = report["model"]["selection"]
    assert selection["delegate"] == "xnnpack"
    edgetpu = next(a for a in selection["attempts"] if a["delegate"] == "edgetpu")
    assert edgetpu["status"] == "failed" and "libedgetpu" in edgetpu["reason"]


def test_devices_human_output_lists_delegates_with_reasons(fake_tree: FakeTree) -> None:
    result = run_cli("devices", "--probe-root", str(fake_tree.root), "--model", str(DIGITS / "digits_fp32.onnx"))
    assert result.returncode == 0
    assert "no NVIDIA GPU found" in result.stdout or "no CUDAExecutionProvider" in result.stdout
    assert "chosen cpu" in result.stdout


def test_strict_accelerator_fails_the_cli_when_the_edge_tpu_cannot_be_used(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0")
    shutil.copy(DIGITS / "digits_int8.tflite", tmp_path / "digits.tflite")
    shutil.copy(DIGITS / "digits_int8.tflite", tmp_path / "digits_edgetpu.tflite")
    result = run_cli(
        "predict",
        str(tmp_path / "digits.tflite"),
        str(SAMPLES / "digit_1.png"),
        "--probe-root",
        str(tree.root),
        "--strict-accelerator",
    )
    assert result.returncode == 1
    _assert_clean_errors(result.stderr, 1)
    assert "strict-accelerator" in result.stderr


def test_fastest_is_timed_once_then_read_from_the_state_directory(tmp_path: Path) -> None:
    args = [
        "devices",
        "--model",
        str(DIGITS / "digits_int8.tflite"),
        "--delegate",
        "fastest",
        "--state-dir",
        str(tmp_path),
        "--json",
    ]
    first = json.loads(run_cli(*args).stdout)["model"]["selection"]
    second = json.loads(run_cli(*args).stdout)["model"]["selection"]
    assert not first["cached"] and second["cached"]
    assert first["delegate"] == second["delegate"]


def test_bench_reports_figures_per_delegate_and_the_int8_speed_ratio() -> None:
    result = run_cli(
        "bench",
        str(DIGITS / "digits_fp32.tflite"),
        str(DIGITS / "digits_int8.tflite"),
        "--runs",
        "50",
        "--delegate",
        "all",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    results = [r for r in records if r["type"] == "result"]
    assert {(r["precision"], r["delegate"]) for r in results} == {
        ("fp32", "xnnpack"),
        ("fp32", "cpu"),
        ("int8", "xnnpack"),
        ("int8", "cpu"),
    }
    for r in results:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["throughput_per_s"] > 0 and r["peak_rss_mb"] > 10 and r["load_ms"] > 0 and r["runs"] == 50
    ratios = [r for r in records if r["type"] == "ratio"]
    assert {r["delegate"] for r in ratios} == {"xnnpack", "cpu"}
    for r in ratios:
        assert r["int8_speedup"] == pytest.approx(r["fp32_p50_ms"] / r["int8_p50_ms"])


def test_the_progress_bar_shows_on_a_terminal_but_never_beside_json_records() -> None:
    import pty

    from edgerun.cli.predict import progress_bar

    leader, follower = pty.openpty()
    with os.fdopen(leader, "rb", buffering=0), os.fdopen(follower, "w") as terminal:
        bar = progress_bar(10, no_progress=False, as_json=False, stream=terminal)
        assert bar is not None
        bar.close()
        assert progress_bar(10, no_progress=False, as_json=True, stream=terminal) is None
        assert progress_bar(10, no_progress=True, as_json=False, stream=terminal) is None
        assert progress_bar(1, no_progress=False, as_json=False, stream=terminal) is None
    with tempfile.TemporaryFile("w+") as not_a_terminal:
        assert progress_bar(10, no_progress=False, as_json=False, stream=not_a_terminal) is None


def _predict_on_a_terminal(*args: str) -> tuple[int, str]:
    """``edgerun predict ARGS`` with stdout and stderr on one pseudo-terminal: exit code and what it showed."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new one is 0 columns wide
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "predict", *args],
        cwd=ROOT,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TQDM_MININTERVAL": "0"},  # the bar redrawn after every input, however fast
    )
    os.close(follower)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return proc.wait(timeout=120), shown.decode("utf-8", errors="replace")


def test_predict_json_on_a_terminal_shows_records_and_no_progress_bar() -> None:
    code, shown = _predict_on_a_terminal(str(DIGITS / "digits_fp32.onnx"), str(SAMPLES), "--json")
    assert code == 0, shown
    assert "input/s" not in shown and "%|" not in shown, shown  # tqdm's rate and bar
    lines = shown.replace("\r\n", "\n").splitlines()
    assert len(lines) == 11 and all(json.loads(line)["input"] for line in lines), shown


def test_predict_table_lines_are_written_around_the_progress_bar_not_through_it() -> None:
    code, shown = _predict_on_a_terminal(str(DIGITS / "digits_fp32.onnx"), str(SAMPLES))
    assert code == 0, shown
    assert "input/s" in shown, shown  # the bar was there
    for raw in shown.split("\n"):
        visible = raw.rstrip("\r").rpartition("\r")[2]  # what a terminal shows: the text after the last return
        if "digit_" in raw:
            assert visible.startswith(str(SAMPLES)), repr(raw)


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "", str(SAMPLES / "digit_3.png")],
        ["run", "", "--source", str(SAMPLES)],
    ],
    ids=["predict", "run"],
)
def test_an_empty_model_path_is_named_as_such(args: list[str]) -> None:
    """Once "model path is a directory, not a model file: ." (Path("") is "."), exit 1."""
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "edgerun: error: model path is an empty string"
