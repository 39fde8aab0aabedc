"""Model cards: what a model is and how to feed it.

A card is a small YAML file beside the model, ``<model file>.card.yaml`` (for an Edge
TPU-compiled ``X_edgetpu.tflite`` without one, its CPU twin's ``X.tflite.card.yaml``) or
``card.yaml`` in the model's folder. The same schema is the ``card`` of an OTA
manifest (PROTOCOL.md). Without a card, edgerun infers what it can from the
tensors (``infer_card``) and says so in the log.

The schema is declared with ``msgspec`` structs rather than pydantic: a card is
read on every ``edgerun predict``, and pydantic's first model class costs about
80 ms of start-up on the reference machine against 8 ms for msgspec, which
would be most of a one-image run. Unknown keys are errors, as everywhere, and so is a key
given twice in one mapping (as in the daemon's config) and a number that is NaN or infinite
(a card is served as JSON by the API and over MQTT, and JSON has neither). Every error is one
line naming the file and the field, or the line of a YAML error.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from edgerun.backends.base import TensorSpec
from edgerun.errors import CardError, ConfigError, shown
from edgerun.files import read_utf8, special_file

log = logging.getLogger(__name__)

__all__ = [
    "ModelCard",
    "Postprocess",
    "Preprocess",
    "card_candidates",
    "cpu_twin",
    "find_card",
    "image_layout",
    "infer_card",
    "load_card",
    "parse_card",
    "replace",
    "yaml_loader",
    "yaml_problem",
]

# ``\Z``, not ``$``: msgspec matches with Python's ``re``, whose ``$`` also matches before a final newline
NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}\Z"
VERSION_RE = r"^\d+\.\d+\.\d+\Z"
#: the most a card file may hold: a bound on a file given by mistake, far above any card. The store
#: writes an OTA card as indented, ASCII-escaped JSON, up to ~2.3x the 1 MiB envelope it came in.
CARD_MAX_BYTES = 16 << 20

Dim = Annotated[int, msgspec.Meta(ge=1, le=8192)]


class Preprocess(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How an image becomes the input tensor: ``x = (pixel * scale - mean) / std``."""

    size: Annotated[tuple[Dim, Dim] | None, msgspec.Meta(description="[height, width]; from the tensor if absent")] = (
        None
    )
    layout: Annotated[Literal["NHWC", "NCHW"] | None, msgspec.Meta(description="tensor layout")] = None
    color: Annotated[Literal["gray", "rgb", "bgr"], msgspec.Meta(description="channel order")] = "rgb"
    resize: Annotated[
        Literal["stretch", "letterbox", "crop"],
        msgspec.Meta(description="stretch to size, letterbox (keep aspect, pad), or crop the centre"),
    ] = "stretch"
    interpolation: Annotated[
        Literal["nearest", "linear", "area", "cubic"],
        msgspec.Meta(description="OpenCV resize interpolation; area is best but slow for large downscales"),
    ] = "linear"
    scale: Annotated[float, msgspec.Meta(gt=0, description="multiplier for 0-255 pixel values")] = 1.0 / 255.0
    mean: Annotated[tuple[float, ...], msgspec.Meta(description="per-channel mean, after scaling")] = (0.0,)
    std: Annotated[tuple[float, ...], msgspec.Meta(description="per-channel divisor, after the mean")] = (1.0,)
    pad_value: Annotated[int, msgspec.Meta(ge=0, le=255, description="letterbox padding pixel value")] = 114

    def __post_init__(self) -> None:
        for name, values in (("scale", (self.scale,)), ("mean", self.mean), ("std", self.std)):
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be a finite number, not NaN or infinite")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if not _fits_float32(self.scale, self.mean, self.std):
            raise ValueError(
                "scale, mean and std put (pixel * scale - mean) / std past float32's range, or round scale or std "
                "to 0 there: every image would be fed as infinities, NaN or zeros"
            )
        channels = 1 if self.color == "gray" else 3
        needs = "1" if channels == 1 else f"1 or {channels}"
        for name in ("mean", "std"):
            count = len(getattr(self, name))
            if count not in (1, channels):
                raise ValueError(f"{name} has {count} values; {self.color} needs {needs}")


