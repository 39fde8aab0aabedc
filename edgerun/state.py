"""Where edgerun keeps state: delegate caches, compiled engines, the outbox and the model store.

Resolution order: an explicit path, ``$EDGERUN_STATE_DIR``, ``$XDG_STATE_HOME/edgerun``,
``~/.local/state/edgerun``; a leading ``~`` of the first two is expanded. A relative explicit path
is taken from the working directory (``--state-dir``): the daemon's config resolves its own
``state_dir`` against the config file's folder first (``edgerun.config``). The daemon's config
names ``/var/lib/edgerun``. Where none of these is set and there is no home directory (``$HOME``
unset and the user not in the password database: a systemd unit with ``DynamicUser=``, a container
run as an arbitrary uid), asking for the state directory is a ``ConfigError`` saying how to name
one, not a guess.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import threading
from pathlib import Path

from edgerun.errors import ConfigError
from edgerun.files import write_all

__all__ = ["LOCK_FILE", "OUTBOX_FILE", "check_state_dir", "claim_state_dir", "release_state_dir", "state_dir"]

log = logging.getLogger(__name__)

#: The file a process holds locked while it owns a state directory (its pid inside, for the message).
LOCK_FILE = "lock"

_claims: dict[Path, list[int]] = {}  # resolved state dir -> [file descriptor, holders in this process]
_claims_lock = threading.Lock()


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The state directory to use (not created here; writers create what they need).

    Raises:
        ConfigError: nothing names one and this user has no home directory to put it in.
    """
    if explicit:
        return _home(str(explicit), "state_dir")
    if env := os.environ.get("EDGERUN_STATE_DIR"):
        return _home(env, "EDGERUN_STATE_DIR")
    if xdg := os.environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "edgerun"
    try:
        home = Path.home()  # $HOME, else the password database's entry for this uid
    except RuntimeError:  # neither: Python cannot tell where ~ is
        raise ConfigError(
            f"no state directory: $HOME is not set and uid {os.getuid()} has no home directory in the "
            "password database; set EDGERUN_STATE_DIR (or XDG_STATE_HOME), or state_dir in the daemon's "
            "config (--state-dir for a command)"
        ) from None
    return home / ".local" / "state" / "edgerun"


