"""A card's labels against a dynamic class count, and model and card paths that are no regular file.

A classification card whose labels do not count the classes of an output the model leaves dynamic
(``[N,D]``) fails that input in one line naming the model and both counts, counted against the model
(the card is at fault, not the input); before, labels and bare indices were mixed in one result. A FIFO,
a socket or a device given as a model, found as its card or beside it as its Edge TPU twin is refused
in one line before it is read; a FIFO held every command until killed. The FIFOs here are never
opened for writing: each command runs as a real process, bounded, and must end by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import edgerun
from edgerun.api import create_app
from edgerun.card import parse_card
from edgerun.config import ApiConfig
from edgerun.errors import CardError, InputError, ModelLoadError
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics
from tests.conftest import DIGITS, ROOT, SAMPLES, npy_bytes

#: A bound on each command: far above the few seconds one takes; past it, the command did not end by itself.
ENDS_WITHIN_S = 90

MISMATCH = "card of nd2 has 3 labels, but output y [N,?] float32 gave 7 classes"


def edgerun_cli(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m edgerun ARGS`` as a real process; ``subprocess.TimeoutExpired`` (it is killed) where it
    does not end by itself within ``ENDS_WITHIN_S``."""
    return subprocess.run(
        [sys.executable, "-m", "edgerun", *map(str, args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=ENDS_WITHIN_S,
    )


def _relu_nd(path: Path) -> Path:
    """A single Relu from ``x [N,D]`` to ``y [N,D]``: as many class scores as the input has values."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "nd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def nd2(tmp_path: Path) -> Path:
    """``nd2.onnx`` with a card saying classification over labels a, b, c; inputs of 3, 7 and 3 values."""
    model = _relu_nd(tmp_path / "nd2.onnx")
    (tmp_path / "nd2.onnx.card.yaml").write_text("name: nd2\ntask: classification\nlabels: [a, b, c]\n")
    np.save(tmp_path / "a3.npy", np.array([0.1, 0.5, 0.3], np.float32))
    np.save(tmp_path / "a7.npy", np.arange(7, dtype=np.float32) / 10)
    np.save(tmp_path / "b3.npy", np.array([0.2, 0.1, 0.9], np.float32))
    return model


# -- labels against a dynamic class count ---------------------------------------------------------------


def test_an_input_giving_more_classes_than_the_card_has_labels_fails_in_one_line_and_the_run_goes_on(
    nd2: Path,
) -> None:
    result = edgerun_cli("predict", nd2.name, "a3.npy", "a7.npy", "b3.npy", "--json", cwd=nd2.parent)
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == ["a3.npy", "a7.npy", "b3.npy"]
    assert [r["label"] for r in records[0]["output"]] == ["b", "c", "a"]  # every class by its name
    assert records[1] == {"input": "a7.npy", "error": f"a7.npy: {MISMATCH}"}
    assert [r["label"] for r in records[2]["output"]] == ["c", "a", "b"]
    assert result.stderr == f"edgerun: error: a7.npy: {MISMATCH}\n"


def test_through_the_pipeline_too_the_mismatched_input_fails_alone_and_counts_against_the_model(nd2: Path) -> None:
    """Five inputs or more go through the pipeline, whose post-processing stage reports it as a failed frame
    (a model error, as the API counts it) and goes on: before, it stopped the whole run."""
    names = ["a3.npy", "a7.npy", "b3.npy", "a3.npy", "b3.npy", "a7.npy"]
    for i, name in enumerate(names):  # distinct files: an input named twice is read once
        (nd2.parent / f"in{i}_{name}").write_bytes((nd2.parent / name).read_bytes())
    inputs = [f"in{i}_{name}" for i, name in enumerate(names)]
    result = edgerun_cli("predict", nd2.name, *inputs, "--json", cwd=nd2.parent)
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == inputs
    assert ["error" in r for r in records] == ["a7" in name for name in inputs]
    assert records[1]["error"] == f"in1_a7.npy: {MISMATCH}"
    run = edgerun_cli("run", nd2.name, "--source", *inputs, "--json", cwd=nd2.parent)
    summary = json.loads(run.stdout.splitlines()[-1])
    assert (summary["frames"], summary["ok"], summary["errors"], summary["stopped_by"]) == (6, 4, 2, "end of input")


def test_the_table_run_counts_the_input_as_failed_and_shows_no_label_mixed_with_indices(nd2: Path) -> None:
    result = edgerun_cli("predict", nd2.name, "a7.npy", cwd=nd2.parent)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("# 0 ok, 1 failed")  # once "6 0.1890 (then 5, 4, 3, c 0.127)"
    assert result.stderr == f"edgerun: error: a7.npy: {MISMATCH}\n"


def test_more_labels_than_the_output_gives_classes_is_refused_too_and_the_error_is_the_cards(tmp_path: Path) -> None:
    model = _relu_nd(tmp_path / "nd2.onnx")
    card = parse_card({"name": "nd2", "task": "classification", "labels": list("abcde")}, "test")
    with edgerun.load(model, card=card, state_dir=tmp_path / "state") as loaded:
        with pytest.raises(CardError) as raised:
            loaded.predict(np.ones((1, 2), np.float32), name="two")
        assert str(raised.value) == "two: card of nd2 has 5 labels, but output y [N,?] float32 gave 2 classes"
        assert not isinstance(raised.value, InputError)  # the card's fault: never a 422 the API leaves uncounted
        rows = loaded.run(np.ones((2, 5), np.float32))  # a batch whose rows count 5: each row is labelled
        assert [r["label"] for r in loaded.postprocess(rows, 1)][:1] == ["a"]
        with pytest.raises(CardError, match=r"gave 1 class$"):
            loaded.postprocess(loaded.run(np.ones((1, 1), np.float32)))


@pytest.fixture
def nd2_api(nd2: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Metrics]]:
    metrics = Metrics()
    slots = {"nd2": ModelSlot(edgerun.load(nd2, state_dir=tmp_path / "state"))}
    with TestClient(create_app(slots, metrics, ApiConfig())) as client:
        yield client, metrics


def test_the_api_answers_500_and_counts_it_against_the_model_as_probation_would(
    nd2_api: tuple[TestClient, Metrics],
) -> None:
    client, metrics = nd2_api
    seven = client.post("/v1/models/nd2/predict", content=npy_bytes(np.arange(7, dtype=np.float32)))
    assert (seven.status_code, seven.json()) == (500, {"detail": MISMATCH})
    three = client.post("/v1/models/nd2/predict", content=npy_bytes(np.array([0.1, 0.5, 0.3], np.float32)))
    assert three.status_code == 200 and three.json()["output"][0]["label"] == "b"
    totals = metrics.totals()["nd2@0.0.0"]
    assert (totals["errors"], totals["count"]) == (1, 1)


def test_a_fixed_class_count_the_labels_do_not_match_is_still_refused_at_load() -> None:
    card = parse_card({"name": "digits", "task": "classification", "labels": ["0"]}, "test")
    with pytest.raises(CardError, match=r"^card of digits has 1 label, but output logits \[N,10\] float32 gives 10"):
        edgerun.load(DIGITS / "digits_int8.onnx", card=card)


# -- model and card paths that are no regular file -------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A FIFO nobody ever writes: opening it for reading waits for good."""
    path = tmp_path / "fifo.onnx"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "command",
    [
        ("predict", "fifo.onnx", str(SAMPLES / "digit_1.png")),
        ("devices", "--model", "fifo.onnx"),
        ("bench", "fifo.onnx"),
    ],
    ids=["predict", "devices", "bench"],
)
def test_a_fifo_given_as_the_model_is_refused_in_one_line_by_every_command(fifo: Path, command: tuple[str]) -> None:
    result = edgerun_cli(*command, cwd=fifo.parent)  # once: still waiting when killed, exit 124 under timeout(1)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].endswith("model path is a FIFO (named pipe), not a model file: fifo.onnx")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_fifo_where_the_card_is_looked_for_is_refused_in_one_line(nd2: Path) -> None:
    card = nd2.with_name("nd2.onnx.card.yaml")
    card.unlink()
    os.mkfifo(card)
    result = edgerun_cli("predict", nd2.name, "a3.npy", cwd=nd2.parent)
    assert (result.returncode, result.stderr) == (
        1,
        "edgerun: error: cannot read card nd2.onnx.card.yaml: is a FIFO (named pipe), not a regular file\n",
    )


def test_a_fifo_given_as_the_card_is_refused_by_the_library(nd2: Path, fifo: Path) -> None:
    probe = (
        "import edgerun\n"
        "try:\n"
        f"    edgerun.load({str(nd2)!r}, card={str(fifo)!r}, state_dir={str(nd2.parent / 'state')!r})\n"
        "except edgerun.errors.CardError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=ENDS_WITHIN_S
    )
    assert result.stdout == f"cannot read card {fifo}: is a FIFO (named pipe), not a regular file\n"


def test_a_socket_and_a_character_device_are_refused_as_models_naming_what_they_are(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.onnx"))
        with pytest.raises(ModelLoadError) as raised:
            edgerun.load(tmp_path / "sock.onnx", state_dir=tmp_path / "state")
    assert str(raised.value) == f"model path is a socket, not a model file: {tmp_path / 'sock.onnx'}"
    with pytest.raises(ModelLoadError) as raised:  # once "not a model: /dev/zero is neither ..."
        edgerun.load("/dev/zero", state_dir=tmp_path / "state")
    assert str(raised.value) == "model path is a character device, not a model file: /dev/zero"


def test_a_fifo_beside_a_tflite_model_as_its_edge_tpu_twin_is_refused_where_it_is_looked_up(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    shutil.copy(DIGITS / "digits_int8.tflite", model)
    os.mkfifo(tmp_path / "m_edgetpu.tflite")
    with pytest.raises(ModelLoadError) as raised:
        edgerun.load(model, state_dir=tmp_path / "state")
    assert str(raised.value) == (
        f"Edge TPU twin of m.tflite is a FIFO (named pipe), not a model file: {tmp_path / 'm_edgetpu.tflite'}"
    )
    with edgerun.load(model, delegate="xnnpack", state_dir=tmp_path / "state") as loaded:  # not looked up
        assert loaded.delegate == "xnnpack"


def test_a_fifo_as_the_cpu_twin_of_an_edge_tpu_compiled_model_is_refused(tmp_path: Path) -> None:
    shutil.copy(DIGITS / "digits_int8.tflite", tmp_path / "m_edgetpu.tflite")
    os.mkfifo(tmp_path / "m.tflite")
    with pytest.raises(ModelLoadError, match=r"^CPU twin of m_edgetpu\.tflite is a FIFO \(named pipe\), not a model"):
        edgerun.load(tmp_path / "m_edgetpu.tflite", state_dir=tmp_path / "state")


def test_links_to_a_regular_model_and_card_are_model_and_card(nd2: Path) -> None:
    (nd2.parent / "link.onnx").symlink_to(nd2.name)
    (nd2.parent / "link.onnx.card.yaml").symlink_to("nd2.onnx.card.yaml")
    result = edgerun_cli("predict", "link.onnx", "a3.npy", "--json", cwd=nd2.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"][0]["label"] == "b"
