"""Where edgerun keeps state: delegate caches, compiled engines, the outbox and the model store.

Resolution order: an explicit path, ``$EDGERUN_STATE_DIR``, ``$XDG_STATE_HOME/edgerun``,
``~/.local/state/edgerun``. The daemon's config names ``/var/lib/edgerun``. Where none of
these is set and there is no home directory (``$HOME`` unset and the user not in the password
database: a systemd unit with ``DynamicUser=``, a container run as an arbitrary uid), asking for
the state directory is a ``ConfigError`` saying how to name one, not a guess.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgerun.errors import ConfigError

__all__ = ["check_state_dir", "state_dir"]


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The state directory to use (not created here; writers create what they need).

    Raises:
        ConfigError: nothing names one and this user has no home directory to put it in.
    """
    if explicit:
        return Path(explicit)
    if env := os.environ.get("EDGERUN_STATE_DIR"):
        return Path(env)
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


def check_state_dir(path: Path, *, create: bool) -> None:
    """Refuse, in one line, a state directory that is not (and cannot be made) a writable directory.

    Writing is tried for real (a temporary file, or a temporary folder where ``path``
    would be created), since permission bits do not tell: root passes every
    ``access`` check and still cannot write under /sys. With ``create`` the directory
    is made (as the daemon needs it); without, nothing is left behind (``config check``).

    Raises:
        ConfigError: ``state_dir <path>: <reason>``, e.g. ``not a directory`` or
            ``cannot create it: Read-only file system``.
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
            with tempfile.TemporaryFile(dir=path):
                pass
        elif create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".edgerun-check-"))
    except OSError as exc:
        verb = "cannot write in it" if existing == path else "cannot create it"
        raise ConfigError(f"state_dir {path}: {verb}: {exc.strerror or exc}") from None
