"""Hot swap: the model a name serves, switched between two inferences without a failed request.

A ``ModelSlot`` holds the primary model and, during an A/B rollout, a
candidate serving a fraction of requests. ``get()`` is called once per request
(per frame) and returns the model that request will use from preparing to
post-processing, so a swap never mixes two models inside one request. A new
model is loaded and warmed *before* it is put in the slot; the swap itself is
one reference assignment. The replaced model is not closed here: requests
still holding it finish on it, and it is freed with its last reference (an
isolated model's worker process and shared memory too: ``edgerun.isolation``
releases them then).
"""

from __future__ import annotations

import random
import threading
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

    def get(self) -> Model:
        """The model for one request."""
        candidate = self._candidate
        if candidate is not None and self._rng.random() < self._fraction:
            return candidate
        return self._primary

    def swap(self, model: Model) -> Model:
        """Serve ``model`` (already loaded and warmed) from the next request on; returns the old one."""
        with self._lock:
            old, self._primary = self._primary, model
            if self._candidate is model:
                self._candidate, self._fraction = None, 0.0
            return old

    def set_candidate(self, model: Model | None, fraction: float = 0.0) -> None:
        """Route ``fraction`` of requests to ``model`` (None ends the split)."""
        with self._lock:
            self._candidate, self._fraction = model, (fraction if model is not None else 0.0)

    def describe(self) -> dict[str, Any]:
        """``{"version", "format", "delegate"}`` of the primary, as the status record wants."""
        m = self._primary
        info: dict[str, Any] = {"version": m.version, "format": m.format, "delegate": m.delegate}
        if self._candidate is not None:
            info["candidate"] = {"version": self._candidate.version, "fraction": self._fraction}
        return info
