"""Choosing the delegate a model runs on: rank, try, verify, fall back, cache.

Selection is separate from probing: it takes the probed ``DeviceFacts`` and
``RuntimeFacts``, intersects them with what the model allows, and then:

1. tries the candidates in rank order, recording every rejection with its reason;
2. **verifies** each accelerated candidate: one input is run through it and
   through the CPU reference, and a candidate whose outputs disagree beyond the
   tolerance is dropped (a delegate that loads but computes garbage is worse
   than a slow one);
3. with ``fastest``, times every working candidate on the actual model and keeps
   the winner, cached per (model SHA-256, device fingerprint, runtime versions,
   threads, candidates, with the SHA-256 of a Coral pair's other file) in the state
   directory so the next start tries only the winner.

Every decision is logged at INFO and kept in ``Selection.attempts``. A fallback is told once
per load, when the choice is made, in one line naming the delegate, the reason and what runs
instead: a WARNING where the probe found the accelerator (``/dev/apex_0`` and no libedgetpu) or
the delegate loaded and then failed (wrong output, failed while timed), so that a device running
on its CPU instead of its accelerator says so without ``-v``; INFO for a delegate the probe found
no hardware for (a provider in the onnxruntime build on a CPU-only box).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from edgerun.accel.delegates import CATALOGUE, DelegateSpec, check_delegate
from edgerun.accel.probe import DeviceFacts, probe
from edgerun.accel.runtimes import RuntimeFacts, discover
from edgerun.backends import Backend, TensorSpec, detect_format
from edgerun.errors import BackendUnavailableError, DelegateError, EdgerunError, ModelLoadError
from edgerun.files import atomic_write, sha256_file

log = logging.getLogger(__name__)

__all__ = ["Attempt", "Selection", "candidate_files", "find_candidates", "select", "synthetic_inputs"]

#: Sample provider: given an opened backend, the inputs used to verify and time it.
SampleFn = Callable[[Backend], Sequence[np.ndarray]]

_CACHE_FILE = "delegates.json"


class Attempt(msgspec.Struct):
    """What happened to one candidate delegate.

    ``status`` is one of ``chosen``, ``usable`` (worked, not chosen),
    ``unavailable`` (the device or runtimes lack it), ``failed`` (it did not
    load), ``wrong-output`` (it failed verification) or ``not-tried``.
    """

    delegate: str
    path: str
    status: str
    reason: str = ""
    latency_ms: float | None = None
    error: EdgerunError | None = None  # the exception itself, for callers that re-raise it

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "delegate": self.delegate,
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "latency_ms": self.latency_ms,
        }


#: The statuses of a candidate that was tried and rejected: a fallback.
_FELL_BACK = frozenset({"failed", "wrong-output"})


def _fallbacks_of(attempts: list[Attempt]) -> list[Attempt]:
    """The attempts that were tried and rejected (load failure or wrong output), in order."""
    return [a for a in attempts if a.status in _FELL_BACK]


class Selection(msgspec.Struct):
    """The outcome: the chosen backend, and every attempt with its reason."""

    backend: Backend
    delegate: str
    path: Path
    mode: str
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    cached: bool = False

    @property
    def fallbacks(self) -> list[Attempt]:
        """Candidates that were tried and rejected (load failure or wrong output), now or, for a cached
        ``fastest`` choice, when it was timed."""
        return _fallbacks_of(self.attempts)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "delegate": self.delegate,
            "path": str(self.path),
            "mode": self.mode,
            "cached": self.cached,
            "attempts": [a.to_dict() for a in self.attempts],
        }


def candidate_files(path: Path, spec: DelegateSpec) -> Path | None:
    """The file ``spec`` would run for a model at ``path``, or None if it cannot.

    Coral users ship ``model.tflite`` and ``model_edgetpu.tflite`` side by side:
    the Edge TPU runs only the compiled one, every other delegate only the plain
    one, so either file given finds its sibling.
    """
    stem = path.name[: -len(".tflite")] if path.name.endswith(".tflite") else None
    is_compiled = stem is not None and stem.endswith("_edgetpu")
    if spec.edgetpu_only:
        if is_compiled:
            return path
        sibling = path.with_name(f"{stem}_edgetpu.tflite") if stem else None
        return sibling if sibling is not None and sibling.is_file() else None
    if is_compiled and stem is not None:
        plain = path.with_name(f"{stem[: -len('_edgetpu')]}.tflite")
        return plain if plain.is_file() else None
    return path


def synthetic_inputs(
    backend: Backend, seed: int = 0, shapes: Sequence[tuple[int, ...]] | None = None
) -> list[np.ndarray]:
    """Deterministic inputs for verification when the caller has none, of ``shapes`` where given (a benchmark's:
    ``edgerun.bench.timed_shapes``), else each input's own with its dynamic dimensions 1.

    Float inputs are uniform in [0, 1); quantized ones cover the range their
    integers can represent; other integer inputs cover their dtype.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, spec in enumerate(backend.inputs):
        shape = spec.concrete_shape() if shapes is None else shapes[i]
        if spec.quant is not None:
            info = np.iinfo(spec.dtype)
            lo = (info.min - spec.quant.zero_point) * spec.quant.scale
            hi = (info.max - spec.quant.zero_point) * spec.quant.scale
            out.append(rng.uniform(lo, hi, size=shape).astype(np.float32))
        elif np.issubdtype(spec.dtype, np.integer):
            info = np.iinfo(spec.dtype)
            out.append(rng.integers(info.min, info.max, size=shape, dtype=spec.dtype, endpoint=True))
        else:
            out.append(rng.random(size=shape, dtype=np.float32).astype(spec.dtype))
    return out


