"""Images users feed: thin images cropped, photos with data after their end marker, tool arguments."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgerun.card import Preprocess
from edgerun.errors import InputError
from edgerun.opencv import opencv
from edgerun.processing.image import ImagePreprocessor, decode_image

ROOT = Path(__file__).resolve().parent.parent


def _png(image: np.ndarray) -> bytes:
    ok, buf = opencv().imencode(".png", image)
    assert ok
    return bytes(buf.tobytes())


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = opencv().imencode(".jpg", image)
    assert ok
    return bytes(buf.tobytes())


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


_STRIP = """
import resource, sys
import numpy as np
from edgerun.card import Preprocess
from edgerun.opencv import opencv
from edgerun.processing.image import ImagePreprocessor, decode_image
strip = np.full((1, 60000, 3), 100, np.uint8)
strip[:, 29999:30001] = (0, 0, 255)
data = opencv().imencode(".png", strip)[1].tobytes()
assert len(data) < 1000, len(data)
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # 3 GB of address space: the old way needed 9 GB
pre = ImagePreprocessor(Preprocess(color="rgb", resize="crop", scale=1.0), 224, 224, 3, np.dtype("float32"))
tensor = pre(decode_image(data))
print(tensor.shape, tensor[0, 112, 112].tolist())
"""


def test_a_one_pixel_high_strip_is_cropped_without_scaling_it_up_whole() -> None:
    # 1x60000: scaled by 224 before cropping it was 224x13,440,000x3 bytes (9 GB) for a 257-byte PNG
    proc = subprocess.run(
        [sys.executable, "-c", _STRIP], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(1, 224, 224, 3) [255.0, 0.0, 0.0]"  # the red centre, in RGB


def test_a_crop_keeps_the_centre_at_the_models_aspect_ratio() -> None:
    image = np.zeros((100, 300), np.uint8)
    image[:, 100:200] = 255  # the centre square is white, the sides black
    pre = ImagePreprocessor(
        Preprocess(color="gray", resize="crop", scale=1.0, interpolation="nearest"), 10, 10, 1, np.dtype("float32")
    )
    tensor = pre(image)
    assert tensor.shape == (1, 10, 10, 1)
    assert (tensor == 255).all()


def test_a_tall_thin_image_is_cropped_to_its_centre_too() -> None:
    image = np.zeros((40000, 2), np.uint8)
    image[19999:20001] = 200
    pre = ImagePreprocessor(
        Preprocess(color="gray", resize="crop", scale=1.0, interpolation="nearest"), 4, 4, 1, np.dtype("float32")
    )
    tensor = pre(image)
    assert tensor.shape == (1, 4, 4, 1)
    assert (tensor == 200).all()


def test_a_jpeg_with_a_motion_photo_video_after_its_end_marker_decodes() -> None:
    jpeg = _jpeg(np.full((8, 8, 3), 90, np.uint8))
    trailer = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4  # an MP4 after the image, as phones append
    image = decode_image(jpeg + trailer, "motion.jpg")
    assert image.shape == (8, 8, 3)
    assert abs(int(image[4, 4, 0]) - 90) <= 2


def test_a_png_with_bytes_after_iend_decodes() -> None:
    png = _png(np.full((3, 5), 7, np.uint8))
    image = decode_image(png + b"\x00" * 200, "tail.png", gray=True)
    assert image.shape == (3, 5)
    assert int(image[1, 1]) == 7


def test_a_truncated_jpeg_is_still_refused_when_its_thumbnail_has_an_end_marker() -> None:
    jpeg = _jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    thumb = _jpeg(np.zeros((8, 8, 3), np.uint8))  # ends with FF D9 of its own
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    with pytest.raises(InputError, match="truncated JPEG"):
        decode_image(with_thumb[: len(with_thumb) // 2] + b"\x00" * 100, "cut.jpg")


def test_a_truncated_png_with_padding_is_still_refused() -> None:
    png = _png(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cut = png[: len(png) // 2] + b"\x00" * 100
    with pytest.raises(InputError, match="truncated PNG"):
        decode_image(cut, "cut.png")
    fake_iend_in_data = png[:33] + _chunk(b"tEXt", b"k\x00IEND" + b"\x00" * 80) + png[33 : len(png) // 2]
    with pytest.raises(InputError, match="truncated PNG"):
        decode_image(fake_iend_in_data + b"\x00" * 100, "cut.png")


@pytest.mark.parametrize("alpha", ["0", "-1", "nan", "inf"])
def test_build_mobilenet_refuses_a_width_multiplier_keras_does_not_have(alpha: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_mobilenet.py"), "--alpha", alpha, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "a width multiplier is above 0 and at most 4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())
