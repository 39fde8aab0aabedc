"""Runtime errors a user sees: ORT's own log after a failed run, runtimes that are installed but do not import,
and empty folder options on every command that takes them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgerun.backends.onnx import OnnxBackend
from edgerun.errors import InferenceError
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

#: What the loader says when a package's shared library is missing (the package itself is there).
LIBRARY_MISSING = 'raise ImportError("{lib}: cannot open shared object file: No such file or directory")'


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the installed onnxruntime reads
    onnx.save(model, path)
    return path


def _reshape_to_one(path: Path) -> Path:
    """Input ``x`` [1, m] reshaped to [1]: loads and warms up (m = 1), fails in the kernel for m > 1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "m"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    return _save(graph, path)


def _gather(path: Path) -> Path:
    """``y = [1, 2, 3][i]``: an index out of range fails in the Gather kernel, not in edgerun's checks."""
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    data = helper.make_tensor("data", TensorProto.FLOAT, [3], [1, 2, 3])
    node = helper.make_node("Gather", ["data", "i"], ["y"], name="pick")
    return _save(helper.make_graph([node], "g", [i], [y], [data]), path)


def test_an_onnx_node_that_fails_at_run_time_is_only_edgerun_s_one_line_on_stderr(tmp_path: Path) -> None:
    model = _reshape_to_one(tmp_path / "reshape.onnx")
    np.save(tmp_path / "fits.npy", np.zeros((1, 1), np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((1, 3), np.float32))
    result = run_cli("predict", str(model), str(tmp_path / "fits.npy"), str(tmp_path / "wide.npy"))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # no "[E:onnxruntime:...]" block before it
    assert lines[0] == (
        f"edgerun: error: {tmp_path / 'wide.npy'}: input does not fit the model: Reshape node: The input tensor "
        "cannot be reshaped to the requested shape. Input shape:{1,3}, requested shape:{1}"
    )


def test_an_input_that_fails_in_the_runtime_is_named_in_a_batch_run(tmp_path: Path) -> None:
    """Six inputs go through the pipeline (more than run one by one): the one the runtime refuses is
    named in its error line and record, as an input that fails to decode is."""
    model = _reshape_to_one(tmp_path / "reshape.onnx")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        np.save(inputs / f"fits_{i}.npy", np.zeros((1, 1), np.float32))
    np.save(inputs / "wide.npy", np.zeros((1, 3), np.float32))
    result = run_cli("predict", str(model), str(inputs), "--json")
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [r for r in records if "error" in r]
    assert len(records) == 6 and [r["input"] for r in failed] == [str(inputs / "wide.npy")]
    assert failed[0]["error"].startswith(f"{inputs / 'wide.npy'}: input does not fit the model: Reshape node")
    assert result.stderr == f"edgerun: error: {failed[0]['error']}\n"


def test_a_kernel_failure_raises_ort_s_reason_without_ort_writing_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    backend = OnnxBackend(_gather(tmp_path / "gather.onnx"))
    assert backend.run([np.array([2])])[0].tolist() == [3.0]
    with pytest.raises(InferenceError) as caught:
        backend.run([np.array([7])])
    assert capfd.readouterr().err == ""  # ORT writes its log to fd 2 itself: nothing there
    assert str(caught.value) == (
        "ONNX Runtime failed: Gather node 'pick': indices element out of data bounds, "
        "idx=7 must be within the inclusive range [-3,2]"
    )


def _shadow(tmp_path: Path, packages: dict[str, str]) -> dict[str, str]:
    """An environment whose ``packages`` (name -> the body of its ``__init__``) come first on the path."""
    site = tmp_path / "site"
    for name, body in packages.items():
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(body + "\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


def _absent(name: str) -> str:
    return f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})'


#: Each runtime installed with a shared library missing, beside packages that are absent.
BROKEN = {
    "onnxruntime": {"onnxruntime": LIBRARY_MISSING.format(lib="libonnxruntime_providers_shared.so")},
    "tflite": {
        "ai_edge_litert": _absent("ai_edge_litert"),
        "tflite_runtime": LIBRARY_MISSING.format(lib="libXYZ.so"),
        "tensorflow": _absent("tensorflow"),
    },
}
REASONS = {
    "onnxruntime": "ONNX Runtime is installed but does not import (ImportError: libonnxruntime_providers_shared.so: "
    "cannot open shared object file: No such file or directory): install the shared library it names",
    "tflite": "no TFLite interpreter works: tflite-runtime does not import (ImportError: libXYZ.so: cannot open "
    "shared object file: No such file or directory); install the shared library named, or pip install ai-edge-litert",
}