def _tolerance(spec: TensorSpec, reference: np.ndarray, rtol: float) -> float:
    scale = spec.quant.scale if spec.quant is not None else 0.0
    peak = float(np.max(np.abs(reference))) if reference.size else 0.0
    return 1e-4 + 2.0 * scale + rtol * peak


def _compare(
    outputs: Sequence[TensorSpec], got: Sequence[np.ndarray], ref: Sequence[np.ndarray], rtol: float
) -> str | None:
    """Why ``got`` disagrees with ``ref``, or None when every output is within tolerance."""
    if len(got) != len(ref):
        return f"returned {len(got)} outputs, the CPU reference {len(ref)}"
    for spec, a, b in zip(outputs, got, ref):
        if a.shape != b.shape:
            return f"output {spec.name} has shape {list(a.shape)}, the CPU reference {list(b.shape)}"
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        tol = _tolerance(spec, b, rtol)
        if not np.isfinite(diff) or diff > tol:
            return f"output {spec.name} differs from the CPU reference by {diff:.4g} (tolerance {tol:.4g})"
    return None


def _time(backend: Backend, inputs: Sequence[np.ndarray], budget_s: float = 0.5, max_runs: int = 50) -> float:
    """Median latency of ``backend`` in ms after a short warm-up, within a time budget."""
    for _ in range(3):
        backend.run(inputs)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_runs and (len(samples) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        backend.run(inputs)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(samples))


#: Delegates that compile engines worth caching across starts.
_ENGINE_DELEGATES = frozenset({"tensorrt", "openvino"})


def _toolchain(delegate: str, runtime: RuntimeFacts) -> str:
    """Versions that invalidate a compiled engine: the runtime and the vendor toolkit."""
    toolkit = {
        "tensorrt": ("tensorrt", "tensorrt-libs", "tensorrt-cu12"),
        "openvino": ("openvino", "onnxruntime-openvino"),
    }
    from importlib.metadata import PackageNotFoundError, version  # 15 ms to import: only here

    parts = [runtime.onnxruntime or "onnxruntime ?"]
    for dist in toolkit.get(delegate, ()):
        try:
            parts.append(f"{dist} {version(dist)}")
            break
        except PackageNotFoundError:
            continue
    return "-".join(p.replace(" ", "") for p in parts)


