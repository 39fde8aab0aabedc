"""The device's identity: its id (from config, else derived from /etc/machine-id)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

__all__ = ["default_device_id"]


def default_device_id(root: str = "/") -> str:
    """``edge-`` and 12 hex digits of the SHA-256 of the machine id.

    The machine id itself is not published: it is meant to stay private to the
    machine (machine-id(5)). Without one, the host name is hashed instead.
    """
    for name in ("etc/machine-id", "var/lib/dbus/machine-id"):
        try:
            text = (Path(root) / name).read_text().strip()
        except OSError:
            continue
        if text:
            return "edge-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return "edge-" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]
