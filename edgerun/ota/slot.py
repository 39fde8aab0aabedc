"""Hot swap: the model a name serves, switched between two inferences without a failed request.

A ``ModelSlot`` holds the primary model and, during an A/B rollout, a
candidate serving a fraction of requests. ``get()`` is called once per request
(per frame) and returns the model that request will use from preparing to
post-processing, so a swap never mixes two models inside one request; ``hold()``
does the same and counts the request until its ``Model.let_go()``: the HTTP API
holds the model for each request, a pipeline for each frame. A new model
is loaded and warmed *before* it is put in the slot; the swap itself is one
reference assignment.

A model the slot stops serving (replaced by ``swap``, a candidate replaced or
dropped by ``set_candidate``, both at ``retire`` when the name is removed) is
retired (``Model.retire``): requests still holding it finish on it, and an
isolated model's worker process stops and its shared memory is freed as soon as
the last of them is done. Nothing waits for the garbage collector, which never
came while an idle thread still referred to the last model it ran.

The slot forgets a model once it retires it: a request still running on it refers to it, and the
daemon's stop reaches its worker through the daemon's own record of the isolated models it loaded
(``Daemon._isolated``), not through the slot.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from edgerun.model import Model

__all__ = ["ModelSlot"]


class ModelSlot:
    """The serving model of one name, with an optional A/B candidate."""

    def __init__(self, model: Model) -> None:
        self._primary = model
        self._candidate: Model | None = None
        self._fraction = 0.0
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._retired = False
        self._on_retire: list[Callable[[], None]] = []

    @property
    def name(self) -> str:
        """The model's name (the same for every version)."""
        return self._primary.name

    @property
    def primary(self) -> Model:
        """The version serving all requests not routed to the candidate."""
        return self._primary

    @property
    def candidate(self) -> tuple[Model, float] | None:
        """The A/B candidate and its fraction, if any."""
        candidate = self._candidate
        return None if candidate is None else (candidate, self._fraction)

    @property
    def retired(self) -> bool:
        """Whether the slot's name is no longer served (``retire``)."""
        return self._retired

    def get(self) -> Model:
        """The model for one request."""
        candidate = self._candidate
        if candidate is not None and self._rng.random() < self._fraction:
            return candidate
        return self._primary

    def hold(self) -> Model:
        """The model for one request, held (``Model.hold``) until the request calls its ``let_go()``:
        a swap meanwhile lets the request finish on it before its worker is stopped.

        A model retired between ``get`` and its hold is let go and the slot asked again: it serves
        another by then. A retired model is handed out only by a retired slot (a request that found
        the name just before it was removed) or one that still serves it; it answers all the same.
        """
        model = self.get()
        while not model.hold() and not self._retired and not self._serves(model):
            model.let_go()
            model = self.get()
        return model

    def _serves(self, model: Model) -> bool:
        return model is self._primary or model is self._candidate

    def swap(self, model: Model) -> Model:
        """Serve ``model`` (already loaded and warmed) from the next request on; returns the old one,
        retired unless it still serves here (it was the candidate, or is ``model`` itself)."""
        with self._lock:
            old, self._primary = self._primary, model
            if self._candidate is model:
                self._candidate, self._fraction = None, 0.0
            self._retire_unless_served(old)
            return old

    def set_candidate(self, model: Model | None, fraction: float = 0.0) -> None:
        """Route ``fraction`` of requests to ``model`` (None ends the split); the candidate it
        replaces is retired unless it is the primary too."""
        with self._lock:
            old = self._candidate
            self._candidate, self._fraction = model, (fraction if model is not None else 0.0)
            if old is not None:
                self._retire_unless_served(old)

    def _retire_unless_served(self, model: Model) -> None:
        if not self._serves(model):
            model.retire()

    def _served(self) -> list[Model]:
        return [self._primary] if self._candidate is None else [self._primary, self._candidate]

    def retire(self) -> None:
        """The name is no longer served (removed from the config): retire its models and run the
        ``when_retired`` callbacks (the API's batching thread for it ends). Once only."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
            callbacks, self._on_retire = self._on_retire, []
            models = self._served()
        for model in models:
            model.retire()
        for callback in callbacks:
            callback()

    def when_retired(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the slot is retired (at once if it is already)."""
        with self._lock:
            if not self._retired:
                self._on_retire.append(callback)
                return
        callback()

    def describe(self) -> dict[str, Any]:
        """``{"version", "format", "delegate"}`` of the primary, as the status record wants."""
        m = self._primary
        info: dict[str, Any] = {"version": m.version, "format": m.format, "delegate": m.delegate}
        if self._candidate is not None:
            info["candidate"] = {"version": self._candidate.version, "fraction": self._fraction}
        return info
