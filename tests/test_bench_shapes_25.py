"""Two defects of ``edgerun bench`` a new-user walkthrough found.

A model with a dynamic input size (``[N,3,H,W]``, two 3x3 convolutions of 64 channels) was timed on a
1x1 input, every dynamic dimension set to 1, whatever its card said: p50 0.0074 ms, 107,782 inf/s, where
ONNX Runtime takes tens of ms on the 224x224 image the card names. Now bench times the card's size, says
what it timed (a column, and ``input_shapes`` in ``--json``), and refuses in one line a dynamic input
that nothing sizes.

``bench --delegate all`` with an Edge TPU present (``/dev/apex_0``) and no libedgetpu tried it and
ended ``error: ... on edgetpu: no delegate can run ...``, exit 1, where ``edgerun devices`` says "no"
to it. Now it is skipped with a note, as is what ``devices`` would call unusable.

Real models (the committed digits, and convolution nets built here with ``onnx``), real runtimes; the
Edge TPU is faked at the probe's boundary only (a ``/dev/apex_0`` file under ``--probe-root``).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DIGITS, FakeTree, run_cli


def _conv_net(path: Path, shape: list[int | str], *, nhwc: bool = False) -> Path:
    """A real ONNX model: two 3x3 convolutions of 64 channels on an RGB image, as the walkthrough's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.random((64, 3, 3, 3), dtype=np.float32), "w1")
    w2 = numpy_helper.from_array(rng.random((64, 64, 3, 3), dtype=np.float32), "w2")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])] if nhwc else []
    nodes += [
        helper.make_node("Conv", ["xt" if nhwc else "x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _card(model: Path, preprocess: str | None) -> None:
    text = "name: conv\nversion: 1.0.0\ntask: raw\n"
    if preprocess is not None:
        text += "preprocess:\n" + "".join(f"  {line}\n" for line in preprocess.splitlines())
    Path(f"{model}.card.yaml").write_text(text)


def _bench_json(*args: str) -> list[dict[str, object]]:
    done = run_cli("bench", *args, "--no-progress", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _bare_ort_ms(model: Path, shape: tuple[int, ...], runs: int = 5) -> float:
    """The fastest of ``runs`` runs of a bare ONNX Runtime session, one thread, on ``shape``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    session.run(None, {"x": x})
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


# -- the input timed is the one the model would get ----------------------------------------------------------


def test_bench_times_a_dynamic_input_at_its_card_size_not_at_1x1(tmp_path: Path) -> None:
    model = _conv_net(tmp_path / "conv.onnx", ["N", 3, "H", "W"])
    _card(model, "size: [224, 224]\nlayout: NCHW\ncolor: rgb")
    (result,) = _bench_json(str(model), "--runs", "5", "--threads", "1")
    assert result["input_shapes"] == [[1, 3, 224, 224]]
    bare = _bare_ort_ms(model, (1, 3, 224, 224))
    # a 1x1 input ran in 0.007 ms where the 224x224 one takes tens: a factor of 4 either way is no flake
    assert result["p50_ms"] > bare / 4, (result["p50_ms"], bare)
    for field in ("model", "p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "peak_rss_mb", "sparse", "threads"):
        assert field in result  # the fields there were stay as they were


def test_bench_places_the_card_size_as_the_layout_has_height_and_width(tmp_path: Path) -> None:
    nchw = _conv_net(tmp_path / "nchw" / "conv.onnx", ["N", 3, "H", "W"])
    _card(nchw, "size: [24, 40]\nlayout: NCHW")
    nhwc = _conv_net(tmp_path / "nhwc" / "conv.onnx", ["N", "H", "W", 3], nhwc=True)
    _card(nhwc, "size: [24, 40]\nlayout: NHWC")
    results = _bench_json(str(nchw), str(nhwc), "--runs", "5")
    assert [r["input_shapes"] for r in results] == [[[1, 3, 24, 40]], [[1, 24, 40, 3]]]


def test_bench_table_shows_the_input_it_timed(tmp_path: Path) -> None:
    model = _conv_net(tmp_path / "conv.onnx", ["N", 3, "H", "W"])
    _card(model, "size: [32, 32]")
    done = run_cli("bench", str(model), str(DIGITS / "digits_int8.tflite"), "--runs", "5", "--no-progress")
    assert done.returncode == 0, done.stderr
    header, conv, digits = done.stdout.splitlines()[:3]
    assert "input" in header.split() and header.split()[-2:] == ["RSS", "MiB"]
    assert "1x3x32x32" in conv.split() and "1x8x8x1" in digits.split()


@pytest.mark.parametrize(
    ("preprocess", "where"),
    [
        (None, "its card has no preprocess section"),
        ("color: rgb", "its card's preprocess gives no size"),
    ],
)
def test_bench_refuses_in_one_line_a_dynamic_image_input_its_card_does_not_size(
    tmp_path: Path, preprocess: str | None, where: str
) -> None:
    model = _conv_net(tmp_path / "conv.onnx", ["N", 3, "H", "W"])
    _card(model, preprocess)
    done = run_cli("bench", str(model), "--runs", "5", "--no-progress", "--delegate", "all")
    assert done.returncode == 1
    assert done.stdout == ""  # no row, no header: no figure for a 1x1 input
    (line,) = done.stderr.splitlines()  # once, whatever the delegates
    assert line.startswith(f"edgerun: error: {model}: input x [N,3,?,?] float32 has no fixed height and width")
    assert where in line and "give it a card whose preprocess has size: [height, width]" in line


def test_bench_refuses_a_dynamic_input_without_any_card_and_goes_on_to_the_next_model(tmp_path: Path) -> None:
    model = _conv_net(tmp_path / "conv.onnx", ["N", 3, "H", "W"])
    done = run_cli("bench", str(model), str(DIGITS / "digits_int8.onnx"), "--runs", "5", "--no-progress")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "input x [N,3,?,?] float32 has no fixed height and width, and no card gives them" in line
    rows = [line for line in done.stdout.splitlines()[1:] if not line.startswith("*")]  # not the sparse note
    assert [row.split()[0] for row in rows] == ["digits_int8.onnx"]


def test_bench_refuses_a_dynamic_dimension_no_card_can_size(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "seq.onnx"
    onnx.save(model, str(path))
    done = run_cli("bench", str(path), "--runs", "5", "--no-progress")
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"edgerun: error: {path}: input x [N,?] float32 has a dynamic dimension that nothing sizes")


# -- --delegate all: every usable delegate, the unusable ones skipped with a note ---------------------------------


def _libedgetpu_loads() -> bool:
    try:
        ctypes.CDLL("libedgetpu.so.1")
    except OSError:
        return False
    return True


def _coral_pair(folder: Path) -> Path:
    """digits_int8.tflite with its card, and a copy beside it named as its Edge TPU-compiled twin."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_int8.tflite")
    shutil.copy(DIGITS / "digits_int8.tflite.card.yaml", folder / "digits_int8.tflite.card.yaml")
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_int8_edgetpu.tflite")
    return folder / "digits_int8.tflite"


@pytest.mark.skipif(sys.platform != "linux" or _libedgetpu_loads(), reason="needs Linux without libedgetpu")
def test_bench_all_skips_an_edge_tpu_whose_library_does_not_load_with_a_note(tmp_path: Path) -> None:
    model = _coral_pair(tmp_path / "models")
    tree = FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0")
    devices = json.loads(run_cli("devices", "--probe-root", str(tree.root), "--json").stdout)
    assert next(d for d in devices["delegates"] if d["name"] == "edgetpu")["usable"] is False

    done = run_cli(
        "bench", str(model), "--delegate", "all", "--runs", "20", "--no-progress", "--probe-root", str(tree.root)
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.startswith("digits_int8")]
    assert [row[3] for row in rows] == ["xnnpack", "cpu"]
    (note,) = done.stderr.splitlines()
    assert note.startswith(f"edgerun: note: {model}: edgetpu skipped: ")
    assert "the accelerator is present, but its delegate library does not load (libedgetpu.so.1" in note


@pytest.mark.skipif(sys.platform != "linux" or _libedgetpu_loads(), reason="needs Linux without libedgetpu")
def test_bench_all_notes_on_stderr_and_keeps_stdout_json(tmp_path: Path) -> None:
    model = _coral_pair(tmp_path / "models")
    tree = FakeTree(tmp_path / "root").cpu("avx2").file("dev/apex_0")
    done = run_cli("bench", str(model), "--delegate", "all", "--runs", "5", "--json", "--probe-root", str(tree.root))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["delegate"] for r in records if r["type"] == "result"] == ["xnnpack", "cpu"]
    assert "edgetpu skipped" in done.stderr and "error" not in done.stderr


def test_bench_all_on_a_compiled_model_nothing_here_can_run_is_an_error_not_silence(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    compiled = folder / "x_edgetpu.tflite"  # no plain twin beside it: only an Edge TPU would run it
    shutil.copy(DIGITS / "digits_int8.tflite", compiled)
    tree = FakeTree(tmp_path / "root").cpu("avx2")
    done = run_cli(
        "bench", str(compiled), "--delegate", "all", "--runs", "5", "--no-progress", "--probe-root", str(tree.root)
    )
    assert done.returncode == 1 and done.stdout == ""  # once exit 0 and no word at all
    (line,) = done.stderr.splitlines()
    assert line.startswith("edgerun: error: no delegate can run x_edgetpu.tflite here: edgetpu: no Edge TPU found")
