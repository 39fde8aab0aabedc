"""Inference in a supervised child process (config ``isolation: process``).

Vendor libraries can abort the whole process (a Coral USB transfer error does,
in other runtimes). ``IsolatedBackend`` runs the model in a child process and
moves tensors through shared memory, so such a crash costs one restart of the
worker; a worker that keeps crashing on one delegate is restarted on the next
delegate of the preference order, and the daemon itself never goes down. ``auto``
(and ``fastest``) in that order stands for the delegates the worker's selection
ranked usable: given up, it is replaced by those ranked below the one it chose,
down to the CPU (none with ``strict``). When the last delegate is given up too,
one warning says so, calls fail with ``InferenceError`` for a cool-down
(``cooldown_s``, ``available`` is False meanwhile), then the worker starts over
from the first delegate of the original order: a model is never dead until the
daemon restarts. A worker's start (spawn, model load, warm-up call) that takes
longer than ``start_timeout_s`` is killed and counts as that delegate failing to
load.

``close`` never waits for a worker that hangs: one loading is killed at once, and
a call in progress gets ``CLOSE_GRACE_S`` to be answered before its worker is
killed; either call fails with ``InferenceError`` (``its worker was closed``).
``stop`` (the daemon's stop) does the same to a worker that loads or does not
answer, and leaves the rest in place: a call a live worker answers is answered,
later calls too, and no worker is started any more. A retired backend a request
still runs on is stopped the same way: the daemon reaches every isolated model it
loaded and something still refers to (``Daemon._isolated``).

A backend that is no longer served (a model swapped out or removed) is
``retire``d: its worker stops and its shared memory is freed as soon as the calls
in progress and the requests that ``hold`` it are done, without waiting for the
garbage collector (idle threads keep references to the last model they used). A
call that comes after that (from a caller that took the model with
``ModelSlot.get`` and no hold) still gets its answer from a worker started for
it, stopped again after it.

The seam is the ordinary ``Backend`` protocol: a ``Model`` built on an
``IsolatedBackend`` pre- and post-processes in the daemon and runs only the
tensors in the child. Messages on the pipe between the two are our own
(requests and shared-memory names), never data from outside.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import multiprocessing
import os
import shutil
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.backends.base import QuantParams, TensorSpec, numeric
from edgerun.errors import DelegateError, EdgerunError, InferenceError, InputError
from edgerun.signals import exit_in_words

log = logging.getLogger(__name__)

__all__ = ["CLOSE_GRACE_S", "IsolatedBackend", "load_isolated"]

#: Seconds a call in progress when its backend is closed (or stopped: from the call's start, if later) still
#: gets for its answer; then its worker is killed and the call fails, so that a close or a stop never waits
#: out ``timeout_s`` for a worker that hangs.
CLOSE_GRACE_S = 5.0

#: Seconds between two looks, while a call waits for its answer, at whether the backend is being closed or stopped.
_CLOSE_CHECK_S = 0.1


def _spec_to_dict(s: TensorSpec) -> dict[str, Any]:
    return {
        "name": s.name,
        "shape": list(s.shape),
        "dtype": np.dtype(s.dtype).str,
        "quant": None if s.quant is None else [s.quant.scale, s.quant.zero_point],
    }


def _spec_from_dict(d: dict[str, Any]) -> TensorSpec:
    quant = None if d["quant"] is None else QuantParams(float(d["quant"][0]), int(d["quant"][1]))
    return TensorSpec(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]), quant)


def _new_block(size: int) -> shared_memory.SharedMemory:
    """A shared-memory block of ``size`` bytes whose pages are allocated now, or ``InferenceError``.

    /dev/shm is a tmpfs: a block larger than the room left on it is created all the same, and the
    first write past that room is a SIGBUS that kills the writer (the daemon, for an input) rather
    than an error. Docker gives a container 64 MiB of it unless told otherwise (``--shm-size``).
    """
    block = shared_memory.SharedMemory(create=True, size=max(1, size))
    fd = getattr(block, "_fd", -1)  # POSIX only; elsewhere the block is not reserved
    if fd >= 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, block.size)
        except OSError as exc:
            _free(block)
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM):  # a file system that cannot reserve: as before
                return shared_memory.SharedMemory(create=True, size=max(1, size))
            free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else 0
            raise InferenceError(
                f"shared memory is full: a tensor of {size} bytes does not fit in /dev/shm ({free} bytes free); "
                "give it more room (docker: --shm-size) or send smaller batches"
            ) from None
    return block


def _free(block: shared_memory.SharedMemory) -> None:
    block.close()
    with contextlib.suppress(FileNotFoundError):
        block.unlink()


class _Buffers:
    """Shared-memory blocks by slot, replaced by a larger one when a tensor does not fit."""

    def __init__(self) -> None:
        self.blocks: list[shared_memory.SharedMemory] = []

    def put(self, slot: int, array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
        """Copy ``array`` into the block of ``slot`` (slots are filled in order: 0, 1, ...)."""
        array = np.ascontiguousarray(array)
        if slot < len(self.blocks) and self.blocks[slot].size >= array.nbytes:
            block = self.blocks[slot]
        else:  # the new block first: a failure leaves the old one in place
            block = _new_block(array.nbytes)
            if slot < len(self.blocks):
                _free(self.blocks[slot])
                self.blocks[slot] = block
            else:
                self.blocks.append(block)
        view = np.ndarray(array.shape, array.dtype, buffer=block.buf)
        view[...] = array
        return block.name, array.shape, array.dtype.str

    def close(self) -> None:
        for block in self.blocks:
            _free(block)
        self.blocks = []


def _read(name: str, shape: tuple[int, ...], dtype: str, cache: dict[str, shared_memory.SharedMemory]) -> np.ndarray:
    block = cache.get(name)
    if block is None:
        block = cache[name] = shared_memory.SharedMemory(name=name)
    return np.ndarray(shape, np.dtype(dtype), buffer=block.buf)


def _copies(tensors: list[Any], cache: dict[str, shared_memory.SharedMemory]) -> list[np.ndarray]:
    """Copies of the tensors the other side put in its blocks ``(name, shape, dtype)``, each block mapped
    once. A block not named any more was replaced by a larger one: it is let go, since kept mapped
    its memory would stay taken, though unlinked, as long as this process runs."""
    names = {name for name, _, _ in tensors}
    for name in [n for n in cache if n not in names]:
        cache.pop(name).close()
    return [_read(name, tuple(shape), dtype, cache).copy() for name, shape, dtype in tensors]


def _worker(
    conn: Any, path: str, delegate: str, threads: int | None, state_dir: str | None, strict: bool = False
) -> None:
    """The child: load the model, then answer run requests until told to stop."""
    import edgerun

    try:
        model = edgerun.load(path, delegate=delegate, threads=threads, state_dir=state_dir, strict=strict, warmup=True)
    except EdgerunError as exc:
        conn.send({"error": str(exc), "kind": type(exc).__name__})
        return
    backend = model.backend
    conn.send(
        {
            "delegate": model.delegate,
            "fallbacks": [] if strict else _ranked_below(model.selection, delegate),
            "format": backend.format,
            "inputs": [_spec_to_dict(s) for s in backend.inputs],
            "outputs": [_spec_to_dict(s) for s in backend.outputs],
        }
    )
    outputs = _Buffers()
    attached: dict[str, shared_memory.SharedMemory] = {}
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):  # the parent is gone (killed): nobody to answer, and no traceback
                return
            if request is None:
                return
            try:
                tensors = _copies(request, attached)
                results = backend.run(tensors)
                conn.send({"outputs": [outputs.put(i, r) for i, r in enumerate(results)]})
            except EdgerunError as exc:
                conn.send({"error": str(exc), "kind": type(exc).__name__})
    finally:
        outputs.close()


def _ranked_below(selection: Any, asked: str) -> list[str]:
    """For ``auto`` and ``fastest``: the delegates the selection found usable or left untried (a
    higher-ranked one worked), in rank order, without the one it chose; the CPU, the reference, ranks
    last. For a named delegate: none."""
    if asked not in ("auto", "fastest"):
        return []
    below = [a.delegate for a in selection.attempts if a.status in ("not-tried", "usable")]
    return [d for d in dict.fromkeys(below) if d != selection.delegate]


class _WorkerDied(Exception):
    pass


def _how_it_ended(process: Any) -> str:
    """``exit code N`` or ``killed by SIGSEGV``, once the ended worker is reaped (up to 5 s)."""
    process.join(timeout=5)
    return exit_in_words(process.exitcode)


class _Child:
    """The worker process, its pipe and the shared memory between them: what closing releases.

    Kept apart from ``IsolatedBackend`` so that a finalizer holding only this can release it
    once the backend is unreachable, or at exit: a backend retired (``IsolatedBackend.retire``)
    releases it as soon as its last call is done; one dropped without being retired or closed
    (a library user's) releases it with its last reference.
    """

    def __init__(self) -> None:
        self.conn: Any = None  # None while no worker runs (before the first, after a release)
        self.process: Any = None  # the last worker started, kept after it ends (its exit code)
        self.inputs = _Buffers()
        self.attached: dict[str, shared_memory.SharedMemory] = {}
        self.loading: Any = None  # a worker started and loading its model, not yet ``process``
        self.closed_at: float | None = None  # when ``IsolatedBackend.close`` or ``stop`` began (``time.monotonic``)
        self.releasing = threading.Lock()  # the finalizer and a retired backend's stop may meet

    @property
    def closing(self) -> bool:
        """``IsolatedBackend.close`` or ``stop`` began: no worker is started any more."""
        return self.closed_at is not None

    def abandon(self) -> None:
        """Start no worker any more, and kill one that is loading (a restart in progress): closing
        never waits for a load that hangs (up to ``start_timeout_s``), nor does the interpreter's exit.
        A call waiting for its answer sees ``closed_at`` and gives its worker ``CLOSE_GRACE_S`` more."""
        with self.releasing:
            if self.closed_at is None:
                self.closed_at = time.monotonic()
            if self.loading is not None:
                self.loading.kill()

    def release(self) -> None:
        """Stop the worker (killed if it does not stop in 5 s) and free the shared memory; a
        second call finds nothing to do. A worker can be started again afterwards."""
        with self.releasing:
            if self.loading is not None:  # the finalizer, while a call restarts the worker: nobody will use it
                self.loading.kill()
            conn, self.conn = self.conn, None
            if conn is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    conn.send(None)
            if self.process is not None:
                _end(self.process)
            if conn is not None:
                conn.close()
            self.drop_outputs()
            self.inputs.close()

    def drop_outputs(self) -> None:
        """Let go of the output blocks of a worker that has ended, unlinking them: one that
        crashed never ran its own clean-up, and its blocks would stay in /dev/shm."""
        for block in self.attached.values():
            block.close()
            with contextlib.suppress(FileNotFoundError):  # a worker that stopped cleanly unlinked it
                block.unlink()
        self.attached = {}


def _end(process: Any) -> None:
    """Wait up to 5 s for a worker to exit, then kill it: none is ever left running."""
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


def _hello(conn: Any, process: Any, timeout_s: float) -> dict[str, Any]:
    """The worker's first message: its model's description, or ``{"error": ...}`` (a load error,
    a worker that died while loading (a vendor library that aborts), or no answer in ``timeout_s``:
    that worker is killed)."""
    try:
        if conn.poll(timeout_s):
            return conn.recv()
    except (EOFError, OSError):
        process.join(timeout=5)
        return {"error": f"the worker exited while loading (exit code {process.exitcode})"}
    process.kill()
    return {"error": f"the worker did not start within {timeout_s:g} s (isolation.start_timeout_s)"}


class IsolatedBackend:
    """A ``Backend`` whose runtime lives in a supervised child process.

    Args:
        path: the model file.
        delegates: the preference order; a delegate whose worker crashes more than
            ``restarts`` times within ``window_s`` is given up for the next one.
        threads, state_dir, strict: as for ``edgerun.load`` in the child.
        timeout_s: a call that gets no answer in this time counts as a crash.
        start_timeout_s: a worker that has not started (spawned, loaded its model, warmed it up)
            in this time is killed: that delegate failed to load. A first TensorRT engine build,
            or a large model read from a slow SD card, can take minutes.
        cooldown_s: once every delegate is given up, calls fail for this many seconds,
            then the worker starts over from the first delegate of ``delegates``.

    ``delegate`` is the delegate the current worker runs on: after a move to the next one,
    the new one.
    """

    threadsafe = True  # calls are serialised here

    def __init__(
        self,
        path: Path,
        *,
        delegates: Sequence[str],
        threads: int | None = None,
        state_dir: str | None = None,
        strict: bool = False,
        restarts: int = 1,
        window_s: float = 60.0,
        timeout_s: float = 30.0,
        start_timeout_s: float = 120.0,
        cooldown_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self._order = tuple(delegates)  # kept: the list below shrinks as delegates are given up
        self._delegates = list(delegates)
        self._cooldown = cooldown_s
        self._cool_until = 0.0
        self._threads, self._state_dir, self._strict = threads, state_dir, strict
        self._restarts, self._window, self._timeout = restarts, window_s, timeout_s
        self._start_timeout = start_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._crashes: list[float] = []
        self._child = _Child()
        self.crashes = 0
        self._fallbacks: list[str] = []  # what ``auto`` in the order stands for once given up
        # calls in progress and requests holding this backend (``hold``), counted under their own
        # lock: a request takes it on the event loop, where waiting for a call would stall every request
        self._users = 0
        self._retired = False
        self._closed = False  # ``close`` was called: calls are refused (``stop`` lets a live worker answer them)
        self._counting = threading.Lock()
        # run by close(), or once this backend is unreachable (one never closed nor retired), or at exit
        self._release = weakref.finalize(self, self._child.release)
        self._start()

    @property
    def available(self) -> bool:
        """False while calls fail for the cool-down after every delegate was given up."""
        return self.cooling_down_s == 0

    @property
    def cooling_down_s(self) -> float:
        """Seconds left of the cool-down after every delegate was given up (calls fail meanwhile); 0 if none."""
        if self._delegates:
            return 0.0
        return max(0.0, self._cool_until - time.monotonic())

    @property
    def process(self) -> Any:
        """The current worker process (a new one after each restart)."""
        return self._child.process

    def _start(self) -> None:
        while self._delegates:
            delegate = self._delegates[0]
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(
                target=_worker,
                args=(child, str(self.path), delegate, self._threads, self._state_dir, self._strict),
                daemon=True,
                name="edgerun-worker",
            )
            with self._child.releasing:  # a close or the finalizer either comes first or kills it
                if self._child.closing or not self._release.alive:
                    parent.close()
                    child.close()
                    raise self._not_started()
                process.start()
                self._child.loading = process
            child.close()
            try:
                hello = _hello(parent, process, self._start_timeout)
            finally:
                self._child.loading = None
            if self._child.closing or not self._release.alive:  # closed meanwhile: killed, or killed now
                process.kill()
                process.join(timeout=5)
                parent.close()
                raise self._not_started()
            if "error" not in hello:
                self._child.drop_outputs()  # the previous worker's, if any: it has ended
                self._child.conn, self._child.process = parent, process
                self.delegate, self.format = hello["delegate"], hello["format"]
                self._fallbacks = list(hello.get("fallbacks", []))
                self.inputs = tuple(_spec_from_dict(d) for d in hello["inputs"])
                self.outputs = tuple(_spec_from_dict(d) for d in hello["outputs"])
                log.info("worker process %d runs %s on %s", process.pid, self.path.name, self.delegate)
                return
            _end(process)
            if hello.get("kind") != "DelegateError" or len(self._delegates) == 1:
                raise DelegateError(f"the worker cannot load {self.path.name}: {hello['error']}")
            from edgerun.accel.delegates import accelerator_found

            found = accelerator_found(delegate)  # the device has it and runs without it: a WARNING, as select's
            log.log(
                logging.WARNING if found else logging.INFO,
                "worker: %sdelegate %s not used (%s)",
                f"{found} found, but " if found else "",
                delegate,
                hello["error"],
            )
            self._delegates.pop(0)
        raise DelegateError(f"no delegate left to run {self.path.name} in a worker")

    def _checked(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The inputs as numeric arrays, or ``InputError``: only numbers go into shared memory.

        An object array there would hand the worker this process's pointers (it crashes on
        them, and a few such requests give every delegate up); a string array is refused here
        as the backend in the worker would refuse it. So is an array whose shape does not fit
        the model's: a large one would take its size in /dev/shm until the backend closes, and
        one whose copy outlasts ``timeout_s`` would cost the worker restarts, then the model.
        """
        if len(inputs) != len(self.inputs):
            raise InputError(f"{self.path.name} takes {len(self.inputs)} input(s), got {len(inputs)}")
        checked = []
        for spec, x in zip(self.inputs, inputs):
            if not isinstance(x, np.ndarray) or x.dtype != spec.dtype:
                x = numeric(x, spec)
            if x.dtype.kind not in "biuf":
                raise InputError(f"{spec.name}: array dtype {x.dtype} is not numeric; {spec.describe()} expected")
            if not spec.fits(x.shape):
                raise InputError(f"input of shape {list(x.shape)} does not fit {spec.describe()}")
            checked.append(x)
        return checked

    def _call(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        child = self._child
        request = [child.inputs.put(i, x) for i, x in enumerate(inputs)]
        try:
            child.conn.send(request)
            self._wait_for_answer(child)
            reply = child.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            raise _WorkerDied(_how_it_ended(child.process)) from exc
        if "error" in reply:  # the worker's own EdgerunError: a bad input stays an InputError
            raise (InputError if reply.get("kind") == "InputError" else InferenceError)(reply["error"])
        return _copies(reply["outputs"], child.attached)

    def _wait_for_answer(self, child: _Child) -> None:
        """Return once the worker's answer is there. A worker silent for ``timeout_s`` is killed
        (``_WorkerDied``: a crash, restarted); one still silent ``CLOSE_GRACE_S`` after a ``close`` or
        ``stop`` began (after the call began, if later) is killed too, and the call fails at once:
        neither waits out ``timeout_s``."""
        started = time.monotonic()
        deadline = started + self._timeout
        while not child.conn.poll(max(0.0, min(_CLOSE_CHECK_S, deadline - time.monotonic()))):
            now = time.monotonic()
            if child.closed_at is not None and now >= max(child.closed_at, started) + CLOSE_GRACE_S:
                child.process.kill()
                if self._closed:
                    raise InferenceError(f"{self.path.name}: its worker was closed")
                log.warning(
                    "worker process %d for %s gave no answer within %g s of the stop: killed",
                    child.process.pid,
                    self.path.name,
                    CLOSE_GRACE_S,
                )
                raise InferenceError(
                    f"{self.path.name}: its worker gave no answer within {CLOSE_GRACE_S:g} s of the stop and was killed"
                )
            if now >= deadline:
                child.process.kill()
                raise _WorkerDied(f"no answer in {self._timeout:.0f} s")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run in the worker; a crashed worker is restarted (or replaced by the next delegate), the call retried."""
        self.hold()
        try:
            with self._lock:
                if self._closed or not self._release.alive:  # a new worker here would never be released
                    raise InferenceError(f"{self.path.name}: its worker was closed")
                inputs = self._checked(inputs)
                if not self._delegates:
                    self._start_over()
                elif self._child.conn is None:
                    self._start_again()
                while True:
                    try:
                        return self._call(inputs)
                    except _WorkerDied as exc:
                        self._recover(str(exc))
        finally:
            self.let_go()

    # -- retiring: a backend no longer served stops its worker after its last call --------
    def hold(self) -> bool:
        """Count one request that is going to call ``run`` (until its ``let_go``), so that a
        ``retire`` meanwhile keeps the worker for it. Returns False when the backend was retired
        already: the request had better take the model that replaced it (it is counted all the
        same, and must ``let_go``)."""
        with self._counting:
            self._users += 1
            return not self._retired

    def let_go(self) -> None:
        """The end of a ``hold``: a retired backend's last one stops the worker."""
        with self._counting:
            self._users -= 1
            drained = self._retired and self._users == 0
        if drained:
            self._stop_soon()

    def retire(self) -> None:
        """No longer served (swapped out, removed): stop the worker and free the shared memory once
        the calls in progress and the requests holding the backend are done (now, if none is).

        The stop runs on a thread of its own: no request's thread (the event loop's among them)
        waits for a worker to exit. A call that comes after it starts a worker for itself."""
        with self._counting:
            if self._retired:
                return
            self._retired = True
            drained = self._users == 0
        if drained:
            self._stop_soon()

    @property
    def retired(self) -> bool:
        """Whether ``retire`` was called."""
        return self._retired

    def _stop_soon(self) -> None:
        threading.Thread(target=self._stop_if_idle, name="edgerun-worker-stop", daemon=True).start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            with self._counting:
                if self._users:  # a late call came meanwhile: its own let_go stops the worker
                    return
            if self._child.conn is None or not self._release.alive:
                return
            pid = self._child.process.pid
            self._child.release()
        log.info("worker process %d for %s stopped: no longer served, its last call done", pid, self.path.name)

    def _start_again(self) -> None:
        """A call to a retired backend whose worker was stopped (a caller that took the model before
        the swap without holding it): a worker for that call, stopped again once it is done."""
        log.info("%s: a call that took it before it was swapped out: starting a worker for that call", self.path.name)
        try:
            self._start()
        except DelegateError as exc:
            raise InferenceError(str(exc)) from None

    def _start_over(self) -> None:
        """Every delegate was given up: fail while cooling down, then restart from the original order."""
        left = self._cool_until - time.monotonic()
        if left > 0:
            raise InferenceError(
                f"the worker for {self.path.name} keeps crashing on every delegate: "
                f"cooling down, starting over from {self._order[0]} in {math.ceil(left)} s"
            )
        if self._child.closing:  # nothing starts over once the stop began
            raise self._not_started()
        log.warning("worker for %s: cool-down over, starting over from %s", self.path.name, self._order[0])
        self._delegates = list(self._order)
        try:
            self._start()
        except DelegateError as exc:
            self._give_up(f"starting over failed ({exc})")
            raise InferenceError(f"{exc}; trying again in {self._cooldown:.0f} s") from None

    def _give_up(self, why: str) -> None:
        """No delegate left: start the cool-down (calls fail until it is over), said once."""
        self._delegates, self._crashes = [], []
        self._cool_until = time.monotonic() + self._cooldown
        log.warning(
            "worker for %s: %s; no delegate is left, calls fail until it starts over from %s in %.0f s",
            self.path.name,
            why,
            self._order[0],
            self._cooldown,
        )

    def _next_delegates(self, gone: str) -> list[str]:
        """The order after ``gone`` is given up: ``auto`` (or ``fastest``) gives way to the delegates its
        selection ranked below the one it chose, then what followed it; never the delegate that crashed."""
        rest = self._delegates[1:]
        if gone in ("auto", "fastest"):
            rest = [*self._fallbacks, *rest]
        return [d for d in dict.fromkeys(rest) if d != self.delegate]

    def _recover(self, why: str) -> None:
        if self._child.closing:  # stopped (or killed at the stop's grace): neither a crash nor restarted
            raise self._not_started() from None
        self.process.join(timeout=5)
        self.crashes += 1
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < self._window] + [now]
        crashed = self.delegate
        if len(self._crashes) > self._restarts:
            times = f"{self._restarts + 1} time{'s' if self._restarts else ''}"
            self._delegates = self._next_delegates(self._delegates[0])
            self._crashes = []
            if not self._delegates:
                self._give_up(f"the worker on {crashed} crashed {times} ({why})")
                raise InferenceError(
                    f"the worker on {crashed} keeps crashing ({why}) and no delegate is left; "
                    f"starting over from {self._order[0]} in {self._cooldown:.0f} s"
                )
            log.warning("worker on %s crashed %s (%s): moving to %s", crashed, times, why, self._delegates[0])
        else:
            log.warning("worker on %s crashed (%s): restarting it", crashed, why)
        try:
            self._start()
        except DelegateError as exc:  # the restart failed too: cool down, as when every delegate is spent
            self._give_up(f"restarting the worker failed ({exc})")
            raise InferenceError(f"{exc}; starting over from {self._order[0]} in {self._cooldown:.0f} s") from None

    def close(self) -> None:
        """Stop the worker and free the shared memory (once: later calls do nothing). A worker
        that is loading (a call restarting it) is killed, and that call fails: closing never waits
        for a load that hangs. A call in progress gets ``CLOSE_GRACE_S`` to be answered, then its
        worker is killed and it fails too: nor does closing wait out ``timeout_s`` for a hung one."""
        self._closed = True
        self._child.abandon()
        with self._lock:
            self._release()

    def stop(self) -> None:
        """Its owner is stopping (the daemon's stop): no worker is started any more, and one loading (a
        call restarting it) is killed, that call failing at once; a call waiting on a worker that does not
        answer gets ``CLOSE_GRACE_S`` (from the stop, or from its own start if later), then its worker is
        killed and it fails. Either failure is an ``InferenceError`` naming the stop. A live worker keeps
        answering, calls made after the stop included, and keeps its shared memory: ``close``, the
        backend's retirement or the exit frees them. Returns at once."""
        self._child.abandon()

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` (or ``close``) was called: no worker is started any more."""
        return self._child.closing

    def _not_started(self) -> InferenceError:
        """The error of a call that needs a worker started after a ``close`` or ``stop`` began."""
        if self._closed:
            return InferenceError(f"{self.path.name}: its worker was closed")
        return InferenceError(f"{self.path.name}: its worker is not started again once the stop began")


def load_isolated(
    path: str | Path,
    *,
    delegates: Sequence[str],
    threads: int | None = None,
    state_dir: str | None = None,
    strict: bool = False,
    card: Any = None,
    start_timeout_s: float = 120.0,
) -> Any:
    """A ``Model`` whose inference runs in a supervised worker process (``start_timeout_s``: as for
    ``IsolatedBackend``)."""
    from edgerun.accel.select import Attempt, Selection
    from edgerun.card import find_card, infer_card, load_card
    from edgerun.model import Model

    path = Path(path)
    backend = IsolatedBackend(
        path,
        delegates=delegates,
        threads=threads,
        state_dir=state_dir,
        strict=strict,
        start_timeout_s=start_timeout_s,
    )
    try:
        card_path = None
        if card is None:
            card_path = find_card(path)
            card = load_card(card_path) if card_path else infer_card(path, backend.inputs, backend.outputs)
        selection = Selection(
            backend,
            backend.delegate,
            path,
            "isolated",
            [Attempt(backend.delegate, str(path), "chosen", "in a worker process")],
        )
        return Model(path, selection, card, card_path)
    except BaseException:
        backend.close()
        raise