@pytest.mark.parametrize("runtime", ["onnxruntime", "tflite"])
def test_devices_reports_a_runtime_whose_shared_library_is_missing_as_installed_but_unusable(
    tmp_path: Path, runtime: str
) -> None:
    env = _shadow(tmp_path, BROKEN[runtime])
    result = run_cli("devices", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    runtimes = report["runtimes"]
    assert runtimes[runtime] is None
    assert runtimes["unusable"] == {runtime: REASONS[runtime]}
    assert runtimes["missing"][runtime] == REASONS[runtime]
    fmt = "onnx" if runtime == "onnxruntime" else "tflite"
    cpu = next(d for d in report["delegates"] if d["format"] == fmt and d["name"] == "cpu")
    assert cpu["usable"] is False and cpu["reason"] == REASONS[runtime]

    human = run_cli("devices", env=env)
    assert human.returncode == 0, human.stderr
    line = next(line for line in human.stdout.splitlines() if line.startswith("runtimes:"))
    assert ("onnxruntime unusable" if runtime == "onnxruntime" else "TFLite interpreter unusable") in line
    assert f"  unusable:  {REASONS[runtime]}" in human.stdout.splitlines()
    assert "not installed" not in human.stdout


@pytest.mark.parametrize("runtime", ["onnxruntime", "tflite"])
def test_a_model_whose_runtime_misses_a_shared_library_fails_with_the_import_s_reason(
    tmp_path: Path, runtime: str
) -> None:
    model = DIGITS / ("digits_fp32.onnx" if runtime == "onnxruntime" else "digits_fp32.tflite")
    result = run_cli("predict", str(model), str(SAMPLES / "digit_7.png"), env=_shadow(tmp_path, BROKEN[runtime]))
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("edgerun: error: ") and line.endswith(REASONS[runtime])


def test_runtimes_that_are_not_installed_are_still_reported_missing_not_unusable(tmp_path: Path) -> None:
    """Pins what was already right: a package that is absent is "not installed", and nothing is unusable."""
    env = _shadow(tmp_path, {name: _absent(name) for name in ("onnxruntime", *BROKEN["tflite"])})
    result = run_cli("devices", "--json", env=env)
    assert result.returncode == 0, result.stderr
    runtimes = json.loads(result.stdout)["runtimes"]
    assert runtimes["missing"]["onnxruntime"].startswith("ONNX Runtime is not installed: pip install onnxruntime")
    assert runtimes["missing"]["tflite"] == "no TFLite interpreter is installed: pip install ai-edge-litert"
    assert runtimes.get("unusable", {}) == {}


PREDICT = ["predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES / "digit_7.png")]


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (PREDICT, "--probe-root"),
        (["run", str(DIGITS / "digits_fp32.onnx"), "--source", str(SAMPLES / "digit_7.png")], "--probe-root"),
        # These said it already (devices and bench checked it themselves; every command checked --state-dir):
        (["devices"], "--probe-root"),
        (["bench", str(DIGITS / "digits_fp32.onnx"), "--runs", "1"], "--probe-root"),
        (PREDICT, "--state-dir"),
    ],
    ids=["predict", "run", "devices", "bench", "predict-state-dir"],
)
def test_an_empty_folder_option_is_named_as_empty_by_every_command(command: list[str], option: str) -> None:
    result = run_cli(*command, option, "")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"edgerun: error: {option} is an empty string\n"


def test_predict_names_a_path_or_a_given_name_in_a_runtime_error_and_nothing_for_an_unnamed_array(
    tmp_path: Path,
) -> None:
    import edgerun
    from edgerun.errors import InputError

    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((1, 3), np.float32))
    with edgerun.load(_reshape_to_one(tmp_path / "reshape.onnx")) as model:
        with pytest.raises(InputError) as unnamed:
            model.predict(np.zeros((1, 3), np.float32))
        with pytest.raises(InputError) as by_path:
            model.predict(wide)
        with pytest.raises(InputError) as named:
            model.predict(np.zeros((1, 3), np.float32), name="cam#7")
    assert str(unnamed.value).startswith("input does not fit the model: Reshape node")  # not "input: input ..."
    assert str(by_path.value).startswith(f"{wide}: input does not fit the model: Reshape node")
    assert str(named.value).startswith("cam#7: input does not fit the model: Reshape node")