class _Cached(msgspec.Struct, frozen=True):
    """One ``fastest`` cache entry: the winner, every timed median (ms), and the candidates that fell back
    when it was timed, by name, as (status, reason)."""

    delegate: str
    timings: dict[str, float]
    fell_back: dict[str, tuple[str, str]]


class _FastestCache:
    """The winners of ``fastest`` runs, one JSON file in the state directory."""

    def __init__(self, state_dir: Path | None) -> None:
        self.file = state_dir / _CACHE_FILE if state_dir else None

    def _load(self) -> dict[str, dict[str, object]]:
        if self.file is None:
            return {}
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable delegate cache %s: %s", self.file, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> _Cached | None:
        """The entry for ``key``, or None."""
        entry = self._load().get(key)
        delegate = entry.get("delegate") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(delegate, str):
            return None
        timings = entry.get("timings_ms")
        timings = timings if isinstance(timings, dict) else {}
        fell_back = entry.get("fell_back")
        fell_back = fell_back if isinstance(fell_back, dict) else {}
        return _Cached(
            delegate,
            {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))},
            {
                k: (v[0], str(v[1]))
                for k, v in fell_back.items()
                if isinstance(v, list) and len(v) == 2 and v[0] in _FELL_BACK
            },
        )

    def put(self, key: str, delegate: str, timings: dict[str, float], fell_back: list[Attempt]) -> None:
        if self.file is None:
            return
        data = self._load()
        data[key] = {
            "delegate": delegate,
            "timings_ms": timings,
            "fell_back": {a.delegate: [a.status, a.reason] for a in fell_back},
            "created": int(time.time()),
        }
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.file, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("cannot write delegate cache %s: %s", self.file, exc)


def find_candidates(
    model_path: Path,
    fmt: str,
    delegate: str,
    device: DeviceFacts,
    runtime: RuntimeFacts,
    catalogue: tuple[DelegateSpec, ...] = CATALOGUE,
) -> tuple[list[tuple[DelegateSpec, Path]], list[Attempt]]:
    """The delegates this device could run the model with, in rank order, and why the others cannot.

    ``delegate`` is ``auto``/``fastest`` (all of them) or one name (only that one).
    Nothing is loaded here.
    """
    attempts: list[Attempt] = []
    candidates: list[tuple[DelegateSpec, Path]] = []
    for spec in catalogue:
        if spec.format != fmt or (delegate not in ("auto", "fastest") and spec.name != delegate):
            continue
        target = candidate_files(model_path, spec)
        reason = spec.needs(device, runtime)
        if target is None and not reason:
            reason = (
                "needs an Edge TPU-compiled model (*_edgetpu.tflite) beside this one"
                if spec.edgetpu_only
                else "an Edge TPU-compiled model runs only on the Edge TPU, and no plain .tflite is beside it"
            )
        if reason or target is None:
            attempts.append(Attempt(spec.name, str(target or model_path), "unavailable", reason or ""))
            log.debug("delegate %s unavailable for %s: %s", spec.name, model_path.name, reason)
            continue
        candidates.append((spec, target))
    return candidates, attempts


