"""OTA inputs fuzzed: whatever the network sends is accepted only when validly signed and well-formed.

Everything a device receives for OTA comes from the network: envelopes on ``P/ID/ota/manifest`` and
``P/ID/cmd``, the signed documents inside them, chunk messages on ``P/blobs/<sha256>/<i>``, and the
answer of a URL's server. Hypothesis feeds malformed, truncated, oversized, wrongly typed, deeply
nested, non-UTF-8, duplicate-key, NaN/huge-number and validly-signed-but-tampered payloads into the
real parsing and verification code. The property everywhere: a payload is accepted (only when it is
the signed document, well-formed) or refused with the module's own error (``UpdateRejected``; for a
download that cannot finish, ``UpdateFailed``) whose reason is one short line; never another
exception, never a hang, never a change on disk for a refused one. The last test does the same
through a real OTA agent over the real broker, then gives it a good update.

Keys are real Ed25519 keys made from fixed seeds, so that every run draws the same payloads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgerun.errors import UpdateFailed, UpdateRejected
from edgerun.ota.envelope import TrustedKeys, key_id, open_envelope, seal
from edgerun.ota.manifest import Manifest, parse_command, parse_manifest
from edgerun.ota.operator import build_command, build_manifest
from edgerun.ota.policy import RELEASE_TIME, Clock, check_manifest, check_targets, check_times
from edgerun.ota.transfer import _Chunks, download
from edgerun.sync.link import Message
from tests.conftest import DIGITS, Broker
from tests.ota_helpers import Agent, StatusWatcher, model_with_card
from tests.test_ota_attacks import Publisher, card_of, unique_onnx

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

#: The longest reason a refusal may give (status records are retained, and every one is logged).
REASON_MAX = 400


def _seeded_key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())


KEY = _seeded_key(b"edgerun fuzz: the operator")
STRANGER = _seeded_key(b"edgerun fuzz: someone else")
DEVICE = "fz1"
NOW = RELEASE_TIME + 86400  # a synced clock, fixed: the same verdicts on every run
CLOCK = Clock(now=NOW, newest_issued=0.0, skew_s=300.0)
MAX_BYTES = 1024 * 1024
BLOB = bytes(range(256)) * 12  # 3072 bytes: three chunks of 1024
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
CARD = {"name": "digits", "version": "2.0.0", "task": "classification", "labels": [str(i) for i in range(10)]}
MANIFEST: dict[str, Any] = {
    "schema": 1,
    "kind": "model-update",
    "update_id": "fuzz-2.0.0",
    "model": "digits",
    "version": "2.0.0",
    "format": "onnx",
    "sha256": BLOB_SHA,
    "size": len(BLOB),
    "source": {"mqtt": {"topic": f"edgerun/blobs/{BLOB_SHA}", "chunk_size": 1024, "chunks": 3}},
    "issued": NOW - 60,
    "expires": NOW + 86400,
    "targets": {"devices": [DEVICE], "groups": []},
    "card": CARD,
    "rollout": {"probation_s": 0},
}
COMMAND: dict[str, Any] = {
    "schema": 1,
    "kind": "command",
    "command_id": "fuzz-activate",
    "issued": NOW - 60,
    "expires": NOW + 3600,
    "targets": {"devices": [DEVICE], "groups": []},
    "command": "activate",
    "model": "digits",
    "version": "1.0.0",
}
SEALED_MANIFEST = seal(MANIFEST, KEY)
SEALED_COMMAND = seal(COMMAND, KEY)


def operator_pem(folder: Path) -> Path:
    """The operator's public key as a PEM file (``openssl pkey -pubout``), as a device is given it."""
    pem = folder / "op.pub.pem"
    pem.write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pem


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> TrustedKeys:
    """The device's trusted keys, read from a PEM file as a device reads them: the operator's only."""
    return TrustedKeys.load([operator_pem(tmp_path_factory.mktemp("fuzz-keys"))])


