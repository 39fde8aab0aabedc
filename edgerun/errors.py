"""The exceptions edgerun raises.

Every error a user can cause is an :class:`EdgerunError`; the CLI prints its
message as one line and exits non-zero, without a traceback. Errors from
vendor libraries (ONNX Runtime, LiteRT, OpenCV) are converted at the boundary
where they are caught, with ``raise ... from exc`` so the cause stays visible
in debug logs.

The tree::

    EdgerunError
    ├── ConfigError              a config file or option is invalid
    ├── CardError                a model card is missing a field, malformed or contradicts the model
    ├── ModelLoadError           a model file is missing, not a model, or the runtime refused it
    ├── BackendUnavailableError  the runtime for a model format is not installed, or does not import
    │   └── RuntimeUnusableError the runtime is installed, and its import fails (a missing shared library)
    ├── DelegateError            no delegate could run the model, or a forced one is unusable
    ├── InputError               an input (image, array, file) cannot be fed to the model
    ├── InferenceError           the runtime failed while running a valid input
    ├── SourceError              a source (video, camera, stream, sensor, MQTT) cannot be opened or read
    ├── PipelineError            a pipeline stage failed and stopped the run
    ├── SyncError                the outbox's storage refused a write (disk full, I/O error)
    ├── UpdateRejected           an OTA manifest or command is refused (signature, fields, model)
    └── UpdateFailed             an accepted OTA update could not be completed (download, disk)
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CardError",
    "ConfigError",
    "DelegateError",
    "EdgerunError",
    "InferenceError",
    "InputError",
    "ModelLoadError",
    "PipelineError",
    "RuntimeUnusableError",
    "SourceError",
    "SyncError",
    "UpdateFailed",
    "UnusableInput",
    "UpdateRejected",
    "quoted",
    "shown",
]


class EdgerunError(Exception):
    """Root of every error edgerun raises on purpose."""

    exit_code: int = 1


class ConfigError(EdgerunError):
    """Raised when a config file, a command-line option or a setting is invalid."""

    exit_code = 2


class CardError(EdgerunError):
    """Raised when a model card cannot be read, fails its schema or does not fit the model."""


class ModelLoadError(EdgerunError):
    """Raised when a model file is missing, is not a model, or its runtime refuses to load it."""


class BackendUnavailableError(EdgerunError):
    """Raised when no installed runtime can load a model of this format."""


class RuntimeUnusableError(BackendUnavailableError):
    """Raised when a model format's runtime is installed and its import fails (a missing shared library,
    a wheel built for another numpy): not absent, so the user needs the import's reason, not pip advice."""


class DelegateError(EdgerunError):
    """Raised when no delegate can run a model, or a forced delegate is unusable."""


class InputError(EdgerunError):
    """Raised when an input cannot be read or mapped onto the model's input tensor."""


class UnusableInput(InputError):
    """Raised for an input no model could take, whatever its tensors: unreadable, not a decodable image, an
    array that is not numbers (empty, NaN). A pipeline reports it as a failed frame and does not count it
    against the model, as the HTTP API does not count its 422s: OTA probation judges a model, not its inputs
    (25 garbage messages on an MQTT source rolled a good update back)."""


class InferenceError(EdgerunError):
    """Raised when the runtime fails while running an input that passed every check."""


class SourceError(EdgerunError):
    """Raised when a source cannot be opened, or fails beyond its retries while running."""


class PipelineError(EdgerunError):
    """Raised when a pipeline stage failed and stopped the run (the message names the stage)."""


class SyncError(EdgerunError):
    """Raised when the MQTT sync's outbox cannot store what was asked: its storage refused the write
    (disk full, I/O error, write lock held elsewhere, read-only, corrupt); nothing changed."""


class UpdateRejected(EdgerunError):
    """Raised when an OTA envelope, manifest, command or model is refused; the message is the reason."""


class UpdateFailed(EdgerunError):
    """Raised when an accepted OTA update cannot be completed (download timeout, full disk...)."""


def shown(text: str) -> str:
    """``text`` as one line on a terminal: a line break or another control character in it (a file
    name may hold any) is written as its escape (``\\n``), so one error or result stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


#: The most characters of a message that quotes what was received (reasons are retained and logged).
QUOTE_MAX = 200


def quoted(text: str) -> str:
    """``text``, a message that quotes what came over the network, as one line of at most ``QUOTE_MAX``
    characters: line breaks and control characters escaped, the middle of a long one cut."""
    text = shown(text)
    return text if len(text) <= QUOTE_MAX else f"{text[: QUOTE_MAX - 63]}...{text[-60:]}"
