"""The input decoders fuzzed: whatever arrives, a value or the documented error in one line.

Inputs come from files and the network, so each decoder here gets generated and mutated data
(hypothesis, derandomized and bounded so CI is deterministic): MQTT payloads, ``.npy`` files and
messages, JSON arrays, CSV and JSON Lines sensor files, mutated PNG and JPEG bytes, and numpy
arrays of any dtype and shape for ``Model.prepare`` on the real digits and vibration models. The
property each time: a tensor or value, or ``InputError`` (``ValueError`` from ``decode_message``
and ``json_array``, an error frame for a sensor row) with a one-line message; never another
exception, and never an allocation that an input only declares.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from numpy.lib import format as npy_format

import edgerun
from edgerun.errors import ConfigError, InputError, SourceError
from edgerun.inputs import json_array, read_input
from edgerun.opencv import max_image_pixels, opencv
from edgerun.processing.image import decode_image
from edgerun.sources.mqtt import decode_message
from edgerun.sources.sensor import SensorSource

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
VIBRATION = ROOT / "models" / "vibration"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def fuzz(examples: int) -> settings:
    """Bounded and deterministic: the same examples on every run, no deadline (CI machines vary)."""
    return settings(
        max_examples=examples, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )


def one_line(exc: BaseException) -> str:
    """The error's message, which must be one non-empty line."""
    text = str(exc)
    assert text.strip() and len(text.splitlines()) == 1, f"not one line: {text!r}"
    return text


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the files each example writes (module-scoped: hypothesis reruns a test in one call)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def digits() -> Iterator[edgerun.Model]:
    with edgerun.load(DIGITS / "digits_int8.onnx") as model:
        yield model


@pytest.fixture(scope="module")
def vibration() -> Iterator[edgerun.Model]:
    with edgerun.load(VIBRATION / "vibration_int8.onnx") as model:
        yield model


# --- .npy data: real arrays, mutated, and headers declaring what they like ------------------------

NPY_DTYPES = ["<f4", ">f8", "<f2", "|u1", "<i8", "|b1", "<c8", "<U3", "|S2"]
#: Descriptors a header may name, numeric or not; ``|S0`` and ``|V0`` take no bytes however many values.
DESCRS = ["<f4", ">f8", "|u1", "<i8", "|b1", "<c16", "|O", "<U3", "|S0", "|V0", "<M8[s]", [("a", "<f4")]]
#: Dimensions a header may declare: small, past memory, past int64, negative.
DIMENSIONS = st.one_of(
    st.integers(0, 16), st.sampled_from([10**8, 10**12, 2**62, 2**63, 2**70, -1, -(2**70)]), st.integers(-4, 2**80)
)


def npy_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@st.composite
def declared_npy(draw: st.DrawFn) -> bytes:
    """An ``.npy`` whose header declares any shape and dtype, followed by a few bytes of data."""
    header = {
        "descr": draw(st.sampled_from(DESCRS)),
        "fortran_order": draw(st.booleans()),
        "shape": tuple(draw(st.lists(DIMENSIONS, max_size=4))),
    }
    buf = io.BytesIO()
    if draw(st.booleans()):
        npy_format.write_array_header_1_0(buf, header)
    else:
        npy_format.write_array_header_2_0(buf, header)
    return buf.getvalue() + draw(st.binary(max_size=64))


