"""Audit of selection and fallback: what a failed or cached delegate leaves behind, and how it falls back."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from edgerun.accel.delegates import CATALOGUE, DelegateSpec
from edgerun.accel.probe import probe
from edgerun.accel.select import select
from edgerun.backends import Backend, TensorSpec, open_backend
from edgerun.errors import DelegateError, ModelLoadError
from tests.conftest import DIGITS, FakeTree


class _DeviceHandle:
    """Stands in for what a vendor delegate claims while it opens: the Edge TPU, a GPU context."""


class _StandIn:
    """A real ``Backend`` standing in for an accelerator (LiteRT's reference kernels underneath)."""

    format = "tflite"
    threadsafe = False

    def __init__(self, path: Path, run_error: BaseException | None = None) -> None:
        self._inner = open_backend(path, format="tflite", delegate="cpu")
        self.delegate = "npu"
        self.inputs: tuple[TensorSpec, ...] = self._inner.inputs
        self.outputs: tuple[TensorSpec, ...] = self._inner.outputs
        self._run_error = run_error
        self.closed = False

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._run_error is not None:
            raise self._run_error
        return self._inner.run(inputs)

    def close(self) -> None:
        self.closed = True
        self._inner.close()


def test_a_delegate_that_fails_half_open_is_let_go_not_kept_alive_by_its_recorded_failure(
    fake_tree: FakeTree,
) -> None:
    claimed: list[weakref.ref[_DeviceHandle]] = []

    def opener(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        handle = _DeviceHandle()  # the delegate claimed its device, then refused the model
        claimed.append(weakref.ref(handle))
        raise DelegateError("the npu delegate refused the model: unsupported op")

    npu = DelegateSpec("npu", "tflite", "stand-in NPU", lambda d, r: None, opener=opener)
    sel = select(DIGITS / "digits_int8.tflite", device=probe(fake_tree.root), catalogue=(npu, *CATALOGUE))
    try:
        assert sel.delegate == "xnnpack"
        (failed,) = sel.fallbacks
        assert failed.delegate == "npu" and "refused the model" in failed.reason
        assert isinstance(failed.error, DelegateError)
        gc.collect()
        # The recorded error lives as long as the model; the device must not live with it.
        assert claimed and claimed[0]() is None
    finally:
        sel.backend.close()


def test_a_cached_fastest_winner_that_now_refuses_the_model_is_timed_again_not_fatal(
    fake_tree: FakeTree, state_dir: Path
) -> None:
    device = probe(fake_tree.root)
    model = DIGITS / "digits_int8.tflite"

    def works(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        return _StandIn(path)

    def refuses(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        # What ONNX Runtime's TensorRT EP says when it cannot build an engine: a ModelLoadError here.
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: TensorRT EP could not build an engine")

    first = select(
        model,
        delegate="fastest",
        device=device,
        state_dir=state_dir,
        catalogue=(DelegateSpec("npu", "tflite", "stand-in", lambda d, r: None, opener=works),),
    )
    first.backend.close()
    assert first.delegate == "npu"

    broken = DelegateSpec("npu", "tflite", "stand-in", lambda d, r: None, opener=refuses)
    again = select(model, delegate="fastest", device=device, state_dir=state_dir, catalogue=(broken, *CATALOGUE))
    try:
        assert not again.cached
        assert again.delegate in ("xnnpack", "cpu")
        npu = next(a for a in again.attempts if a.delegate == "npu")
        assert npu.status == "failed" and "could not build an engine" in npu.reason
    finally:
        again.backend.close()


def test_an_accelerator_whose_verification_raises_an_unconverted_error_is_closed(fake_tree: FakeTree) -> None:
    opened: list[_StandIn] = []

    def opener(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        backend = _StandIn(path, run_error=RuntimeError("vendor error the backend did not convert"))
        opened.append(backend)
        return backend

    npu = DelegateSpec("npu", "tflite", "stand-in NPU", lambda d, r: None, opener=opener)
    with pytest.raises(RuntimeError, match="did not convert"):
        select(DIGITS / "digits_int8.tflite", device=probe(fake_tree.root), catalogue=(npu, *CATALOGUE))
    assert opened and all(b.closed for b in opened)
