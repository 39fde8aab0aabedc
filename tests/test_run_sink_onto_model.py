"""``edgerun run --sink`` onto the model's own files.

``predict --output`` refused a file that is the model (``sink_onto_model``), but ``run`` never asked: a
``--sink out.jsonl`` that is a link to the model appended records to it, exit 0, and the next load failed
("Protobuf parsing failed"). A sink name with the model's own suffix was already refused as an unknown
sink; a link, or a pair's partner reached through one, was not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.conftest import SAMPLES, run_cli


def test_run_refuses_a_sink_linked_to_the_model_and_leaves_the_model_whole(
    model_copy: Callable[[str, str], Path],
) -> None:
    model = model_copy("digits_int8.onnx", "digits.onnx")
    os.symlink("digits.onnx", model.parent / "out.jsonl")
    before = model.read_bytes()
    done = run_cli("run", "digits.onnx", "--source", str(SAMPLES / "digit_3.png"), "--sink", "out.jsonl",
                   cwd=model.parent)  # fmt: skip
    assert done.returncode == 2, done.stderr  # was 0, the record appended to the model
    assert done.stderr.strip() == (
        "edgerun: error: --sink out.jsonl is the model file digits.onnx: writing it would damage the model"
    )
    assert model.read_bytes() == before


def test_run_still_writes_a_sink_beside_the_model(model_copy: Callable[[str, str], Path]) -> None:
    model = model_copy("digits_int8.onnx", "digits.onnx")
    done = run_cli("run", "digits.onnx", "--source", str(SAMPLES / "digit_3.png"), "--sink", "out.jsonl",
                   cwd=model.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"input"' in (model.parent / "out.jsonl").read_text()
