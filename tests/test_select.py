"""Delegate selection: ranking, fallback with reasons, verification, the fastest cache, strict mode."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from edgerun.accel.delegates import CATALOGUE, DelegateSpec
from edgerun.accel.probe import probe
from edgerun.accel.runtimes import discover
from edgerun.accel.select import select
from edgerun.backends import Backend, TensorSpec, open_backend
from edgerun.backends.tflite import TfliteBackend
from edgerun.errors import ConfigError, DelegateError, InferenceError, ModelLoadError
from tests.conftest import DIGITS, FakeTree


class NoisyBackend:
    """A real ``Backend`` standing in for an accelerator that computes wrong numbers.

    It runs the model through LiteRT's reference kernels and adds an error to
    every output, as a broken delegate or a bad fp16 conversion would.
    """

    format = "tflite"
    threadsafe = False

    def __init__(self, path: Path, error: float, fails_after: int | None = None) -> None:
        self._inner = open_backend(path, format="tflite", delegate="cpu")
        self.delegate = "npu"
        self.inputs: tuple[TensorSpec, ...] = self._inner.inputs
        self.outputs: tuple[TensorSpec, ...] = self._inner.outputs
        self._error = error
        self._runs_left = fails_after  # then it fails, as a device that hangs up or overheats
        self.closed = False

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._runs_left is not None:
            if self._runs_left == 0:
                raise InferenceError("npu: device stopped answering")
            self._runs_left -= 1
        return [y + np.float32(self._error) * np.abs(y).max() for y in self._inner.run(inputs)]

    def close(self) -> None:
        self.closed = True
        self._inner.close()


def _with_npu(
    error: float, fails_after: int | None = None, opened: list[NoisyBackend] | None = None
) -> tuple[DelegateSpec, ...]:
    """The real catalogue plus a top-ranked stand-in accelerator with the given output error
    (failing after ``fails_after`` calls; each one opened is added to ``opened``)."""

    def opener(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        backend = NoisyBackend(path, error, fails_after)
        if opened is not None:
            opened.append(backend)
        return backend

    npu = DelegateSpec("npu", "tflite", "stand-in NPU", lambda d, r: None, opener=opener)
    return (npu, *CATALOGUE)


def test_a_cpu_only_machine_runs_tflite_on_xnnpack_and_says_why_nothing_better(fake_tree: FakeTree) -> None:
    sel = select(DIGITS / "digits_int8.tflite", device=probe(fake_tree.root))
    try:
        assert sel.delegate == "xnnpack"
        by_name = {a.delegate: a for a in sel.attempts}
        assert by_name["edgetpu"].status == "unavailable"
        assert "no Edge TPU found" in by_name["edgetpu"].reason
        assert by_name["cpu"].status == "not-tried"
        assert not sel.fallbacks
    finally:
        sel.backend.close()


def test_onnx_ranks_tensorrt_and_cuda_above_cpu_and_explains_their_absence(fake_tree: FakeTree) -> None:
    sel = select(DIGITS / "digits_fp32.onnx", device=probe(fake_tree.root))
    try:
        assert sel.delegate == "cpu"
        names = [a.delegate for a in sel.attempts]
        assert names.index("tensorrt") < names.index("cuda") < names.index("openvino") < names.index("cpu")
        assert "TensorrtExecutionProvider" in next(a.reason for a in sel.attempts if a.delegate == "tensorrt")
    finally:
        sel.backend.close()


def edge_tpu_without_its_library(fake_tree: FakeTree, model_copy: Callable[[str, str], Path]) -> Path:
    """An Edge TPU's /dev node (libedgetpu is not installed) and a model with its compiled twin; the plain model."""
    fake_tree.file("dev/apex_0")
    plain = model_copy("digits_int8.tflite", "digits.tflite")
    # Stands in for the compiled model: the delegate fails before its custom op would matter.
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    return plain


@pytest.mark.parametrize("given", ["digits_edgetpu.tflite", "digits.tflite"])
def test_edge_tpu_present_but_libedgetpu_missing_falls_back_to_xnnpack_with_the_reason(
    fake_tree: FakeTree, model_copy: Callable[[str, str], Path], given: str
) -> None:
    plain = edge_tpu_without_its_library(fake_tree, model_copy)
    sel = select(plain.with_name(given), device=probe(fake_tree.root))
    try:
        assert sel.delegate == "xnnpack"
        assert sel.path == plain
        (fallback,) = sel.fallbacks
        assert fallback.delegate == "edgetpu"
        assert fallback.status == "failed"
        assert "libedgetpu.so.1 could not be loaded" in fallback.reason
        assert "libedgetpu1-std" in fallback.reason
    finally:
        sel.backend.close()