def _fits_float32(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> bool:
    """Whether ``(pixel * scale - mean) / std`` is finite in float32, as ``ImagePreprocessor`` computes it, for
    every pixel value, and neither ``scale`` nor any ``std`` is lost in float32 (1e-50 is 0 there)."""
    import numpy as np  # loaded already, with the backends' TensorSpec

    with np.errstate(all="ignore"):
        scale32, mean32, std32 = np.float32(scale), np.asarray(mean, np.float32), np.asarray(std, np.float32)
        ends = np.array([[0.0], [255.0]], np.float32) * (scale32 / std32) + (-mean32 / std32)  # linear in the pixel
        return bool(
            scale32 > 0
            and (std32 != 0).all()
            and np.isfinite([scale32, *mean32, *std32]).all()
            and np.isfinite(ends).all()
        )


class Postprocess(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How outputs become a result."""

    softmax: Annotated[
        bool | Literal["auto"],
        msgspec.Meta(description="apply softmax (true: the model emits logits); auto decides from the values"),
    ] = "auto"
    top_k: Annotated[int, msgspec.Meta(ge=1, le=1000, description="classes a classification result lists")] = 5


class ModelCard(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Name, version, task, labels and pre/post-processing of one model."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_RE, description="model name, as in PROTOCOL.md")]
    version: Annotated[str, msgspec.Meta(pattern=VERSION_RE, description="MAJOR.MINOR.PATCH")] = "0.0.0"
    task: Literal["classification", "detection", "regression", "raw"] = "raw"
    precision: Literal["fp32", "fp16", "int8"] | None = None
    description: str | None = None
    labels: Annotated[tuple[str, ...] | None, msgspec.Meta(description="class names by output index")] = None
    preprocess: Preprocess | None = None
    postprocess: Postprocess = msgspec.field(default_factory=Postprocess)
    metrics: Annotated[dict[str, float], msgspec.Meta(description="measured figures, e.g. accuracy")] = msgspec.field(
        default_factory=dict
    )
    notes: str | None = None
    inferred: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form without empty fields."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return {k: v for k, v in data.items() if v is not None}


def replace(card: Any, **changes: Any) -> Any:
    """A copy of a card (or its parts) with some fields changed."""
    return msgspec.structs.replace(card, **changes)


#: The end of an Edge TPU-compiled model's file name (``X_edgetpu.tflite``, whose CPU twin is ``X.tflite``).
_EDGETPU_END = "_edgetpu.tflite"


def cpu_twin(model_path: Path) -> Path | None:
    """For an Edge TPU-compiled ``X_edgetpu.tflite``, where its CPU twin ``X.tflite`` would be (there or not);
    None for any other name."""
    name = model_path.name
    if not name.endswith(_EDGETPU_END) or name == _EDGETPU_END:
        return None
    return model_path.with_name(name[: -len(_EDGETPU_END)] + ".tflite")


def _twin_card(model_path: Path) -> Path | None:
    """For an Edge TPU-compiled ``X_edgetpu.tflite``, its CPU twin's card ``X.tflite.card.yaml``; else None."""
    twin = cpu_twin(model_path)
    return None if twin is None else twin.with_name(twin.name + ".card.yaml")


def card_candidates(model_path: Path) -> tuple[Path, ...]:
    """Where ``find_card`` looks for ``model_path``'s card, in order.

    ``<file>.card.yaml``; for an Edge TPU-compiled ``X_edgetpu.tflite``, then its CPU twin's
    ``X.tflite.card.yaml`` (the same model, compiled: Coral users ship both files with one card, and
    edgerun runs either file, ``edgerun.accel.select.candidate_files``); then ``card.yaml`` in its folder.
    """
    twin = _twin_card(model_path)
    own = model_path.with_name(model_path.name + ".card.yaml")
    return (own, *([twin] if twin is not None else []), model_path.parent / "card.yaml")


def find_card(model_path: Path) -> Path | None:
    """The card file for ``model_path``: the first of ``card_candidates`` that exists.

    Whatever is at that path is the card, a folder too: loading it then fails, rather than the
    model running with no card, under an inferred name and version, without a word.
    """
    for candidate in card_candidates(model_path):
        if candidate.exists():
            if candidate == _twin_card(model_path):
                log.info("card for %s: %s, its CPU twin's", model_path.name, candidate.name)
            return candidate
    return None


def parse_card(data: Any, source: str, *, from_yaml: bool = False) -> ModelCard:
    """Validate card data (a mapping from YAML or from an OTA manifest); ``from_yaml``: a number YAML read as text
    (``1e-3``) is refused with how to write it."""
    if not isinstance(data, dict):
        what = "an empty file" if data is None else type(data).__name__
        raise CardError(shown(f"{source}: a card must be a mapping, got {what}"))
    metrics = data.get("metrics")
    if isinstance(metrics, dict):  # checked here to name the figure: msgspec says only `$.metrics[...]`
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                got = value if isinstance(value, float) else type(value).__name__  # no repr: it may be huge
                # JSON has no NaN or infinity, and /v1/models and the MQTT status record carry the card
                hint = yaml_number_hint(value, "float") if from_yaml else ""
                raise CardError(shown(f"{source}: metrics.{key}: must be a finite number, got {got}{hint}"))
    try:
        return msgspec.convert(data, ModelCard)
    except msgspec.ValidationError as exc:
        hint = ""
        found = _NUMBER_AS_TEXT.match(str(exc)) if from_yaml else None
        if found is not None:
            hint = yaml_number_hint(_at(data, found.group(2)), found.group(1))
        raise CardError(shown(f"{source}: {exc}{hint}")) from None  # a key may hold a line break


#: msgspec's message for text where a number was expected, with the number's kind and its place (``$.a.b[0]``)
_NUMBER_AS_TEXT = re.compile(r"Expected `(float|int)`, got `str` - at `\$((?:\.\w+|\[\d+\])*)`\Z")


def _at(data: Any, where: str) -> Any:
    """The value at msgspec's ``where`` (``.preprocess.std[1]``) in ``data``; None where there is none."""
    for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", where):
        try:
            data = data[key] if key else data[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def yaml_number_hint(value: Any, kind: str) -> str:
    """How to write a number YAML took for text (a card's, a config's), for a field of ``kind`` "float" or
    "int": ``1e-3`` and ``5e2`` are strings in YAML 1.1 (a float needs a dot, and its exponent a sign), which
    a number field refuses. Empty where ``value`` is no such text."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number) or (kind == "int" and not number.is_integer()):
        return ""
    if kind == "int":
        return f" (YAML reads {value!r} as a string: write {int(number)})"
    text = repr(number)  # 1e-300 is repr's own spelling of 1e-300: a dot makes it YAML's float
    return f" (YAML reads {value!r} as a string: write {text if '.' in text else text.replace('e', '.0e')})"


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite float, or an int a float can hold (10**400 is neither)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def yaml_problem(exc: Exception, text: str) -> str:
    """`` at line N: what`` for a PyYAML error on ``text``, on one line.

    A scanner, parser or constructor error carries a mark and a problem; a reader error
    (a control character, which YAML does not allow) carries only an offset into ``text`` (in
    characters from the pure-Python reader, in bytes from libyaml), the character, and a two-line
    message of its own.
    """
    import yaml

    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        # Both readers stop at the first character YAML does not allow, but libyaml gives its place in
        # bytes of the UTF-8 text and the pure-Python reader in characters: it is found in the text.
        first = text.find(char)
        line = text.count("\n", 0, first if first >= 0 else exc.position) + 1
        return f" at line {line}: character {char!r} is not allowed ({exc.reason})"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return f"{where}: {getattr(exc, 'problem', None) or str(exc).splitlines()[0]}"


@functools.cache
def yaml_loader(pure: bool = False) -> Any:
    """PyYAML's safe loader (libyaml's where it is built, unless ``pure``), made strict in two ways.

    A key given twice in one mapping is refused, as in the daemon's config: SafeLoader keeps the
    last of two equal keys without a word. A tagged scalar its constructor cannot read
    (``!!float ""``, ``!!bool maybe``, ``!!timestamp x``) is a ``ConstructorError`` at its line:
    PyYAML lets ``IndexError``, ``KeyError``, ``ValueError`` or ``AttributeError`` through there.
    The config uses the pure-Python one (``pure``), whose deep nesting ends in ``RecursionError``.
    """
    import yaml

    base = yaml.SafeLoader if pure else getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc,valid-type]  # PyYAML ships no type stubs here
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._checked: set[int] = set()  # the mappings whose own keys were checked (their nodes' ids)

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
                value = node.value if isinstance(node.value, str) else ""
                tag = node.tag.replace("tag:yaml.org,2002:", "!!")
                raise yaml.constructor.ConstructorError(
                    None, None, f"cannot read {value[:40]!r} as {tag}", node.start_mark
                ) from None

        def flatten_mapping(self, node: Any) -> None:
            # Each mapping's own keys, checked once and before any merge (``<<``) is flattened into
            # it: flattening rewrites an anchored mapping in place, and a key it overrides would
            # then be seen twice where it was written once.
            if id(node) not in self._checked:
                self._checked.add(id(node))
                seen: set[tuple[str, str]] = set()
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r} in one mapping", key_node.start_mark
                        )
                    seen.add(key)
            super().flatten_mapping(node)

    return StrictLoader


def load_card(path: Path, cache_dir: Path | None = None) -> ModelCard:
    """Read and validate a card file.

    A validated card is cached as JSON in ``<state dir>/cards`` (keyed by the card's path, checked
    against its size and modification time): PyYAML alone costs 11 ms to import, most of what
    ``edgerun predict`` spends on a card; the cache is read with msgspec, already loaded.

    Anything but a regular file (a link to one is one) is refused before it is read, or looked up in
    the cache: a FIFO found where a card is looked for held ``edgerun predict`` until killed.
    """
    if (kind := special_file(path)) is not None:
        raise CardError(shown(f"cannot read card {path}: is {kind}, not a regular file"))
    entry = _cache_entry(path, cache_dir)  # taken before the read: a card changed meanwhile is read again next time
    if entry is not None and (cached := _cached(*entry)) is not None:
        return cached
    import yaml

    text = read_utf8(path, "card", CardError, CARD_MAX_BYTES)
    try:
        data = yaml.load(text, Loader=yaml_loader())  # a safe loader: no tag builds an object
    except yaml.YAMLError as exc:
        raise CardError(shown(f"{path}: not valid YAML{yaml_problem(exc, text)}")) from exc
    except RecursionError:  # the pure-Python loader, where libyaml is not built, composes recursively
        raise CardError(shown(f"{path}: not valid YAML: nested too deeply")) from None
    card = parse_card(data, str(path), from_yaml=True)
    if entry is not None:
        _remember(*entry, card)
    return card


def _cache_entry(path: Path, cache_dir: Path | None) -> tuple[Path, str, list[int]] | None:
    """(cache file, the card's resolved path, its size and mtime), or None where it cannot be read."""
    import zlib

    from edgerun.state import state_dir

    try:
        st = path.stat()
        resolved = str(path.resolve())
        cache_dir = cache_dir or state_dir() / "cards"
    except (OSError, ConfigError):  # no state directory to keep it in (no home directory): read each time
        return None
    where = cache_dir / f"{zlib.crc32(resolved.encode()):08x}.json"
    return where, resolved, [st.st_size, st.st_mtime_ns]


#: The card rules a cached card was checked by. Raise it when a card that passed may fail now (as
#: duplicate keys and NaN did, rule 1, and a normalisation past float32's range, rule 2): a card cached under
#: older rules is read and checked again.
CARD_RULES = 2


class _CachedCard(msgspec.Struct, frozen=True):
    path: str
    stamp: list[int]
    card: ModelCard
    rules: int = 0  # CARD_RULES when it was cached (0: before the field)


def _cached(where: Path, resolved: str, stamp: list[int]) -> ModelCard | None:
    try:
        cached = msgspec.json.decode(where.read_bytes(), type=_CachedCard)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if cached.path != resolved or cached.stamp != stamp or cached.rules != CARD_RULES:
        return None  # another card with the same hash, this one changed since, or checked by older rules
    return cached.card


def _remember(where: Path, resolved: str, stamp: list[int], card: ModelCard) -> None:
    try:
        from edgerun.files import atomic_write

        where.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(where, msgspec.json.encode(_CachedCard(resolved, stamp, card, CARD_RULES)))
    except OSError as exc:  # a read-only state directory only costs speed
        log.debug("card cache not written (%s): %s", where, exc)


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
