"""Fetching a model blob: MQTT chunks or a URL, resumable, size- and hash-checked.

Chunks are written into place in ``<downloads>/<sha256>/blob.part`` as they
arrive, and their numbers appended to ``have`` beside it, so a download
interrupted by a disconnect or a restart fetches only the chunks it lacks: a fresh download subscribes to
``<topic>/+`` (and so sees, and refuses, chunks out of range), a resumed one
only to the missing ``<topic>/<i>``. After a reconnect the link subscribes again
to the same topics, so a fresh download is sent every retained chunk again:
those on disk are compared, not rewritten. A URL download appends to
``blob.part`` and asks for the rest with an HTTP ``Range`` request. It reads
what has arrived, 64 KiB at most at a time, and fails (keeping ``blob.part``)
when stopped, when less than 64 KiB arrived in ``timeout_s`` (a watcher
thread shuts the socket down when that happens while a read waits on it), or
when an HTTP(S) server closes the connection before the body it announced is
all there. ``read1`` reports that close as an empty read, not an error: the
response's own count of what its ``Content-Length`` still owes tells the two
apart (a response with neither a ``Content-Length`` nor chunks ends only by a
close, so its short end counts as one). Only a response that ended where its
server said it ends (a ``Content-Length`` or a whole chunked body shorter than
``size``, a short ``file://`` file) is a blob that is not what the manifest
says: rejected.

Once every byte is there, ``download`` calls its ``verifying`` callback and only then checks the
size and SHA-256 (PROTOCOL.md's verifying step), so a blob refused for them is reported
``verifying`` first. The check uses the digest taken while the chunks were written where there is
one: a blob is hashed once on the normal path. What is refused while it arrives (a chunk out of
range or of the wrong size, a URL sending more than ``size`` bytes) is refused while downloading.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import queue
import reprlib
import shutil
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from edgerun.errors import UpdateFailed, UpdateRejected, quoted
from edgerun.files import sha256_file
from edgerun.ota.manifest import CHUNKS_MAX, Manifest
from edgerun.sync.link import Message, MqttLink

log = logging.getLogger(__name__)

__all__ = ["download"]

Progress = Callable[[float], None]
#: Called once the whole blob is on disk, before its size and SHA-256 are checked.
Verifying = Callable[[], None]


def _unreported() -> None:
    """The ``verifying`` of a caller that reports no steps."""


#: Bytes asked for per read of a URL download; a read returns what has arrived, up to this. At least
#: this much (or the rest of the blob) must arrive per ``timeout_s``, or the download has stalled.
URL_BLOCK = 64 * 1024


def _disk_error(exc: OSError) -> UpdateFailed:
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return UpdateFailed(f"disk full while downloading ({exc.strerror})")
    return UpdateFailed(f"cannot write the download: {exc.strerror or exc}")


def _finish_file(part: Path, target: Path, manifest: Manifest, verifying: Verifying, sha: str | None = None) -> None:
    """Report ``verifying``, check a downloaded file's size and SHA-256, and move it to ``target``.

    ``sha`` is the digest taken while writing; without it the file is read back (a resumed
    download counts whole), after ``verifying`` so the reading shows as that step.
    """
    verifying()
    _check(part.stat().st_size, sha or sha256_file(part), manifest, part)
    os.replace(part, target)


def _check(size: int, sha: str, manifest: Manifest, target: Path) -> None:
    if size != manifest.size:
        target.unlink(missing_ok=True)
        raise UpdateRejected(f"the blob has {size} bytes, the manifest says {manifest.size}")
    if sha != manifest.sha256:
        target.unlink(missing_ok=True)
        raise UpdateRejected(f"the blob's SHA-256 is {sha[:16]}..., the manifest says {manifest.sha256[:16]}...")


class _Chunks:
    """Writes the chunks of one blob straight into place in ``blob.part``.

    The link's thread only checks a chunk (number, size) and queues it; the
    downloading thread writes it at its offset (``pwrite``) and appends its
    number to ``have``, the record a restart resumes from. Chunks arriving in
    order are hashed as they are written, so a blob that came in one go needs
    no second read.

    Invariant, whatever a power cut loses: every number in ``have`` names a chunk
    whose data is on disk. Per batch of arrived chunks, ``blob.part`` is fsynced
    before their numbers are appended, and ``have`` is fsynced after (two fsyncs
    a batch, not two a chunk).
    """

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        blob = manifest.source.mqtt
        assert blob is not None
        self.blob, self.folder, self.size = blob, folder, manifest.size
        self.part = folder / "blob.part"
        self.log = folder / "have"
        self.have: set[int] = set()
        if self.part.exists() and self.log.exists():
            for line in self.log.read_text().splitlines():  # a torn last line is simply not a number
                if line.isdigit() and int(line) < blob.chunks:
                    self.have.add(int(line))
        try:
            self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o600)
            self._log = open(self.log, "a" if self.have else "w")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise _disk_error(exc) from exc
        self._digest = hashlib.sha256()
        self._hashed = 0  # chunks 0.._hashed-1 are in the digest
        self.problem: UpdateRejected | UpdateFailed | None = None
        self.changed = threading.Event()
        self._arrived: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()

    def expected_size(self, index: int) -> int:
        if index < self.blob.chunks - 1:
            return self.blob.chunk_size
        return self.size - self.blob.chunk_size * (self.blob.chunks - 1)

    def on_message(self, message: Message) -> None:
        tail = message.topic.rsplit("/", 1)[-1]
        if not (tail.isascii() and tail.isdigit()):  # isdigit() alone takes "²", which int() refuses
            ending = reprlib.repr(tail)  # any text, of any length
            self._fail(UpdateRejected(f"a chunk topic under {self.blob.topic} ends in {ending}, not a chunk number"))
            return
        if len(tail) > len(str(CHUNKS_MAX)) or int(tail) >= self.blob.chunks:  # int() refuses 4301 digits
            number = tail if len(tail) <= 12 else f"{tail[:12]}..."
            self._fail(UpdateRejected(f"chunk {number} is out of range (the manifest says {self.blob.chunks} chunks)"))
            return
        index = int(tail)
        expected = self.expected_size(index)
        if len(message.payload) != expected:
            kind = "oversized" if len(message.payload) > expected else "truncated"
            self._fail(UpdateRejected(f"chunk {index} is {kind}: {len(message.payload)} bytes, expected {expected}"))
            return
        self._arrived.put((index, message.payload))
        self.changed.set()

    def store(self) -> None:
        """Write the chunks that arrived (on the downloading thread), then record them durably."""
        written: list[int] = []
        while True:
            try:
                index, payload = self._arrived.get_nowait()
            except queue.Empty:
                break
            if self._store(index, payload):
                written.append(index)
        if not written:
            return
        try:
            os.fsync(self._fd)  # the data first: ``have`` must never name a chunk a power cut can lose
            self._log.write("".join(f"{i}\n" for i in written))
            self._log.flush()
            os.fsync(self._log.fileno())
        except OSError as exc:
            self._fail(_disk_error(exc))

    def _store(self, index: int, payload: bytes) -> bool:
        """Write one chunk in place; True when it is new (its number goes to ``have``)."""
        offset = index * self.blob.chunk_size
        if index in self.have:
            if os.pread(self._fd, len(payload), offset) != payload:
                self._fail(UpdateRejected(f"chunk {index} arrived twice with different content"))
            return False  # an identical duplicate: QoS 1 is at least once
        try:
            os.pwrite(self._fd, payload, offset)
        except OSError as exc:
            self._fail(_disk_error(exc))
            return False
        self.have.add(index)
        if index == self._hashed:
            self._digest.update(payload)
            self._hashed += 1
            while self._hashed in self.have:  # chunks that came early, now next in line
                i = self._hashed
                self._digest.update(os.pread(self._fd, self.expected_size(i), i * self.blob.chunk_size))
                self._hashed += 1
        return True

    def finish(self, target: Path, manifest: Manifest, verifying: Verifying = _unreported) -> None:
        """fsync, report ``verifying``, check size and SHA-256, and move the blob to ``target``."""
        try:
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        except OSError as exc:
            raise _disk_error(exc) from exc
        # Resumed after a restart, some chunks were never hashed here: the file is read back.
        sha = self._digest.hexdigest() if self._hashed == self.blob.chunks else None
        _finish_file(self.part, target, manifest, verifying, sha)
        self.log.unlink(missing_ok=True)

    def close(self) -> None:
        self._log.close()
        os.close(self._fd)

    def _fail(self, problem: UpdateRejected | UpdateFailed) -> None:
        if self.problem is None:
            self.problem = problem
        self.changed.set()


def _download_mqtt(
    manifest: Manifest,
    link: MqttLink,
    folder: Path,
    target: Path,
    progress: Progress,
    verifying: Verifying,
    timeout_s: float,
    stop: threading.Event,
) -> None:
    chunks = _Chunks(manifest, folder)
    try:
        _collect(chunks, manifest, link, progress, timeout_s, stop)
        chunks.finish(target, manifest, verifying)
    finally:
        chunks.close()


def _collect(
    chunks: _Chunks, manifest: Manifest, link: MqttLink, progress: Progress, timeout_s: float, stop: threading.Event
) -> None:
    blob = chunks.blob
    missing = [i for i in range(blob.chunks) if i not in chunks.have]
    topics = [f"{blob.topic}/+"] if not chunks.have else [f"{blob.topic}/{i}" for i in missing]
    if chunks.have:
        log.info("resuming %s: %d of %d chunks already on disk", manifest.update_id, len(chunks.have), blob.chunks)
    for topic in topics:
        link.subscribe(topic, chunks.on_message, qos=1)
    try:
        last_change = time.monotonic()
        reported = -1
        while len(chunks.have) < blob.chunks and chunks.problem is None:
            if stop.is_set():
                raise UpdateFailed("stopped while downloading; it resumes at the next start")
            if refused := next(filter(None, map(link.refusal, topics)), None):  # an ACL: nothing will arrive
                raise UpdateFailed(refused)
            chunks.changed.wait(0.5)
            if chunks.changed.is_set():
                chunks.changed.clear()
                chunks.store()
                last_change = time.monotonic()
            if len(chunks.have) != reported:
                reported = len(chunks.have)
                progress(reported / blob.chunks)
            if time.monotonic() - last_change > timeout_s:
                gone = [i for i in range(blob.chunks) if i not in chunks.have]
                listed = ", ".join(map(str, gone[:10])) + (" ..." if len(gone) > 10 else "")
                raise UpdateFailed(f"chunk(s) {listed} missing: nothing arrived for {timeout_s:.0f} s")
    finally:
        for topic in topics:
            link.unsubscribe(topic)
    chunks.store()
    if chunks.problem is not None:
        raise chunks.problem


class _UrlWatch:
    """Ends a URL download that is stopped or stalls, also while a read waits on its socket.

    A read returns what has arrived (up to ``URL_BLOCK`` bytes), so the downloading thread looks
    at ``stop`` and the pace after every read; while nothing arrives, a read waits for up to the
    socket timeout, so this watcher's thread shuts the connection's socket down instead: the
    read returns at once and the download fails with ``reason``. A download has stalled when
    fewer than ``URL_BLOCK`` bytes (or the rest of the blob) arrived in ``timeout_s``: a server
    that trickles bytes cannot hold the one OTA worker for longer than that per 64 KiB.
    """

    def __init__(self, url: str, fd: int | None, stop: threading.Event, timeout_s: float, size: int, have: int):
        self.url, self.stop, self.timeout_s, self.size, self.have = url, stop, timeout_s, size, have
        self.reason: str | None = None
        self.cut = False  # the watcher shut the socket down
        self._lock = threading.Lock()
        self._start = time.monotonic()  # of the current window: it ends when ``_need`` bytes arrived
        self._got = 0
        self._need = min(URL_BLOCK, size - have)
        self._done = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        if fd is not None:  # a socket: a read on it can block; a file's read cannot
            self._sock = socket.socket(fileno=os.dup(fd))  # a duplicate: shut down, never closed twice
            self._thread = threading.Thread(target=self._watch, name="ota-url-watch", daemon=True)
            self._thread.start()

    def arrived(self, count: int) -> None:
        """``count`` more bytes were written."""
        with self._lock:
            self.have += count
            self._got += count
            if self._got >= self._need:
                self._start, self._got, self._need = time.monotonic(), 0, min(URL_BLOCK, self.size - self.have)

    def check(self) -> None:
        """Raise ``UpdateFailed`` when the download was stopped or has stalled."""
        reason = self._why()
        if reason is not None:
            raise UpdateFailed(reason)

    def _why(self) -> str | None:
        with self._lock:
            if self.reason is None:
                if self.stop.is_set():
                    self.reason = "stopped while downloading; it resumes at the next start"
                elif time.monotonic() - self._start > self.timeout_s and self._got < self._need:
                    got = "nothing" if not self._got else f"only {self._got} bytes"
                    self.reason = (
                        f"{got} arrived from {self.url} in {self.timeout_s:.0f} s "
                        f"({self.have} of {self.size} bytes so far): the download stalled"
                    )
            return self.reason

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            if self._why() is not None and self._sock is not None:
                self.cut = True  # before the shutdown: the end of the response it causes is no real end
                with contextlib.suppress(OSError):  # OSError: the server closed it already
                    self._sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns now
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()


def _socket_fd(response: Any) -> int | None:
    """The descriptor of the socket a response reads from, or None (a ``file://`` URL)."""
    try:
        fd = int(response.fileno())
        return fd if stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    except (OSError, AttributeError, ValueError, TypeError):
        return None


def _copy(
    read: Callable[[int], bytes], out: BinaryIO, watch: _UrlWatch, manifest: Manifest, progress: Progress
) -> None:
    """Append what ``read`` returns to ``out`` until the end of the response, then fsync it."""
    url = watch.url
    while True:
        watch.check()
        try:
            block = read(URL_BLOCK)
        except (OSError, http.client.HTTPException) as exc:
            watch.check()  # a read the watcher cut short says why
            raise UpdateFailed(f"downloading {url} failed: {exc}") from exc
        if not block:
            if watch.cut:
                watch.check()  # so does the end of a socket the watcher shut down
            break
        if watch.have + len(block) > manifest.size:
            raise UpdateRejected(f"the blob is larger than the {manifest.size} bytes its manifest says")
        try:
            out.write(block)
        except OSError as exc:
            raise _disk_error(exc) from exc
        watch.arrived(len(block))
        progress(watch.have / manifest.size)
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise _disk_error(exc) from exc


def _closed_early(response: Any) -> bool:
    """Whether an HTTP(S) response ended before its body did: the server or the network closed the
    connection. ``HTTPResponse.read1`` returns b"" then, where ``read`` would raise ``IncompleteRead``;
    ``length`` is what its ``Content-Length`` still owes. A chunked body cut short raises instead;
    one without either ends only when the connection closes, so such an end counts as a close."""
    if getattr(response, "chunked", False):
        return False
    length = getattr(response, "length", None)
    return not isinstance(length, int) or length > 0


def _download_url(
    manifest: Manifest,
    folder: Path,
    target: Path,
    progress: Progress,
    verifying: Verifying,
    timeout_s: float,
    stop: threading.Event,
) -> None:
    url = manifest.source.url
    assert url is not None
    part = folder / "blob.part"
    have = part.stat().st_size if part.exists() else 0
    if have > manifest.size:
        part.unlink()
        have = 0
    if have == manifest.size:  # whole already (stopped at the last read, or a crash before the rename):
        _finish_file(part, target, manifest, verifying)  # a range past the end would be refused (416) at every retry
        return
    try:
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        response = urllib.request.urlopen(request, timeout=timeout_s)  # schemes checked in the manifest
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: a port that is no number, or an answer that is no HTTP (its status line, its headers)
        raise UpdateFailed(f"cannot fetch {url}: {quoted(str(getattr(exc, 'reason', exc)).strip())}") from exc
    with response:
        if have and getattr(response, "status", 200) != 206 and not url.startswith("file://"):
            have = 0  # the server ignored the range: start again
        if url.startswith("file://") and have:
            response.read(have)  # file:// ignores Range: skip what we have
        read = getattr(response, "read1", response.read)  # read1: what has arrived, not a full block
        watch = _UrlWatch(url, _socket_fd(response), stop, timeout_s, manifest.size, have)
        try:
            try:
                out = open(part, "ab" if have else "wb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise _disk_error(exc) from exc
            try:
                _copy(read, out, watch, manifest, progress)
            finally:
                with contextlib.suppress(OSError):  # the error that matters was raised already
                    out.close()
        finally:
            watch.close()
        if watch.have < manifest.size and not url.startswith("file://") and _closed_early(response):
            raise UpdateFailed(  # blob.part is kept: the next try asks for the rest
                f"the connection to {url} closed after {watch.have} of {manifest.size} bytes; "
                "the next try resumes from there"
            )
    _finish_file(part, target, manifest, verifying)


def download(
    manifest: Manifest,
    *,
    link: MqttLink | None,
    downloads: Path,
    progress: Progress,
    verifying: Verifying | None = None,
    timeout_s: float = 120.0,
    stop: threading.Event | None = None,
) -> Path:
    """Fetch the manifest's blob into ``downloads``; returns the verified file.

    ``verifying`` is called once, when the whole blob is on disk and before its size and SHA-256
    are checked (also for a blob found whole on disk already), so the caller can report that step
    before any refusal of it.

    Raises:
        UpdateRejected: the blob or a chunk is not what the manifest says.
        UpdateFailed: the download could not finish (timeout, a connection closed early, disk
            full, stopped); what arrived is kept for the next try.
    """
    folder = downloads / manifest.sha256
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "blob"
    verifying = verifying or _unreported
    if _whole(target, manifest):
        log.info("%s: the whole blob is on disk already (an earlier try ended after its download)", manifest.update_id)
        progress(1.0)
        verifying()
        return target
    stop = stop or threading.Event()
    if manifest.source.mqtt is not None:
        if link is None:
            raise UpdateFailed("the update comes over MQTT chunks, but there is no MQTT link")
        _download_mqtt(manifest, link, folder, target, progress, verifying, timeout_s, stop)
    else:
        _download_url(manifest, folder, target, progress, verifying, timeout_s, stop)
    return target


def _whole(target: Path, manifest: Manifest) -> bool:
    """Whether ``target`` holds the manifest's whole blob: a download that finished before the update
    ended (a restart before the install, a store that refused it), to be installed without fetching
    every chunk again over what may be a metered link. One that is not (corrupted since) is deleted."""
    try:
        _check(target.stat().st_size, sha256_file(target), manifest, target)
    except OSError:  # none (the usual case), or unreadable: fetched anew
        return False
    except UpdateRejected as exc:
        log.warning("%s: the blob on disk is not the manifest's (%s); downloading it again", manifest.update_id, exc)
        return False
    return True


def discard(downloads: Path, sha256: str) -> None:
    """Remove what was downloaded for a blob."""
    shutil.rmtree(downloads / sha256, ignore_errors=True)
