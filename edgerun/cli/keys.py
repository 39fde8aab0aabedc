"""``edgerun keys generate``: an Ed25519 key pair for signing OTA updates and commands."""

from __future__ import annotations

import argparse
import os
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

    from edgerun.errors import ConfigError
    from edgerun.ota.envelope import key_id

    if not Path(args.name).name or args.name.endswith(("/", ".")):
        raise ConfigError(f"key name {args.name!r} names no file: give a path such as keys/operator")
    private_path, public_path = Path(f"{args.name}.pem"), Path(f"{args.name}.pub.pem")
    for path in (private_path, public_path):
        if path.exists() and not args.force:
            raise ConfigError(f"{path} exists; use --force to overwrite it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, 0o600)  # the mode above applies to a new file only, not to one --force overwrites
            fh.write(private)
        public_path.write_bytes(public)
    except OSError as exc:
        if isinstance(exc, FileExistsError):  # from mkdir: a file is where the folder would go
            raise ConfigError(f"cannot write the key pair: {exc.filename} is a file, not a folder") from exc
        where = f" {exc.filename}" if exc.filename else ""
        raise ConfigError(f"cannot write the key pair{where}: {exc.strerror}") from exc
    print(
        f"key id {key_id(key.public_key())}: private key {private_path}, public key {public_path} "
        "(give devices the public key: --ota-key)"
    )
    return 0
