"""edgerun: run quantized ML models on edge devices, on the best accelerator they have.

    >>> import edgerun
    >>> model = edgerun.load("models/digits/digits_int8.tflite")
    >>> model.predict("models/digits/samples/digit_3.png").output[0]["label"]
    '3'

The public API is listed in ``__all__``; heavy modules are imported on first
use, so ``import edgerun`` stays cheap on small boards.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from edgerun.errors import (
    BackendUnavailableError,
    CardError,
    ConfigError,
    DelegateError,
    EdgerunError,
    InferenceError,
    InputError,
    ModelLoadError,
    UnusableInput,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CardError",
    "ConfigError",
    "DelegateError",
    "EdgerunError",
    "InferenceError",
    "InputError",
    "Model",
    "ModelCard",
    "ModelLoadError",
    "Prediction",
    "TensorSpec",
    "UnusableInput",
    "__version__",
    "load",
    "probe",
]

_LAZY = {
    "load": "edgerun.model",
    "Model": "edgerun.model",
    "Prediction": "edgerun.model",
    "ModelCard": "edgerun.card",
    "TensorSpec": "edgerun.backends.base",
    "probe": "edgerun.accel.probe",
}

if TYPE_CHECKING:
    from edgerun.accel.probe import probe
    from edgerun.backends.base import TensorSpec
    from edgerun.card import ModelCard
    from edgerun.model import Model, Prediction, load


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
    return getattr(import_module(module), name)