def judge_manifest(raw: bytes, trusted: TrustedKeys) -> Manifest:
    """Every check a device makes on a manifest before it downloads anything (``OtaAgent._on_manifest``)."""
    manifest = parse_manifest(open_envelope(raw, trusted))
    check_manifest(
        manifest,
        device=DEVICE,
        groups=("lab",),
        clock=CLOCK,
        active_version="1.0.0",
        max_bytes=MAX_BYTES,
        blob_prefix="edgerun/blobs",
    )
    manifest.model_card()
    return manifest


def judge_command(raw: bytes, trusted: TrustedKeys) -> Any:
    """Every check a device makes on a command before it acts on it (``OtaAgent._on_command``)."""
    command = parse_command(open_envelope(raw, trusted))
    check_targets(command.targets, DEVICE, ("lab",))
    check_times(command.issued, command.expires, CLOCK)
    return command


def one_line(exc: BaseException) -> str:
    """The reason of a refusal, checked: one printable line of at most ``REASON_MAX`` characters."""
    reason = str(exc)
    assert reason, f"{type(exc).__name__} without a reason"
    assert reason.isprintable(), f"the reason is not one printable line: {reason[:500]!r}"
    assert len(reason) <= REASON_MAX, f"a reason of {len(reason)} characters: {reason[:200]!r}..."
    return reason


