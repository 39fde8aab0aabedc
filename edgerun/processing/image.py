"""Image decoding and preprocessing into model tensors (OpenCV + numpy).

Decoding is strict: a truncated JPEG, which libjpeg would "decode" into a
half-grey picture with a warning, is an error here, because a model fed a
half image returns a confident wrong answer. The bytes are checked before
OpenCV sees them (``edgerun.processing.integrity``).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from edgerun.card import Preprocess
from edgerun.errors import CardError, UnusableInput
from edgerun.opencv import max_image_pixels, opencv
from edgerun.processing.integrity import image_fault

__all__ = ["decode_image", "ImagePreprocessor", "IMAGE_SUFFIXES", "preload"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})


def preload() -> None:
    """Import OpenCV now (~20 ms, 15 MB): before a pipeline's threads start rather than on one of them,
    where the import competes for the GIL with the reader and takes longer."""
    opencv()


def decode_image(data: bytes, name: str = "image", gray: bool = False) -> np.ndarray:
    """Decode encoded image bytes to an HxWx3 BGR (or HxW gray) uint8 array.

    Raises:
        InputError: empty, truncated, damaged or undecodable data.
    """
    if not data:
        raise UnusableInput(f"{name}: empty file")
    fault = image_fault(data)
    if fault is not None:
        raise UnusableInput(f"{name}: {fault}")
    cv2 = opencv()
    buf = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise UnusableInput(f"{name}: image has more than {max_image_pixels():,} pixels; not decoded") from None
        raise UnusableInput(f"{name}: cannot decode image ({str(exc).strip().splitlines()[-1]})") from exc
    if image is None or image.size == 0:
        raise UnusableInput(f"{name}: not a decodable image")
    return image


_CV_8U, _CV_8S = 0, 1  # OpenCV's depth codes, fixed in its ABI

_INTERP = {"nearest": "INTER_NEAREST", "linear": "INTER_LINEAR", "area": "INTER_AREA", "cubic": "INTER_CUBIC"}


class _Plan(msgspec.Struct, frozen=True):
    height: int
    width: int
    channels: int
    nchw: bool
    mul: np.ndarray  # scale / std, per channel
    add: np.ndarray  # -mean / std, per channel
    raw_uint8: bool  # the model takes raw 0-255 pixels
    fused: tuple[float, float, int] | None  # (alpha, beta, cv type): normalise and quantize in one step


def _per_channel(values: np.ndarray, channels: int, spec: Preprocess) -> np.ndarray:
    """One value per channel of the input tensor, from one value or one per channel."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if np.ptp(values) == 0:
        values = values[:1]
    if values.size not in (1, channels):
        raise CardError(
            f"card gives {values.size} values for mean/std ({spec.color}), but the input has {channels} channel(s)"
        )
    return np.broadcast_to(values, (channels,)).astype(np.float32)


