"""A Ctrl-C that lands while a runtime's extension module initialises is a Ctrl-C, not a broken install.

pybind11 (onnxruntime) turns an exception raised during its module's initialisation into
``ImportError: initialization failed`` with that exception as its cause; a Ctrl-C there once read
"ONNX Runtime is installed but does not import ...: reinstall onnxruntime", exit 1. The packages
below stand in for the vendor's at the import boundary, raising what such an import raises.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES

_INTERRUPTED = 'raise ImportError("initialization failed") from KeyboardInterrupt()'


def _predict_with(tmp_path: Path, package: str, statement: str, model: str) -> subprocess.CompletedProcess[str]:
    """``edgerun predict`` over one sample with ``package`` standing in for the vendor's, raising ``statement``."""
    shadow = tmp_path / "site" / package
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(statement + "\n")
    return subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(DIGITS / model), str(SAMPLES / "digit_7.png")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("package", "model"), [("onnxruntime", "digits_int8.onnx"), ("ai_edge_litert", "digits_int8.tflite")]
)
def test_a_ctrl_c_during_a_runtimes_import_ends_predict_as_a_ctrl_c(tmp_path: Path, package: str, model: str) -> None:
    done = _predict_with(tmp_path, package, _INTERRUPTED, model)
    assert done.returncode == 130, done.stderr
    assert "does not import" not in done.stderr and "reinstall" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr


def test_an_import_failure_without_an_interrupt_still_says_the_runtime_does_not_import(tmp_path: Path) -> None:
    failed = 'raise ImportError("initialization failed") from ValueError("bad numpy")'
    done = _predict_with(tmp_path, "onnxruntime", failed, "digits_int8.onnx")
    assert done.returncode == 1, done.stderr
    assert "ONNX Runtime is installed but does not import (ImportError: initialization failed)" in done.stderr
