"""An OTA update whose process is killed (SIGKILL) after its download was verified, before the new
version is active and reported: every point where the kill leaves something half done.

Between a verified download and an active, reported version the device writes these, in order
(``transfer``, ``ModelStore.install``, ``OtaAgent._install`` and ``_activate``):

1. ``verified``: ``blob.part``, whole and hashed, is renamed to ``blob`` (journal ``verifying``);
2. ``installing``: the store's ``.<version>.<random>.building`` folder (a hard link to the blob,
   the card, ``manifest.json``) is renamed to ``versions/<version>``;
3. ``installed``: the version is in the store and the downloaded blob is deleted;
4. ``journal-validating``: the journal's ``validating`` is renamed into place (a hidden temporary
   file of the journal, complete, is all there is before that);
5. validation (killed there: ``test_ota_validation_faults``);
6. ``activating``: ``active.json``'s temporary file, naming the new version, is renamed over it;
7. ``journal-active`` / ``journal-probation``: the journal's final state is renamed into place (the
   store already says the new version, the old journal says ``validating``);
8. ``reporting``: the journal says ``active``; the status record kept (``last_status.json``) and
   retained (``P/ID/ota/status``) is still ``validating`` (a record is kept, then published, after
   the journal is written);
9. ``kept``: the ``active`` record is renamed into ``last_status.json``, not yet handed to the link
   (the retained record is still ``validating``). The one point the process stops right after: the
   hook makes that rename itself, as the agent asked it, and stops there.

For each point the first device, an OTA agent in a process of its own (``tests.ota_helpers.Agent``,
built as ``edgerun run --ota-key`` builds it), runs with a CPython audit hook
(``sys.addaudithook``): the hook is told of every file operation the process asks the kernel for
(``os.rename``, ``os.remove``, ``open``, with their paths) before it is made, and at the chosen one
it writes a marker and waits there, as a write stuck on a slow SD card would, until the test
SIGKILLs the process. Nothing of edgerun is replaced or patched: the operation the process stops
before is the real store's, agent's or download's own. The chunks are then cleared from the broker
(nothing can be fetched again) and a real ``edgerun run`` starts on the same state folder.

After the restart the device must be consistent: the update is resumed (or, killed once its journal
said so, reported by the start) and ends ``active`` (or, for a kill during its probation,
``rolled_back``) in exactly one record; the retained OTA status, ``last_status.json``, the journal,
``active.json`` and the retained device status all say the same; the store holds exactly the
versions ``active.json`` names, complete, and no hidden temporary file or folder; the download is
gone; and the worker has nothing left to do (a live replay of the manifest is refused after it).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgerun.ota.envelope import seal
from tests.conftest import ROOT, Broker
from tests.ota_helpers import Device, StatusWatcher, publish, push_update, unique_model
from tests.test_ota_validation_faults import clear_chunks, keys, watcher
from tests.test_sync_stop import retained_status

pytestmark = pytest.mark.slow

__all__ = ["keys", "watcher"]  # fixtures of test_ota_validation_faults, used here by name

ENDED = {"active", "rejected", "failed", "rolled_back"}
VERSION_FILES = ["manifest.json", "model.onnx", "model.onnx.card.yaml"]  # a complete version folder

#: The agent process: stops for good before the file operation ``point`` names (see the module doc).
STOPPED_BEFORE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from pathlib import Path

    port, state, model, public, device, marker, point = sys.argv[1:]
    journal = str(Path(state) / "ota" / "journal")
    inside = threading.local()  # the hook's own reads raise events too

    def says(path, key):
        try:
            return json.loads(Path(path).read_text()).get(key)
        except (OSError, ValueError):
            return None

    def renamed_into_journal(state_name):
        return lambda e, a: e == "os.rename" and a[1].startswith(journal + "/") and says(a[0], "state") == state_name

    POINTS = {
        "verified": lambda e, a: e == "os.rename" and a[0].endswith("/blob.part") and a[1].endswith("/blob"),
        "installing": lambda e, a: e == "os.rename" and a[0].endswith(".building") and a[1].endswith("/1.1.0"),
        "installed": lambda e, a: e == "os.remove" and "/ota/downloads/" in a[0] and a[0].endswith("/blob"),
        "journal-validating": renamed_into_journal("validating"),
        "activating": lambda e, a: (
            e == "os.rename" and a[1].endswith("/digits/active.json") and says(a[0], "version") == "1.1.0"
        ),
        "journal-active": renamed_into_journal("active"),
        "journal-probation": renamed_into_journal("probation"),
        # fsync_dir of the journal once the entry says active: the status record is not sent yet
        "reporting": lambda e, a: (
            e == "open"
            and a[0] == journal
            and any(says(p, "state") == "active" for p in Path(journal).glob("[!.]*.json"))
        ),
        # the final record renamed into last_status.json, before the link is given it
        "kept": lambda e, a: (
            e == "os.rename" and a[1].endswith("/ota/last_status.json") and says(a[0], "state") == "active"
        ),
    }
    AFTER = {"kept"}  # the hook makes the operation itself and stops right after it
    stop = POINTS[point]

    def hook(event, args):
        if event not in ("os.rename", "os.remove", "open") or getattr(inside, "busy", False):
            return
        inside.busy = True
        try:
            if not stop(event, [str(a) for a in args[:2]]):
                return
            if point in AFTER:
                os.replace(args[0], args[1])  # raises its own event: ignored, the hook is busy
            Path(marker).write_text(point)
        finally:
            inside.busy = False
        time.sleep(3600)  # stuck before the operation, as on a dying SD card, until SIGKILL

    from tests.ota_helpers import Agent

    Agent(int(port), Path(state), Path(model), Path(public), device)
    sys.addaudithook(hook)  # after the start: the seeding of 1.0.0 is not what is watched
    Path(marker + ".ready").write_text("ready")
    time.sleep(3600)
    """
)


