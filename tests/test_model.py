"""The library API: edgerun.load(), cards, preprocessing and post-processing on the real models."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import edgerun
from edgerun.card import ModelCard, load_card, replace
from edgerun.errors import CardError, ConfigError, InputError, ModelLoadError
from tests.conftest import DIGITS, SAMPLES


@pytest.fixture(scope="module")
def int8_tflite() -> edgerun.Model:
    return edgerun.load(DIGITS / "digits_int8.tflite", state_dir="/nonexistent-state")


def test_every_digits_model_classifies_every_sample_image(digits_model: Path) -> None:
    with edgerun.load(digits_model) as model:
        assert model.name == "digits" and model.version == "1.0.0"
        for digit in range(10):
            result = model.predict(SAMPLES / f"digit_{digit}.png")
            best = result.output[0]
            assert best["label"] == str(digit), f"{digits_model.name} on digit_{digit}.png"
            assert 0.0 <= best["score"] <= 1.0
            assert result.latency_ms > 0
            assert set(result.stages_ms) == {"pre", "infer", "post"}


def test_classification_output_is_top_k_label_index_score_best_first(int8_tflite: edgerun.Model) -> None:
    output = int8_tflite.predict(SAMPLES / "digit_3.png").output
    assert len(output) == 3  # the card's top_k
    assert [set(o) for o in output] == [{"label", "index", "score"}] * 3
    scores = [o["score"] for o in output]
    assert scores == sorted(scores, reverse=True)
    assert sum(o["score"] for o in output) <= 1.0 + 1e-6


def test_npy_arrays_are_used_as_they_are_with_or_without_the_batch_dimension(int8_tflite: edgerun.Model) -> None:
    array = np.load(SAMPLES / "digit_7.npy")
    assert int8_tflite.predict(array).output[0]["label"] == "7"
    assert int8_tflite.predict(array[None]).output[0]["label"] == "7"
    assert int8_tflite.predict(SAMPLES / "digit_7.npy").output[0]["label"] == "7"


@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_int8.onnx"])
def test_predict_refuses_a_batch_rather_than_answer_for_its_first_row(name: str) -> None:
    seven = np.load(SAMPLES / "digit_7.npy")
    with edgerun.load(DIGITS / name) as model:
        assert model.batchable
        with pytest.raises(InputError, match=r"shape \[4, 8, 8, 1\] is a batch of 4; one input"):
            model.predict(np.stack([seven] * 4))
        assert model.prepare(seven[None]).shape == (1, 8, 8, 1)
        assert len(model.run(np.stack([seven] * 4))[0]) == 4  # run() takes the batch


def test_decoded_images_and_encoded_bytes_are_both_accepted(int8_tflite: edgerun.Model) -> None:
    data = (SAMPLES / "digit_5.png").read_bytes()
    assert int8_tflite.predict(data).output[0]["label"] == "5"
    color = cv2.imread(str(SAMPLES / "digit_5.png"), cv2.IMREAD_COLOR)
    assert int8_tflite.predict(color).output[0]["label"] == "5"


def test_a_large_colour_jpeg_is_converted_and_resized_per_the_card(int8_tflite: edgerun.Model, tmp_path: Path) -> None:
    gray = cv2.imread(str(SAMPLES / "digit_2.png"), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert int8_tflite.predict(path).output[0]["label"] == "2"


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 3), np.float32), r"shape \[3, 3\] does not fit"),
        (np.zeros((8, 8, 1), np.complex64), "not numeric"),
        (np.array(["a", "b"]), "not numeric"),
        (np.full((8, 8, 1), np.nan, np.float32), "NaN or infinite values"),  # INT8 once answered '3', 0.93
        (np.full((1, 8, 8, 1), np.inf, np.float64), "NaN or infinite values"),
    ],
)
def test_arrays_of_the_wrong_shape_or_dtype_are_input_errors(
    int8_tflite: edgerun.Model, array: np.ndarray, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        int8_tflite.predict(array)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"not an image at all", "not a decodable image"),
        ("truncated-jpeg", "truncated JPEG"),
        ("truncated-png", "truncated PNG"),
    ],
)
def test_corrupt_images_are_input_errors(int8_tflite: edgerun.Model, content: object, message: str) -> None:
    if content == "truncated-jpeg":
        _ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
        content = buf.tobytes()[:-200]
    elif content == "truncated-png":
        content = (SAMPLES / "digit_1.png").read_bytes()[:150]
    with pytest.raises(InputError, match=message):
        int8_tflite.predict(content)


def test_a_model_without_a_card_infers_image_preprocessing_and_classification(
    model_copy: Callable[[str, str], Path],
) -> None:
    bare = model_copy("digits_fp32.onnx", "nocard.onnx")
    bare.with_name("nocard.onnx.card.yaml").unlink()
    with edgerun.load(bare) as model:
        assert model.card.inferred
        assert model.card.task == "classification"
        assert model.card.preprocess is not None and model.card.preprocess.color == "gray"
        best = model.predict(SAMPLES / "digit_4.png").output[0]
        assert best["label"] == "4" and best["index"] == 4


def test_a_model_without_a_card_and_a_non_image_input_refuses_images_clearly(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with edgerun.load(path) as model:
        assert model.card.inferred
        with pytest.raises(InputError, match="has no image preprocessing"):
            model.predict(SAMPLES / "digit_4.png")
        assert np.allclose(model.run(np.full((1, 64), -1.0, np.float32))[0], 0.0)


def test_the_committed_cards_are_valid_and_report_held_out_accuracy_within_one_point() -> None:
    cards = {p.name: load_card(p) for p in DIGITS.glob("*.card.yaml")}
    assert len(cards) == 4
    for card in cards.values():
        assert card.metrics["accuracy"] > 0.95
    for fmt in ("onnx", "tflite"):
        fp32 = cards[f"digits_fp32.{fmt}.card.yaml"].metrics["accuracy"]
        int8 = cards[f"digits_int8.{fmt}.card.yaml"].metrics["accuracy"]
        assert int8 >= fp32 - 0.01


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"colour": "rgb"}, "unknown field `colour`"),
        ({"version": "1.0"}, "version"),
        ({"task": "segmentation"}, "task"),
        ({"preprocess": {"color": "rgb", "mean": [0.1, 0.2]}}, "mean has 2 values; rgb needs 1 or 3 - at"),
        ({"preprocess": {"color": "gray", "std": [0.5, 0.5]}}, "std has 2 values; gray needs 1 - at"),
        ({"preprocess": {"std": [0.0]}}, "std must not contain 0"),
        ({"name": "../evil"}, "name"),
    ],
)
def test_card_errors_name_the_file_and_the_field(tmp_path: Path, patch: dict[str, object], message: str) -> None:
    import yaml

    data = yaml.safe_load((DIGITS / "digits_fp32.onnx.card.yaml").read_text())
    data.update(patch)
    path = tmp_path / "bad.card.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CardError, match=message) as err:
        load_card(path)
    assert str(path) in str(err.value)


def test_a_card_that_contradicts_the_model_is_refused(model_copy: Callable[[str, str], Path]) -> None:
    path = model_copy("digits_fp32.onnx", "wrongsize.onnx")
    card = path.with_name("wrongsize.onnx.card.yaml")
    card.write_text(card.read_text().replace("size: [8, 8]", "size: [28, 28]"))
    with pytest.raises(CardError, match=r"size \[28, 28\]"):
        edgerun.load(path)


def test_a_card_can_be_passed_explicitly(tmp_path: Path) -> None:
    card = ModelCard(name="renamed", version="2.1.0", task="raw")
    with edgerun.load(DIGITS / "digits_fp32.onnx", card=card) as model:
        assert (model.name, model.version) == ("renamed", "2.1.0")
        raw = model.predict(np.load(SAMPLES / "digit_7.npy")).output
        assert list(raw) == [model.outputs[0].name]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"threads": 0}, ConfigError, "threads must be an integer between 1 and 256, got 0"),
        ({"threads": -1}, ConfigError, "got -1"),  # ONNX Runtime took it silently
        ({"threads": "2"}, ConfigError, "got '2'"),  # a TypeError from ONNX Runtime
        ({"threads": 100_000}, ConfigError, "got 100000"),  # LiteRT hung starting the threads
        ({"card": {"name": "x"}}, CardError, "card must be a ModelCard or a card file path, got dict"),
        ({"path": None}, ModelLoadError, "model path must be a str or os.PathLike, got NoneType"),
    ],
)
@pytest.mark.parametrize("name", ["digits_fp32.onnx", "digits_int8.tflite"])
def test_load_arguments_of_the_wrong_type_or_range_are_edgerun_errors(
    name: str, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    kwargs = {"path": DIGITS / name, **kwargs}
    with pytest.raises(error, match=message):
        edgerun.load(warmup=False, **kwargs)  # type: ignore[arg-type]


def test_a_closed_model_says_so_when_run_again() -> None:
    model = edgerun.load(DIGITS / "digits_int8.tflite")
    with model:
        assert model.predict(SAMPLES / "digit_3.png").output[0]["label"] == "3"
    with model, pytest.raises(edgerun.InferenceError, match="the model is closed"):
        model.predict(SAMPLES / "digit_3.png")


def test_card_yaml_in_the_model_folder_is_found_when_no_per_file_card_exists(tmp_path: Path) -> None:
    shutil.copy(DIGITS / "digits_int8.onnx", tmp_path / "m.onnx")
    shutil.copy(DIGITS / "digits_int8.onnx.card.yaml", tmp_path / "card.yaml")
    with edgerun.load(tmp_path / "m.onnx") as model:
        assert model.card_path == tmp_path / "card.yaml"
        assert not model.card.inferred


def test_describe_lists_tensors_delegate_and_card(int8_tflite: edgerun.Model) -> None:
    info = int8_tflite.describe()
    assert info["format"] == "tflite" and info["delegate"] == "xnnpack"
    assert info["inputs"][0]["quant"]["scale"] > 0
    assert info["card"]["labels"][0] == "0"


def test_images_for_an_int8_input_are_normalised_and_quantized_in_one_pass(int8_tflite: edgerun.Model) -> None:
    from edgerun.backends.base import Quantizer
    from edgerun.processing.image import ImagePreprocessor

    spec = int8_tflite.inputs[0]
    assert spec.quant is not None
    card_pre = int8_tflite.card.preprocess
    assert card_pre is not None
    fused = ImagePreprocessor(card_pre, 8, 8, 1, spec.dtype, quant=spec.quant)
    plain = ImagePreprocessor(card_pre, 8, 8, 1, np.dtype(np.float32))
    for digit in range(10):
        image = cv2.imread(str(SAMPLES / f"digit_{digit}.png"), cv2.IMREAD_GRAYSCALE)
        direct = fused(image)
        assert direct.dtype == np.int8
        assert np.array_equal(direct, Quantizer(spec.quant, spec.dtype)(plain(image)))


@pytest.mark.parametrize("target", ["float32", "int8", "uint8"])
def test_every_pixel_value_maps_exactly_as_the_per_pixel_arithmetic(target: str) -> None:
    from edgerun.backends.base import QuantParams
    from edgerun.card import Preprocess
    from edgerun.processing.image import ImagePreprocessor

    # every value 0-255 in every channel, each channel in its own order, already at the input size
    rng = np.random.default_rng(7)
    bgr = np.stack([rng.permutation(256).astype(np.uint8).reshape(16, 16) for _ in range(3)], axis=2)
    if target == "float32":  # per-channel mean and std: the float path
        spec = Preprocess(
            size=(16, 16), color="bgr", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
        )
        tensor = ImagePreprocessor(spec, 16, 16, 3, np.dtype(np.float32))(bgr)
        expected = bgr.astype(np.float32)
        expected *= np.float32(1 / 255) / np.array(spec.std, np.float32)
        expected += -np.array(spec.mean, np.float32) / np.array(spec.std, np.float32)
    else:  # one normalisation for all channels into a quantized input: OpenCV's rounding and saturation
        spec = Preprocess(size=(16, 16), color="bgr", scale=1 / 127.5, mean=(1.0,), std=(1.0,))
        quant = QuantParams(scale=0.0078125, zero_point=-3 if target == "int8" else 125)
        tensor = ImagePreprocessor(spec, 16, 16, 3, np.dtype(target), quant=quant)(bgr)
        alpha, beta = (1 / 127.5) / quant.scale, -1.0 / quant.scale + quant.zero_point
        flat = bgr.reshape(-1, 1)
        expected = cv2.addWeighted(flat, alpha, flat, 0.0, beta, dtype=cv2.CV_8S if target == "int8" else cv2.CV_8U)
        expected = expected.reshape(bgr.shape)
    assert tensor.dtype == np.dtype(target)
    assert np.array_equal(tensor[0], expected)


def test_per_channel_values_that_do_not_fit_the_input_are_a_card_error() -> None:
    from edgerun.card import Preprocess
    from edgerun.errors import CardError
    from edgerun.processing.image import ImagePreprocessor

    gray = np.zeros((8, 8), np.uint8)
    same = Preprocess(color="rgb", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert ImagePreprocessor(same, 8, 8, 1, np.dtype(np.float32))(gray).shape == (1, 8, 8, 1)  # one value, really
    differing = Preprocess(color="rgb", mean=(0.485, 0.456, 0.406))
    with pytest.raises(CardError, match=r"3 values for mean/std .* 1 channel"):
        ImagePreprocessor(differing, 8, 8, 1, np.dtype(np.float32))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_colour_preprocessing_follows_the_formula_per_channel(layout: str) -> None:
    from edgerun.card import Preprocess
    from edgerun.processing.image import ImagePreprocessor

    spec = Preprocess(
        size=(4, 6),
        layout=layout,
        color="rgb",
        scale=1 / 255,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation="nearest",
    )
    bgr = np.random.default_rng(3).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    tensor = ImagePreprocessor(spec, 4, 6, 3, np.dtype(np.float32))(bgr)
    rgb = cv2.resize(bgr, (6, 4), interpolation=cv2.INTER_NEAREST)[:, :, ::-1].astype(np.float32)
    expected = (rgb / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    if layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    assert tensor.shape == (1, *expected.shape)
    assert np.allclose(tensor[0], expected, atol=1e-5)


def test_a_validated_card_is_cached_and_a_changed_card_is_read_again(tmp_path: Path) -> None:
    source = (DIGITS / "digits_fp32.onnx.card.yaml").read_text()
    path = tmp_path / "m.onnx.card.yaml"
    path.write_text(source)
    cache = tmp_path / "cache"
    first = load_card(path, cache)
    (entry,) = cache.glob("*.json")
    assert load_card(path, cache) == first  # served from the cache
    path.write_text(source.replace("version: 1.0.0", "version: 1.0.1"))
    assert load_card(path, cache).version == "1.0.1"  # the change is seen
    entry.write_text("{broken")
    assert load_card(path, cache).version == "1.0.1"  # a broken cache is only a miss


@pytest.mark.parametrize("task", ["classification", "regression", "detection"])
def test_postprocess_of_a_batch_gives_each_row_what_a_call_of_one_gives(task: str) -> None:
    """A batched pipeline post-processes row by row: each row's record is the one a batch of one gives."""
    card = replace(load_card(DIGITS / "digits_fp32.onnx.card.yaml"), task=task)  # detection: outputs shown raw
    with edgerun.load(DIGITS / "digits_fp32.onnx", card=card) as m:
        tensors = [m.prepare(SAMPLES / f"digit_{d}.png") for d in (3, 7, 1)]
        outputs = m.run(np.concatenate(tensors))
        alone = [m.postprocess(m.run(t)) for t in tensors]
        assert [m.postprocess(outputs, row) for row in range(3)] == alone  # once: every row got all three


@pytest.mark.parametrize("task", ["classification", "detection"])
@pytest.mark.parametrize("row", [3, -1, True, 1.0])
def test_postprocess_of_a_row_outside_the_batch_is_an_input_error(task: str, row: Any) -> None:
    card = replace(load_card(DIGITS / "digits_fp32.onnx.card.yaml"), task=task)
    with edgerun.load(DIGITS / "digits_fp32.onnx", card=card) as m:
        tensors = [m.prepare(SAMPLES / f"digit_{d}.png") for d in (3, 7, 1)]
        outputs = m.run(np.concatenate(tensors))
        with pytest.raises(InputError, match=f"row {row!r} is not a row of this batch of 3"):
            m.postprocess(outputs, row)