def _as_found(candidates: list[tuple[DelegateSpec, Path]], runtime: RuntimeFacts, model_path: Path) -> str:
    """The candidates as selection finds them before opening any, for the ``fastest`` cache key: each name,
    marked where its delegate library does not load (as ``discover`` found, without loading it again), and
    where it runs another file than ``model_path`` (a Coral pair's other file), with that file's SHA-256.

    A delegate usable now that was not when the winner was timed (a library installed since, an Edge TPU
    model put beside this one, a provider in another onnxruntime build) makes another key, so it is timed.
    So does another file of the pair, as the model's own bytes do: ``X_edgetpu.tflite`` compiled again (the
    Edge TPU may now be faster or slower, or fail), or the CPU twin of a compiled model given, replaced.
    Each such file is hashed once, however many delegates run it: a pair has one, a plain model none.
    """
    digests: dict[Path, str] = {}
    marks = []
    for spec, target in candidates:
        mark = spec.name + ("(no library)" if runtime.library_error(spec.name) else "")
        if target != model_path:
            if target not in digests:
                try:
                    digests[target] = sha256_file(target)
                except OSError as exc:  # opening it fails too, and says why: timed again once it reads
                    digests[target] = f"unreadable ({exc.strerror})"
            mark += f"@{digests[target]}"
        marks.append(mark)
    return ",".join(marks)


def select(
    model_path: Path,
    *,
    delegate: str = "auto",
    threads: int | None = None,
    strict: bool = False,
    verify: bool = True,
    rtol: float = 0.02,
    device: DeviceFacts | None = None,
    runtime: RuntimeFacts | None = None,
    state_dir: Path | None = None,
    sample: SampleFn | None = None,
    catalogue: tuple[DelegateSpec, ...] = CATALOGUE,
) -> Selection:
    """Open ``model_path`` on the best delegate this device can run it with.

    Args:
        model_path: the model file.
        delegate: ``auto`` (first working in rank order), ``fastest`` (time every
            working one, cache the winner), or a delegate name to force.
        threads: CPU threads for the runtime.
        strict: make any fallback an error (a candidate the device has that failed
            to load or failed verification).
        verify: check accelerated delegates against the CPU reference.
        rtol: verification tolerance relative to the reference output's peak.
        device: probed device facts (probed from ``/`` when None).
        runtime: runtime facts (discovered when None).
        state_dir: where the ``fastest`` cache and compiled engines live.
        sample: makes the verification input from a backend; synthetic when None.
        catalogue: the delegates to consider, in rank order.

    Raises:
        ConfigError: ``delegate`` is not a known name.
        DelegateError: no delegate works, a forced one is unusable, or ``strict``
            and a fallback happened.
    """
    check_delegate(delegate, catalogue)
    model_path = Path(model_path)
    fmt = detect_format(model_path)
    device = device or probe()
    runtime = runtime or discover(formats=(fmt,))
    make_sample = sample or synthetic_inputs
    job = _Job(model_path, fmt, threads, verify, rtol, strict, state_dir, device, runtime, make_sample, catalogue)
    candidates, attempts = find_candidates(model_path, fmt, delegate, device, runtime, catalogue)
    if not candidates:
        raise _nothing_runs(model_path, fmt, delegate, attempts, catalogue, device, runtime)

    cache = _FastestCache(state_dir)
    cache_key = None
    if delegate == "fastest":
        cache_key = (
            f"{sha256_file(model_path)}|{device.fingerprint()}|{runtime.versions()}|threads={threads or 0}"
            f"|candidates={_as_found(candidates, runtime, model_path)}"
        )
        hit = cache.get(cache_key)
        winner, timings = (hit.delegate, hit.timings) if hit is not None else (None, {})
        if hit is not None and strict and hit.fell_back:  # strict judges what falls back now, not the cache
            log.info(
                "cached fastest delegate for %s was chosen after %s fell back; timing again (--strict-accelerator)",
                model_path.name,
                ", ".join(hit.fell_back),
            )
            winner = None
        if winner is not None and any(s.name == winner for s, _ in candidates):
            log.info("fastest delegate for %s from cache: %s", model_path.name, winner)
            chosen = [(s, p) for s, p in candidates if s.name == winner]
            try:
                selection = _try_in_order(job, chosen, "fastest", attempts, cached=True, reason="fastest (cached)")
            except EdgerunError as exc:  # a DelegateError, or a ModelLoadError from an accelerator's compiler
                log.warning("cached fastest delegate %s no longer works (%s); timing again", winner, exc)
                attempts = [a for a in attempts if a.status == "unavailable"]
            else:  # the candidates the timing ranked lower, still listed, as a timed run lists them
                fell_back = hit.fell_back if hit is not None else {}
                for spec, target in candidates:
                    if spec.name in fell_back:  # as the timing found it: failed or wrong-output, with its reason
                        status, why = fell_back[spec.name]
                        selection.attempts.append(Attempt(spec.name, str(target), status, f"{why} (cached)"))
                    elif spec.name != winner:
                        why = "slower when timed (cached)" if spec.name in timings else "not timed then (cached)"
                        attempt = Attempt(spec.name, str(target), "not-tried", why, latency_ms=timings.get(spec.name))
                        selection.attempts.append(attempt)
                for attempt in selection.attempts:
                    if attempt.status == "chosen":
                        attempt.latency_ms = timings.get(winner)
                _tell_fallbacks(job, selection.attempts, selection.delegate, selection.path)
                return selection

    if delegate != "fastest":
        mode = "auto" if delegate == "auto" else "forced"
        return _try_in_order(job, candidates, mode, attempts)

    # fastest: open, verify and time every candidate; keep the quickest.
    working: list[tuple[float, Backend, DelegateSpec, Path, Attempt]] = []
    reference = _Reference(job)
    try:
        for spec, target in candidates:
            attempt = Attempt(spec.name, str(target), "not-tried")
            attempts.append(attempt)
            backend = _open_verified(job, spec, target, reference, attempt)
            if backend is None:
                continue
            try:
                attempt.latency_ms = _time(backend, make_sample(backend))
            except EdgerunError as exc:  # verified, then failed while timed: as a delegate that fails to load
                backend.close()
                attempt.status, attempt.reason = "failed", f"{_TIMED}{exc}"
                log.debug("delegate %s for %s %s", spec.name, model_path.name, attempt.reason)
                continue
            except BaseException:
                backend.close()
                raise
            attempt.status = "usable"
            working.append((attempt.latency_ms, backend, spec, target, attempt))
    except BaseException:
        for _, opened, *_ in working:
            opened.close()
        raise
    finally:
        reference.close()
    if not working:
        raise _all_failed(model_path, attempts)
    working.sort(key=lambda w: w[0])
    best_ms, backend, spec, target, attempt = working[0]
    attempt.status = "chosen"
    attempt.reason = f"fastest: {best_ms:.3f} ms median"
    for _, other, *_ in working[1:]:
        other.close()
    try:
        _check_strict(strict, attempts, model_path)
    except DelegateError:
        backend.close()
        raise
    _tell_fallbacks(job, attempts, spec.name, target)
    log.info("delegate for %s: %s (fastest, %.3f ms)", model_path.name, spec.name, best_ms)
    assert cache_key is not None
    cache.put(cache_key, spec.name, {w[2].name: w[0] for w in working}, _fallbacks_of(attempts))
    return Selection(backend, spec.name, target, "fastest", attempts)


