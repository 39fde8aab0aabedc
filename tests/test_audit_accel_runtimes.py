"""Audit of the runtime edges: broken vendor packages, concurrent loads, an engine cache that cannot be made."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgerun.backends.onnx import _provider_options
from edgerun.backends.tflite import TfliteBackend
from tests.conftest import DIGITS, ROOT, SAMPLES


def _broken_package(where: Path, name: str, statement: str) -> None:
    """A vendor package that is installed but fails on import, as one built for another numpy does."""
    (where / name).mkdir(parents=True)
    (where / name / "__init__.py").write_text(statement + "\n")


@pytest.fixture
def broken_runtimes(tmp_path: Path) -> dict[str, str]:
    """An environment in which every runtime is installed and none imports (put first on sys.path)."""
    shadow = tmp_path / "site"
    protobuf = 'raise TypeError("Descriptors cannot be created directly.\\nIf this call came from a _pb2.py file")'
    _broken_package(shadow, "ai_edge_litert", 'raise AttributeError("_ARRAY_API not found")')
    _broken_package(shadow, "tensorflow", protobuf)
    _broken_package(shadow, "onnxruntime", 'raise AttributeError("_ARRAY_API not found")')
    return {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{ROOT}"}


def test_runtime_discovery_reports_installed_but_broken_runtimes_instead_of_raising(
    broken_runtimes: dict[str, str],
) -> None:
    code = "from edgerun.accel.runtimes import discover; f = discover(); print(dict(f.missing)); print(f.tflite)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=broken_runtimes, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ONNX Runtime is installed but does not import (AttributeError: _ARRAY_API not found)" in done.stdout
    assert "tensorflow does not import (TypeError: Descriptors cannot be created directly.)" in done.stdout
    assert "ai-edge-litert does not import" in done.stdout
    assert done.stdout.splitlines()[-1] == "None"


@pytest.mark.parametrize("model", ["digits_int8.tflite", "digits_int8.onnx"])
def test_a_model_whose_runtime_does_not_import_is_a_one_line_error(broken_runtimes: dict[str, str], model: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(DIGITS / model), str(SAMPLES / "digit_7.png")],
        cwd=ROOT,
        env=broken_runtimes,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("edgerun: error: ") and "does not import" in line


def test_models_loaded_from_several_threads_at_once_leave_stderr_where_it_was() -> None:
    before = os.readlink("/proc/self/fd/2")
    failures: list[BaseException] = []

    def load_many() -> None:
        try:
            for _ in range(40):
                TfliteBackend(DIGITS / "digits_fp32.tflite", delegate="xnnpack").close()
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=load_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    # LiteRT's native log is captured through fd 2: it must point back where it did, not at a memfd.
    assert os.readlink("/proc/self/fd/2") == before


@pytest.mark.parametrize("delegate", ["tensorrt", "openvino"])
def test_an_engine_cache_that_cannot_be_created_costs_the_cache_not_the_delegate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, delegate: str
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with caplog.at_level(logging.WARNING, logger="edgerun"):
        assert _provider_options(delegate, blocker / "engines" / f"{delegate}-x") == {}
    assert any("engine cache" in r.getMessage() and "without a cache" in r.getMessage() for r in caplog.records)