# -- what the network may send ------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and the infinities included: Python's json writes and reads them
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)
#: JSON number texts that json.dumps never writes: NaN, infinities, beyond float, over 4300 digits.
odd_numbers = st.sampled_from(
    ["NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "1" * 5000, "9" * 400 + ".5", "0x10"]
)
#: Text no JSON reader takes as UTF-8: lone continuation bytes, overlong forms, surrogates, a UTF-16 BOM.
non_utf8 = st.sampled_from([b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff\xfe"])
depths = st.sampled_from([2, 50, 900, 985, 990, 1000, 3000, 100_000])
long_text = st.text(min_size=500, max_size=3000)


def nested(depth: int, opener: str = "[") -> str:
    """JSON nested ``depth`` deep: ``[[[...]]]`` or ``{"a":{"a":...}}``."""
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def byte_edits(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` truncated, with a byte flipped, bytes inserted or deleted, or non-UTF-8 spliced in."""
    at = draw(st.integers(0, len(base)))
    edit = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "non-utf8"]))
    if edit == "truncate":
        return base[:at]
    if edit == "flip":
        at = min(at, len(base) - 1)
        return base[:at] + bytes([base[at] ^ draw(st.integers(1, 255))]) + base[at + 1 :]
    if edit == "insert":
        return base[:at] + draw(st.binary(min_size=1, max_size=8)) + base[at:]
    if edit == "delete":
        return base[:at] + base[at + draw(st.integers(1, 16)) :]
    return base[:at] + draw(non_utf8) + base[at:]


@st.composite
def envelope_fields(draw: st.DrawFn, sealed: bytes) -> bytes:
    """An envelope whose fields are each the real one, missing, of another type, or from another envelope."""
    real = json.loads(sealed)
    document = json.loads(base64.b64decode(real["payload"]))
    envelopes = {
        "real": real,
        "other": json.loads(seal({**document, "version": "0.0.1"}, KEY)),  # signed, another (refused) document
        "foreign": json.loads(seal(document, STRANGER)),
    }
    envelope: dict[str, Any] = {}
    for name in ("payload", "sig", "key"):
        kind = draw(st.sampled_from(["real", "missing", "other", "foreign", "json", "long", "b64"]))
        if kind in envelopes:
            envelope[name] = envelopes[kind][name]
        elif kind == "json":
            envelope[name] = draw(json_values)
        elif kind == "long":
            envelope[name] = draw(long_text)
        elif kind == "b64":
            envelope[name] = _b64(draw(st.binary(max_size=80)))
    envelope.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return json.dumps(envelope).encode()


@st.composite
def duplicate_keys(draw: st.DrawFn, sealed: bytes) -> bytes:
    """The envelope written with a field twice: the real value and a forged one, in either order."""
    real = json.loads(sealed)
    field = draw(st.sampled_from(["payload", "sig", "key"]))
    forged = {
        "payload": _b64(json.dumps({**MANIFEST, "version": "9.9.9"}).encode()),
        "sig": json.loads(seal(MANIFEST, STRANGER))["sig"],
        "key": key_id(STRANGER.public_key()),
    }[field]
    pair = [json.dumps(real[field]), json.dumps(forged)]
    if draw(st.booleans()):
        pair.reverse()
    members = [f'"{k}": {json.dumps(v)}' for k, v in real.items() if k != field]
    members += [f'"{field}": {pair[0]}', f'"{field}": {pair[1]}']
    return ("{" + ", ".join(draw(st.permutations(members))) + "}").encode()


def unsigned_or_tampered(sealed: bytes) -> st.SearchStrategy[bytes]:
    """Payloads that are not the signed document as it was signed (some may carry it unchanged)."""
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        depths.map(lambda n: nested(n).encode()),
        depths.map(lambda n: nested(n, "{").encode()),
        long_text.map(str.encode),
        byte_edits(sealed),
        envelope_fields(sealed),
        duplicate_keys(sealed),
        st.just(seal(json.loads(base64.b64decode(json.loads(sealed)["payload"])), STRANGER)),
        forged_claims(),
    )


@st.composite
def forged_claims(draw: st.DrawFn) -> bytes:
    """An unsigned envelope whose payload claims identifiers (reported before verification) of any kind."""
    claims = {k: draw(json_values | long_text) for k in ("update_id", "command_id", "model", "version")}
    sig = draw(st.sampled_from(["", "AAAA", _b64(b"x" * 64)]))
    return json.dumps({"payload": _b64(json.dumps(claims).encode()), "sig": sig, "key": "0" * 16}).encode()


def _field_text(document: dict[str, Any], field: str, text: str) -> bytes:
    """``document`` as JSON with the value of ``field`` (top level) written as the raw JSON ``text``."""
    return json.dumps({**document, field: "@@value@@"}).replace('"@@value@@"', text).encode()


@st.composite
def mutated_documents(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` changed the way a careless or hostile signer would: a field replaced, removed or added,
    a nested field changed, NaN or a huge number, nesting past the parser's stack, non-UTF-8 bytes,
    keys given twice; or bytes that are no JSON object at all."""
    fields = sorted(base)
    kind = draw(
        st.sampled_from(
            ["replace", "remove", "add", "nested", "odd-number", "deep", "non-utf8", "duplicate", "raw", "json"]
        )
    )
    if kind == "replace":
        return json.dumps({**base, draw(st.sampled_from(fields)): draw(json_values)}).encode()
    if kind == "remove":
        gone = draw(st.sets(st.sampled_from(fields), min_size=1, max_size=3))
        return json.dumps({k: v for k, v in base.items() if k not in gone}).encode()
    if kind == "add":
        return json.dumps({**base, **draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))}).encode()
    if kind == "nested":
        parent = draw(st.sampled_from([f for f in fields if isinstance(base[f], dict)]))
        child = draw(st.sampled_from([*sorted(base[parent]), "unknown", "x\ny", "\x00"]))
        return json.dumps({**base, parent: {**base[parent], child: draw(json_values)}}).encode()
    if kind == "odd-number":
        return _field_text(base, draw(st.sampled_from(fields)), draw(odd_numbers))
    if kind == "deep":
        return _field_text(base, draw(st.sampled_from(fields)), nested(draw(depths), draw(st.sampled_from("[{"))))
    if kind == "non-utf8":  # inside a string, or anywhere
        text = json.dumps(base).encode()
        at = draw(st.integers(0, len(text)))
        quote = text.find(b'"', at)
        at = quote + 1 if quote >= 0 and draw(st.booleans()) else at
        return text[:at] + draw(non_utf8) + text[at:]
    if kind == "duplicate":
        field = draw(st.sampled_from(fields))
        text = json.dumps(base)
        return (text[:-1] + f", {json.dumps(field)}: {json.dumps(draw(json_values))}}}").encode()
    if kind == "raw":
        return draw(st.binary(max_size=200))
    return json.dumps(draw(json_values)).encode()


def signed(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Envelopes validly signed by the trusted key around a mutated ``base``."""
    return mutated_documents(base).map(lambda document: seal(document, KEY))


# -- manifests and commands ---------------------------------------------------------------------------


def test_the_signed_manifest_and_command_themselves_are_accepted(trusted: TrustedKeys) -> None:
    # The control: without it, every property below would hold for a device that refuses everything.
    assert judge_manifest(SEALED_MANIFEST, trusted).update_id == "fuzz-2.0.0"
    assert judge_command(SEALED_COMMAND, trusted).command_id == "fuzz-activate"


@FUZZ
@given(raw=unsigned_or_tampered(SEALED_MANIFEST))
@example(raw=json.dumps({**json.loads(SEALED_MANIFEST), "key": "0" * 100_000}).encode())  # reason: 100 kB
def test_a_manifest_not_as_signed_is_refused_in_one_line_or_is_the_signed_one(raw: bytes, trusted: TrustedKeys) -> None:
    try:
        manifest = judge_manifest(raw, trusted)
    except UpdateRejected as exc:
        one_line(exc)
        return
    # Only the signed bytes can pass (an edit of the envelope's whitespace keeps them): never another document.
    assert manifest == parse_manifest(MANIFEST), raw[:300]


@FUZZ
@given(raw=signed(MANIFEST))
@example(raw=seal({**MANIFEST, "rollout": {"x\ny": 1}}, KEY))  # reason: two lines
@example(raw=seal({**MANIFEST, "card": {**CARD, "\x1b[2J": 1}}, KEY))
@example(raw=seal({**MANIFEST, "kind": "k" * 100_000}, KEY))  # reason: 100 kB
def test_a_signed_but_malformed_manifest_is_accepted_only_well_formed_or_refused_in_one_line(
    raw: bytes, trusted: TrustedKeys
) -> None:
    try:
        manifest = judge_manifest(raw, trusted)
    except UpdateRejected as exc:
        one_line(exc)
        return
    # Accepted: then it is well-formed all through (what the download and the store rely on).
    assert manifest.model == "digits" and manifest.size <= MAX_BYTES
    assert manifest.source.mqtt is not None and manifest.source.mqtt.topic == f"edgerun/blobs/{manifest.sha256}"


@FUZZ
@given(raw=unsigned_or_tampered(SEALED_COMMAND) | signed(COMMAND))
@example(raw=seal({**COMMAND, "x\ny": 1}, KEY))  # reason: two lines
def test_a_command_is_accepted_only_as_signed_and_well_formed_or_refused_in_one_line(
    raw: bytes, trusted: TrustedKeys
) -> None:
    try:
        command = judge_command(raw, trusted)
    except UpdateRejected as exc:
        one_line(exc)
        return
    assert command.kind == "command" and command.model == "digits"


@FEW
@given(
    field=st.sampled_from(["update_id", "model", "version", "kind", "sha256"]),
    first=json_values | long_text,
    last_is_real=st.booleans(),
)
def test_a_signed_document_with_a_key_given_twice_is_read_by_its_last_value(
    field: str, first: Any, last_is_real: bool, trusted: TrustedKeys
) -> None:
    # RFC 8259 leaves duplicate names to the reader; the device takes the last one, as Python's json
    # and JWS (RFC 7515) do. What it checks is what it uses: the same parse serves both.
    text = json.dumps(MANIFEST)[:-1]
    values = [json.dumps(first), json.dumps(MANIFEST[field])]
    if not last_is_real:
        values.reverse()
    raw = seal((text + "".join(f", {json.dumps(field)}: {v}" for v in values) + "}").encode(), KEY)
    try:
        manifest = judge_manifest(raw, trusted)
    except UpdateRejected as exc:
        one_line(exc)
        assert not last_is_real, exc
        return
    assert getattr(manifest, field) == (MANIFEST[field] if last_is_real else first)


# -- chunks -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """A new empty folder per example (hypothesis runs many examples in one test)."""
    root = tmp_path_factory.mktemp("fuzz-ota")

    def make() -> Path:
        folder = root / secrets.token_hex(6)
        folder.mkdir()
        return folder

    return make


chunk_tails = st.one_of(
    st.integers(0, 5).map(str),
    st.sampled_from(["", "-1", "+1", " 1", "1 ", "01", "1.0", "1e0", "0x1", "\u00b2", "\u0663", "\uff11", "1\n"]),
    st.integers(1, 6000).map(lambda n: "9" * n),  # int() refuses more than 4300 digits
    st.text(st.characters(exclude_characters="/+#\x00"), max_size=12),
)


@FUZZ
@given(
    tails=st.lists(chunk_tails, min_size=1, max_size=4),
    sizes=st.lists(st.sampled_from([0, 1, 1023, 1024, 1025, 4096]), min_size=4, max_size=4),
)
@example(tails=["\u00b2"], sizes=[1024] * 4)  # ValueError from int()
@example(tails=["9" * 5000], sizes=[1024] * 4)  # ValueError: over 4300 digits
@example(tails=["1\n"], sizes=[1024] * 4)  # reason: two lines
def test_a_chunk_message_is_taken_or_refused_in_one_line_never_an_exception(
    tails: list[str], sizes: list[int], scratch: Callable[[], Path]
) -> None:
    manifest = parse_manifest(MANIFEST)
    chunks = _Chunks(manifest, scratch())
    try:
        for tail, size in zip(tails, sizes):
            before = chunks._arrived.qsize()
            chunks.on_message(Message(f"edgerun/blobs/{BLOB_SHA}/{tail}", b"c" * size, False))
            taken = chunks._arrived.qsize() > before
            if chunks.problem is not None:
                assert isinstance(chunks.problem, UpdateRejected), chunks.problem
                one_line(chunks.problem)
                assert not taken
                break
            # Taken: exactly PROTOCOL.md's <topic>/<i>, i in range, of the size chunk i has.
            assert taken and tail.isascii() and tail.isdigit() and int(tail) < 3
            assert size == chunks.expected_size(int(tail))
        chunks.store()
        assert chunks.problem is None or isinstance(chunks.problem, UpdateRejected)
    finally:
        chunks.close()


@FEW
@given(order=st.lists(st.integers(0, 2), min_size=3, max_size=8).filter(lambda o: set(o) == {0, 1, 2}))
def test_chunks_in_any_order_and_repeated_assemble_the_exact_blob(
    order: list[int], scratch: Callable[[], Path]
) -> None:
    manifest = parse_manifest(MANIFEST)
    folder = scratch()
    chunks = _Chunks(manifest, folder)
    try:
        for i in order:
            chunks.on_message(Message(f"edgerun/blobs/{BLOB_SHA}/{i}", BLOB[i * 1024 : (i + 1) * 1024], False))
            chunks.store()
        assert chunks.problem is None
        chunks.finish(folder / "blob", manifest)
    finally:
        chunks.close()
    assert (folder / "blob").read_bytes() == BLOB


# -- URL downloads ------------------------------------------------------------------------------------


def _url_manifest(url: str) -> Manifest:
    return parse_manifest({**MANIFEST, "source": {"url": url}})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OneShotServer:
    """A TCP server on loopback that answers each connection with the given bytes, then closes it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.answer = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[OneShotServer]:
    s = OneShotServer()
    yield s
    s.close()


status_lines = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 206 Partial Content",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 500 Oops",
        b"HTTP/1.1 301 Moved",  # no Location: nowhere to go
        b"HTTP/1.1 abc OK",
        b"HTTP/9.9 200 OK",
        b"garbage",
        b"",
    ]
)
header_lines = st.sampled_from(
    [
        b"Content-Length: 3072",
        b"Content-Length: 10",
        b"Content-Length: 99999999",
        b"Content-Length: -5",
        b"Content-Length: ten",
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/octet-stream",
        b"X-Long: " + b"y" * 70_000,  # over http.client's line limit
        b"no colon here",
        b"\xff\xfe: \x00",
    ]
)
bodies = st.one_of(
    st.just(BLOB),
    st.integers(0, len(BLOB) - 1).map(lambda n: BLOB[:n]),
    st.binary(max_size=64).map(lambda extra: BLOB + extra),
    st.binary(max_size=200),
    st.just(b"zz\r\nabc\r\n0\r\n\r\n"),  # a chunked body with a chunk size that is no number
)


@FUZZ
@given(
    status=status_lines,
    headers=st.lists(header_lines, max_size=3) | st.just([b"X: y"] * 101),  # http.client allows 100 headers
    body=bodies,
)
@example(status=b"garbage", headers=[], body=b"")  # http.client.BadStatusLine
@example(status=b"HTTP/1.1 200 OK", headers=[b"X: y"] * 101, body=BLOB)  # http.client.HTTPException
def test_whatever_a_url_s_server_answers_the_download_is_the_exact_blob_or_refused_in_one_line(
    status: bytes, headers: list[bytes], body: bytes, server: OneShotServer, scratch: Callable[[], Path]
) -> None:
    server.answer = status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    folder = scratch()
    manifest = _url_manifest(f"http://127.0.0.1:{server.port}/m.onnx")
    try:
        got = download(manifest, link=None, downloads=folder, progress=lambda f: None, timeout_s=5)
    except (UpdateRejected, UpdateFailed) as exc:
        one_line(exc)
        assert not (folder / BLOB_SHA / "blob").exists()
        return
    assert got.read_bytes() == BLOB


url_tails = st.text(st.characters(exclude_categories=("Cs",)), max_size=16)


@FUZZ
@given(
    url=st.one_of(
        url_tails.map(lambda t: f"http://127.0.0.1:{_closed_port()}/{t}"),
        url_tails.map(lambda t: f"https://127.0.0.1:{_closed_port()}/m{t}"),
        url_tails.map(lambda t: f"http://127.0.0.1:x{t}/m.onnx"),  # a port that is no number
        url_tails.map(lambda t: f"http://[{t}/m.onnx"),
        url_tails.map(lambda t: f"file:///nonexistent/{t}"),
        st.sampled_from(["http://", "https://", "file://", "file:///", "http://127.0.0.1:0/", "http://a b/"]),
    )
)
@example(url="http://127.0.0.1:x/m.onnx")  # http.client.InvalidURL
@example(url="http://[/m.onnx")  # ValueError from urllib.request.Request
@example(url="http://127.0.0.1:1/\x1f")  # reason: a control character
def test_a_url_that_cannot_be_fetched_is_refused_in_one_line(url: str, scratch: Callable[[], Path]) -> None:
    folder = scratch()
    try:
        manifest = _url_manifest(url)
        download(manifest, link=None, downloads=folder, progress=lambda f: None, timeout_s=2)
    except (UpdateRejected, UpdateFailed) as exc:
        one_line(exc)
        assert not (folder / BLOB_SHA / "blob").exists()
        return
    raise AssertionError(f"{url!r} was downloaded")


# -- a real agent over the real broker ---------------------------------------------------------------


def _snapshot(state: Path) -> dict[str, Any]:
    """What a refused payload must leave as it was: the model store, the downloads and the clock."""
    ota = state / "ota"
    files = sorted(p for p in (state / "models").rglob("*") if p.is_file())
    return {
        "models": {str(p.relative_to(state)): p.read_bytes() for p in files},
        "downloads": sorted(p.name for p in (ota / "downloads").iterdir()),
        "clock": (ota / "clock.json").read_bytes() if (ota / "clock.json").exists() else None,
    }


#: An unsigned envelope whose payload claims identifiers that would forge log lines and status fields.
FORGED_LINES = json.dumps(
    {
        "payload": _b64(
            json.dumps({"update_id": "u1\nERROR forged", "model": "m\x1b[2J", "version": "\u2028"}).encode()
        ),
        "sig": "AAAA",
        "key": "0" * 16,
    }
).encode()


def _targeted_elsewhere(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "targets": {"devices": ["somebody-else"], "groups": []}}


def bad_manifests(good: dict[str, Any], command: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Payloads the agent must refuse, one status record each: nothing here is a valid update for it
    (the signed ones target another device, or are no manifest). Never empty (that clears a retained
    message and is ignored) and never over the link's 1 MiB (dropped unread)."""
    elsewhere = _targeted_elsewhere(good)
    return st.one_of(
        unsigned_or_tampered(seal(elsewhere, KEY)),
        unsigned_or_tampered(seal(good, STRANGER)),
        signed(elsewhere),
        st.just(seal(command, KEY)),
    ).filter(lambda raw: 0 < len(raw) < 1024 * 1024)


@pytest.mark.slow
def test_an_agent_refuses_thirty_fuzzed_manifests_one_record_each_and_then_takes_a_good_update(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = f"fz-{secrets.token_hex(3)}"
    served = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    new = unique_onnx(DIGITS / "digits_int8.onnx", tmp_path / "v11" / "digits.onnx")
    good = build_manifest(
        new,
        model="digits",
        version="1.1.0",
        fmt="onnx",
        card=card_of(DIGITS / "digits_int8.onnx"),
        devices=[device],
        groups=[],
        prefix="edgerun",
        probation_s=0,
        chunk_size=16 * 1024,
    )
    command = build_command("rollback", model="digits", devices=[device], groups=[])
    state = tmp_path / "state"
    watcher = StatusWatcher(broker.port)
    publish = Publisher(broker.port)
    agent = Agent(broker.port, state, served, operator_pem(tmp_path), device)
    topic = f"edgerun/{device}/ota/manifest"
    sent: list[bytes] = []
    try:
        before = _snapshot(state)
        journal = state / "ota" / "journal"

        @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
        @given(raw=bad_manifests(good, command))
        @example(raw=FORGED_LINES)
        def refused(raw: bytes) -> None:
            mark, entries = len(watcher.ota(device)), set(journal.iterdir())
            publish(topic, raw)
            deadline = time.monotonic() + 10
            while len(watcher.ota(device)) == mark:
                assert time.monotonic() < deadline, f"no status record for {raw[:200]!r}"
                time.sleep(0.01)
            records = watcher.ota(device)[mark:]
            assert [r["state"] for r in records] == ["rejected"], records
            one_line(UpdateRejected(records[0]["reason"]))
            for value in records[0].values():
                assert not isinstance(value, str) or value.isprintable(), records[0]
            assert _snapshot(state) == before
            for entry in set(journal.iterdir()) - entries:  # only a verified update id is journaled
                assert json.loads(entry.read_text())["state"] == "rejected", entry
            assert agent.agent._thread is not None and agent.agent._thread.is_alive()
            sent.append(raw)

        refused()
        assert len(sent) >= 25, len(sent)
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("edgerun")]
        assert all("\n" not in m for m in logged), [m for m in logged if "\n" in m][:3]

        # And a good update afterwards is taken as ever.
        data, blob = new.read_bytes(), good["source"]["mqtt"]
        for i in range(blob["chunks"]):
            publish(f"{blob['topic']}/{i}", data[i * blob["chunk_size"] : (i + 1) * blob["chunk_size"]], retain=True)
        mark = len(watcher.ota(device))  # forged envelopes above may have claimed its update id
        publish(topic, seal(good, KEY))
        deadline = time.monotonic() + 30
        while not (done := [r for r in watcher.ota(device)[mark:] if r["state"] in {"active", "rejected", "failed"}]):
            assert time.monotonic() < deadline, watcher.ota(device)[mark:]
            time.sleep(0.05)
        assert done[0]["update_id"] == good["update_id"] and done[0]["state"] == "active", done
        assert agent.slot.primary.version == "1.1.0"
    finally:
        agent.stop()
        publish.close()
        watcher.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_manifest_time_in_milliseconds_is_refused_when_parsed() -> None:
    """Signed with ``issued`` in milliseconds, it would become the newest time a device with an
    unsynced clock has seen, and every later manifest would look expired."""
    from edgerun.errors import UpdateRejected
    from edgerun.ota.manifest import parse_manifest

    for field in ("issued", "expires"):
        with pytest.raises(UpdateRejected, match=rf"<= 100000000000.0 - at `\$.{field}`"):
            parse_manifest({"kind": "model-update", "issued": 1.0, "expires": 2.0, field: 1.7e12})


def test_a_file_url_with_spaces_or_non_ascii_letters_parses_and_one_with_a_control_character_does_not() -> None:
    assert _url_manifest("file:///srv/models/my model é.onnx").source.url == "file:///srv/models/my model é.onnx"
    with pytest.raises(UpdateRejected, match="source url must not hold control characters"):
        _url_manifest("file:///srv/models/m\n.onnx")