@st.composite
def mutated_npy(draw: st.DrawFn) -> bytes:
    """A real array's ``.npy`` bytes, cut, with bytes changed, or whole."""
    array = draw(arrays(st.sampled_from(NPY_DTYPES), array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
    data = bytearray(npy_of(array))
    how = draw(st.sampled_from(["whole", "cut", "flip", "header"]))
    if how == "cut":
        del data[draw(st.integers(0, len(data))) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "header":  # the header's text, where the dtype and shape are read from
        end = data.index(b"\n")
        at = draw(st.integers(6, end))
        data[at : at + 1] = draw(st.binary(min_size=0, max_size=3))
    return bytes(data)


NPY_BYTES = st.one_of(mutated_npy(), declared_npy())


def _peak_bytes_of(call: Callable[..., object], *args: object) -> int:
    """The most memory (Python's and numpy's allocations) taken while ``call(*args)`` ran, in bytes."""
    tracemalloc.start()
    try:
        with contextlib.suppress(ValueError, InputError):
            call(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@fuzz(150)
@given(declared_npy())
def test_a_npy_header_declaring_more_data_than_follows_is_refused_before_it_is_allocated(
    work: Path, data: bytes
) -> None:
    # np.load allocated what the header declared before reading: 10**12 float32 values were a
    # MemoryError, 10**8 reserved 400 MB, and a dimension of 2**70 was an OverflowError.
    message = base64.b64encode(data)
    assert _peak_bytes_of(decode_message, message, len(message)) < 1 << 20
    path = work / "declared.npy"
    path.write_bytes(data)
    assert _peak_bytes_of(read_input, path) < 1 << 20


@fuzz(300)
@given(NPY_BYTES)
def test_a_base64_npy_message_is_an_array_or_a_plain_one_line_reason(data: bytes) -> None:
    message = base64.b64encode(data)
    try:
        value = decode_message(message, len(message))
    except ValueError as exc:
        assert one_line(exc).startswith(("base64 .npy that does not load: ", "neither a JSON array", "empty message"))
        event("refused")
        return
    event("loaded")
    assert isinstance(value, np.ndarray)


@fuzz(200)
@given(st.one_of(NPY_BYTES, st.binary(max_size=200)), st.sampled_from(["in.npy", "in.NPY"]))
def test_a_npy_file_is_an_array_or_one_input_error_line(work: Path, data: bytes, name: str) -> None:
    path = work / name
    path.write_bytes(data)
    try:
        value = read_input(path)
    except InputError as exc:
        assert one_line(exc).startswith(f"{path}: ")
        return
    assert isinstance(value, np.ndarray)


@fuzz(150)
@given(
    arrays(
        st.sampled_from([*NPY_DTYPES, "<M8[s]", "<f4,|u1"]),
        array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
    ),
    st.booleans(),
)
def test_a_saved_array_reads_back_as_numpy_saved_it_from_a_file_and_a_message(
    work: Path, array: np.ndarray, fortran: bool
) -> None:
    if fortran:
        array = np.asfortranarray(array)
    data = npy_of(array)
    path = work / "saved.npy"
    path.write_bytes(data)
    expected = np.load(io.BytesIO(data))
    for got in (read_input(path), decode_message(base64.b64encode(data), 1 << 20)):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes() and got.flags.f_contiguous == expected.flags.f_contiguous


def test_a_npz_archive_named_npy_is_an_input_error_not_an_open_archive(work: Path) -> None:
    path = work / "archive.npy"
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3, np.float32))
    path.write_bytes(buf.getvalue())  # np.load opens an archive whatever its name: read_input gave an NpzFile
    with pytest.raises(InputError, match=r"archive\.npy: not a plain numeric \.npy array \(a \.npz archive"):
        read_input(path)


@fuzz(30)
@given(st.integers(10_001, 70_000))
def test_a_npy_message_whose_header_is_too_long_for_numpy_is_refused_in_one_line(length: int) -> None:
    # numpy's refusal of a header over 10,000 bytes runs to three lines, which went into the error frame
    header = {"descr": "<f4", "fortran_order": False, "shape": (1,)}
    text = repr(header).encode() + b" " * length + b"\n"
    data = b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text + bytes(4)
    with pytest.raises(ValueError) as caught:
        decode_message(base64.b64encode(data), 1 << 20)
    assert one_line(caught.value).startswith("base64 .npy that does not load: Header info length")


# --- MQTT messages and JSON arrays ---------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers(-(10**40), 10**40)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400])
    | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
    max_leaves=24,
)


def _json_text(value: object) -> str:
    return json.dumps(value, allow_nan=True)


NESTED = st.integers(1, 3_000).map(lambda depth: "[" * depth + "1" + "]" * depth)
MESSAGES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: _json_text(v).encode()),
    NESTED.map(str.encode),
    NPY_BYTES.map(base64.b64encode),
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"]).flatmap(
        lambda m: st.binary(max_size=40).map(m.__add__)
    ),
    st.text(max_size=40).map(lambda t: (" \n\t" + t).encode("utf-8", "surrogatepass")),
)


@fuzz(300)
@given(MESSAGES, st.integers(0, 2_000))
def test_any_mqtt_message_is_an_array_image_bytes_or_a_plain_one_line_reason(payload: bytes, limit: int) -> None:
    try:
        value = decode_message(payload, limit)
    except ValueError as exc:
        one_line(exc)
        assert len(payload) <= limit or "-byte limit" in str(exc)
        return
    assert len(payload) <= limit
    if isinstance(value, bytes):
        assert value == payload and payload.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"))
    else:
        assert isinstance(value, np.ndarray)