class _Job(msgspec.Struct, frozen=True):
    """What one ``select`` call works with, passed to its helpers as one value."""

    model_path: Path
    fmt: str
    threads: int | None
    verify: bool
    rtol: float
    strict: bool
    state_dir: Path | None
    device: DeviceFacts
    runtime: RuntimeFacts
    make_sample: SampleFn
    catalogue: tuple[DelegateSpec, ...]


class _Reference:
    """The CPU reference outputs for verification, computed once on first use."""

    def __init__(self, job: _Job) -> None:
        self._spec = next((s for s in job.catalogue if s.format == job.fmt and s.reference), None)
        self._job = job
        self._result: tuple[list[np.ndarray], list[np.ndarray]] | None = None

    def outputs(self, backend: Backend) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """(inputs, reference outputs), or None when no CPU reference can run this model."""
        if self._result is None:
            if self._spec is None:
                return None
            job = self._job
            path = candidate_files(job.model_path, self._spec)
            if path is None:
                return None
            ref = self._spec.opener(path, job.fmt, self._spec.name, job.threads, None)
            try:
                inputs = list(job.make_sample(backend))
                self._result = (inputs, ref.run(inputs))
            finally:
                ref.close()
        return self._result

    def close(self) -> None:
        self._result = None


def _open_verified(
    job: _Job, spec: DelegateSpec, target: Path, reference: _Reference, attempt: Attempt
) -> Backend | None:
    """Open ``spec`` and verify it; on any failure fill ``attempt`` and return None."""
    cache_dir = None
    if job.state_dir is not None and spec.name in _ENGINE_DELEGATES:
        cache_dir = job.state_dir / "engines" / f"{spec.name}-{_toolchain(spec.name, job.runtime)}"
    try:
        backend = spec.opener(target, job.fmt, spec.name, job.threads, cache_dir)
    except EdgerunError as exc:
        attempt.status, attempt.reason, attempt.error = "failed", str(exc), _without_frames(exc)
        log.debug("delegate %s failed for %s: %s", spec.name, target.name, exc)  # told with the choice
        return None
    if not job.verify or not spec.accelerator:
        return backend
    try:
        ref = reference.outputs(backend)
        if ref is None:
            attempt.reason = "not verified: no CPU reference can run this model"
            return backend
        problem = _compare(backend.outputs, backend.run(ref[0]), ref[1], job.rtol)
    except EdgerunError as exc:
        problem = f"verification run failed: {exc}"
    except BaseException:  # a bug or Ctrl-C while verifying: the accelerator is not left open
        backend.close()
        raise
    if problem:
        backend.close()
        attempt.status, attempt.reason = "wrong-output", problem
        log.debug("delegate %s dropped for %s: %s", spec.name, target.name, problem)  # told with the choice
        return None
    attempt.reason = "verified against the CPU reference"
    return backend


