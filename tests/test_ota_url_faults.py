"""URL downloads from a server that trickles or goes quiet: stopped at once, failed as stalled, resumed.

The server is a real HTTP server on a loopback port in a thread of this process; what it does with
each request (send all, trickle a byte at a time, send half and go quiet, send nothing) is chosen by
the test. Every server stops by itself after a minute at most, and at the end of its test.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.card import load_card
from edgerun.errors import UpdateFailed, UpdateRejected
from edgerun.ota.envelope import seal
from edgerun.ota.manifest import Manifest, parse_manifest
from edgerun.ota.operator import build_manifest
from edgerun.ota.transfer import download
from tests.conftest import DIGITS, Broker
from tests.ota_helpers import Agent, StatusWatcher, make_key, model_with_card, publish, unique_model

LIVENESS_S = 30.0  # a generous bound on "ended": the old code held on for as long as the server trickled
SERVER_MAX_S = 60.0  # no handler of the test server lives longer


class Served:
    """What the test server sends, and what it was asked.

    Per request, in order (``"whole"`` once the list is used up): ``"whole"``; ``"trickle"`` (a byte
    every 50 ms); ``"half"`` (half the rest, then quiet); ``"quiet"`` (the headers, then nothing);
    ``"close"`` (the headers for the whole rest, half of it, then the connection closed); ``"short"``
    (a Content-Length of half the rest, and that half: a whole response, shorter than the blob).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.modes: list[str] = []  # one per request, in order; "whole" when none is left
        self.ranges: list[str | None] = []
        self.asked = threading.Event()
        self.stop = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:
        served: Served = self.server.served
        asked = self.headers.get("Range")
        served.ranges.append(asked)
        mode = served.modes.pop(0) if served.modes else "whole"
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked else 0  # type: ignore[union-attr]
        if start >= len(served.data):  # as a real server answers a range past the end
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(served.data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = served.data[start:]
        sent = body[: len(body) // 2] if mode in ("close", "short") else body
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(sent) if mode == "short" else len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(served.data) - 1}/{len(served.data)}")
        self.end_headers()
        served.asked.set()
        try:
            if mode in ("whole", "close", "short"):  # "close": the connection ends before the body it announced
                self.wfile.write(sent)
            elif mode == "trickle":  # a byte every 50 ms: never quiet for long, never done
                deadline = time.monotonic() + SERVER_MAX_S
                for i in range(len(body)):
                    if served.stop.wait(0.05) or time.monotonic() > deadline:
                        return
                    self.wfile.write(body[i : i + 1])
            elif mode == "half":
                self.wfile.write(body[: len(body) // 2])
                served.stop.wait(SERVER_MAX_S)
            else:  # "quiet": the headers, then nothing
                served.stop.wait(SERVER_MAX_S)
        except OSError:
            pass  # the client went away
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    """``(served, url)``: a blob of 300 000 random bytes on a local HTTP server."""
    served = Served(os.urandom(300_000))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.served = served  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/blob.onnx"
    served.stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def url_manifest(tmp_path: Path, data: bytes, url: str) -> Manifest:
    blob = tmp_path / "blob.onnx"
    blob.write_bytes(data)
    card = load_card(DIGITS / "digits_fp32.onnx.card.yaml").to_dict()
    card.pop("inferred", None)
    return parse_manifest(
        build_manifest(
            blob,
            model="digits",
            version="2.0.0",
            fmt="onnx",
            card=card,
            devices=["u1"],
            groups=[],
            prefix="edgerun",
            url=url,
        )
    )


def download_in_thread(manifest: Manifest, downloads: Path, timeout_s: float, stop: threading.Event) -> Any:
    """Run ``download`` in a thread; returns (thread, outcome dict with "error" or "path")."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["path"] = download(
                manifest, link=None, downloads=downloads, progress=lambda f: None, timeout_s=timeout_s, stop=stop
            )
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_url_download_that_trickles_fails_as_stalled_naming_the_url_and_keeps_what_arrived(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, url = server
    served.modes = ["trickle"]
    manifest = url_manifest(tmp_path, served.data, url)
    thread, outcome = download_in_thread(manifest, tmp_path / "dl", 1.0, threading.Event())
    thread.join(LIVENESS_S)
    assert not thread.is_alive(), "the download still runs while the server trickles"
    error = outcome["error"]
    assert isinstance(error, UpdateFailed), error
    words = (
        rf"only (\d+) bytes arrived from {re.escape(url)} in 1 s \((\d+) of 300000 bytes so far\): the download stalled"
    )
    found = re.fullmatch(words, str(error))
    assert found, str(error)
    part = tmp_path / "dl" / manifest.sha256 / "blob.part"
    assert part.read_bytes() == served.data[: int(found.group(2))]  # kept: the next try resumes from it


@pytest.mark.parametrize("mode", ["trickle", "quiet"])
def test_a_stopped_url_download_ends_at_once_whatever_the_server_does(
    server: tuple[Served, str], tmp_path: Path, mode: str
) -> None:
    served, url = server
    served.modes = [mode]
    manifest = url_manifest(tmp_path, served.data, url)
    stop = threading.Event()
    thread, outcome = download_in_thread(manifest, tmp_path / "dl", 120.0, stop)
    assert served.asked.wait(10)
    time.sleep(0.3)  # reading the body
    stop.set()
    thread.join(LIVENESS_S)
    assert not thread.is_alive(), f"the download still runs {LIVENESS_S} s after it was stopped"
    assert isinstance(outcome["error"], UpdateFailed), outcome
    assert str(outcome["error"]) == "stopped while downloading; it resumes at the next start"


def test_a_url_download_that_stalled_resumes_with_a_range_request_and_is_verified(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, url = server
    served.modes = ["half", "whole"]
    manifest = url_manifest(tmp_path, served.data, url)
    thread, outcome = download_in_thread(manifest, tmp_path / "dl", 1.0, threading.Event())
    thread.join(LIVENESS_S)
    assert not thread.is_alive()
    so_far = r"in 1 s \(150000 of 300000 bytes so far\): the download stalled"
    words = rf"(nothing|only \d+ bytes) arrived from {re.escape(url)} {so_far}"
    assert re.fullmatch(words, str(outcome["error"])), outcome
    done = download(manifest, link=None, downloads=tmp_path / "dl", progress=lambda f: None, timeout_s=5.0)
    assert done.read_bytes() == served.data
    assert served.ranges == [None, "bytes=150000-"]


# -- a URL download cut short by the server: failed and resumed, or rejected where the response was whole


def fetch(manifest: Manifest, downloads: Path) -> Path:
    return download(manifest, link=None, downloads=downloads, progress=lambda f: None, timeout_s=10.0)


def test_a_url_download_the_server_closes_early_fails_keeps_what_arrived_and_resumes(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, url = server
    served.modes = ["close", "close"]
    manifest = url_manifest(tmp_path, served.data, url)
    part = tmp_path / "dl" / manifest.sha256 / "blob.part"
    with pytest.raises(UpdateFailed) as failed:
        fetch(manifest, tmp_path / "dl")
    assert str(failed.value) == (
        f"the connection to {url} closed after 150000 of 300000 bytes; the next try resumes from there"
    )
    assert part.read_bytes() == served.data[:150_000]  # kept
    with pytest.raises(UpdateFailed, match=r"closed after 225000 of 300000 bytes"):
        fetch(manifest, tmp_path / "dl")  # resumed, and cut short again
    assert fetch(manifest, tmp_path / "dl").read_bytes() == served.data
    assert served.ranges == [None, "bytes=150000-", "bytes=225000-"]


def test_a_url_whose_server_announces_fewer_bytes_than_the_manifest_says_is_rejected(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    served, url = server
    served.modes = ["short"]
    manifest = url_manifest(tmp_path, served.data, url)
    with pytest.raises(UpdateRejected) as refused:
        fetch(manifest, tmp_path / "dl")
    assert str(refused.value) == "the blob has 150000 bytes, the manifest says 300000"
    assert not (tmp_path / "dl" / manifest.sha256 / "blob.part").exists()


# -- the OTA worker: an agent in this process, on the session broker ----------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> dict[str, Any]:
    key, _, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    v11 = unique_model(tmp_path / "v11", "digits_int8.onnx")
    return {"key": key, "public": public, "v1": v1, "v11": v11}


def publish_url_update(port: int, rig: dict[str, Any], device: str, url: str) -> str:
    """Publish a signed update of digits to 1.1.0 whose blob is at ``url``; its update id."""
    card = load_card(rig["v11"].with_name(rig["v11"].name + ".card.yaml")).to_dict()
    card.pop("inferred", None)
    manifest = build_manifest(
        rig["v11"],
        model="digits",
        version="1.1.0",
        fmt="onnx",
        card=card,
        devices=[device],
        groups=[],
        prefix="edgerun",
        url=url,
        probation_s=0,
    )
    publish(port, f"edgerun/{device}/ota/manifest", seal(manifest, rig["key"]))
    return str(manifest["update_id"])


@pytest.mark.slow
def test_an_update_from_a_trickling_server_fails_as_stalled_and_frees_the_ota_worker(
    broker: Broker, server: tuple[Served, str], rig: dict[str, Any], tmp_path: Path
) -> None:
    served, url = server
    served.data = rig["v11"].read_bytes()
    served.modes = ["trickle"]
    name = "urltrickle1"
    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, tmp_path / "state", rig["v1"], rig["public"], name, download_timeout_s=2.0)
    try:
        uid = publish_url_update(broker.port, rig, name, url)
        record = watcher.wait_state(name, uid, {"active", "failed", "rejected"}, timeout=LIVENESS_S)
        assert record["state"] == "failed", record
        assert record["reason"].endswith(f"of {len(served.data)} bytes so far): the download stalled"), record
        assert f"arrived from {url} in 2 s" in record["reason"], record
        assert agent.agent.idle()
        assert agent.slot.primary.version == "1.0.0"
    finally:
        agent.stop()
        watcher.close()


@pytest.mark.slow
def test_stopping_the_agent_during_a_url_download_from_a_quiet_server_ends_its_worker(
    broker: Broker, server: tuple[Served, str], rig: dict[str, Any], tmp_path: Path
) -> None:
    served, url = server
    served.data = rig["v11"].read_bytes()
    served.modes = ["quiet"]
    name = "urlquiet1"
    agent = Agent(broker.port, tmp_path / "state", rig["v1"], rig["public"], name)  # download_timeout_s 120
    try:
        uid = publish_url_update(broker.port, rig, name, url)
        assert served.asked.wait(LIVENESS_S)
        time.sleep(0.3)
    finally:
        agent.stop()  # joins the worker for 10 s
    worker = agent.agent._thread
    assert worker is not None and not worker.is_alive(), "the OTA worker still runs after stop()"
    assert agent.journal(uid)["state"] == "downloading"  # resumed at the next start


def test_a_blob_part_already_whole_is_verified_without_asking_for_a_range_past_its_end(
    server: tuple[Served, str], tmp_path: Path
) -> None:
    """Stopped at the last read, or killed before the rename: every retry asked for bytes=<size>-."""
    served, url = server
    manifest = url_manifest(tmp_path, served.data, url)
    folder = tmp_path / "dl" / manifest.sha256
    folder.mkdir(parents=True)
    (folder / "blob.part").write_bytes(served.data)
    thread, outcome = download_in_thread(manifest, tmp_path / "dl", 5.0, threading.Event())
    thread.join(LIVENESS_S)
    assert outcome.get("path") == folder / "blob", outcome
    assert (folder / "blob").read_bytes() == served.data
    assert served.ranges == []


@pytest.mark.slow
def test_an_update_whose_server_closes_early_fails_and_the_same_file_published_again_resumes(
    broker: Broker, server: tuple[Served, str], rig: dict[str, Any], tmp_path: Path
) -> None:
    """Once rejected, and what had arrived thrown away: a network drop refused the update for good."""
    served, url = server
    served.data = rig["v11"].read_bytes()
    served.modes = ["close"]
    size = len(served.data)
    name = "urlclosed1"
    watcher = StatusWatcher(broker.port)
    agent = Agent(broker.port, tmp_path / "state", rig["v1"], rig["public"], name)
    try:
        first = publish_url_update(broker.port, rig, name, url)
        record = watcher.wait_state(name, first, {"active", "failed", "rejected"}, timeout=LIVENESS_S)
        assert record["state"] == "failed", record
        assert record["reason"] == (
            f"the connection to {url} closed after {size // 2} of {size} bytes; the next try resumes from there"
        )
        assert agent.journal(first)["state"] == "failed"
        assert agent.slot.primary.version == "1.0.0"
        second = publish_url_update(broker.port, rig, name, url)  # published again: it asks only for the rest
        record = watcher.wait_state(name, second, {"active", "failed", "rejected"}, timeout=LIVENESS_S)
        assert record["state"] == "active", record
        assert agent.slot.primary.version == "1.1.0"
        assert served.ranges == [None, f"bytes={size // 2}-"]
    finally:
        agent.stop()
        watcher.close()
