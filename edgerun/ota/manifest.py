"""The signed documents of PROTOCOL.md: model-update manifests and commands, with every field checked.

Structure and bounds are checked here (msgspec schemas: unknown fields,
wrong types, names that could leave the model store). Checks that need the
device's state (targets, clock, replay, versions, size limit) live in
``edgerun.ota.policy``.
"""

from __future__ import annotations

import reprlib
from typing import Annotated, Any, Literal

import msgspec

from edgerun.card import ModelCard, parse_card
from edgerun.errors import CardError, UpdateRejected, quoted

__all__ = ["Command", "Manifest", "parse_command", "parse_manifest", "version_tuple"]

# ``\Z``, not ``$``: msgspec matches with Python's ``re``, whose ``$`` also matches before a final newline
_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}\Z"
_VERSION_PATTERN = r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\Z"
_IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"
#: A blob's SHA-256 as manifests carry it (``edgerun ota clear`` checks retained ones against it too).
SHA256_PATTERN = r"^[0-9a-f]{64}\Z"
NAME = Annotated[str, msgspec.Meta(pattern=_NAME_PATTERN)]
VERSION = Annotated[str, msgspec.Meta(pattern=_VERSION_PATTERN)]
IDENT = Annotated[str, msgspec.Meta(pattern=_IDENT_PATTERN)]
SHA256 = Annotated[str, msgspec.Meta(pattern=SHA256_PATTERN)]
#: Each pattern above in the plain words a refusal gives (PROTOCOL.md: every rejection names its
#: reason in plain words), in place of msgspec's "Expected `str` matching regex '...'".
_PATTERN_WORDS = {
    _NAME_PATTERN: "a name of 1 to 64 characters from a-z 0-9 . _ and -, starting with a letter or digit",
    _VERSION_PATTERN: "a version MAJOR.MINOR.PATCH, three whole numbers of up to 9 digits (1.2.0)",
    _IDENT_PATTERN: "an id of 1 to 128 characters from A-Z a-z 0-9 . _ and -, starting with a letter or digit",
    SHA256_PATTERN: "a SHA-256 of 64 lowercase hex digits",
}
#: The most chunks one blob may come in (``source.mqtt.chunks``).
CHUNKS_MAX = 1_000_000
#: Unix seconds. Bounded at 10**11 (the year 5138): a time in milliseconds (10**12 and more since 2001)
#: is refused, not taken as the newest time seen, which would make every later manifest look expired.
TIME = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
#: The longest probation a manifest may ask for (``rollout.probation_s``), a week.
PROBATION_MAX_S = 7 * 86400


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class MqttBlob(_Strict, frozen=True):
    """Chunks of the model file, retained on ``<topic>/<i>``."""

    topic: str
    chunk_size: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1024 * 1024)]
    chunks: Annotated[int, msgspec.Meta(ge=1, le=CHUNKS_MAX)]


class Source(_Strict, frozen=True):
    """Where the model file comes from: MQTT chunks or a URL (https, http, file)."""

    mqtt: MqttBlob | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.mqtt is None) == (self.url is None):
            raise ValueError("source must have exactly one of mqtt or url")
        if self.url is not None and not self.url.startswith(("https://", "http://", "file://")):
            raise ValueError("source url must be https://, http:// or file://")
        if self.url is not None and not self.url.isprintable():  # a line break would split a log line
            raise ValueError("source url must not hold control characters (percent-encode them)")


class Targets(_Strict, frozen=True):
    """Devices and groups an update or command is for."""

    devices: tuple[NAME, ...] = ()
    groups: tuple[NAME, ...] = ()


class Sample(_Strict, frozen=True):
    """One validation pair: base64 ``.npy`` input and expected output, with a tolerance."""

    input: str
    output: str
    atol: Annotated[float, msgspec.Meta(ge=0)] = 1e-3


class Validation(_Strict, frozen=True):
    """Samples the new model must reproduce before it is activated."""

    samples: tuple[Sample, ...] = ()


class Rollout(_Strict, frozen=True):
    """Probation bounds and the optional A/B split. A bound the manifest leaves out is the device's own
    (``OtaSettings``: the daemon's ``ota`` section; PROTOCOL.md's 300 s, 5% and 1.5x by default)."""

    probation_s: Annotated[float, msgspec.Meta(ge=0, le=PROBATION_MAX_S)] | None = None
    max_error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_p95_ratio: Annotated[float, msgspec.Meta(ge=1)] | None = None
    ab_fraction: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None


class Manifest(_Strict, frozen=True):
    """A model update (PROTOCOL.md, "Model update manifest")."""

    schema: Literal[1]
    kind: Literal["model-update"]
    update_id: IDENT
    model: NAME
    version: VERSION
    format: Literal["onnx", "tflite"]
    sha256: SHA256
    size: Annotated[int, msgspec.Meta(ge=1)]
    source: Source
    issued: TIME
    expires: TIME
    targets: Targets
    card: dict[str, Any]
    validation: Validation | None = None
    rollout: Rollout | None = None
    allow_downgrade: bool = False

    def model_card(self) -> ModelCard:
        """The card, checked against the schema, with the manifest's name and version."""
        data = dict(self.card)
        if data.get("name", self.model) != self.model:
            raise UpdateRejected(f"card names model {reprlib.repr(data.get('name'))}, the manifest {self.model!r}")
        data["name"] = self.model
        data["version"] = self.version
        try:
            return parse_card(data, "card")
        except CardError as exc:
            raise UpdateRejected(f"invalid card: {quoted(str(exc))}") from None


class Command(_Strict, frozen=True):
    """A command (PROTOCOL.md, "Commands")."""

    schema: Literal[1]
    kind: Literal["command"]
    command_id: IDENT
    issued: TIME
    expires: TIME
    targets: Targets
    command: Literal["rollback", "activate", "set-ab"]
    model: NAME
    version: VERSION | None = None
    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


def _convert(document: dict[str, Any], cls: type[Any], what: str) -> Any:
    try:
        return msgspec.convert(document, cls)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for pattern, words in _PATTERN_WORDS.items():
            message = message.replace(f"`str` matching regex {pattern!r}", words)
        raise UpdateRejected(f"invalid {what}: {quoted(message)}") from None  # it may quote unknown field names


def parse_manifest(document: dict[str, Any]) -> Manifest:
    """A checked manifest, or ``UpdateRejected`` naming the first bad field."""
    if document.get("kind") != "model-update":
        raise UpdateRejected(f"not a model-update manifest (kind {reprlib.repr(document.get('kind'))})")
    manifest: Manifest = _convert(document, Manifest, "manifest")
    if manifest.source.mqtt is not None:
        blob = manifest.source.mqtt
        if blob.chunks != -(-manifest.size // blob.chunk_size):
            raise UpdateRejected(
                f"source.mqtt.chunks is {blob.chunks}, but {manifest.size} bytes in chunks of "
                f"{blob.chunk_size} make {-(-manifest.size // blob.chunk_size)}"
            )
    return manifest


def parse_command(document: dict[str, Any]) -> Command:
    """A checked command, or ``UpdateRejected``."""
    command: Command = _convert(document, Command, "command")
    if command.command == "set-ab" and command.fraction is None:
        raise UpdateRejected("set-ab needs a fraction between 0 and 1")
    if command.command == "activate" and command.version is None:
        raise UpdateRejected("activate needs a version")
    return command


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``."""
    major, minor, patch = (int(p) for p in version.split("."))
    return major, minor, patch
