"""OTA review fixes: ``active.json`` stays what every release reads and pruning keeps good history
after rollbacks; a URL download cut short by the server fails and resumes instead of being
rejected; ``set-ab`` is refused during a probation.

The store tests use a real store on disk with the real digits model. The URL tests use a real
HTTP server on a loopback port in a thread of this process (it stops with its test). The agent
tests talk to a real OTA agent in this process over the session's private Mosquitto, with real
Ed25519 keys.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.card import load_card
from edgerun.errors import UpdateFailed, UpdateRejected
from edgerun.ota.envelope import seal
from edgerun.ota.manifest import Manifest
from edgerun.ota.operator import build_command, build_manifest
from edgerun.ota.store import Active, ModelStore
from edgerun.ota.transfer import download
from tests.conftest import DIGITS, Broker
from tests.ota_helpers import (
    Agent,
    StatusWatcher,
    load_digits,
    make_key,
    model_with_card,
    publish,
    push_update,
    unique_model,
)
from tests.test_ota_url_faults import url_manifest

ENDED = {"active", "rejected", "failed", "rolled_back"}
KEYS = {"version", "previous", "probation", "ab"}  # what releases before b150bec read with Active(**...)
SERVER_MAX_S = 30.0  # no handler of the test server lives longer


# -- 1 + 2. active.json and pruning after rollbacks ---------------------------------------------------


def install(store: ModelStore, version: str) -> None:
    """Install ``version`` of digits (the digits model, under that number) as an update does."""
    model = DIGITS / "digits_fp32.onnx"
    record = {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "size": model.stat().st_size}
    store.install("digits", version, "onnx", model, {**record, "update_id": version}, {"name": "digits"})


def updated(store: ModelStore, *versions: str) -> ModelStore:
    """Update ``store`` to each of ``versions`` in turn: install, then activate."""
    for version in versions:
        install(store, version)
        store.activate("digits", version)
    return store


def as_an_earlier_release_reads_it(store: ModelStore) -> Active:
    """``active.json`` read the way releases before b150bec read it: ``Active(**json.loads(...))``."""
    data = json.loads((store.root / "digits" / "active.json").read_text())
    assert set(data) == KEYS, data
    return Active(**data)


def test_pruning_after_rollbacks_keeps_the_good_history_and_drops_the_failed_versions(tmp_path: Path) -> None:
    store = updated(ModelStore(tmp_path / "models", keep=2), "1.0.0", "1.1.0", "1.2.0")
    assert store.versions("digits") == ["1.0.0", "1.1.0", "1.2.0"]
    updated(store, "1.3.0")
    assert store.versions("digits") == ["1.1.0", "1.2.0", "1.3.0"]  # keep=2: the oldest goes

    assert store.roll_back("digits") == Active(version="1.2.0", previous=["1.1.0"])  # 1.3.0 failed
    assert store.versions("digits") == ["1.1.0", "1.2.0"]  # the failed version is pruned at once

    updated(store, "1.4.0")
    assert store.roll_back("digits") == Active(version="1.2.0", previous=["1.1.0"])  # 1.4.0 failed too
    assert store.versions("digits") == ["1.1.0", "1.2.0"]  # the good history kept, no failed version
    assert as_an_earlier_release_reads_it(store) == Active(version="1.2.0", previous=["1.1.0"])

    assert store.roll_back("digits") == Active(version="1.1.0")  # the stack walks back, never to 1.4.0
    assert store.versions("digits") == ["1.1.0"]
    with pytest.raises(UpdateRejected) as refused:
        store.roll_back("digits")
    assert str(refused.value) == "digits has no previous version to roll back to: 1.1.0 is the earliest in its history"


def test_the_store_never_holds_more_than_keep_plus_one_versions_however_many_updates_fail(tmp_path: Path) -> None:
    store = updated(ModelStore(tmp_path / "models", keep=2), "1.0.0", "1.1.0", "1.2.0")
    for minor in range(3, 8):  # every later update is rolled back by its probation
        updated(store, f"1.{minor}.0")
        assert len(store.versions("digits")) <= store.keep + 1, store.versions("digits")
        store.roll_back("digits")
        assert len(store.versions("digits")) <= store.keep + 1, store.versions("digits")
    assert store.versions("digits") == ["1.1.0", "1.2.0"]  # as before b150bec: the first update pushed 1.0.0 out
    assert as_an_earlier_release_reads_it(store) == Active(version="1.2.0", previous=["1.1.0"])


def test_an_active_json_with_withdrawn_versions_is_read_and_never_written_again(tmp_path: Path) -> None:
    store = updated(ModelStore(tmp_path / "models"), "1.0.0", "1.1.0")
    install(store, "1.2.0")
    path = store.root / "digits" / "active.json"
    written = {"version": "1.1.0", "previous": ["1.0.0"], "probation": None, "ab": None, "withdrawn": ["1.2.0"]}
    path.write_text(json.dumps(written))  # as the build of b150bec wrote it
    active = store.active("digits")
    assert active == Active(version="1.1.0", previous=["1.0.0"])
    store.set_active("digits", active)
    assert as_an_earlier_release_reads_it(store) == Active(version="1.1.0", previous=["1.0.0"])
    assert store.versions("digits") == ["1.0.0", "1.1.0"]  # the withdrawn version is an ordinary one: pruned


# -- 3. a URL download cut short by the server -------------------------------------------------------


class Served:
    """What the test server sends: per request, in order, ``"close"`` (the headers for the whole
    rest, half of it, then the connection closed), ``"short"`` (a Content-Length of half the rest,
    and that half) or ``"whole"`` (the default once the list is used up)."""

    def __init__(self, data: bytes, modes: list[str]) -> None:
        self.data, self.modes = data, modes
        self.ranges: list[str | None] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:
        served: Served = self.server.served
        asked = self.headers.get("Range")
        served.ranges.append(asked)
        mode = served.modes.pop(0) if served.modes else "whole"
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked else 0  # type: ignore[union-attr]
        body = served.data[start:]
        sent = body[: len(body) // 2] if mode in ("close", "short") else body
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(sent) if mode == "short" else len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(served.data) - 1}/{len(served.data)}")
        self.end_headers()
        try:
            self.wfile.write(sent)
            self.wfile.flush()
        except OSError:
            pass  # the client went away
        self.close_connection = True  # "close": the connection ends before the body it announced

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    """``(served, url)``: 300 000 random bytes on a local HTTP server; the test sets ``served.modes``."""
    served = Served(os.urandom(300_000), [])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.served = served  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/blob.onnx"
    httpd.shutdown()
    httpd.server_close()
    thread.join(SERVER_MAX_S)


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


# -- the OTA agent (in this process, on the session broker) ------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    key, private, public = make_key(tmp_path)
    v1 = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")
    return {"key": key, "private": private, "public": public, "v1": v1}


@pytest.fixture
def rig(broker: Broker, keys: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    """``rig()``: an agent serving digits 1.0.0 under a device name of its own, and a watcher."""
    started: list[Any] = []

    def start(**settings: Any) -> tuple[Agent, StatusWatcher]:
        device = f"fix18b-{secrets.token_hex(3)}"
        watcher = StatusWatcher(broker.port)
        started.append(watcher)
        agent = Agent(
            broker.port, tmp_path / "state" / device, keys["v1"], keys["public"], device, load_digits, **settings
        )
        started.append(agent)
        return agent, watcher

    yield start
    for thing in reversed(started):
        if isinstance(thing, Agent):
            thing.stop()
        else:
            thing.close()


def card_of(model: Path) -> dict[str, Any]:
    card = load_card(model.with_name(model.name + ".card.yaml")).to_dict()
    card.pop("inferred", None)
    return card


@pytest.mark.slow
def test_an_update_whose_server_closes_early_fails_and_the_same_file_published_again_resumes(
    broker: Broker, keys: dict[str, Any], rig: Any, server: tuple[Served, str], tmp_path: Path
) -> None:
    served, url = server
    model = unique_model(tmp_path / "v11", "digits_int8.onnx")
    served.data = model.read_bytes()
    served.modes = ["close"]
    agent, watcher = rig()
    size = len(served.data)

    def send() -> str:
        manifest = build_manifest(
            model,
            model="digits",
            version="1.1.0",
            fmt="onnx",
            card=card_of(model),
            devices=[agent.device],
            groups=[],
            prefix="edgerun",
            url=url,
            probation_s=0,
        )
        publish(broker.port, f"edgerun/{agent.device}/ota/manifest", seal(manifest, keys["key"]), retain=True)
        return str(manifest["update_id"])

    first = send()
    record = watcher.wait_state(agent.device, first, ENDED)
    assert record["state"] == "failed", record
    assert (
        record["reason"]
        == f"the connection to {url} closed after {size // 2} of {size} bytes; the next try resumes from there"
    )
    assert agent.journal(first)["state"] == "failed"
    assert agent.slot.primary.version == "1.0.0"

    second = send()  # the operator publishes again (a new update id): it asks only for the rest
    record = watcher.wait_state(agent.device, second, ENDED)
    assert record["state"] == "active", record
    assert agent.slot.primary.version == "1.1.0"
    assert served.ranges == [None, f"bytes={size // 2}-"]


# -- 5. set-ab during a probation ----------------------------------------------------------------------


@pytest.mark.slow
def test_set_ab_during_a_probation_is_refused_and_the_probation_still_rolls_the_update_back(
    broker: Broker, keys: dict[str, Any], rig: Any
) -> None:
    agent, watcher = rig()
    device = agent.device
    update = push_update(
        broker.port, keys["key"], unique_model(agent.state.parent / "v11", "digits_int8.onnx"), "1.1.0", device,
        probation_s=600,
    )  # fmt: skip
    uid = update["update_id"]
    assert watcher.wait_state(device, uid, ENDED | {"probation"})["state"] == "probation"
    before = agent.store.active("digits")
    assert before is not None and before.probation is not None
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before.probation["until"]))

    doc = build_command("set-ab", model="digits", devices=[device], groups=[], version="1.0.0", fraction=0.5)
    publish(broker.port, f"edgerun/{device}/cmd", seal(doc, keys["key"]))
    record = watcher.wait_state(device, doc["command_id"], ENDED)
    reason = f"digits is on probation (update {uid}) until {until}: set-ab once it has ended"
    assert record["state"] == "rejected" and record["reason"] == reason, record
    assert agent.journal(doc["command_id"]) == {"kind": "command", "state": "rejected", "reason": reason}
    assert agent.store.active("digits") == before  # no split: the probation acts on what the update left
    assert agent.slot.candidate is None

    for _ in range(40):  # every request on 1.1.0 fails: the probation's error bound is broken
        agent.metrics.error("digits", "1.1.0", agent.slot.primary.delegate)
    record = watcher.wait_state(device, uid, {"rolled_back", "failed", "active"})
    assert record["state"] == "rolled_back" and record["version"] == "1.1.0", record
    assert agent.slot.primary.version == "1.0.0"
    assert agent.store.active("digits") == Active(version="1.0.0")