def test_strict_accelerator_turns_that_fallback_into_an_error(
    fake_tree: FakeTree, model_copy: Callable[[str, str], Path]
) -> None:
    plain = edge_tpu_without_its_library(fake_tree, model_copy)
    with pytest.raises(DelegateError, match=r"strict-accelerator.*edgetpu.*libedgetpu"):
        select(plain, device=probe(fake_tree.root), strict=True)


def test_strict_accelerator_accepts_the_best_delegate_when_nothing_fell_back(fake_tree: FakeTree) -> None:
    sel = select(DIGITS / "digits_int8.tflite", device=probe(fake_tree.root), strict=True)
    sel.backend.close()
    assert sel.delegate == "xnnpack"


def test_forcing_a_delegate_the_device_lacks_names_what_is_available(fake_tree: FakeTree) -> None:
    with pytest.raises(DelegateError) as err:
        select(DIGITS / "digits_fp32.onnx", delegate="cuda", device=probe(fake_tree.root))
    message = str(err.value)
    assert "no NVIDIA GPU found" in message or "no CUDAExecutionProvider" in message
    assert "usable for this model: cpu" in message


def test_forcing_a_delegate_of_the_other_format_says_which_format_it_runs(fake_tree: FakeTree) -> None:
    with pytest.raises(DelegateError, match="runs tflite models, this is onnx"):
        select(DIGITS / "digits_fp32.onnx", delegate="edgetpu", device=probe(fake_tree.root))


def test_an_unknown_delegate_name_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown delegate .tpu.*known: auto, fastest, tensorrt"):
        select(DIGITS / "digits_fp32.onnx", delegate="tpu")


def test_a_delegate_whose_outputs_disagree_with_the_cpu_is_dropped_with_the_reason(fake_tree: FakeTree) -> None:
    sel = select(DIGITS / "digits_fp32.tflite", device=probe(fake_tree.root), catalogue=_with_npu(error=0.5))
    try:
        assert sel.delegate == "xnnpack"
        npu = next(a for a in sel.attempts if a.delegate == "npu")
        assert npu.status == "wrong-output"
        assert "differs from the CPU reference" in npu.reason
    finally:
        sel.backend.close()


def test_a_delegate_within_tolerance_passes_verification_and_is_chosen(fake_tree: FakeTree) -> None:
    sel = select(DIGITS / "digits_fp32.tflite", device=probe(fake_tree.root), catalogue=_with_npu(error=1e-4))
    try:
        assert sel.delegate == "npu"
        npu = next(a for a in sel.attempts if a.delegate == "npu")
        assert npu.reason == "verified against the CPU reference"
    finally:
        sel.backend.close()


def test_fastest_drops_a_delegate_that_fails_while_timed_closes_it_and_takes_the_next(
    fake_tree: FakeTree, state_dir: Path
) -> None:
    opened: list[NoisyBackend] = []
    catalogue = _with_npu(1e-4, fails_after=2, opened=opened)  # verified, then fails in the timing runs
    sel = select(
        DIGITS / "digits_fp32.tflite",
        delegate="fastest",
        device=probe(fake_tree.root),
        state_dir=state_dir,
        catalogue=catalogue,
    )
    try:
        assert sel.delegate != "npu"
        npu = next(a for a in sel.attempts if a.delegate == "npu")
        assert npu.status == "failed" and npu.reason == "failed while timed: npu: device stopped answering"
        assert opened and all(b.closed for b in opened)
    finally:
        sel.backend.close()


def test_verification_can_be_turned_off(fake_tree: FakeTree) -> None:
    sel = select(DIGITS / "digits_fp32.tflite", device=probe(fake_tree.root), catalogue=_with_npu(0.5), verify=False)
    sel.backend.close()
    assert sel.delegate == "npu"