class ImagePreprocessor:
    """Turns decoded images into a model's input tensor, per its card.

    The normalisation ``(pixel * scale - mean) / std`` (and, for a quantized
    input, the quantization) depends only on a pixel's value and channel, so it
    is computed once for the 256 values into a table, and an image goes through
    it in one OpenCV lookup: 35 us for 224x224x3 into INT8, against 89 us for a
    fused ``addWeighted``, or 59 us into float32 against 3-4 numpy passes. The
    table holds exactly what the per-pixel arithmetic would give.
    """

    def __init__(
        self, spec: Preprocess, height: int, width: int, channels: int, dtype: np.dtype, quant: Any = None
    ) -> None:
        self.spec = spec
        # OpenCV is imported at the first image, not here: a daemon that only ever gets
        # arrays never pays its 15 MB.
        self._interp: int | None = None
        self._lut: np.ndarray | None = None
        std = np.asarray(spec.std, dtype=np.float32)
        mean = np.asarray(spec.mean, dtype=np.float32)
        mul, add = (np.float32(spec.scale) / std), (-mean / std)
        fused = None
        if quant is not None and np.dtype(dtype).name in ("int8", "uint8") and np.ptp(mul) == 0 and np.ptp(add) == 0:
            # One normalisation for every channel: pixel -> quantized value in one OpenCV pass.
            fused = (
                float(mul[0]) / quant.scale,
                float(add[0]) / quant.scale + quant.zero_point,
                _CV_8S if np.dtype(dtype).name == "int8" else _CV_8U,
            )
        self._plan = _Plan(
            height=height,
            width=width,
            channels=channels,
            nchw=spec.layout == "NCHW",
            mul=_per_channel(mul, channels, spec),
            add=_per_channel(add, channels, spec),
            raw_uint8=np.dtype(dtype) == np.uint8 and quant is None,
            fused=fused,
        )

    @property
    def height(self) -> int:
        """Input height in pixels."""
        return self._plan.height

    @property
    def width(self) -> int:
        """Input width in pixels."""
        return self._plan.width

    @property
    def gray(self) -> bool:
        """True when images should be decoded straight to one channel."""
        return self._plan.channels == 1

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One decoded image (HxW, HxWx3 BGR or HxWx4 BGRA, uint8) -> a batch-of-one tensor."""
        cv2 = opencv()
        plan = self._plan
        if image.dtype != np.uint8:
            raise UnusableInput(f"image must be uint8 pixels, got {image.dtype}")
        if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise UnusableInput(f"an image is HxW or HxWx1/3/4 pixels, got shape {list(image.shape)}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        # Gray before resizing (one plane to resize), colour order after (a 224x224 swap
        # costs 11 us, a 720p one 151 us); gray to BGR after too, for the same reason.
        if plan.channels == 1 and image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        image = self._resize(image)
        if plan.channels == 3:
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if self.spec.color == "rgb" else cv2.COLOR_GRAY2BGR)
            elif self.spec.color == "rgb":
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if plan.raw_uint8:
            tensor = image if image.ndim == 3 else image[:, :, None]
        else:
            tensor = cv2.LUT(image, self._lut if self._lut is not None else self._table())
            if tensor.ndim == 2:
                tensor = tensor[:, :, None]
        if plan.nchw:
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor[None])

    def _table(self) -> np.ndarray:
        """Pixel value (row) -> tensor value (one column per channel), as OpenCV's ``LUT`` takes it."""
        plan = self._plan
        if plan.fused is not None:
            # OpenCV's own rounding and saturation, as a per-pixel addWeighted would apply them
            alpha, beta, cv_type = plan.fused
            pixels = np.arange(256, dtype=np.uint8).reshape(256, 1)
            lut = opencv().addWeighted(pixels, alpha, pixels, 0.0, beta, dtype=cv_type)
        else:
            # float32 multiply then add, as numpy would do per pixel
            lut = np.arange(256, dtype=np.float32)[:, None] * plan.mul + plan.add
        self._lut = np.ascontiguousarray(np.broadcast_to(lut, (256, plan.channels)).reshape(256, 1, plan.channels))
        return self._lut

    def _resize(self, image: np.ndarray) -> np.ndarray:
        cv2 = opencv()
        if self._interp is None:
            self._interp = getattr(cv2, _INTERP[self.spec.interpolation])
        h, w = image.shape[:2]
        th, tw = self._plan.height, self._plan.width
        if (h, w) == (th, tw):
            return image
        mode = self.spec.resize
        if mode == "stretch":
            return cv2.resize(image, (tw, th), interpolation=self._interp)
        if mode == "crop":
            # The centre region with the input's aspect ratio, cut before resizing: scaling first
            # would take a 1x60000 image (a 257-byte PNG) to 224x13,440,000 pixels, 9 GB.
            ratio = max(th / h, tw / w)
            ch, cw = min(h, max(1, round(th / ratio))), min(w, max(1, round(tw / ratio)))
            top, left = (h - ch) // 2, (w - cw) // 2
            return cv2.resize(image[top : top + ch, left : left + cw], (tw, th), interpolation=self._interp)
        ratio = min(th / h, tw / w)
        nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
        scaled = cv2.resize(image, (nw, nh), interpolation=self._interp)
        top, left = (th - nh) // 2, (tw - nw) // 2
        return cv2.copyMakeBorder(
            scaled, top, th - nh - top, left, tw - nw - left, cv2.BORDER_CONSTANT, value=[self.spec.pad_value] * 3
        )
