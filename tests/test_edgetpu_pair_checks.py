"""Coral pairs (``X_edgetpu.tflite`` compiled for the Edge TPU beside ``X.tflite``, its CPU twin) where a check
looked only at the model file given, not at the file that runs.

``predict --output`` onto the file that runs was written over: records appended to the compiled model the
Edge TPU ran (or to the CPU twin that ran for a compiled model given), exit 0, and the next load failed.
And ``--delegate fastest`` kept its cached winner after ``X_edgetpu.tflite`` was compiled again: the cache
key hashed only the file given. The Edge TPU is faked at the hardware boundary only, as in
``test_fastest_cache_23``: a probe root with ``/dev/apex_0`` and a stand-in ``libedgetpu.so.1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DIGITS, SAMPLES, run_cli
from tests.test_fastest_cache_23 import _devices, _edge_tpu, _env, _timed, libedgetpu, pytestmark

__all__ = ["libedgetpu", "pytestmark"]  # the stand-in library's fixture, and its skip (Linux without libedgetpu)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _only_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


# -- predict --output onto a file of the pair ----------------------------------------------------------------


def test_predict_refuses_an_output_onto_the_edge_tpu_model_that_runs_and_leaves_the_pair_whole(
    tmp_path: Path, model_copy: Callable[[str, str], Path], libedgetpu: Path
) -> None:
    model = model_copy("digits_int8.tflite", "digits.tflite")
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    before = _files(model.parent)
    done = run_cli("predict", "digits.tflite", str(SAMPLES / "digit_3.png"), "--output", "digits_edgetpu.tflite",
                   "--probe-root", str(_edge_tpu(tmp_path)), cwd=model.parent, env=_env(libedgetpu))  # fmt: skip
    assert done.returncode == 2, done.stdout  # was exit 0 "on edgetpu", the records appended to the compiled model
    assert _only_error(done.stderr) == (
        "edgerun: error: --output digits_edgetpu.tflite is the Edge TPU model file digits_edgetpu.tflite: "
        "writing it would damage the model"
    )
    assert _files(model.parent) == before


def test_predict_refuses_an_output_onto_the_cpu_twin_that_runs_for_a_compiled_model_given(
    model_copy: Callable[[str, str], Path],
) -> None:
    """No Edge TPU here: given ``X_edgetpu.tflite``, ``X.tflite`` runs on the CPU."""
    model = model_copy("digits_int8.tflite", "digits.tflite")
    compiled = model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    before = _files(model.parent)
    done = run_cli("predict", compiled.name, str(SAMPLES / "digit_3.png"), "--output", "digits.tflite",
                   cwd=model.parent)  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert _only_error(done.stderr) == (
        "edgerun: error: --output digits.tflite is the CPU model file digits.tflite: writing it would damage the model"
    )
    assert _files(model.parent) == before


def test_predict_refuses_an_output_that_is_a_link_to_the_file_that_runs(
    model_copy: Callable[[str, str], Path],
) -> None:
    """A sink is the file it opens: ``out.jsonl`` linked to the twin was appended to, its suffix being another."""
    model = model_copy("digits_int8.tflite", "digits.tflite")
    compiled = model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    (model.parent / "out.jsonl").symlink_to("digits.tflite")
    before = _files(model.parent)
    done = run_cli("predict", compiled.name, str(SAMPLES / "digit_3.png"), "--output", "out.jsonl",
                   cwd=model.parent)  # fmt: skip
    assert done.returncode == 2, done.stdout
    error = _only_error(done.stderr)
    assert error.startswith("edgerun: error: --output out.jsonl is the CPU model file digits.tflite:"), error
    assert _files(model.parent) == before


def test_predict_still_writes_an_output_beside_the_pair(model_copy: Callable[[str, str], Path]) -> None:
    model = model_copy("digits_int8.tflite", "digits.tflite")
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    done = run_cli("predict", "digits.tflite", str(SAMPLES / "digit_3.png"), "--output", "out.jsonl",
                   cwd=model.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (model.parent / "out.jsonl").read_text().count("\n") == 1


# -- the fastest cache and the other file of the pair --------------------------------------------------------


def test_an_edge_tpu_model_compiled_again_is_timed_again_by_fastest(
    tmp_path: Path, model_copy: Callable[[str, str], Path], libedgetpu: Path
) -> None:
    root, state = _edge_tpu(tmp_path), tmp_path / "state"
    model = model_copy("digits_int8.tflite", "digits.tflite")
    compiled = model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    cached, first = _devices(model, root, state, library=libedgetpu)
    assert not cached and _timed(first["edgetpu"]), first["edgetpu"]
    cached, _ = _devices(model, root, state, library=libedgetpu)
    assert cached  # nothing changed: the cache
    shutil.copy(DIGITS / "digits_fp32.tflite", compiled)  # a new compile: other bytes, the same name
    cached, again = _devices(model, root, state, library=libedgetpu)
    assert not cached  # was: the winner timed on the old compile, "fastest (cached)"
    assert again["edgetpu"]["status"] in ("chosen", "usable", "wrong-output", "failed"), again["edgetpu"]
    cached, _ = _devices(model, root, state, library=libedgetpu)
    assert cached  # the new compile's entry, from then on


def test_the_cpu_twin_of_a_compiled_model_given_replaced_is_timed_again_by_fastest(
    tmp_path: Path, model_copy: Callable[[str, str], Path]
) -> None:
    """No Edge TPU here: the CPU delegates run the twin, and its bytes are what they were timed on."""
    state = tmp_path / "state"
    twin = model_copy("digits_int8.tflite", "digits.tflite")
    compiled = model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    root = tmp_path / "root"
    root.mkdir()
    assert not _devices(compiled, root, state)[0]
    assert _devices(compiled, root, state)[0]
    shutil.copy(DIGITS / "digits_fp32.tflite", twin)
    cached, again = _devices(compiled, root, state)
    assert not cached
    assert again["xnnpack"]["path"] == str(twin)


def test_an_unreadable_edge_tpu_model_is_one_failed_candidate_not_a_traceback(
    tmp_path: Path, model_copy: Callable[[str, str], Path], libedgetpu: Path
) -> None:
    """Hashing the other file of the pair for the key must not fail where opening it reports why."""
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    root, state = _edge_tpu(tmp_path), tmp_path / "state"
    model = model_copy("digits_int8.tflite", "digits.tflite")
    compiled = model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    compiled.chmod(0)
    try:
        cached, tried = _devices(model, root, state, library=libedgetpu)
    finally:
        compiled.chmod(0o644)
    assert not cached and tried["edgetpu"]["status"] == "failed", tried["edgetpu"]
    cached, now = _devices(model, root, state, library=libedgetpu)  # readable now: another key, timed
    assert not cached and _timed(now["edgetpu"]), now["edgetpu"]
