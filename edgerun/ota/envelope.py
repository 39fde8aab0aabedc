"""Signed envelopes (PROTOCOL.md): ``{"payload": b64, "sig": b64, "key": key id}``.

The signature is Ed25519 over the exact payload bytes as sent, so no canonical
JSON is needed. Which algorithm and which keys are trusted comes from the
device's configuration (PEM public keys), never from the envelope: the ``key``
field only says which trusted key to try.

The envelope and the signed document inside are read as UTF-8 and nothing else (PROTOCOL.md: all
payloads are UTF-8 JSON): ``json.loads`` given bytes would guess UTF-16 or UTF-32 from a byte order
mark or from NUL bytes, and act on a text no other reader of the protocol takes. A UTF-8 byte order
mark is skipped, as edgerun's MQTT inputs skip it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import reprlib
from collections.abc import Iterable
from typing import Any

from edgerun.errors import ConfigError, UpdateRejected

__all__ = ["NotUtf8", "TrustedKeys", "key_id", "load_private_key", "loads_utf8", "open_envelope", "seal"]

MAX_ENVELOPE_BYTES = 1024 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"


class NotUtf8(ValueError):
    """Raised when bytes that must be UTF-8 JSON are in another encoding; the message says why."""


def loads_utf8(raw: bytes) -> Any:
    """The JSON value of ``raw``, which must be UTF-8 (a UTF-8 byte order mark is skipped).

    Raises:
        NotUtf8: another encoding (UTF-16 or UTF-32, or bytes UTF-8 does not allow).
        ValueError: UTF-8, but not JSON.
        RecursionError: JSON nested deeper than the parser's stack.
    """
    body = raw.removeprefix(_UTF8_BOM)
    guess = json.detect_encoding(body)  # UTF-16/32 by a byte order mark or NULs: never valid UTF-8 JSON
    if guess.startswith(("utf-16", "utf-32")):
        raise NotUtf8(f"it looks like {guess.upper()}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + len(raw) - len(body)
        raise NotUtf8(f"byte 0x{raw[at]:02x} at offset {at}") from None
    return json.loads(text)


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object ``raw`` holds, read as ``loads_utf8`` reads (the store's and the journal's files too).

    Raises:
        ValueError: it holds none, saying why: not UTF-8, not JSON, nested too deep, or another JSON value.
    """
    try:
        value = loads_utf8(raw)
    except (ValueError, RecursionError) as exc:  # NotUtf8 and JSONDecodeError are ValueErrors
        raise ValueError(f"not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class TrustedKeys:
    """The Ed25519 public keys a device trusts, by key id."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = dict(keys)

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
        """Read PEM public keys (``openssl pkey -pubout`` output); every one must be Ed25519."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        keys = {}
        for path in paths:
            try:
                data = _pem_bytes(path, "trusted key")
            except OSError as exc:
                raise ConfigError(f"cannot read trusted key {path}: {exc.strerror}") from exc
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as exc:
                if b"PRIVATE KEY-----" in data:  # the operator's signing key given by mistake: say so plainly
                    raise ConfigError(
                        f"trusted key {path} is a private key: give the public one ({_public_twin(path)})"
                    ) from exc
                raise ConfigError(f"trusted key {path} is not a PEM public key: {exc}") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"trusted key {path} is not an Ed25519 key")
            keys[key_id(key)] = key
        return cls(keys)

    @property
    def ids(self) -> list[str]:
        """The trusted key ids."""
        return sorted(self._keys)

    def verify(self, kid: str, payload: bytes, signature: bytes) -> None:
        """Check ``signature`` over ``payload`` with trusted key ``kid``; ``UpdateRejected`` when it fails."""
        from cryptography.exceptions import InvalidSignature

        key = self._keys.get(kid)
        if key is None:
            # reprlib: the key id comes unverified, of any length (a reason is one short line)
            raise UpdateRejected(f"signed by key {reprlib.repr(kid)}, which this device does not trust")
        try:
            key.verify(signature, payload)
        except InvalidSignature:
            raise UpdateRejected(
                "the signature does not match the payload (changed after signing, or forged)"
            ) from None


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise UpdateRejected(f"malformed envelope: {field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UpdateRejected(f"malformed envelope: {field} is not valid base64") from None


def open_envelope(raw: bytes, trusted: TrustedKeys) -> dict[str, Any]:
    """Verify an envelope and return its payload document (a JSON object).

    Raises:
        UpdateRejected: too large, not JSON (or nested too deeply), unsigned, unknown key, bad signature, or a
            payload that is not a JSON object.
    """
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise UpdateRejected(f"envelope of {len(raw)} bytes is over the {MAX_ENVELOPE_BYTES}-byte limit")
    try:
        envelope = loads_utf8(raw)
    except NotUtf8 as exc:
        raise UpdateRejected(f"malformed envelope: not JSON (not UTF-8: {exc})") from None
    except ValueError:
        raise UpdateRejected("malformed envelope: not JSON") from None
    except RecursionError:  # [[[...]]] nested deeper than the parser's stack
        raise UpdateRejected("malformed envelope: JSON nested too deeply") from None
    if not isinstance(envelope, dict):
        raise UpdateRejected("malformed envelope: not a JSON object")
    if "sig" not in envelope or "key" not in envelope:
        raise UpdateRejected("unsigned envelope: it has no sig or key")
    if "payload" not in envelope:
        raise UpdateRejected("malformed envelope: it has no payload")
    payload = _b64(envelope["payload"], "payload")
    signature = _b64(envelope["sig"], "sig")
    kid = envelope["key"]
    if not isinstance(kid, str):
        raise UpdateRejected("malformed envelope: key must be a string")
    trusted.verify(kid, payload, signature)
    try:
        document = loads_utf8(payload)
    except NotUtf8 as exc:
        raise UpdateRejected(f"the signed payload is not JSON (not UTF-8: {exc})") from None
    except ValueError:
        raise UpdateRejected("the signed payload is not JSON") from None
    except RecursionError:
        raise UpdateRejected("the signed payload is JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise UpdateRejected("the signed payload is not a JSON object")
    return document


#: A PEM key file is a few hundred bytes; more is no key (``/dev/zero`` given by mistake filled the memory).
_PEM_MAX = 64 * 1024


def _public_twin(path: str | os.PathLike[str]) -> str:
    """Where ``edgerun keys generate`` wrote the public key of the private key file ``path``: ``NAME.pub.pem``
    beside ``NAME.pem``; for another name, how to make it."""
    name = os.fspath(path)
    if name.endswith(".pem") and not name.endswith(".pub.pem"):
        return name[: -len(".pem")] + ".pub.pem"
    return f"openssl pkey -in {name} -pubout"


def _pem_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of a key file, read up to ``_PEM_MAX``: ``ConfigError`` past it, ``OSError`` to the caller."""
    with open(path, "rb") as fh:
        data = fh.read(_PEM_MAX + 1)
    if len(data) > _PEM_MAX:
        raise ConfigError(f"{what} {path} is not a PEM key: over {_PEM_MAX // 1024} KiB")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 private key from a PEM file (``openssl genpkey -algorithm ed25519``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_pem_bytes(path, "key"), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def seal(document: dict[str, Any] | bytes, private_key: Any) -> bytes:
    """An envelope for ``document``, signed with ``private_key`` (the operator side)."""
    payload = document if isinstance(document, bytes) else json.dumps(document, separators=(",", ":")).encode()
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "sig": base64.b64encode(private_key.sign(payload)).decode(),
        "key": key_id(private_key.public_key()),
    }
    return json.dumps(envelope).encode()
