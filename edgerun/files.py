"""File helpers shared by the caches, the outbox's neighbours and the model store."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "TEMPORARY",
    "atomic_output",
    "atomic_write",
    "fsync_dir",
    "read_utf8",
    "same_file",
    "sha256_file",
    "special_file",
    "special_kind",
    "write_all",
]


def read_utf8(path: Path, what: str, error: type[Exception], max_bytes: int) -> str:
    """The text of a UTF-8 file (a config, a card); ``error`` in one line naming the file and,
    for text that is not UTF-8, the byte, its offset and its line.

    A device is refused before it is opened (opening ``/dev/watchdog`` arms it, a serial line
    may block), and so is text over ``max_bytes``, before it is parsed. A pipe is read to its
    end (``edgerun config check <(...)``), waiting for its writer as ``cat`` would.
    """
    try:
        if _device(os.stat(path).st_mode):
            raise error(f"cannot read {what} {path}: is a device, not a file")
        with open(path, "rb") as fh:
            if _device(os.fstat(fh.fileno()).st_mode):  # replaced by one since the stat
                raise error(f"cannot read {what} {path}: is a device, not a file")
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(raw) > max_bytes:
        raise error(f"cannot read {what} {path}: larger than {max_bytes >> 20} MiB, more than any {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}, line {line}"
        raise error(f"{path}: not UTF-8 text ({where})") from None


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to descriptor ``fd``: a short write is no refusal yet (the next one says
    why), so write(2) is called until every byte went, or it raises the ``OSError``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    import hashlib  # imported here: `edgerun predict` never hashes, and hashlib costs 3 ms to import

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The name of a temporary file ``atomic_output`` writes beside ``NAME.EXT`` (``.NAME.<8 hex>.tmp.EXT``), which a
#: process killed while writing it leaves behind: never a file of its own (a folder walked for inputs skips it).
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[^.]*)?", re.ASCII)


@contextlib.contextmanager
def atomic_output(path: Path, mark: str = ".tmp", *, durable: bool = True) -> Iterator[Path]:
    """A temporary path for a writer to fill, renamed over ``path`` when the block ends without error,
    so that a reader sees the old or the new file, never a mix.

    The temporary file is hidden beside ``path`` (``.<stem>.<random><mark><suffix>``: the suffix is
    kept, since writers that take a file name, as ``cv2.imwrite`` and ``np.save`` do, pick the format
    by it) and fsynced before the rename, and the rename is made durable. A block that raises (a full
    disk, Ctrl-C) leaves ``path`` as it was and no temporary file behind: one retried every few
    seconds would otherwise fill the folder with them. A process killed meanwhile leaves only the
    hidden file.

    ``durable=False`` leaves out both fsyncs, for a file cheap to lose (an annotated image per frame):
    a killed process still never leaves part of a file under ``path``, but after a power cut ``path``
    may be missing, or empty or short, where the disk had not yet written the data renamed (ext4
    protects only a rename over an existing file, ``auto_da_alloc``).
    """
    tmp = path.with_name(f".{path.stem}.{os.urandom(4).hex()}{mark}{path.suffix}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def set_aside(path: Path, companions: tuple[str, ...] = ()) -> list[Path]:
    """Rename a damaged file to ``<name>.damaged-<UTC yyyymmddThhmmssZ>`` (``-2``, ``-3`` ... where that
    name is taken: nothing earlier is overwritten), durably, for whoever wants to recover what it can;
    the new names, the main file's first. ``companions``: suffixes of files that go with it (SQLite's
    ``-wal`` and ``-shm``), renamed first under the same name where they exist (a WAL left behind would
    be replayed into a new database of the old name).

    Raises:
        OSError: a rename failed (a read-only disk; ``FileNotFoundError``: the file is gone).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = f"{path.name}.damaged-{stamp}", 1
    while any(path.with_name(aside + suffix).exists() for suffix in ("", *companions)):
        n += 1
        aside = f"{path.name}.damaged-{stamp}-{n}"
    moved: list[Path] = []
    for suffix in companions:
        with contextlib.suppress(FileNotFoundError):
            os.rename(path.with_name(path.name + suffix), path.with_name(aside + suffix))
            moved.append(path.with_name(aside + suffix))
    os.rename(path, path.with_name(aside))
    fsync_dir(path.parent)
    return [path.with_name(aside), *moved]


def special_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is where it is neither a regular file nor a directory (``a FIFO
    (named pipe)``, ``a socket``, ``a character device``, ``a block device``), for one line naming it; None
    for a regular file or a directory (whose open says so)."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def special_file(path: str | os.PathLike[str]) -> str | None:
    """``special_kind`` of what ``path`` names, a link followed (a link to a model file is a model file),
    from a ``stat`` that opens nothing: opening a FIFO waits for a writer for good, opening a device may
    act on it (``/dev/watchdog`` arms), and ``/dev/zero`` reads without end. None where it is a regular
    file or a directory, or cannot be looked at (missing: its open says so)."""
    try:
        return special_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None
