"""Both runtimes behind one interface, with the real committed digits models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgerun.backends import detect_format, open_backend
from edgerun.errors import InferenceError, InputError, ModelLoadError
from tests.conftest import DIGITS, SAMPLES


def _sample_tensor() -> np.ndarray:
    return np.load(SAMPLES / "digit_7.npy")[None]  # [1, 8, 8, 1] float32, value/16


def test_every_digits_model_classifies_the_sample_seven(digits_model: Path) -> None:
    fmt = detect_format(digits_model)
    backend = open_backend(digits_model, format=fmt, delegate="cpu")
    try:
        (logits,) = backend.run([_sample_tensor()])
        assert logits.dtype == np.float32
        assert logits.shape == (1, 10)
        assert int(np.argmax(logits)) == 7
    finally:
        backend.close()


def test_full_integer_tflite_model_takes_floats_and_returns_floats() -> None:
    backend = open_backend(DIGITS / "digits_int8.tflite", format="tflite", delegate="xnnpack")
    (spec,) = backend.inputs
    assert spec.dtype == np.int8 and spec.quant is not None
    assert backend.outputs[0].quant is not None
    (out,) = backend.run([_sample_tensor()])
    assert out.dtype == np.float32
    # The dequantized logits equal the float model's up to quantization error.
    ref = open_backend(DIGITS / "digits_fp32.tflite", format="tflite", delegate="xnnpack").run([_sample_tensor()])[0]
    assert np.argmax(out) == np.argmax(ref)
    assert np.max(np.abs(out - ref)) < 0.15 * np.max(np.abs(ref))


def test_pre_quantized_int8_input_is_passed_through_unchanged() -> None:
    backend = open_backend(DIGITS / "digits_int8.tflite", format="tflite", delegate="xnnpack")
    q = backend.inputs[0].quant
    assert q is not None
    x = _sample_tensor()
    as_int8 = np.clip(np.rint(x / q.scale + q.zero_point), -128, 127).astype(np.int8)
    assert np.array_equal(backend.run([as_int8])[0], backend.run([x])[0])


def test_tensor_specs_describe_names_shapes_dtypes_and_quantization() -> None:
    onnx = open_backend(DIGITS / "digits_fp32.onnx", format="onnx", delegate="cpu")
    assert onnx.inputs[0].shape == (None, 8, 8, 1)
    assert onnx.inputs[0].dynamic
    assert onnx.inputs[0].dtype == np.float32
    tfl = open_backend(DIGITS / "digits_int8.tflite", format="tflite", delegate="cpu")
    text = tfl.inputs[0].describe()
    assert "int8" in text and "scale" in text and "zero point" in text


@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_int8.onnx"])
def test_onnx_models_run_a_real_batch_on_their_dynamic_batch_dimension(name: str) -> None:
    backend = open_backend(DIGITS / name, format="onnx", delegate="cpu")
    batch = np.repeat(_sample_tensor(), 5, axis=0)
    (out,) = backend.run([batch])
    assert out.shape == (5, 10)
    assert (out.argmax(axis=1) == 7).all()


def test_tflite_model_with_a_fixed_batch_refuses_another_batch_size_and_keeps_working() -> None:
    backend = open_backend(DIGITS / "digits_int8.tflite", format="tflite", delegate="xnnpack")
    with pytest.raises(InputError, match=r"\[3, 8, 8, 1\] does not fit"):
        backend.run([np.repeat(_sample_tensor(), 3, axis=0)])
    (single,) = backend.run([_sample_tensor()])
    assert int(np.argmax(single)) == 7


def test_format_is_detected_from_content_not_the_file_name(tmp_path: Path) -> None:
    disguised = tmp_path / "model.bin"
    shutil.copy(DIGITS / "digits_int8.tflite", disguised)
    assert detect_format(disguised) == "tflite"
    shutil.copy(DIGITS / "digits_fp32.onnx", disguised)
    assert detect_format(disguised) == "onnx"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"hello world, not a model", "neither an ONNX nor a TFLite")],
)
def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        detect_format(path)


def test_a_truncated_onnx_model_is_refused_by_the_runtime_with_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes((DIGITS / "digits_fp32.onnx").read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="cannot load"):
        open_backend(path, format="onnx", delegate="cpu")


def test_a_truncated_tflite_model_is_refused_with_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.tflite"
    path.write_bytes((DIGITS / "digits_fp32.tflite").read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        open_backend(path, format="tflite", delegate="xnnpack")


@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_fp32.tflite"])
def test_an_input_of_the_wrong_shape_is_an_input_error(name: str) -> None:
    path = DIGITS / name
    backend = open_backend(path, format=detect_format(path), delegate="cpu")
    with pytest.raises(InputError):
        backend.run([np.zeros((1, 9, 9, 1), np.float32)])


@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_fp32.tflite", "digits_int8.tflite"])
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([[[[0.0]] * 8] * 8], "a numpy array is expected, got a list"),
        (None, "a numpy array is expected, got a NoneType"),
        (np.zeros((1, 8, 8, 1), np.complex64), "dtype complex64 is not numeric"),  # was cast, imaginary part dropped
        (np.zeros((1, 8, 8, 1), object), "dtype object is not numeric"),
        (np.zeros((1, 8, 8, 1), "U2"), "dtype <U2 is not numeric"),
        (np.zeros((1, 8, 8, 1), bool), "dtype bool is not numeric"),
    ],
)
def test_run_refuses_what_is_not_a_numeric_array_with_an_input_error(name: str, given: object, message: str) -> None:
    path = DIGITS / name
    backend = open_backend(path, format=detect_format(path), delegate="cpu")
    with pytest.raises(InputError, match=message):
        backend.run([given])  # type: ignore[list-item]
    assert backend.run([_sample_tensor()])[0].argmax() == 7


@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_int8.tflite"])
def test_running_a_closed_backend_says_it_is_closed(name: str) -> None:
    path = DIGITS / name
    backend = open_backend(path, format=detect_format(path), delegate="cpu")
    backend.close()
    with pytest.raises(InferenceError, match="the model is closed"):
        backend.run([_sample_tensor()])
