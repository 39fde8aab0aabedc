"""The device's identity: its id (from config, else derived from the machine's own identity).

The id must be stable across reboots and differ between devices, so only sources that
are both are hashed, in this order: the machine id (machine-id(5)), the board's serial
number (device tree, as on a Raspberry Pi or a Jetson; ``Serial`` in /proc/cpuinfo on a
Pi), and only then the host name. A machine id that is not one (``uninitialized``, left
by an image built for first boot, all zeros, or bytes that are not 32 hex digits) is
skipped: every board flashed from that image would otherwise get the same id.

So is a transient machine id: where /etc/machine-id is empty or ``uninitialized`` and cannot
be written at boot (a read-only root, as on overlay-root images), systemd writes a random id
to a memory file system (/run/machine-id) and bind-mounts it over /etc/machine-id, and a new
one comes at every boot until ``systemd-machine-id-commit`` stores it (machine-id(5)). It is
told as systemd tells it: /etc/machine-id is a mount point of its own on tmpfs or ramfs
(/proc/self/mountinfo). A bind mount from a disk (a container given the host's id, an
image keeping it on a data partition) is persistent and is used.

Every read here is of a file under ``root`` (``/`` outside tests), never a command run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["default_device_id", "machine_device_id"]

_MACHINE_ID = re.compile(r"[0-9a-f]{32}")
_MACHINE_ID_FILES = ("etc/machine-id", "var/lib/dbus/machine-id")
_SERIAL_FILES = ("sys/firmware/devicetree/base/serial-number", "proc/device-tree/serial-number")
_CPUINFO_SERIAL = re.compile(r"^Serial\s*:\s*([0-9A-Za-z]+)\s*$", re.MULTILINE)
_READ_LIMIT = 64 * 1024  # every file read here is a few bytes; never read more than this
_MOUNTINFO_LIMIT = 4 * 1024 * 1024  # a few hundred lines of ~150 bytes on a busy host; a bound all the same
#: File systems that hold files in memory only: a file on one is gone at the next boot.
_VOLATILE_FS = frozenset({"tmpfs", "ramfs"})
_warned: set[str] = set()  # warnings given in this process, so repeated calls log each cause once


def _read(root: Path, name: str) -> str | None:
    """The file's text (ASCII, NULs and surrounding blanks dropped), or None when unreadable."""
    try:
        with (root / name).open("rb") as f:
            data = f.read(_READ_LIMIT)
    except OSError:
        return None
    return data.replace(b"\x00", b"").decode("ascii", errors="replace").strip()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _transient_mount(root: Path) -> str | None:
    """The file system type when /etc/machine-id is a mount of its own on a memory file system, else None.

    This is systemd's own test (``systemd-machine-id-setup --commit``): a mount point at
    /etc/machine-id, on tmpfs or ramfs. The last mount listed at a path is the one seen there.
    """
    try:
        with (root / "proc/self/mountinfo").open("rb") as f:
            text = f.read(_MOUNTINFO_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return None
    fstype = None
    for line in text.splitlines():
        # "36 25 0:26 /machine-id /etc/machine-id ro,relatime shared:2 - tmpfs tmpfs rw,mode=755":
        # the mount point is the 5th field; the type follows the " - " that ends the optional fields.
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) >= 5 and fields[4] == "/etc/machine-id" and right.split():
            fstype = right.split()[0]
    return fstype if fstype in _VOLATILE_FS else None


def _is_etc_machine_id(root: Path, name: str) -> bool:
    """Whether ``name`` is /etc/machine-id itself or a symbolic link to it (as /var/lib/dbus/machine-id
    is on Debian and Raspberry Pi OS); an absolute link target is taken under ``root``."""
    if name == "etc/machine-id":
        return True
    try:
        target = os.readlink(root / name)
    except OSError:  # not a link (a file of its own), or not there
        return False
    where = root / target.lstrip("/") if target.startswith("/") else (root / name).parent / target
    return os.path.normpath(where) == os.path.normpath(root / "etc/machine-id")


def _machine_id(root: Path) -> str | None:
    transient = _transient_mount(root)
    if transient is not None:
        _warn_once(
            f"ignoring {root / 'etc/machine-id'}: a transient machine id (a {transient} mount made at boot, "
            "as systemd does when /etc/machine-id is unset and read-only): it changes at every boot; "
            "set device.id in the config, or store the id (systemd-machine-id-setup --commit)"
        )
    for name in _MACHINE_ID_FILES:
        if transient is not None and _is_etc_machine_id(root, name):
            continue
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
    A transient machine id (see the module docstring) is passed over, with one warning.

    Args:
        root: the folder taken as ``/`` for every file read (etc/machine-id,
            proc/self/mountinfo, the serial files): a fake tree in tests.
    """
    base = Path(root)
    if machine_id := _machine_id(base):
        return "edge-" + hashlib.sha256(machine_id.encode()).hexdigest()[:12]
    if serial := _board_serial(base):
        return "edge-" + hashlib.sha256(b"serial:" + serial.encode()).hexdigest()[:12]
    host = socket.gethostname()
    log.warning("no machine id or board serial found: the device id is derived from the host name %r", host)
    return "edge-" + hashlib.sha256(host.encode()).hexdigest()[:12]


_machine_ids: list[str] = []  # ``machine_device_id``'s, once worked out
_machine_id_lock = threading.Lock()


def machine_device_id() -> str:
    """This machine's ``default_device_id``, worked out once per process.

    Working it out may log warnings (a machine id that is not one, an id from the host name), and a
    daemon needs it at start, in its config's check, at every SIGHUP reload and in its API's status
    (threads that may ask at once: hence the lock): each would repeat them. The machine's identity does
    not change while a process runs.
    """
    with _machine_id_lock:
        if not _machine_ids:
            _machine_ids.append(default_device_id())
        return _machine_ids[0]