def _home(path: str, what: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded (where no shell did: a quoted
    ``--state-dir '~/s'``, a systemd ``Environment=``), never a folder named ``~``.

    Raises:
        ConfigError: that home directory cannot be found.
    """
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        raise ConfigError(
            f"{what} {path}: cannot expand {path.split('/', 1)[0]}: no such user, or $HOME is not set and "
            f"uid {os.getuid()} has no home directory in the password database"
        )
    return Path(expanded)


def check_state_dir(path: Path, *, create: bool) -> None:
    """Refuse, in one line, a state directory that is not (and cannot be made) a writable directory.

    Writing is tried for real (``_try_write``: one page written and synced in a temporary
    file, inside a temporary folder where ``path`` would be created), since permission bits
    do not tell (root passes every ``access`` check and still cannot write under /sys) and
    neither does creating an empty file (it succeeds on a full filesystem). With ``create``
    the directory is made (as the daemon needs it); without, nothing is left behind
    (``config check``).

    A full disk under a directory that holds an outbox is not refused (one WARNING line instead):
    starting is how the records queued there get delivered (``_try_write_or_drain``).

    Raises:
        ConfigError: ``state_dir <path>: <reason>``, e.g. ``not a directory``,
            ``cannot create it: Read-only file system`` or ``cannot write in it: No space left on device``.
    """
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_dir = existing.is_dir()
    except OSError as exc:  # a folder on the way that this user may not search (EACCES)
        raise ConfigError(f"state_dir {path}: cannot reach it: {exc.strerror or exc}") from None
    if not is_dir:
        where = "" if existing == path else f" ({existing} is not one)"
        raise ConfigError(f"state_dir {path}: not a directory{where}")
    try:
        if existing == path:
            _try_write_or_drain(path)
        elif create:
            path.mkdir(parents=True, exist_ok=True)
            _try_write(path)
        else:
            folder = tempfile.mkdtemp(dir=existing, prefix=".edgerun-check-")
            try:
                _try_write(Path(folder))
            finally:
                os.rmdir(folder)
    except OSError as exc:
        verb = "cannot write in it" if existing == path else "cannot create it"
        raise ConfigError(f"state_dir {path}: {verb}: {_reason(exc, existing)}") from None


def claim_state_dir(path: Path) -> None:
    """Own ``path`` for this process: a second process that claims it (a second daemon, or an
    ``edgerun run --mqtt`` beside the daemon) is refused in one line. Two owners would send the same
    outbox twice, take turns on the broker under one client id, and share the OTA store and journal.

    The claim is an exclusive ``flock`` on ``<path>/lock``, so the kernel ends it with the process,
    however it ends (SIGKILL, a power cut: nothing stale to clean up). Claims in one process nest;
    ``release_state_dir`` undoes one. A filesystem without locks (some network mounts) is logged at
    WARNING and not enforced.

    Raises:
        ConfigError: another process holds it (``state_dir X is in use by another edgerun process
            (pid N) ...``), or it cannot be written (``state_dir X: cannot write in it: No space
            left on device``: the lock file, then ``_try_write``, as ``check_state_dir`` tries it; a full
            disk under a directory holding an outbox is let through, as there).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, a folder this user may not write in
        raise ConfigError(f"state_dir {path}: cannot create it: {_reason(exc, path)}") from None
    key = path.resolve()
    with _claims_lock:
        if key in _claims:
            _claims[key][1] += 1
            return
        try:
            fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"state_dir {path}: cannot write in it: {_reason(exc, key)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                log.warning("state_dir %s: cannot lock it (%s); not checked for another owner", path, exc.strerror)
                return
            raise ConfigError(
                f"state_dir {path} is in use by another edgerun process{holder}: two processes would send one "
                "outbox twice and share one OTA store; give each its own state directory"
            ) from None
        try:  # the pid, for a second claimant's message; then a real write (the pid may reuse a freed block)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _try_write(key)
        except OSError as exc:  # a full disk: nothing stays locked, a later claim (space freed) works
            if not _drain_anyway(exc, key, path):  # the lock holds without the pid
                os.close(fd)
                raise ConfigError(f"state_dir {path}: cannot write in it: {_reason(exc, key)}") from None
        _claims[key] = [fd, 1]


def release_state_dir(path: Path) -> None:
    """Undo one ``claim_state_dir`` of ``path`` by this process; the last one unlocks it."""
    key = path.resolve()
    with _claims_lock:
        claim = _claims.get(key)
        if claim is None:
            return
        claim[1] -= 1
        if claim[1] == 0:
            del _claims[key]
            os.close(claim[0])  # the lock goes with the descriptor; the file stays (its pid is stale then)


def _holder(fd: int) -> str:
    """`` (pid N)`` from the lock file of the process holding it, or nothing when it has not said."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


#: Bytes ``_try_write`` writes: one page. A few bytes can be stored inside the inode or its
#: metadata (btrfs inlines small files, ext4 with inline_data) and pass on a filesystem with no
#: free data block left; a page needs one, as the outbox's first page does.
_PROBE_BYTES = 4096


def _try_write(folder: Path) -> None:
    """Write ``_PROBE_BYTES`` into an unnamed temporary file in ``folder`` and sync them: one
    inode and one data block, taken for real and given back (an empty file succeeds on a full
    filesystem; a network or FUSE filesystem may only refuse at the sync).

    Raises:
        OSError: ``ENOSPC`` when the filesystem has no free block or no free inode, ``EROFS``, ``EIO``...
    """
    with tempfile.TemporaryFile(dir=folder, buffering=0) as probe:
        write_all(probe.fileno(), bytes(_PROBE_BYTES))
        os.fsync(probe.fileno())


#: The outbox's file in a state directory (``edgerun.sync.service`` opens it; ``edgerun outbox`` reads it).
OUTBOX_FILE = "outbox.sqlite"
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_said_full: set[Path] = set()  # state directories whose full disk was let through, said once a process


def _try_write_or_drain(folder: Path) -> None:
    """``_try_write``, except that a full disk under a state directory holding an outbox is let
    through (``_drain_anyway``).

    Raises:
        OSError: as ``_try_write``, but ``ENOSPC``/``EDQUOT`` where ``folder`` holds a non-empty outbox.
    """
    try:
        _try_write(folder)
    except OSError as exc:
        if not _drain_anyway(exc, folder):
            raise


def _drain_anyway(exc: OSError, folder: Path, shown: Path | None = None) -> bool:
    """Whether to start in spite of ``exc``: a full disk under the state directory ``folder`` (named
    ``shown``) holding an outbox, said in one WARNING line (once a process). Refusing to start there
    would keep the records queued in it from ever being delivered, and delivering them is what makes
    room in the outbox (which keeps a reserve for deleting them, ``edgerun.sync.outbox``). What else
    needs room says so when it writes (a record the outbox cannot queue, a cache that cannot be kept)."""
    queued = False
    if exc.errno in _FULL and (folder / OUTBOX_FILE).exists():
        from edgerun.sync.outbox import read_stats  # read-only: it works on a full disk

        try:
            queued = read_stats(folder / OUTBOX_FILE).records > 0  # an outbox delivered to the end gives no reason
        except Exception:  # damaged, unreadable: nothing to deliver that this start could count on
            queued = False
    if queued:
        key = folder.resolve()
        if key not in _said_full:
            _said_full.add(key)
            log.warning(
                "state_dir %s: cannot write in it (%s); starting all the same, so that what its outbox holds is "
                "delivered (free space on that disk: new records cannot be queued until the outbox has room)",
                shown or folder,
                _reason(exc, folder),
            )
    return queued


def _reason(exc: OSError, folder: Path) -> str:
    """``exc``'s reason; for ``ENOSPC`` on a filesystem that has free blocks but no free inodes,
    says so (``df`` shows free space there and the message alone would puzzle)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        with contextlib.suppress(OSError):
            fs = os.statvfs(folder)
            if fs.f_files > 0 and fs.f_favail == 0 and fs.f_bavail > 0:
                reason += " (no free inodes: see df -i)"
    return reason