@fuzz(300)
@given(st.one_of(JSON_VALUES.map(_json_text), NESTED, st.text(max_size=40)), st.booleans())
def test_json_array_is_finite_float32_numbers_or_a_one_line_value_error(text: str, as_bytes: bool) -> None:
    try:
        array = json_array(text.encode("utf-8", "surrogatepass") if as_bytes else text)
    except ValueError as exc:
        one_line(exc)
        return
    assert array.dtype == np.float32 and array.ndim >= 1 and np.isfinite(array).all()


@fuzz(200)
@given(
    arrays(
        np.float64,
        array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4),
        elements=st.floats(-1e38, 1e38, allow_nan=False),
    )
)
def test_json_array_reads_a_rectangular_array_of_numbers_as_numpy_would_cast_it(array: np.ndarray) -> None:
    got = json_array(json.dumps(array.tolist()))
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array.astype(np.float32))


# --- sensor files: CSV and JSON Lines ------------------------------------------------------------

FIELDS = st.one_of(
    st.floats().map(repr),
    st.integers(-(10**60), 10**60).map(str),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "-inf",
            "Infinity",
            "1e39",
            "-1e400",
            "9" * 400,
            "0x10",
            "1_000",
            '"1.5"',
            "'2'",
            '"',
            "\x00",
            "\ufeff1",
            "1\x002",
            "t",
            "ts",
            "x",
            "#",
            "[1]",
        ]
    ),
    st.text(max_size=6),
)
ROWS = st.lists(FIELDS, max_size=5).map(",".join)
JSON_ROWS = st.one_of(
    JSON_VALUES.map(_json_text),
    st.lists(st.floats() | st.integers(-(10**500), 10**500), min_size=1, max_size=4).map(_json_text),
    st.dictionaries(st.sampled_from(["x", "y", "z", "t", "X"]), st.floats(), max_size=4).map(_json_text),
    st.sampled_from(["NaN", "[NaN, 1]", "[-Infinity]", '{"x": 1e400}', "[1e39]", "[[1]]", "[]", "{}", "[" * 3000]),
    st.text(max_size=10),
)
NEWLINES = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def sensor_file(draw: st.DrawFn, rows: st.SearchStrategy[str]) -> bytes:
    """Lines with mixed line breaks, maybe a BOM and a header, blank and comment lines, bad UTF-8."""
    lines = draw(st.lists(rows | st.sampled_from(["", "# note", "x,y,z", "t,x,y,z"]), max_size=12))
    text = "".join(line + draw(NEWLINES) for line in lines)
    if lines and draw(st.booleans()):
        text = text.rstrip("\r\n")  # the last line without its line break
    if draw(st.booleans()):
        text = "\ufeff" + text
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(0, 3))):  # bytes that are no UTF-8
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\x80", b"\xed\xa0\x80"]))
    return bytes(data)


def _check_sensor_frames(path: Path, window: int, hop: int, model: edgerun.Model) -> None:
    source = SensorSource(str(path), window=window, hop=hop)
    try:
        source.check_model(model)
    except ConfigError as exc:
        one_line(exc)
    windows = 0
    try:
        for frame in source.frames():
            event("a window" if frame.error is None else "an error frame")
            if frame.error is not None:
                assert frame.data is None
                assert one_line(frame.error).startswith(f"{path} line ")
                assert frame.error.endswith("; row skipped")
                continue
            windows += 1
            data = frame.data
            assert isinstance(data, np.ndarray) and data.dtype == np.float32
            assert data.ndim == 2 and data.shape[0] == window
            assert np.isfinite(data).all()
    except SourceError as exc:
        assert windows == 0  # only an input that never filled a window ends so
        one_line(exc)


@fuzz(150)
@given(sensor_file(ROWS), st.integers(1, 4), st.integers(1, 4))
def test_a_csv_sensor_file_gives_finite_windows_or_one_line_error_frames(
    work: Path, vibration: edgerun.Model, data: bytes, window: int, hop: int
) -> None:
    path = work / "fuzz.csv"
    path.write_bytes(data)
    _check_sensor_frames(path, window, hop, vibration)


@fuzz(150)
@given(sensor_file(JSON_ROWS), st.integers(1, 4), st.integers(1, 4))
def test_a_json_lines_sensor_file_gives_finite_windows_or_one_line_error_frames(
    work: Path, vibration: edgerun.Model, data: bytes, window: int, hop: int
) -> None:
    path = work / "fuzz.jsonl"
    path.write_bytes(data)
    _check_sensor_frames(path, window, hop, vibration)


