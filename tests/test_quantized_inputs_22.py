"""``Model.run`` on a quantized (INT8) model: arrays of other float types are refused in one line
where they cannot be quantized, and quantized the same as float32 where they can.

Before: a 0-d float64 array into the INT8 TFLite model ended in numpy's bare ``TypeError: return
arrays must be of ArrayType`` (the quantizer's product of a 0-d array is a scalar, which ``out=``
refuses), and a float16 array holding NaN was quantized to an arbitrary answer, with numpy's
``invalid value encountered in cast`` on stderr (NaN was refused from float64 only).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import edgerun
from edgerun.errors import InputError
from tests.conftest import DIGITS

INT8 = ["digits_int8.tflite", "digits_int8.onnx"]


@pytest.mark.parametrize("name", INT8)
def test_a_0_d_float64_array_is_refused_for_its_shape(name: str) -> None:
    with edgerun.load(DIGITS / name) as model, pytest.raises(InputError) as refused:
        model.run(np.array(3.0))
    assert "does not fit" in str(refused.value) or "Invalid rank" in str(refused.value), refused.value


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_float16_array_with_nan_or_inf_into_an_int8_input_is_refused_without_numpy_s_warning(bad: float) -> None:
    x = np.full((1, 8, 8, 1), 0.5, np.float16)
    x[0, 3, 3, 0] = bad
    # the TFLite model's input tensor is int8 (the ONNX one quantizes inside, from a float32 input)
    with edgerun.load(DIGITS / "digits_int8.tflite") as model, warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning would fail here
        with pytest.raises(InputError, match="array has NaN or infinite values"):
            model.run(x)


@pytest.mark.parametrize("name", INT8)
def test_float16_float64_and_float32_arrays_of_one_image_give_one_answer(name: str) -> None:
    rng = np.random.default_rng(22)
    x = rng.integers(0, 17, size=(1, 8, 8, 1)).astype(np.float32) / 16  # exact in float16 too
    with edgerun.load(DIGITS / name) as model:
        expected = model.run(x)[0]
        for dtype in (np.float16, np.float64):
            np.testing.assert_array_equal(model.run(x.astype(dtype))[0], expected)
