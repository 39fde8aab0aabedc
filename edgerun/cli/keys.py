"""``edgerun keys generate``: an Ed25519 key pair for signing OTA updates and commands.

Invariant: no symbolic link at a key's path is ever followed. ``keys generate`` is run as root in
folders others can write to (``/tmp``, a group-writable deploy folder); a link planted at
``NAME.pem`` or ``NAME.pub.pem`` would have it overwrite any file on the system with key material,
or put the private key where the one who planted it can read it. A link found there is refused in
one line; one planted after that check is replaced by the final rename, which never follows it.
The private key never exists, not even as a temporary file, with a mode wider than 0600.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

HELP = "signing keys: 'generate' writes an Ed25519 key pair in PEM and prints its key id"

#: Flags of every temporary file: a new file only, never through a link, not inherited by children.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def register(sub: Any) -> None:
    """Add the ``keys`` sub-command."""
    p = sub.add_parser("keys", help=HELP, description=HELP + ".")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    g = actions.add_parser("generate", help="write NAME.pem (private, mode 0600) and NAME.pub.pem")
    g.add_argument("name", help="path without extension, e.g. keys/operator")
    g.add_argument("--force", action="store_true", help="overwrite existing files (never through a symbolic link)")
    g.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Generate and write the pair; print the key id devices will see in envelopes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgerun.errors import ConfigError, shown
    from edgerun.ota.envelope import key_id

    if not Path(args.name).name or args.name.endswith(("/", ".")):
        raise ConfigError(f"key name {args.name!r} names no file: give a path such as keys/operator")
    if args.name.endswith(".pem"):  # else NAME.pem.pem beside the NAME.pem it was meant to replace
        stem = args.name.removesuffix(".pem").removesuffix(".pub")
        raise ConfigError(
            f"key name {args.name!r} ends in .pem: give it without the extension "
            f"({shown(stem)}, and {shown(stem)}.pem and {shown(stem)}.pub.pem are written)"
        )
    private_path, public_path = Path(f"{args.name}.pem"), Path(f"{args.name}.pub.pem")
    for path in (private_path, public_path):
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file where a folder goes (said below)
            continue
        except OSError as exc:  # a name too long, a folder that cannot be searched: one line, not a traceback
            raise ConfigError(f"cannot write the key pair {path}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(mode):
            raise ConfigError(_link_refused(path))
        if not args.force:
            raise ConfigError(f"{path} exists; use --force to overwrite it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        _write_pair(private_path, private, public_path, public)
    except OSError as exc:
        if isinstance(exc, FileExistsError):  # from mkdir: a file is where the folder would go
            raise ConfigError(f"cannot write the key pair: {exc.filename} is a file, not a folder") from exc
        where = f" {exc.filename}" if exc.filename else ""
        raise ConfigError(f"cannot write the key pair{where}: {exc.strerror}") from exc
    from edgerun.cli.common import print_lines

    print_lines(  # one line whatever the name holds; a stdout that refuses it: one error line naming stdout
        shown(
            f"key id {key_id(key.public_key())}: private key {private_path}, public key {public_path} "
            "(give devices the public key: --ota-key)"
        )
    )
    return 0


def _link_refused(path: Path) -> str:
    """The one line that refuses the symbolic link ``path`` (with or without ``--force``)."""
    from edgerun.errors import shown

    with contextlib.suppress(OSError):  # gone or changed since: the line says less, the refusal stands
        return (
            f"{path} is a symbolic link (to {shown(os.readlink(path))}): keys are never written through a link; "
            "give the path of the file it leads to, or remove the link"
        )
    return f"{path} is a symbolic link: keys are never written through a link; remove it"


def _open_folder(folder: Path) -> int:
    """A descriptor of ``folder``, every later step relative to it: the temporary files and the
    renames stay in that one folder even if a link is swapped in above it meanwhile."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:  # a folder this user may write in but not list: enough to work in, not to sync
        if not hasattr(os, "O_PATH"):
            raise
        return os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _write_pair(private_path: Path, private: bytes, public_path: Path, public: bytes) -> None:
    """Put both keys in place, or change neither file (``--force`` must never leave a private key
    without its public key, nor destroy the old private key and fail).

    Both are written to new temporary files beside their targets (``O_EXCL|O_NOFOLLOW``; the
    private one created 0600, so no moment where it is readable by others, whatever the umask)
    and synced; then the public key is renamed into place, then the private key. A rename
    replaces whatever the name holds, a link included, and never follows it. Should the second
    rename fail (the file immutable, a folder in the way), the old public key, kept in a third
    temporary file, is renamed back. The temporary files are removed on failure.

    Raises:
        OSError: a file could not be written or renamed; its ``filename`` is the key file.
    """
    folder = _open_folder(private_path.parent)  # both keys are NAME.pem and NAME.pub.pem: one folder
    temporaries: list[str] = []

    def failed(exc: OSError, target: Path) -> OSError:
        return OSError(exc.errno, exc.strerror, str(target))

    def temporary(target: Path, mode: int) -> tuple[str, int]:
        # named after its target, cut short: a key's name that fits the folder must not fail for its temporary
        name = f".{target.name[:200]}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(name, _CREATE, mode, dir_fd=folder)  # the umask may only narrow the mode
        except OSError as exc:
            raise failed(exc, target) from exc
        temporaries.append(name)
        return name, fd

    def write(target: Path, data: bytes, *, secret: bool) -> str:
        name, fd = temporary(target, 0o600 if secret else 0o666)  # the public key's mode: as the umask says
        try:
            with os.fdopen(fd, "wb") as fh:
                if secret:  # exactly 0600 whatever the umask: never wider than it was created
                    os.fchmod(fh.fileno(), 0o600)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise failed(exc, target) from exc
        return name

    def keep(target: Path) -> str | None:
        """A copy of the regular file at ``target`` (read without following a link, mode kept), or None."""
        try:
            if not stat.S_ISREG(os.stat(target.name, dir_fd=folder, follow_symlinks=False).st_mode):
                return None
            source = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a link swapped in since the check (ELOOP) among them
            raise failed(exc, target) from exc
        with os.fdopen(source, "rb") as old:
            try:
                mode = stat.S_IMODE(os.fstat(old.fileno()).st_mode) & 0o777
                name, fd = temporary(target, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(old, fh)
                    os.fchmod(fh.fileno(), mode)  # its own mode bits: others may read no more than before
            except OSError as exc:
                raise failed(exc, target) from exc
        return name

    def rename(source: str, target: Path) -> None:
        try:
            os.replace(source, target.name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            raise failed(exc, target) from exc

    try:
        try:
            new_private = write(private_path, private, secret=True)
            new_public = write(public_path, public, secret=False)
            old_public = keep(public_path)
            rename(new_public, public_path)
            try:
                rename(new_private, private_path)
            except OSError:
                if old_public is not None:
                    os.replace(old_public, public_path.name, src_dir_fd=folder, dst_dir_fd=folder)
                else:
                    os.unlink(public_path.name, dir_fd=folder)
                raise
        finally:
            for name in temporaries:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=folder)
        with contextlib.suppress(OSError):  # the renames reach the disk too (not all filesystems can sync a folder)
            os.fsync(folder)
    finally:
        os.close(folder)