def entry(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def hidden(folder: Path) -> list[str]:
    """Hidden files and folders in ``folder`` (temporary files, ``.building``, ``.removing``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def journal_tmp(state: Path) -> dict[str, Any]:
    """The one temporary file the journal holds (a write killed before its rename)."""
    left = hidden(state / "ota" / "journal")
    assert len(left) == 1 and left[0].endswith(".tmp.json"), left
    return entry(state / "ota" / "journal" / left[0])


def left_verified(state: Path, update: dict[str, Any]) -> None:
    folder = state / "ota" / "downloads" / update["sha256"]
    assert (folder / "blob.part").stat().st_size == update["size"] and not (folder / "blob").exists()
    assert sorted(p.name for p in (state / "models" / "digits" / "versions").iterdir()) == ["1.0.0"]


def left_installing(state: Path, update: dict[str, Any]) -> None:
    versions = state / "models" / "digits" / "versions"
    (building,) = versions.glob(".1.1.0.*.building")
    assert sorted(p.name for p in building.iterdir()) == VERSION_FILES
    assert [p.name for p in versions.iterdir() if not p.name.startswith(".")] == ["1.0.0"]
    assert (state / "ota" / "downloads" / update["sha256"] / "blob").is_file()


def left_installed(state: Path, update: dict[str, Any]) -> None:
    record = entry(state / "models" / "digits" / "versions" / "1.1.0" / "manifest.json")
    assert record["update_id"] == update["update_id"]
    assert (state / "ota" / "downloads" / update["sha256"] / "blob").is_file()  # the same file, linked
    assert entry(state / "models" / "digits" / "active.json")["version"] == "1.0.0"


def left_journal(expected: str) -> Callable[[Path, dict[str, Any]], None]:
    def check(state: Path, update: dict[str, Any]) -> None:
        assert journal_tmp(state)["state"] == expected
        assert (state / "models" / "digits" / "versions" / "1.1.0" / "manifest.json").is_file()

    return check


def left_activating(state: Path, update: dict[str, Any]) -> None:
    folder = state / "models" / "digits"
    (tmp,) = hidden(folder)
    assert tmp.startswith(".active.") and entry(folder / tmp)["version"] == "1.1.0", tmp
    assert entry(folder / "active.json")["version"] == "1.0.0"


def left_switched(state: Path, update: dict[str, Any]) -> None:
    assert entry(state / "models" / "digits" / "active.json")["version"] == "1.1.0"
    assert entry(state / "ota" / "journal" / f"{update['update_id']}.json")["state"] == "validating"


def left_reporting(state: Path, update: dict[str, Any]) -> None:
    assert entry(state / "models" / "digits" / "active.json")["version"] == "1.1.0"
    assert entry(state / "ota" / "journal" / f"{update['update_id']}.json")["state"] == "active"
    assert hidden(state / "ota" / "journal") == []
    assert entry(state / "ota" / "last_status.json")["state"] == "validating"


def left_kept(state: Path, update: dict[str, Any]) -> None:
    assert entry(state / "ota" / "journal" / f"{update['update_id']}.json")["state"] == "active"
    kept = entry(state / "ota" / "last_status.json")
    assert kept["update_id"] == update["update_id"] and kept["state"] == "active", kept
    assert hidden(state / "ota") == [], hidden(state / "ota")


# point -> (probation_s, what the kill left, how the update ends after the restart, the version then served)
POINTS: dict[str, tuple[int, Callable[[Path, dict[str, Any]], None], str, str]] = {
    "verified": (0, left_verified, "active", "1.1.0"),
    "installing": (0, left_installing, "active", "1.1.0"),
    "installed": (0, left_installed, "active", "1.1.0"),
    "journal-validating": (0, left_journal("validating"), "active", "1.1.0"),
    "activating": (0, left_activating, "active", "1.1.0"),
    "journal-active": (0, lambda s, u: (left_switched(s, u), left_journal("active")(s, u)), "active", "1.1.0"),
    "journal-probation": (
        600,
        lambda s, u: (left_switched(s, u), left_journal("probation")(s, u)),
        "rolled_back",
        "1.0.0",
    ),
    "reporting": (0, left_reporting, "active", "1.1.0"),
    "kept": (0, left_kept, "active", "1.1.0"),
}


def killed_before(broker: Broker, keys: dict[str, Any], base: Path, device: str, point: str) -> dict[str, Any]:
    """Push a new digits 1.1.0 to an agent process that stops before ``point``; SIGKILL it there."""
    marker = base / "stopped"
    state = base / device  # where ``Device`` keeps the state of ``device``
    args = (broker.port, state, keys["v1"], keys["public"], device, marker, point)
    agent = subprocess.Popen([sys.executable, "-c", STOPPED_BEFORE, *map(str, args)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        ready = Path(f"{marker}.ready")
        while not ready.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), agent.stderr.read().decode() if agent.poll() is not None else "the agent never started"
        v11 = unique_model(base / "v11", "digits_int8.onnx")
        probation_s = POINTS[point][0]
        update = push_update(broker.port, keys["key"], v11, "1.1.0", device, probation_s=probation_s)
        # Retained too, as `edgerun ota publish` leaves it: the agent acts on it however late it subscribed.
        publish(broker.port, f"edgerun/{device}/ota/manifest", seal(update, keys["key"]), retain=True)
        while not marker.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), agent.stderr.read().decode() if agent.poll() is not None else f"never reached {point}"
    finally:
        agent.kill()
        agent.wait()
    assert agent.returncode == -9
    update["model_bytes"] = v11.read_bytes()
    return update


@pytest.mark.parametrize("point", list(POINTS))
def test_an_update_killed_between_its_verified_download_and_its_report_ends_consistent_after_a_restart(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, tmp_path: Path, point: str
) -> None:
    _, left, ends, serves = POINTS[point]
    device = f"kill19-{point[:12]}-{secrets.token_hex(3)}"
    state = tmp_path / device
    update = killed_before(broker, keys, tmp_path, device, point)
    uid = update["update_id"]
    try:
        left(state, update)  # the kill landed where it was meant to
        clear_chunks(broker.port, update)  # nothing left to fetch: what is on the device is all there is
        seen = len(watcher.ota(device))

        restarted = Device(broker.port, tmp_path, keys["v1"], keys["public"], device=device)
        try:
            record = watcher.wait_state(device, uid, ENDED, timeout=60)
            assert record["state"] == ends, (record, restarted.log()[-3000:])
            watcher.wait_online_version(device, serves)
            replay_refused(broker, keys, watcher, device, update, seen)
            after = [r for r in watcher.ota(device)[seen:] if r.get("update_id") == uid]
            ended = [r for r in after if r["state"] in ENDED and "(replay)" not in r["reason"]]
            assert [r["state"] for r in ended] == [ends], after  # one outcome, reported once
            kept = retained_status(broker.port, f"edgerun/{device}/ota/status")
            assert kept is not None and kept["update_id"] == uid and kept["state"] == ends, kept
            status = retained_status(broker.port, f"edgerun/{device}/status")
            assert status is not None and status["models"]["digits"]["version"] == serves, status
            assert restarted.stop() == 0, restarted.log()[-3000:]
        finally:
            restarted.stop()

        # What is on disk says what the broker says, and nothing half done is left.
        ota = state / "ota"
        assert entry(ota / "journal" / f"{uid}.json")["state"] == kept["state"]
        assert entry(ota / "last_status.json") == kept  # a later start publishes that record again
        assert sorted(p.name for p in (ota / "journal").iterdir()) == [f"{uid}.json"]
        assert hidden(ota) == [] and list((ota / "downloads").iterdir()) == []
        store = state / "models" / "digits"
        active = entry(store / "active.json")
        previous = ["1.0.0"] if serves == "1.1.0" else []
        assert active == {"version": serves, "previous": previous, "probation": None, "ab": None}, active
        assert sorted(p.name for p in store.iterdir()) == ["active.json", "versions"]
        assert sorted(p.name for p in (store / "versions").iterdir()) == sorted({serves, *previous})
        if serves == "1.1.0":
            installed = store / "versions" / "1.1.0"
            assert sorted(p.name for p in installed.iterdir()) == VERSION_FILES
            assert (installed / "model.onnx").read_bytes() == update["model_bytes"]
            assert entry(installed / "manifest.json")["update_id"] == uid
    finally:
        publish(broker.port, f"edgerun/{device}/ota/manifest", b"", retain=True)


def replay_refused(
    broker: Broker, keys: dict[str, Any], watcher: StatusWatcher, device: str, update: dict[str, Any], seen: int
) -> None:
    """Publish ``update`` again, live, until the device refuses it as a replay (after its ``seen`` first records).

    A live replay is answered after whatever the restart queued before it: the worker is done then.
    It is sent again each second: the device says it is online (with the version a start serves)
    before the broker has its subscription to manifests, and a live message before that reaches no one.
    """
    deadline = time.monotonic() + 30
    while True:
        publish(broker.port, f"edgerun/{device}/ota/manifest", seal(update_manifest(update), keys["key"]))
        again = time.monotonic() + 1
        while time.monotonic() < again:
            if [r for r in watcher.ota(device)[seen:] if "(replay)" in r.get("reason", "")]:
                return
            time.sleep(0.05)
        assert time.monotonic() < deadline, watcher.ota(device)[seen:]


def update_manifest(update: dict[str, Any]) -> dict[str, Any]:
    """The signed document of ``update`` (what ``push_update`` returned, less this module's additions)."""
    return {k: v for k, v in update.items() if k != "model_bytes"}
