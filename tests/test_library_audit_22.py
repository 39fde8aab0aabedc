"""The library's image input path and cards, audited (22nd session): each test failed before its fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgerun
from edgerun.card import load_card, replace
from edgerun.errors import CardError, ConfigError, InputError, UnusableInput
from tests.conftest import DIGITS, SAMPLES


def test_a_decoded_image_of_the_inputs_own_size_is_preprocessed_like_any_other_image(digits_model: Path) -> None:
    gray = cv2.resize(
        cv2.imread(str(SAMPLES / "digit_2.png"), cv2.IMREAD_GRAYSCALE), (8, 8), interpolation=cv2.INTER_AREA
    )
    image = gray[:, :, None]  # HxWx1, as IMREAD_UNCHANGED gives some gray files: the input [N,8,8,1] less its batch
    with edgerun.load(digits_model) as model:
        encoded = model.predict(cv2.imencode(".png", image)[1].tobytes()).output
        assert encoded[0]["label"] == "2"
        assert model.predict(image).output == encoded  # it went in as 0-255 values, where the card scales to 0-1
        assert np.array_equal(model.prepare(image), model.prepare(gray))
        assert np.array_equal(model.prepare(image), model.prepare(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))


@pytest.mark.parametrize(
    ("before", "text", "number"),
    [
        ("scale: 0.00392156862745098", "scale: {}", ("4e-3", "0.004")),
        ("std: [1.0]", "std: [{}]", ("1e-2", "0.01")),
        ("top_k: 3", "top_k: {}", ("1e1", "10")),
        ("accuracy: 0.9911", "accuracy: {}", ("1e0", "1.0")),
        ("scale: 0.00392156862745098", "scale: {}", ("1e-30", "1.0e-30")),  # repr's 1e-30 is YAML text again
    ],
    ids=["scale", "std", "top_k", "metrics", "scale-repr-without-a-dot"],
)
def test_a_card_number_yaml_reads_as_text_is_refused_with_how_to_write_it(
    model_copy: Callable[[str, str], Path], state_dir: Path, before: str, text: str, number: tuple[str, str]
) -> None:
    given, written = number
    model = model_copy("digits_fp32.onnx", "m.onnx")
    card = model.with_name("m.onnx.card.yaml")
    source = card.read_text()
    card.write_text(source.replace(before, text.format(given)))
    with pytest.raises(CardError) as caught:
        edgerun.load(model, state_dir=state_dir)
    assert str(caught.value).endswith(f" (YAML reads '{given}' as a string: write {written})")
    card.write_text(source.replace(before, text.format(written)))
    edgerun.load(model, state_dir=state_dir).close()  # written as it says, the card loads


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("scale: 0.00392156862745098", "scale: 1.0e+38"),  # 255 * scale is infinite in float32
        ("scale: 0.00392156862745098", "scale: 1.0e-50"),  # 0 in float32: every image all zeros
        ("std: [1.0]", "std: [1.0e-45]"),
        ("mean: [0.0]", "mean: [1.0e+300]"),
    ],
    ids=["scale-overflows", "scale-rounds-to-0", "std-rounds-to-0", "mean-overflows"],
)
def test_a_card_whose_normalisation_leaves_float32_is_refused_not_answered_with_nan(
    model_copy: Callable[[str, str], Path], state_dir: Path, before: str, after: str
) -> None:
    model = model_copy("digits_fp32.onnx", "m.onnx")
    card = model.with_name("m.onnx.card.yaml")
    card.write_text(card.read_text().replace(before, after))
    with pytest.raises(CardError, match=r"m\.onnx\.card\.yaml: scale, mean and std put .* float32's range.*preprocess"):
        edgerun.load(model, state_dir=state_dir)


def test_predict_of_an_empty_path_says_the_path_is_empty() -> None:
    with edgerun.load(DIGITS / "digits_int8.tflite") as model, pytest.raises(UnusableInput) as caught:
        model.predict("")
    assert str(caught.value) == "an input path is an empty string"  # it was ": no such file", naming nothing


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_postprocess_takes_a_numpy_integer_as_the_row_it_names(task: str) -> None:
    card = replace(load_card(DIGITS / "digits_fp32.onnx.card.yaml"), task=task)
    with edgerun.load(DIGITS / "digits_fp32.onnx", card=card) as model:
        outputs = model.run(np.concatenate([model.prepare(SAMPLES / f"digit_{d}.png") for d in (3, 7, 1)]))
        for row in np.arange(3):  # np.argmax and np.arange give np.int64: it was "row np.int64(1) is not a row"
            assert model.postprocess(outputs, row) == model.postprocess(outputs, int(row))
        with pytest.raises(InputError, match=r"row np\.True_ is not a row of this batch of 3"):
            model.postprocess(outputs, np.True_)


@pytest.mark.parametrize("what", ["state_dir", "probe_root"])
def test_load_refuses_a_folder_argument_that_is_no_path(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"^{what} must be a str or os.PathLike, got int$"):
        edgerun.load(DIGITS / "digits_fp32.onnx", **{what: 5})  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # state_dir=5 made a state folder "5" here; probe_root=5 a TypeError


def test_load_takes_a_numpy_integer_for_threads() -> None:
    with edgerun.load(DIGITS / "digits_int8.tflite", threads=np.int64(2)) as model:  # it was "must be an integer"
        assert model.predict(SAMPLES / "digit_4.png").output[0]["label"] == "4"


def _any_size_image_model(path: Path) -> Path:
    """An ONNX model whose input [N,3,H,W] has no fixed height and width (a mean per channel, then Relu)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0), helper.make_node("Relu", ["m"], ["y"])],
        "any_size",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize("card", [None, "name: m\npreprocess:\n  color: rgb\n"])
def test_an_image_for_an_input_of_any_size_asks_for_the_cards_size_not_for_a_preprocess_section(
    tmp_path: Path, card: str | None
) -> None:
    path = _any_size_image_model(tmp_path / "m.onnx")
    if card is not None:
        tmp_path.joinpath("m.onnx.card.yaml").write_text(card)
    image = np.zeros((5, 7, 3), np.uint8)
    with edgerun.load(path) as model:
        assert model.card.preprocess is not None and not model.takes_images
        for item in (cv2.imencode(".png", image)[1].tobytes(), image):
            with pytest.raises(InputError) as caught:
                model.predict(item)
            # it said "give it a card with a preprocess section", which the card has
            assert "has no fixed height and width" in str(caught.value)
            assert "give it a card whose preprocess has size: [height, width]" in str(caught.value)
        assert model.run(np.ones((1, 3, 5, 7), np.float32))[0].tolist() == [[1.0, 1.0, 1.0]]  # arrays it takes


def test_a_16_bit_image_array_is_refused_saying_images_are_uint8_pixels(tmp_path: Path) -> None:
    deep = (cv2.imread(str(SAMPLES / "digit_6.png"), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257)[:, :, None]
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    unchanged = cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_UNCHANGED)  # 16 bits, as a user may read it
    with edgerun.load(DIGITS / "digits_fp32.onnx") as model:
        assert model.predict(tmp_path / "deep.png").output[0]["label"] == "6"  # the file: decoded to 8 bits
        with pytest.raises(UnusableInput) as caught:
            model.predict(unchanged)
        # it said only that [32, 32] does not fit [N,8,8,1], as if the size were wrong
        assert str(caught.value).endswith(
            "does not fit input [N,8,8,1] float32, and an image array is uint8 pixels, not uint16"
        )
