"""Audit of cards against the model they describe, and of the probe on a fake tree's cpuinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgerun
from edgerun.accel.probe import probe
from edgerun.card import ModelCard, Preprocess
from edgerun.errors import CardError
from tests.conftest import FakeTree


@pytest.fixture
def colour_model(tmp_path: Path) -> Path:
    """A tiny real ONNX model taking an 8x8 RGB image (NHWC) and returning its 192 values."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["values"], axis=1)],
        "colour",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("values", onnx.TensorProto.FLOAT, [1, 192])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "colour.onnx"
    onnx.save(model, str(path))
    return path


def test_a_card_saying_gray_for_a_colour_input_is_refused_when_the_model_loads(colour_model: Path) -> None:
    gray = ModelCard(name="colour", preprocess=Preprocess(color="gray"))
    # Loaded, it would decode images in colour and feed BGR: neither gray nor the model's order.
    with pytest.raises(CardError, match=r"says color gray, but input image .* takes 3 channels"):
        edgerun.load(colour_model, card=gray, warmup=False)
    with edgerun.load(colour_model, card=ModelCard(name="colour", preprocess=Preprocess(color="rgb"))) as model:
        assert model.takes_images


def test_a_fake_tree_counts_its_cpus_by_processor_entries_not_by_the_word(tmp_path: Path) -> None:
    # QEMU names its CPU "Common KVM processor": the word is in every block's model name too.
    tree = FakeTree(tmp_path / "root").cpu("fpu sse2", model="Common KVM processor", cores=3)
    assert probe(tree.root).cpu_count == 3
