"""ONNX Runtime backend.

ONNX Runtime quietly falls back to the CPU when an execution provider fails to
initialise (missing CUDA libraries, no device): this backend checks which
providers the session really got and raises ``DelegateError`` instead, so the
selection layer can record the true reason and move on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.backends.base import TensorSpec, import_failure, not_installed, numeric, one_line, raise_if_interrupted
from edgerun.errors import (
    BackendUnavailableError,
    DelegateError,
    InferenceError,
    InputError,
    ModelLoadError,
    RuntimeUnusableError,
)
from edgerun.native import native_calls

log = logging.getLogger(__name__)

#: edgerun delegate name -> ONNX Runtime execution provider.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "MIGraphXExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

_ONNX_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


#: ONNX Runtime's switch for its own telemetry (read once, when it is imported): ``import_onnxruntime`` sets
#: it to ``1`` unless it is set to a value already, so ``ORT_DISABLE_TELEMETRY=0`` in the environment turns it
#: back on; set empty, it is taken as unset (ONNX Runtime itself reads an empty value as "not disabled").
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def import_onnxruntime() -> Any:
    """Import ONNX Runtime or explain how to install it.

    Raises:
        BackendUnavailableError: it is not installed.
        RuntimeUnusableError: it is installed and does not import (a wheel built for another
            numpy, a missing CUDA library in onnxruntime-gpu).
    """
    # From 1.29 on Linux, importing ONNX Runtime writes a device id and an event cache under
    # ~/.cache/Microsoft/DeveloperTools/.onnxruntime (flash writes on a device, a stray line on a read-only
    # home) and starts an uploader thread that sends usage events to Microsoft. A device in a field or a
    # factory does not phone a third party unasked: off unless the user set the variable themselves.
    if not os.environ.get(ORT_TELEMETRY_ENV):  # unset, or set empty (systemd's ``Environment=VAR=``): ORT reads on
        os.environ[ORT_TELEMETRY_ENV] = "1"
    try:
        import onnxruntime
    except Exception as exc:  # whatever a broken vendor package raises on import
        raise_if_interrupted(exc)
        if isinstance(exc, ImportError) and not_installed(exc, "onnxruntime"):
            raise BackendUnavailableError(
                "ONNX Runtime is not installed: pip install onnxruntime "
                "(onnxruntime-gpu on NVIDIA machines, onnxruntime-openvino on Intel)"
            ) from exc
        raise RuntimeUnusableError(  # e.g. onnxruntime-gpu without libcudart.so
            "ONNX Runtime is installed but does not import "
            + import_failure(exc, "reinstall onnxruntime for this Python and numpy")
        ) from exc
    return onnxruntime


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_NODE = re.compile(r"^Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: ")
#: ``ORT_ENFORCE``'s ``/onnxruntime_src/...h:91 onnxruntime::F(const T&, ...) a == b was false. `` before the reason.
_ORT_ENFORCE = re.compile(r"^\S+\.(?:h|cc|cpp|cu):\d+ .*? was false\.\s*")


#: The longest ORT message kept in an error line, in characters.
_ORT_MESSAGE_MAX = 500


def _kind(exc: BaseException, *words: str) -> bool:
    """Whether ORT's first line names one of ``words`` (a later line is detail: a word there
    would turn the model's own failure into the caller's)."""
    return any(word in one_line(exc).lower() for word in words)


def _ort_message(exc: BaseException) -> str:
    """The useful part of ORT's message, on one line.

    Drops the ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :`` prefix, shortens a
    failing node to ``Reshape node 'name':`` and drops an ``ORT_ENFORCE`` source
    location and condition; a message ORT wraps over lines is joined, and cut after
    ``_ORT_MESSAGE_MAX`` characters (a load error can carry a whole graph dump).
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _ORT_MESSAGE_MAX:
        text = text[:_ORT_MESSAGE_MAX] + "..."
    text = _ORT_PREFIX.sub("", text)
    node = _ORT_NODE.match(text)
    if node is None:
        return _ORT_ENFORCE.sub("", text)
    op, name = node.groups()
    return f"{op} node{f' {name!r}' if name else ''}: {_ORT_ENFORCE.sub('', text[node.end() :])}"


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    dtype = np.dtype(_ONNX_TYPES.get(arg.type, np.float32))
    return TensorSpec(name=arg.name, shape=shape, dtype=dtype)


def _provider_options(delegate: str, cache_dir: Path | None) -> dict[str, Any]:
    """Options for providers that compile engines: their caches go under ``cache_dir``."""
    if cache_dir is None or delegate not in ("tensorrt", "openvino"):
        return {}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or full state directory costs a compile per start, not the delegate
        log.warning(
            "engine cache %s cannot be created (%s): %s compiles its engine without a cache", cache_dir, exc, delegate
        )
        return {}
    if delegate == "tensorrt":
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache_dir),
        }
    return {"cache_dir": str(cache_dir)}


class OnnxBackend:
    """A model in an ONNX Runtime ``InferenceSession`` on one execution provider."""

    format = "onnx"
    threadsafe = True

    def __init__(
        self,
        path: Path,
        *,
        delegate: str = "cpu",
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        ort = import_onnxruntime()
        if delegate not in PROVIDERS:
            raise DelegateError(f"ONNX Runtime has no delegate {delegate!r}")
        provider = PROVIDERS[delegate]
        if provider not in ort.get_available_providers():
            raise DelegateError(
                f"{provider} is not in this onnxruntime build (it offers {', '.join(ort.get_available_providers())})"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: our own log says what was chosen
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spin-waiting threads made 2-thread latency bimodal (3.7 or 6.4 ms) on
        # 2-core machines; without spinning it is a steady 4.4 ms (BASELINES.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = [(provider, _provider_options(delegate, cache_dir))]
        if delegate == "tensorrt" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.append("CUDAExecutionProvider")  # for the nodes TensorRT does not take
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeError types
            msg = _ort_message(exc)
            if delegate != "cpu" and _kind(exc, "provider"):
                raise DelegateError(f"{provider} failed to initialise: {msg}") from exc
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {msg}") from exc
        got = self._session.get_providers()
        if not got or got[0] != provider:
            raise DelegateError(f"{provider} failed to initialise (the session fell back to {', '.join(got)})")
        self.delegate = delegate
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._input_dtypes = [s.dtype for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self.runtime_version = f"onnxruntime {ort.__version__}"
        # A node that fails at run time makes ORT write a multi-line "[E:onnxruntime:...]" log to
        # stderr, then raise the same text, which ``run`` turns into one line: the log adds nothing.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # fatal only, for runs; loading still logs errors

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one inference through ``InferenceSession.run``."""
        session = self._session
        if session is None:
            raise InferenceError("the model is closed; load it again to run it")
        feed = {}
        for spec, dtype, x in zip(self.inputs, self._input_dtypes, inputs):
            feed[spec.name] = x if isinstance(x, np.ndarray) and x.dtype == dtype else numeric(x, spec).astype(dtype)
        started = native_calls.enter()
        try:
            return session.run(self._output_names, feed, self._run_options)
        except Exception as exc:
            msg = _ort_message(exc)
            if _kind(exc, "dimension", "shape", "rank"):
                raise InputError(f"input does not fit the model: {msg}") from exc
            raise InferenceError(f"ONNX Runtime failed: {msg}") from exc
        finally:
            native_calls.leave(started)

    def close(self) -> None:
        """Drop the session; ONNX Runtime frees it with the last reference."""
        self._session = None
