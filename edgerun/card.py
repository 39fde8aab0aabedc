"""Model cards: what a model is and how to feed it.

A card is a small YAML file beside the model, ``<model file>.card.yaml`` or
``card.yaml`` in the model's folder. The same schema is the ``card`` of an OTA
manifest (PROTOCOL.md). Without a card, edgerun infers what it can from the
tensors (``infer_card``) and says so in the log.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgerun.backends.base import TensorSpec
from edgerun.errors import CardError

log = logging.getLogger(__name__)

__all__ = ["ModelCard", "Preprocess", "Postprocess", "find_card", "load_card", "infer_card", "image_layout"]

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_RE = r"^\d+\.\d+\.\d+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocess(_Strict):
    """How an image becomes the input tensor: ``x = (pixel * scale - mean) / std``."""

    size: tuple[int, int] | None = Field(None, description="[height, width] of the input; from the tensor when absent")
    layout: Literal["NHWC", "NCHW"] | None = Field(None, description="tensor layout; from the tensor when absent")
    color: Literal["gray", "rgb", "bgr"] = Field("rgb", description="channel order the model expects")
    resize: Literal["stretch", "letterbox", "crop"] = Field(
        "stretch", description="stretch to size, letterbox (keep aspect, pad), or crop the centre"
    )
    interpolation: Literal["nearest", "linear", "area", "cubic"] = Field(
        "linear", description="OpenCV resize interpolation; area is best but slow for large downscales"
    )
    scale: float = Field(1.0 / 255.0, gt=0, description="multiplier applied to 0-255 pixel values")
    mean: tuple[float, ...] = Field((0.0,), description="per-channel mean subtracted after scaling")
    std: tuple[float, ...] = Field((1.0,), description="per-channel divisor applied after the mean")
    pad_value: int = Field(114, ge=0, le=255, description="letterbox padding pixel value")

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 1 or v[1] < 1 or v[0] > 8192 or v[1] > 8192):
            raise ValueError("size must be [height, width] between 1 and 8192")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v

    @model_validator(mode="after")
    def _channels(self) -> Preprocess:
        channels = 1 if self.color == "gray" else 3
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) not in (1, channels):
                raise ValueError(f"{name} has {len(value)} values; {self.color} needs 1 or {channels}")
        return self


class Postprocess(_Strict):
    """How outputs become a result."""

    softmax: bool | Literal["auto"] = Field(
        "auto", description="apply softmax (true: the model emits logits); auto decides from the values"
    )
    top_k: int = Field(5, ge=1, le=1000, description="how many classes a classification result lists")


class ModelCard(_Strict):
    """Name, version, task, labels and pre/post-processing of one model."""

    name: str = Field(pattern=NAME_RE, description="model name, as in PROTOCOL.md")
    version: str = Field("0.0.0", pattern=VERSION_RE, description="MAJOR.MINOR.PATCH")
    task: Literal["classification", "detection", "regression", "raw"] = Field("raw")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(None, description="numeric precision of the weights")
    description: str | None = None
    labels: tuple[str, ...] | None = Field(None, description="class names, by output index")
    preprocess: Preprocess | None = Field(None, description="image preprocessing; none means arrays only")
    postprocess: Postprocess = Field(default_factory=Postprocess)
    metrics: dict[str, float] = Field(default_factory=dict, description="measured figures, e.g. held-out accuracy")
    notes: str | None = None
    inferred: bool = Field(False, description="true when edgerun guessed this card from the tensors")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return self.model_dump(mode="json", exclude_none=True)


def find_card(model_path: Path) -> Path | None:
    """The card file for ``model_path``: ``<file>.card.yaml``, else ``card.yaml`` in its folder."""
    for candidate in (model_path.with_name(model_path.name + ".card.yaml"), model_path.parent / "card.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "card"
    return f"{where}: {err['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def parse_card(data: Any, source: str) -> ModelCard:
    """Validate card data (a mapping from YAML or an OTA manifest)."""
    if not isinstance(data, dict):
        raise CardError(f"{source}: a card must be a mapping, got {type(data).__name__}")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(f"{source}: {_first_error(exc)}") from None


def load_card(path: Path) -> ModelCard:
    """Read and validate a card file."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise CardError(f"cannot read card {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    return parse_card(data, str(path))


def image_layout(spec: TensorSpec) -> tuple[str, int, int | None, int | None] | None:
    """(layout, channels, height, width) if ``spec`` looks like an image tensor, else None."""
    shape = spec.shape
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3):
        return "NHWC", shape[3], shape[1], shape[2]
    if shape[1] in (1, 3):
        return "NCHW", shape[1], shape[2], shape[3]
    return None


def _default_name(model_path: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", model_path.stem.lower()).strip("-._") or "model"
    return name[:64]


def infer_card(model_path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> ModelCard:
    """A card guessed from the tensors, for a model that has none.

    An input shaped like an image (4-D with 1 or 3 channels) gets image
    preprocessing (0-1 scaling, RGB or gray); a single 2-D output with more
    than one value is taken as class scores with index labels; anything else
    is ``raw``.
    """
    preprocess = None
    said = []
    if len(inputs) == 1 and (layout := image_layout(inputs[0])) is not None:
        kind, channels, height, width = layout
        size = (height, width) if height and width else None
        preprocess = Preprocess(size=size, layout=kind, color="gray" if channels == 1 else "rgb")  # type: ignore[arg-type]
        said.append(f"image input {kind} {channels} channel(s), pixels scaled to 0-1")
    task = "raw"
    if len(outputs) == 1 and len(outputs[0].shape) == 2 and (outputs[0].shape[1] or 0) > 1:
        task = "classification"
        said.append(f"classification over {outputs[0].shape[1]} classes, labels are indices")
    card = ModelCard(name=_default_name(model_path), task=task, preprocess=preprocess, inferred=True)  # type: ignore[arg-type]
    log.info("no card for %s: inferred %s", model_path.name, "; ".join(said) or "raw tensors in and out")
    return card
