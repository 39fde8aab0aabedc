"""What the installed runtimes can run: ONNX Runtime providers, TFLite delegates.

Unlike ``probe``, this module imports the runtimes and tries to load delegate
libraries (``ctypes``), because a library that is on disk but does not load
(wrong architecture, missing dependency) is as good as absent.

A runtime whose Python package is installed but whose import fails (a shared
library it needs is missing, a wheel built for another numpy) cannot run a model
either, but it is not absent: it is reported as *unusable*, with the import's
reason, so ``edgerun devices`` does not tell the user to install what is there.
"""

from __future__ import annotations

import logging

import msgspec

from edgerun.errors import BackendUnavailableError, RuntimeUnusableError

log = logging.getLogger(__name__)

__all__ = ["RuntimeFacts", "discover"]


class RuntimeFacts(msgspec.Struct, frozen=True):
    """Runtimes and delegate libraries present, with the reason for each one missing."""

    onnxruntime: str | None
    ort_providers: tuple[str, ...]
    tflite: str | None
    delegate_libraries: tuple[tuple[str, str | None], ...]  # (delegate, error or None when it loads)
    missing: tuple[tuple[str, str], ...] = ()  # (runtime, why): absent or unusable
    unusable: tuple[tuple[str, str], ...] = ()  # (runtime, why): installed, and its import fails

    def library_error(self, delegate: str) -> str | None:
        """Why delegate's library does not load, or None when it does (or needs none)."""
        for name, error in self.delegate_libraries:
            if name == delegate:
                return error
        return None

    def why_missing(self, runtime: str) -> str | None:
        """Why ``runtime`` (``onnxruntime``, ``tflite``) cannot run (absent or unusable); None if it imports."""
        return dict(self.missing).get(runtime)

    def why_unusable(self, runtime: str) -> str | None:
        """Why ``runtime`` is installed and does not import; None if it imports or is not installed."""
        return dict(self.unusable).get(runtime)

    def versions(self) -> str:
        """The runtime versions, for cache keys."""
        return f"{self.onnxruntime or '-'}|{self.tflite or '-'}"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        data = msgspec.structs.asdict(self)
        data["delegate_libraries"] = {k: ("loads" if v is None else v) for k, v in self.delegate_libraries}
        data["missing"] = dict(self.missing)
        data["unusable"] = dict(self.unusable)
        return data


def discover(formats: tuple[str, ...] = ("onnx", "tflite")) -> RuntimeFacts:
    """Import the runtimes for ``formats`` and try their delegate libraries; never raises.

    Loading a TFLite model need not pay for importing ONNX Runtime (25 ms) and
    the other way round; a runtime left out is reported as not probed.
    """
    from edgerun.backends.onnx import import_onnxruntime
    from edgerun.backends.tflite import DELEGATE_LIBRARIES, delegate_library, import_interpreter, library_loads

    missing: list[tuple[str, str]] = []
    unusable: list[tuple[str, str]] = []
    ort_version, providers = None, ()
    try:
        if "onnx" not in formats:
            raise BackendUnavailableError("not probed")
        ort = import_onnxruntime()
        ort_version = f"onnxruntime {ort.__version__}"
        providers = tuple(ort.get_available_providers())
    except BackendUnavailableError as exc:
        missing.append(("onnxruntime", str(exc)))
        if isinstance(exc, RuntimeUnusableError):
            unusable.append(("onnxruntime", str(exc)))
    tflite = None
    try:
        if "tflite" not in formats:
            raise BackendUnavailableError("not probed")
        _, tflite = import_interpreter()
    except BackendUnavailableError as exc:
        missing.append(("tflite", str(exc)))
        if isinstance(exc, RuntimeUnusableError):
            unusable.append(("tflite", str(exc)))
    libraries = []
    for delegate in DELEGATE_LIBRARIES if "tflite" in formats else ():
        library = delegate_library(delegate)
        error = f"no {delegate} delegate library for this OS" if library is None else library_loads(library)
        libraries.append((delegate, error))
    return RuntimeFacts(
        onnxruntime=ort_version,
        ort_providers=providers,
        tflite=tflite,
        delegate_libraries=tuple(libraries),
        missing=tuple(missing),
        unusable=tuple(unusable),
    )