@fuzz(100)
@given(
    st.lists(st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=3, max_size=3), min_size=1, max_size=9),
    st.lists(NEWLINES, min_size=9, max_size=9),
    st.sampled_from(["", "x,y,z", "t,x,y,z", "\ufefftimestamp,a,b,c"]),
    st.integers(1, 3),
)
def test_clean_csv_rows_give_exactly_their_windows_whatever_the_line_breaks(
    work: Path, rows: list[list[float]], breaks: list[str], header: str, window: int
) -> None:
    timed = header.lstrip("\ufeff").startswith(("t,", "timestamp,"))
    lines = [header] if header else []
    lines += [",".join(([str(i)] if timed else []) + [repr(v) for v in row]) for i, row in enumerate(rows)]
    path = work / "clean.csv"
    path.write_bytes("".join(line + brk for line, brk in zip(lines, breaks * 2)).encode())
    frames = list(SensorSource(str(path), window=window).frames()) if len(rows) >= window else []
    expected = np.asarray(rows, dtype=np.float32)
    assert [f.error for f in frames] == [None] * (len(rows) // window)
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.data, expected[i * window : (i + 1) * window])


# --- encoded images: real PNG and JPEG bytes, mutated --------------------------------------------


def _image_bases() -> list[bytes]:
    cv2 = opencv()
    png = (DIGITS / "samples" / "digit_3.png").read_bytes()
    gray = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    colour = cv2.resize(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), (40, 24))
    colour[:, :, 2] = 255 - colour[:, :, 2]
    return [
        png,
        cv2.imencode(".jpg", gray)[1].tobytes(),
        cv2.imencode(".png", colour)[1].tobytes(),
        cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
    ]


IMAGES = _image_bases()
#: Sizes a mutated header may declare: tiny, the model's, past the pixel limit, past any decoder.
SIDES = st.one_of(st.integers(0, 300), st.sampled_from([8192, 8193, 9000, 65535, 2**31 - 1, 2**32 - 1]))


