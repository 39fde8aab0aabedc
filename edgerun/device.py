"""The device's identity: its id (from config, else derived from the machine's own identity).

The id must be stable across reboots and differ between devices, so only sources that
are both are hashed, in this order: the machine id (machine-id(5)), the board's serial
number (device tree, as on a Raspberry Pi or a Jetson; ``Serial`` in /proc/cpuinfo on a
Pi), and only then the host name. A machine id that is not one (``uninitialized``, left
by an image built for first boot, all zeros, or bytes that are not 32 hex digits) is
skipped: every board flashed from that image would otherwise get the same id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["default_device_id"]

_MACHINE_ID = re.compile(r"[0-9a-f]{32}")
_MACHINE_ID_FILES = ("etc/machine-id", "var/lib/dbus/machine-id")
_SERIAL_FILES = ("sys/firmware/devicetree/base/serial-number", "proc/device-tree/serial-number")
_CPUINFO_SERIAL = re.compile(r"^Serial\s*:\s*([0-9A-Za-z]+)\s*$", re.MULTILINE)
_READ_LIMIT = 64 * 1024  # every file read here is a few bytes; never read more than this


def _read(root: Path, name: str) -> str | None:
    """The file's text (ASCII, NULs and surrounding blanks dropped), or None when unreadable."""
    try:
        with (root / name).open("rb") as f:
            data = f.read(_READ_LIMIT)
    except OSError:
        return None
    return data.replace(b"\x00", b"").decode("ascii", errors="replace").strip()


def _machine_id(root: Path) -> str | None:
    for name in _MACHINE_ID_FILES:
        text = _read(root, name)
        if text is None:
            continue
        if _MACHINE_ID.fullmatch(text) and text.strip("0"):
            return text
        if text:
            log.warning("ignoring %s: %r is not a machine id", root / name, text[:40])
    return None


def _board_serial(root: Path) -> str | None:
    candidates = [_read(root, name) for name in _SERIAL_FILES]
    cpuinfo = _read(root, "proc/cpuinfo")
    if cpuinfo and (m := _CPUINFO_SERIAL.search(cpuinfo)):
        candidates.append(m.group(1))
    for serial in candidates:
        if serial and serial.isprintable() and serial.strip("0"):
            return serial
    return None


def default_device_id(root: str = "/") -> str:
    """``edge-`` and 12 hex digits of the SHA-256 of the machine id (else board serial, else host name).

    The machine id itself is not published: it is meant to stay private to the
    machine (machine-id(5)); the serial is hashed (with a prefix of its own) for the same reason.
    """
    base = Path(root)
    if machine_id := _machine_id(base):
        return "edge-" + hashlib.sha256(machine_id.encode()).hexdigest()[:12]
    if serial := _board_serial(base):
        return "edge-" + hashlib.sha256(b"serial:" + serial.encode()).hexdigest()[:12]
    host = socket.gethostname()
    log.warning("no machine id or board serial found: the device id is derived from the host name %r", host)
    return "edge-" + hashlib.sha256(host.encode()).hexdigest()[:12]