def _without_frames(exc: EdgerunError) -> EdgerunError:
    """``exc`` with the local variables of its traceback's frames (and its causes') let go.

    ``Attempt.error`` lives as long as the model; through its traceback it would keep the
    half-built backend of a delegate that failed to open (an Edge TPU delegate holding the
    device, a session that fell back to the CPU) alive with it. The line numbers stay.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if cause.__traceback__ is not None:
            traceback.clear_frames(cause.__traceback__)
        cause = cause.__cause__ or cause.__context__
    return exc


def _try_in_order(
    job: _Job,
    candidates: list[tuple[DelegateSpec, Path]],
    mode: str,
    attempts: list[Attempt],
    cached: bool = False,
    reason: str | None = None,
) -> Selection:
    model_path = job.model_path
    reference = _Reference(job)
    try:
        for i, (spec, target) in enumerate(candidates):
            attempt = Attempt(spec.name, str(target), "not-tried")
            attempts.append(attempt)
            backend = _open_verified(job, spec, target, reference, attempt)
            if backend is None:
                continue
            attempt.status = "chosen"
            attempt.reason = (
                attempt.reason or reason or ("forced" if mode == "forced" else "first usable in rank order")
            )
            for spec_left, target_left in candidates[i + 1 :]:
                attempts.append(
                    Attempt(spec_left.name, str(target_left), "not-tried", "a higher-ranked delegate works")
                )
            try:
                _check_strict(job.strict, attempts, model_path)
            except DelegateError:
                backend.close()
                raise
            if not cached:  # a cached choice is told with the fallbacks the cache holds, by ``select``
                _tell_fallbacks(job, attempts, spec.name, target)
            fell = [a.delegate for a in _fallbacks_of(attempts)]
            if fell:
                log.info("delegate for %s: %s (fell back from %s)", model_path.name, spec.name, ", ".join(fell))
            else:
                log.info("delegate for %s: %s", model_path.name, spec.name)
            return Selection(backend, spec.name, target, mode, attempts, cached=cached)
    finally:
        reference.close()
    raise _all_failed(model_path, attempts)


#: How the reason of a candidate that was verified and then failed while it was timed begins.
_TIMED = "failed while timed: "


def _tell_fallbacks(job: _Job, attempts: list[Attempt], chosen: str, target: Path) -> None:
    """One line per candidate that was tried and rejected, with its reason and what runs instead.

    A WARNING where the probe found the delegate's accelerator (the device has it, and runs on
    its CPU instead: ``/dev/apex_0`` without libedgetpu, a GPU whose provider fails to start), or
    where the delegate loaded and then failed (wrong output, failed while timed); INFO for one the
    probe found nothing for, which fails on every CPU-only box. Called once per load, when the
    choice is made; a cached ``fastest`` choice tells the fallbacks the cache holds, "(cached)".
    """
    specs = {s.name: s for s in job.catalogue if s.format == job.fmt}
    for attempt in _fallbacks_of(attempts):
        spec = specs.get(attempt.delegate)
        found = spec.found(job.device) if spec is not None and spec.found is not None else None
        loaded = attempt.status == "wrong-output" or attempt.reason.startswith(_TIMED)
        what = "gave wrong output" if attempt.status == "wrong-output" else "failed"
        line = (
            f"delegate {attempt.delegate} {what} for {Path(attempt.path).name}: {attempt.reason}; "
            f"running {target.name} on {chosen} instead"
        )
        if found:
            log.warning("%s found, but %s", found, line)
        elif loaded:
            log.warning("%s", line)
        else:
            log.info("%s", line)


def _check_strict(strict: bool, attempts: list[Attempt], model_path: Path) -> None:
    if not strict:
        return
    fell = _fallbacks_of(attempts)
    if fell:
        reasons = "; ".join(f"{a.delegate}: {a.reason}" for a in fell)
        raise DelegateError(f"--strict-accelerator: {model_path.name} would fall back ({reasons})")


def _all_failed(model_path: Path, attempts: list[Attempt]) -> EdgerunError:
    tried = _fallbacks_of(attempts)
    # When every delegate refused the file itself, the model is the problem: say so plainly.
    load_errors = [a.error for a in tried if isinstance(a.error, ModelLoadError)]
    if tried and len(load_errors) == len(tried):
        return load_errors[0]
    reasons = "; ".join(f"{a.delegate}: {a.reason}" for a in tried) or "no candidate"
    return DelegateError(f"no delegate can run {model_path.name}: {reasons}")


def _nothing_runs(
    model_path: Path,
    fmt: str,
    delegate: str,
    attempts: list[Attempt],
    catalogue: tuple[DelegateSpec, ...],
    device: DeviceFacts,
    runtime: RuntimeFacts,
) -> EdgerunError:
    missing = runtime.why_missing("onnxruntime" if fmt == "onnx" else "tflite")
    if missing:  # every delegate of the format would give this same reason: give it once
        return BackendUnavailableError(f"cannot run {model_path.name} ({fmt}): {missing}")
    if delegate in ("auto", "fastest"):
        reasons = "; ".join(f"{a.delegate}: {a.reason}" for a in attempts)
        return DelegateError(f"no delegate can run {model_path.name} ({fmt}): {reasons}")
    usable = [
        s.name
        for s in catalogue
        if s.format == fmt and not s.needs(device, runtime) and candidate_files(model_path, s) is not None
    ]
    offer = ", ".join(usable) or "none"
    why = "; ".join(a.reason for a in attempts if a.delegate == delegate)
    if not why:
        formats = sorted({s.format for s in catalogue if s.name == delegate})
        why = f"it runs {' and '.join(formats)} models, this is {fmt}"
    return DelegateError(
        f"delegate {delegate!r} cannot run {model_path.name} here: {why}; usable for this model: {offer}"
    )