def test_fastest_times_every_working_delegate_then_reuses_the_cached_winner(
    fake_tree: FakeTree, state_dir: Path
) -> None:
    device = probe(fake_tree.root)
    first = select(DIGITS / "digits_int8.tflite", delegate="fastest", device=device, state_dir=state_dir)
    first.backend.close()
    timed = {a.delegate: a.latency_ms for a in first.attempts if a.latency_ms is not None}
    assert set(timed) == {"xnnpack", "cpu"}
    assert first.delegate == min(timed, key=lambda k: timed[k])
    assert not first.cached
    cache = json.loads((state_dir / "delegates.json").read_text())
    (key,) = cache
    assert cache[key]["delegate"] == first.delegate
    assert device.fingerprint() in key and discover(formats=("tflite",)).versions() in key

    second = select(DIGITS / "digits_int8.tflite", delegate="fastest", device=device, state_dir=state_dir)
    second.backend.close()
    assert second.cached
    assert second.delegate == first.delegate
    # only the winner is opened; the others are listed with the times the cache holds
    assert [(a.delegate, a.status) for a in second.attempts if a.status != "unavailable"] == [
        (first.delegate, "chosen"),
        *((name, "not-tried") for name in ("xnnpack", "cpu") if name != first.delegate),
    ]
    assert {a.delegate: a.latency_ms for a in second.attempts if a.latency_ms is not None} == timed


def test_the_fastest_cache_is_not_used_for_another_device(tmp_path: Path, state_dir: Path) -> None:
    a = FakeTree(tmp_path / "a").cpu("avx2")
    b = FakeTree(tmp_path / "b").cpu("avx2 avx512_vnni")
    select(DIGITS / "digits_int8.tflite", delegate="fastest", device=probe(a.root), state_dir=state_dir).backend.close()
    other = select(DIGITS / "digits_int8.tflite", delegate="fastest", device=probe(b.root), state_dir=state_dir)
    other.backend.close()
    assert not other.cached
    assert len(json.loads((state_dir / "delegates.json").read_text())) == 2


def test_a_corrupt_fastest_cache_is_ignored_and_rewritten(fake_tree: FakeTree, state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "delegates.json").write_text("{not json")
    sel = select(DIGITS / "digits_int8.tflite", delegate="fastest", device=probe(fake_tree.root), state_dir=state_dir)
    sel.backend.close()
    assert not sel.cached
    assert json.loads((state_dir / "delegates.json").read_text())


def test_compiled_engine_caches_are_keyed_by_the_runtime_version(fake_tree: FakeTree, state_dir: Path) -> None:
    seen: list[Path | None] = []

    def opener(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        seen.append(cache_dir)
        return open_backend(path, format=fmt, delegate="cpu", threads=threads)

    trt = DelegateSpec("tensorrt", "onnx", "stand-in TensorRT", lambda d, r: None, opener=opener)
    sel = select(
        DIGITS / "digits_fp32.onnx", device=probe(fake_tree.root), state_dir=state_dir, catalogue=(trt, *CATALOGUE[1:])
    )
    sel.backend.close()
    assert sel.delegate == "tensorrt"
    (cache_dir,) = seen
    assert cache_dir is not None and cache_dir.parent == state_dir / "engines"
    assert discover().onnxruntime.replace(" ", "") in cache_dir.name  # type: ignore[union-attr]


def test_a_model_every_delegate_refuses_is_reported_as_a_model_error(tmp_path: Path, fake_tree: FakeTree) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes((DIGITS / "digits_fp32.tflite").read_bytes()[:4000])
    with pytest.raises(ModelLoadError, match="cannot load"):
        select(broken, device=probe(fake_tree.root))


def test_strict_fastest_closes_the_delegate_it_timed_when_it_refuses_the_fallback(
    fake_tree: FakeTree, model_copy: Callable[[str, str], Path], state_dir: Path
) -> None:
    plain = edge_tpu_without_its_library(fake_tree, model_copy)

    def open_backends() -> set[int]:
        return {id(o) for o in gc.get_objects() if isinstance(o, TfliteBackend) and getattr(o, "_interp", None)}

    before = open_backends()
    with pytest.raises(DelegateError, match=r"strict-accelerator.*edgetpu"):
        select(plain, delegate="fastest", device=probe(fake_tree.root), strict=True, state_dir=state_dir)
    assert open_backends() - before == set()
