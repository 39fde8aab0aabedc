"""A model whose dimensions past the batch are dynamic too takes inputs of several sizes: a batch of them goes
one by one where the tensors do not stack, in the pipeline and in the API's batching. ``np.concatenate``
refused them with a ``ValueError`` that failed the pipeline's inference stage (a traceback, the other inputs
never run), and every request of the API's group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")


@pytest.fixture
def widths(tmp_path: Path) -> Path:
    """``dyn.onnx``: an Identity of ``[N, C]``, ``C`` dynamic, with a 3-label card; inputs of 3 and 5 columns."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    (tmp_path / "dyn.onnx.card.yaml").write_text("name: dyn\nversion: 1.0.0\ntask: classification\nlabels: [a, b, c]\n")
    for i in range(6):
        np.save(tmp_path / f"in{i}.npy", np.arange(5 if i % 2 else 3, dtype=np.float32)[None] / 10)
    return tmp_path


def test_a_batch_of_inputs_of_several_widths_goes_one_by_one_and_the_run_goes_on(widths: Path) -> None:
    inputs = [f"in{i}.npy" for i in range(6)]
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", "dyn.onnx", *inputs, "--batch-size", "2", "--json"],
        cwd=widths,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # the 5-column inputs fail: the card names 3 classes
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["input"] for r in records] == inputs  # every input, in order
    assert ["error" in r for r in records] == [False, True] * 3
    assert all(r["output"][0]["label"] == "c" for r in records[::2])
    assert "Traceback" not in done.stderr and "concatenat" not in done.stderr


def test_the_api_groups_only_tensors_that_stack(widths: Path) -> None:
    import edgerun
    from edgerun.api import _by_model

    with edgerun.load(widths / "dyn.onnx") as model:
        a, b, c = np.zeros((1, 3), np.float32), np.zeros((1, 5), np.float32), np.ones((1, 3), np.float32)
        groups = [(m, [t.shape for t, _ in g]) for m, g in _by_model([(model, a, 1), (model, b, 2), (model, c, 3)])]
    assert groups == [(model, [(1, 3), (1, 3)]), (model, [(1, 5)])]
