"""``edgerun keys generate``: an Ed25519 key pair for signing OTA updates and commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

HELP = "signing keys: 'generate' writes an Ed25519 key pair in PEM and prints its key id"


def register(sub: Any) -> None:
    """Add the ``keys`` sub-command."""
    p = sub.add_parser("keys", help=HELP, description=HELP + ".")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    g = actions.add_parser("generate", help="write NAME.pem (private, mode 0600) and NAME.pub.pem")
    g.add_argument("name", help="path without extension, e.g. keys/operator")
    g.add_argument("--force", action="store_true", help="overwrite existing files")
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
            there = path.exists()
        except OSError as exc:  # a name too long, a folder that cannot be searched: one line, not a traceback
            raise ConfigError(f"cannot write the key pair {path}: {exc.strerror or exc}") from None
        if there and not args.force:
            raise ConfigError(f"{path} exists; use --force to overwrite it")
    private_file, public_file = _file(private_path), _file(public_path)
    if os.path.realpath(private_file) == os.path.realpath(public_file):  # a link to the other key
        raise ConfigError(
            f"{private_path} and {public_path} are both {os.path.realpath(private_file)}: "
            "each key needs a file of its own"
        )
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        _write_pair(private_file, private, public_file, public)
    except OSError as exc:
        if isinstance(exc, FileExistsError):  # from mkdir: a file is where the folder would go
            raise ConfigError(f"cannot write the key pair: {exc.filename} is a file, not a folder") from exc
        linked = {
            str(file): f"{file} (linked from {path})"
            for path, file in ((private_path, private_file), (public_path, public_file))
            if file != path
        }
        where = f" {linked.get(exc.filename, exc.filename)}" if exc.filename else ""
        raise ConfigError(f"cannot write the key pair{where}: {exc.strerror}") from exc
    from edgerun.cli.common import print_lines

    print_lines(  # one line whatever the name holds; a stdout that refuses it: one error line naming stdout
        shown(
            f"key id {key_id(key.public_key())}: private key {private_path}, public key {public_path} "
            "(give devices the public key: --ota-key)"
        )
    )
    return 0


def _file(path: Path) -> Path:
    """The file a key named ``path`` is written to: ``path`` itself, or, where it is a symbolic link
    (or a chain of them), the file the link leads to, so the link stays and the file an operator
    or a config-management tool linked gets the new key (a rename onto the link itself would put a
    regular file in its place and leave the linked file with the old key).

    Raises:
        ConfigError: ``path`` is a link to nothing (a dangling link: writing there would create a
            file wherever the link happens to point, so nothing is written, as ``cp`` refuses
            too), or a link that cannot be followed (a loop, a folder that cannot be searched).
    """
    from edgerun.errors import ConfigError

    if not path.is_symlink():
        return path
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is a link to {os.path.realpath(path)}, which does not exist: create that file or remove the link"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot follow the link {path}: {exc.strerror}") from exc


def _write_pair(private_path: Path, private: bytes, public_path: Path, public: bytes) -> None:
    """Put both keys in place, or change neither file (``--force`` must never leave a private key
    without its public key, nor destroy the old private key and fail).

    Both are written to temporary files beside their targets (the private one mode 0600 from its
    creation) and synced; then the public key is renamed into place, then the private key. Should
    the second rename fail (the file immutable, a folder in the way), the old public key, kept
    in a third temporary file, is renamed back. The temporary files are removed on failure.
    The targets are files, never links (:func:`_file` resolves them): the two may be in
    different folders.

    Raises:
        OSError: a file could not be written or renamed; its ``filename`` is the key file.
    """
    temporaries: list[Path] = []

    def temporary(target: Path, data: bytes, mode: int) -> Path:
        # named after its target, cut short: a key's name that fits the folder must not fail for its temporary
        path = target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # the umask may only narrow it
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        temporaries.append(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        return path

    def rename(source: Path, target: Path) -> None:
        try:
            os.replace(source, target)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(target)) from exc

    try:
        new_private = temporary(private_path, private, 0o600)
        new_public = temporary(public_path, public, 0o666)
        old_public = temporary(public_path, public_path.read_bytes(), 0o666) if public_path.is_file() else None
        rename(new_public, public_path)
        try:
            rename(new_private, private_path)
        except OSError:
            if old_public is not None:
                os.replace(old_public, public_path)
            else:
                public_path.unlink()
            raise
    finally:
        for path in temporaries:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for folder in dict.fromkeys((private_path.parent, public_path.parent)):
        with contextlib.suppress(OSError):  # the renames reach the disk too (not all filesystems can sync a folder)
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
