"""Where edgerun keeps state: delegate caches, compiled engines, later the outbox and model store.

Resolution order: an explicit path, ``$EDGERUN_STATE_DIR``, ``$XDG_STATE_HOME/edgerun``,
``~/.local/state/edgerun``. The daemon's config names ``/var/lib/edgerun``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["state_dir"]


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The state directory to use (not created here; writers create what they need)."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("EDGERUN_STATE_DIR"):
        return Path(env)
    if xdg := os.environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "edgerun"
    return Path.home() / ".local" / "state" / "edgerun"