def _with_size(data: bytearray, width: int, height: int, fix_crc: bool) -> None:
    """Write another width and height into a PNG's IHDR (its CRC kept right or not) or a JPEG's frame header."""
    if width * height <= max_image_pixels() and width * height > 1 << 20:
        height = max(1, (1 << 20) // max(width, 1))  # decodable sizes kept small: a test's memory stays low
    if data.startswith(b"\x89PNG"):
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        if fix_crc:
            data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
        return
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    if sof > 0:
        data[sof + 5 : sof + 9] = (height & 0xFFFF).to_bytes(2, "big") + (width & 0xFFFF).to_bytes(2, "big")


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(IMAGES)))
    how = draw(st.sampled_from(["whole", "cut", "flip", "size", "insert", "empty"]))
    if how == "cut":
        del data[draw(st.integers(0, len(data))) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "size":
        _with_size(data, draw(SIDES), draw(SIDES), draw(st.booleans()))
    elif how == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif how == "empty":
        data.clear()
    return bytes(data)


@fuzz(300)
@given(mutated_image(), st.booleans())
def test_mutated_image_bytes_decode_to_pixels_and_prepare_or_are_one_input_error_line(
    digits: edgerun.Model, data: bytes, gray: bool
) -> None:
    try:
        image = decode_image(data, "fuzz.png", gray=gray)
    except InputError as exc:
        assert one_line(exc).startswith("fuzz.png: ")
    else:
        assert image.dtype == np.uint8 and image.ndim == (2 if gray else 3) and image.size > 0
    try:
        tensor = digits.prepare(data, "fuzz.png")
    except InputError as exc:
        assert one_line(exc).startswith("fuzz.png: ")
        event("refused")
        return
    event("prepared")
    assert tensor.shape == (1, 8, 8, 1) and tensor.dtype == np.float32 and np.isfinite(tensor).all()


@fuzz(100)
@given(st.one_of(mutated_image(), NPY_BYTES), st.sampled_from(["in.png", "in.jpg", "in.npy", "in.bin"]))
def test_a_mutated_input_file_is_prepared_or_is_one_input_error_line(
    work: Path, digits: edgerun.Model, data: bytes, name: str
) -> None:
    path = work / name
    path.write_bytes(data)
    try:
        tensor = digits.prepare(path)
    except InputError as exc:
        assert one_line(exc).startswith(f"{path}: ")
        return
    assert tensor.shape == (1, 8, 8, 1)


# --- arrays of any dtype and shape into Model.prepare --------------------------------------------

NUMERIC_DTYPES = st.sampled_from(
    [
        np.float32,  # the models' own, and uint8 (an image), come most often
        np.uint8,
        np.float32,
        np.uint8,
        np.float16,
        np.float64,
        np.longdouble,
        np.int8,
        np.int16,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint64,
        np.dtype(">f4"),
        np.dtype(">i8"),
    ]
)
OTHER_DTYPES = st.sampled_from(
    [np.bool_, np.complex64, np.complex128, np.dtype("U2"), np.dtype("S2"), np.dtype("M8[s]"), np.dtype("m8[ms]")]
)
#: Shapes each model takes: as its input with or without the batch, or (digits) as a decoded image.
FITTING_SHAPES = {
    "digits": [(8, 8, 1), (1, 8, 8, 1), (8, 8, 1), (1, 8, 8, 1), (8, 8), (32, 32), (5, 7, 3)],
    "vibration": [(256, 3), (1, 256, 3)],
}
ODD_SHAPES = [
    (0,),
    (0, 8, 8, 1),
    (1, 0, 8, 1),
    (2, 8, 8, 1),
    (1, 1, 8, 8, 1),
    (3,),
    (256,),
    (256, 0),
    (4, 4, 2),
    (2, 256, 3),
]


@st.composite
def any_array(draw: st.DrawFn, model: str) -> np.ndarray:
    """An array of any dtype and shape, half of them of a shape ``model`` takes."""
    shape = draw(
        st.one_of(
            st.sampled_from(FITTING_SHAPES[model]),
            array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4) | st.sampled_from(ODD_SHAPES),
        )
    )
    kind = draw(st.sampled_from(["numeric", "image", "other", "object", "numeric", "numeric", "image"]))
    if kind == "image":  # uint8 pixels, HxW or HxWxC with C from 1 to 5: decoded images, and what looks like one
        side = st.integers(1, 40)
        pixels = st.tuples(side, side) | st.tuples(side, side, st.integers(1, 5))
        return draw(arrays(np.uint8, pixels))
    if kind == "object":  # Python values of any kind
        values = draw(st.lists(st.none() | st.integers() | st.floats() | st.text(max_size=2), min_size=1, max_size=4))
        array = np.empty(math.prod(shape), dtype=object)
        for i in range(array.size):
            array[i] = values[i % len(values)]
        return array.reshape(shape)
    dtype = np.dtype(draw(NUMERIC_DTYPES if kind == "numeric" else OTHER_DTYPES))
    how = draw(st.sampled_from(["plain", "wild", "extreme"]))
    if dtype.kind == "f" and how == "extreme":  # NaN, infinities, float32's edge and past it, in one place
        extremes = st.sampled_from([np.nan, np.inf, -np.inf, _FLOAT32_MAX, -_FLOAT32_MAX, 1e39, 0.0, 1.0])
        with np.errstate(over="ignore"):  # past a narrower float's range is infinite there: an extreme still
            array = np.full(shape, draw(extremes), dtype)
            if array.size:
                array.flat[draw(st.integers(0, array.size - 1))] = draw(extremes)
        return array
    if dtype.kind == "f" and how == "plain":  # values a sensor or a pixel gives
        return draw(arrays(dtype, shape, elements=st.floats(-1000, 1000, width=min(dtype.itemsize * 8, 64))))
    return draw(arrays(dtype, shape))


def _check_prepared(model: edgerun.Model, array: np.ndarray) -> None:
    spec = model.inputs[0]
    try:
        tensor = model.prepare(array, "fuzz")
    except InputError as exc:
        assert one_line(exc).startswith("fuzz: ")
        event("refused")
        return
    event("prepared")
    assert isinstance(tensor, np.ndarray) and tensor.dtype.kind in "fiu"
    assert tensor.ndim == len(spec.shape) and tensor.shape[0] == 1
    assert all(d is None or d == s for s, d in zip(tensor.shape, spec.shape))
    if tensor.dtype.kind == "f":
        wide = tensor.astype(np.float64)  # float16's or longdouble's values, compared without a cast that overflows
        assert np.isfinite(wide).all() and np.abs(wide).max() <= _FLOAT32_MAX
    model.run(tensor)  # what prepare gives, the model takes


@fuzz(300)
@given(any_array("digits"))
def test_prepare_turns_any_array_into_the_digits_input_or_one_input_error_line(
    digits: edgerun.Model, array: np.ndarray
) -> None:
    _check_prepared(digits, array)


@fuzz(200)
@given(any_array("vibration"))
def test_prepare_turns_any_array_into_the_vibration_input_or_one_input_error_line(
    vibration: edgerun.Model, array: np.ndarray
) -> None:
    _check_prepared(vibration, array)
