"""Runtime backends behind one interface (see ``base.Backend``).

The registry is a literal mapping from format to ``"module:Class"``; a
backend's module is imported only when a model of its format is opened, so a
device without LiteRT can still run ONNX models and the other way round.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgerun.backends.base import Backend, QuantParams, TensorSpec, detect_format
from edgerun.errors import BackendUnavailableError

__all__ = ["BACKENDS", "Backend", "QuantParams", "TensorSpec", "detect_format", "open_backend"]

BACKENDS: dict[str, str] = {
    "onnx": "edgerun.backends.onnx:OnnxBackend",
    "tflite": "edgerun.backends.tflite:TfliteBackend",
}


def open_backend(
    path: Path,
    *,
    format: str,
    delegate: str,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> Backend:
    """Load ``path`` with the backend for ``format`` on ``delegate``."""
    try:
        target = BACKENDS[format]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise BackendUnavailableError(f"no backend for format {format!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(path, delegate=delegate, threads=threads, cache_dir=cache_dir)
    return backend
