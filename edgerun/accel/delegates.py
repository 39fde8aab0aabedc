"""The catalogue of delegates edgerun knows, in rank order per model format.

A delegate here is what runs a model: a TFLite delegate or an ONNX Runtime
execution provider. Each entry says which format it serves, what it needs
from the device and the runtimes (as a function of the probed facts that
returns the reason it cannot run, or None), and how to open a backend on it.
Ranking is the order of ``CATALOGUE``: the first usable entry is the default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from edgerun.accel.probe import DeviceFacts
from edgerun.accel.runtimes import RuntimeFacts
from edgerun.backends import Backend, open_backend
from edgerun.errors import ConfigError

__all__ = ["CATALOGUE", "DelegateSpec", "Opener", "accelerator_found", "check_delegate", "known_names", "why_unusable"]

#: Opens a backend: (model path, format, delegate name, threads, engine cache dir) -> Backend.
Opener = Callable[[Path, str, str, "int | None", "Path | None"], Backend]

Need = Callable[[DeviceFacts, RuntimeFacts], "str | None"]

#: The accelerator the probe found for a delegate, named with its device nodes, or None.
Found = Callable[[DeviceFacts], "str | None"]


def _open(path: Path, format: str, delegate: str, threads: int | None, cache_dir: Path | None) -> Backend:
    return open_backend(path, format=format, delegate=delegate, threads=threads, cache_dir=cache_dir)


class DelegateSpec(msgspec.Struct, frozen=True):
    """One delegate: its name, format, what it needs, and how to open a backend on it.

    Attributes:
        name: the name users pass to ``--delegate``.
        format: ``"onnx"`` or ``"tflite"``.
        summary: one line for ``edgerun devices``.
        needs: returns why this delegate cannot run here, or None.
        edgetpu_only: runs only Edge TPU-compiled models (``*_edgetpu.tflite``), and
            those run nowhere else.
        reference: the plain CPU path of its format, against which others are verified.
        accelerator: runs off the CPU's own float/integer kernels (a device, a GPU, a
            compiled engine), so its outputs are verified against the reference.
            CPU paths (ORT's MLAS, XNNPACK) are not: verifying them would cost a
            reference-kernel run (57 ms for INT8 MobileNet) on every start.
        opener: makes the backend; tests pass stand-ins that are real ``Backend``s.
        found: names the accelerator the probe found that this delegate runs on
            (``Edge TPU pcie:/dev/apex_0``), or None where it found none. A delegate
            whose accelerator is found and that fails is a fallback the user is warned
            of; None here (the probe has no file that tells, as for a provider that may
            run on the CPU) leaves a failure to load at INFO: no noise on a CPU-only box.
    """

    name: str
    format: str
    summary: str
    needs: Need
    edgetpu_only: bool = False
    reference: bool = False
    accelerator: bool = True
    opener: Opener = _open
    found: Found | None = None


def _absent(runtime: RuntimeFacts, name: str, default: str) -> str:
    """Why runtime ``name`` cannot run: ``default`` (not installed), unless it is installed and failed to import."""
    return runtime.why_unusable(name) or default


def _ort_provider(provider: str, hardware: Need | None = None) -> Need:
    def need(device: DeviceFacts, runtime: RuntimeFacts) -> str | None:
        if runtime.onnxruntime is None:
            return _absent(runtime, "onnxruntime", "onnxruntime is not installed")
        if provider not in runtime.ort_providers:
            return f"this onnxruntime build has no {provider}"
        return hardware(device, runtime) if hardware else None

    return need


def _nvidia(device: DeviceFacts, runtime: RuntimeFacts) -> str | None:
    if device.nvidia_gpu or device.jetson:
        return None
    return "no NVIDIA GPU found (no /dev/nvidia*, not a Jetson)"


def _tflite(device: DeviceFacts, runtime: RuntimeFacts) -> str | None:
    if runtime.tflite:
        return None
    return _absent(runtime, "tflite", "no TFLite interpreter is installed (pip install ai-edge-litert)")


def _edgetpu(device: DeviceFacts, runtime: RuntimeFacts) -> str | None:
    # The library is not checked here: with an Edge TPU present, a missing
    # libedgetpu is a *fallback* (tried, failed, reason kept), not an absence.
    if not device.edgetpu:
        return "no Edge TPU found (no /dev/apex_*, no USB device 1a6e:089a or 18d1:9302)"
    return _tflite(device, runtime)


def _named(what: str, nodes: tuple[str, ...]) -> str | None:
    return f"{what} {', '.join(nodes)}" if nodes else None


def _edgetpu_found(device: DeviceFacts) -> str | None:
    return _named("Edge TPU", device.edgetpu)


def _nvidia_found(device: DeviceFacts) -> str | None:
    if device.jetson and not device.nvidia_gpu:
        return f"Jetson GPU ({device.jetson})"
    return _named("NVIDIA GPU", device.nvidia_gpu)


def _intel_found(device: DeviceFacts) -> str | None:
    found = [f for f in (_named("Intel GPU", device.intel_gpu), _named("Intel NPU", device.intel_npu)) if f]
    return " and ".join(found) or None


def _any_gpu_found(device: DeviceFacts) -> str | None:
    return _nvidia_found(device) or _named("Intel GPU", device.intel_gpu)


def _gpu_delegate(device: DeviceFacts, runtime: RuntimeFacts) -> str | None:
    error = runtime.library_error("gpu")
    if error:
        return f"TFLite GPU delegate library does not load: {error}"
    return _tflite(device, runtime)


CATALOGUE: tuple[DelegateSpec, ...] = (
    DelegateSpec(
        "tensorrt",
        "onnx",
        "NVIDIA TensorRT (ONNX Runtime)",
        _ort_provider("TensorrtExecutionProvider", _nvidia),
        found=_nvidia_found,
    ),
    DelegateSpec(
        "cuda",
        "onnx",
        "NVIDIA CUDA (ONNX Runtime)",
        _ort_provider("CUDAExecutionProvider", _nvidia),
        found=_nvidia_found,
    ),
    DelegateSpec(
        "openvino",
        "onnx",
        "Intel OpenVINO (ONNX Runtime)",
        _ort_provider("OpenVINOExecutionProvider"),
        found=_intel_found,
    ),
    DelegateSpec("rocm", "onnx", "AMD MIGraphX (ONNX Runtime)", _ort_provider("MIGraphXExecutionProvider")),
    DelegateSpec("qnn", "onnx", "Qualcomm QNN (ONNX Runtime)", _ort_provider("QNNExecutionProvider")),
    DelegateSpec("coreml", "onnx", "Apple Core ML (ONNX Runtime)", _ort_provider("CoreMLExecutionProvider")),
    DelegateSpec("nnapi", "onnx", "Android NNAPI (ONNX Runtime)", _ort_provider("NnapiExecutionProvider")),
    DelegateSpec("dnnl", "onnx", "Intel oneDNN (ONNX Runtime)", _ort_provider("DnnlExecutionProvider")),
    DelegateSpec(
        "xnnpack", "onnx", "XNNPACK (ONNX Runtime)", _ort_provider("XnnpackExecutionProvider"), accelerator=False
    ),
    DelegateSpec(
        "cpu",
        "onnx",
        "ONNX Runtime CPU (MLAS)",
        _ort_provider("CPUExecutionProvider"),
        reference=True,
        accelerator=False,
    ),
    DelegateSpec("edgetpu", "tflite", "Coral Edge TPU (libedgetpu)", _edgetpu, edgetpu_only=True, found=_edgetpu_found),
    DelegateSpec("gpu", "tflite", "TFLite GPU delegate", _gpu_delegate, found=_any_gpu_found),
    DelegateSpec("xnnpack", "tflite", "XNNPACK (LiteRT default CPU delegate)", _tflite, accelerator=False),
    DelegateSpec(
        "cpu",
        "tflite",
        "LiteRT reference CPU kernels (no default delegate)",
        _tflite,
        reference=True,
        accelerator=False,
    ),
)


def known_names(catalogue: tuple[DelegateSpec, ...] = CATALOGUE) -> list[str]:
    """Every delegate name, in rank order, without repeats."""
    return list(dict.fromkeys(spec.name for spec in catalogue))


def check_delegate(name: str, catalogue: tuple[DelegateSpec, ...] = CATALOGUE, *, also: tuple[str, ...] = ()) -> str:
    """``name`` if it names a delegate, ``auto``, ``fastest`` or one of ``also``; else a ConfigError listing them."""
    names = known_names(catalogue)
    if name not in ("auto", "fastest", *also, *names):
        raise ConfigError(f"unknown delegate {name!r}; known: {', '.join(('auto', 'fastest', *also, *names))}")
    return name


def accelerator_found(delegate: str, device: DeviceFacts | None = None) -> str | None:
    """The accelerator the probe finds for ``delegate`` (``Edge TPU pcie:/dev/apex_0``), or None: where a
    delegate the device has hardware for fails, the fallback is a WARNING, not an INFO line (``select``'s
    ``_tell_fallbacks``; the daemon's own preference order and the isolated worker's ask here)."""
    from edgerun.accel.probe import probe

    for spec in CATALOGUE:
        if spec.name == delegate and spec.found is not None:
            return spec.found(device or probe())
    return None


def why_unusable(spec: DelegateSpec, device: DeviceFacts, runtime: RuntimeFacts) -> str | None:
    """Why ``spec`` can run no model here, or None where it can: what the device or runtimes lack
    (``DelegateSpec.needs``), or a delegate library that does not load where the accelerator is present
    (an Edge TPU without libedgetpu: selection still tries it, with that reason, but nothing runs on it).
    ``edgerun devices``' verdict, and ``bench --delegate all``'s."""
    reason = spec.needs(device, runtime)
    if reason is None and (error := runtime.library_error(spec.name)):
        reason = f"the accelerator is present, but its delegate library does not load ({error})"
    return reason
