"""The device's OTA agent: manifests and commands in, a verified model serving out, status at every step.

Messages arrive on the link's thread and are only queued there; one worker
thread handles them in order, so a 50 MB download never stalls MQTT. Every step
publishes a retained ``P/ID/ota/status`` record (PROTOCOL.md); every refusal is
``rejected`` with the reason in plain words, every operational failure
``failed``; in neither case is the active model touched. Two refusals are the
exception, published on the same topic but not retained, so watchers see them while
the retained record stays the outcome of the last update or command: a replay's (an
id already used), and that of a payload refused before it was verified and read (an
unknown key, a bad signature, garbage), which names no id of its own. The broker hands
a retained manifest again at every connect: a retained copy of bytes refused unread
since the start is passed over quietly.

A rollback, automatic or commanded, walks back through the model's history
(``ModelStore.roll_back``): it never brings back a version rolled back from.

State kept in ``<state dir>/ota``::

    journal/<id>.json   one per update or command: its state, the payload's hash, the manifest
    clock.json          the newest ``issued`` ever verified (see ``policy``)
    last_status.json    the last retained ``P/ID/ota/status`` record, the bytes published
    downloads/<sha256>/ chunks and partial blobs, resumed after a restart; deleted (at the next
                        update or start) once no unfinished update needs them

Restart rules: an update not yet finished is resumed from its journal; a model
that was on probation when the process died is rolled back (a crash during
probation counts against the new version). An update that another update or a
command replaced is closed at once (journal ``superseded``, status ``failed``
with the reason) and is never resumed; nor is one whose model's active version
changed since it was received, so a restart never installs an older version
over a newer active one. A start first deletes the temporary files of writes killed
before their rename (a hidden ``.<id>.<random>.tmp.json`` is never a journal entry),
then publishes again, verbatim, the last retained status record (``last_status.json``,
written before each is published): the process may have ended before the broker had it.

A probation watcher outlives any error while it ends the probation (a full or failing disk):
it logs it and tries again until the end is made and recorded. A model a config reload stops
serving during its probation is rolled back in the store, as a restart would.

Changes to the store's active pointers and to the slots happen under one lock:
the worker and the probation watchers never act on a pointer the other is
changing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.backends.base import detect_format, one_line
from edgerun.card import ModelCard
from edgerun.errors import ConfigError, EdgerunError, ModelLoadError, UpdateFailed, UpdateRejected, shown
from edgerun.files import atomic_write
from edgerun.inputs import NPY_ERRORS, load_npy, npy_reason
from edgerun.model import Model
from edgerun.ota.envelope import TrustedKeys, json_object, loads_utf8, open_envelope
from edgerun.ota.manifest import Command, Manifest, parse_command, parse_manifest, version_tuple
from edgerun.ota.policy import Clock, check_manifest, check_targets, check_times
from edgerun.ota.slot import ModelSlot
from edgerun.ota.store import Active, ModelStore, nothing_earlier
from edgerun.ota.transfer import discard, download
from edgerun.sync.link import Message, MqttLink
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["OtaAgent", "OtaSettings"]

TERMINAL = frozenset({"active", "rejected", "failed", "rolled_back"})
#: Journal states after which an update is never touched again: the wire's terminal states, and
#: ``superseded`` (another update or a command replaced it; reported as ``failed``, PROTOCOL.md has
#: no state of its own for it).
DONE = TERMINAL | {"superseded"}
#: The state ``_read_entry`` gives a journal entry that cannot be read (a failing SD card, a file
#: damaged by hand): never resumed, and its id still counts as used (a replay of it is refused).
DAMAGED = "damaged"
#: Every state a ``P/ID/ota/status`` record may say (PROTOCOL.md).
STATES = TERMINAL | {"received", "downloading", "verifying", "validating", "probation"}
#: In the agent's state folder: the last retained status record, as published (``OtaAgent._status``).
LAST_STATUS = "last_status.json"
#: How many refused unread payloads (``OtaAgent._refused_unread``) the agent remembers, by SHA-256:
#: far more than the retained manifests and commands a device subscribes to (its own topics and
#: one per group), so a flood of forged payloads must be this long to make a retained copy refused again.
UNREAD_KEPT = 64
_FORMAT_NAMES = {"onnx": "an ONNX", "tflite": "a TFLite"}
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LoadModel = Callable[[Path, ModelCard], Model]


@dataclass(frozen=True)
class _Ending:
    """How a probation (or a rollback) ended: the records its switch in the store and slot still needs.

    Kept apart from the switch so that a watcher whose journal write failed writes the records
    again without switching twice.
    """

    ident: str | None
    model: str
    version: str
    state: str  # the journal's and the status record's
    reason: str  # the status record's
    journal_reason: str | None = None  # the journal's, when it keeps one
    command: bool = False


@dataclass(frozen=True)
class OtaSettings:
    """Device-side OTA limits and defaults (config ``ota``)."""

    trusted_keys: tuple[str, ...]
    max_bytes: int = 256 * 1024 * 1024
    keep: int = 2
    clock_skew_s: float = 300.0
    download_timeout_s: float = 120.0
    probation_s: float = 300.0
    max_error_rate: float = 0.05
    max_p95_ratio: float = 1.5
    min_samples: int = 20


class OtaAgent:
    """Handles manifests and commands for the models this process serves."""

    def __init__(
        self,
        settings: OtaSettings,
        *,
        link: MqttLink,
        topics: Topics,
        groups: tuple[str, ...],
        store: ModelStore,
        slots: dict[str, ModelSlot],
        metrics: Metrics,
        state_dir: Path,
        load_model: LoadModel,
    ) -> None:
        self.settings = settings
        self.trusted = TrustedKeys.load(settings.trusted_keys)
        self.link, self.topics, self.groups = link, topics, groups
        self.store, self.slots, self.metrics = store, slots, metrics
        self.load_model = load_model
        self.dir = Path(state_dir) / "ota"
        self.journal = self.dir / "journal"
        self.downloads = self.dir / "downloads"
        for folder in (self.journal, self.downloads):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a full disk, no inode left, a file in the way: one line, not a traceback
                raise ConfigError(f"state_dir {state_dir}: cannot create {folder}: {exc.strerror or exc}") from exc
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probations: dict[str, threading.Thread] = {}
        self._lock = threading.RLock()  # held while active pointers and slots change
        # Held from keeping a retained status record to handing it to the link: the worker and the
        # probation watchers publish in the order they keep, so ``last_status.json`` is the last sent.
        self._publishing = threading.Lock()
        self.events: list[dict[str, Any]] = []  # the last status records, for status pages
        self._unread: OrderedDict[str, None] = OrderedDict()  # SHA-256 of refused unread payloads, oldest first

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Tidy what a killed process left, report its last outcome again, roll back what was on probation
        at a crash, restore A/B splits, resume unfinished updates, subscribe.

        Call it before the link starts: it only hands work to the link (published once connected), and
        its subscriptions are then registered before the first CONNACK, right after which the broker
        delivers the manifests and commands it kept for the device while it was offline (the link drops
        a message no handler is registered for, and commands are not retained: one would be lost)."""
        self._remove_temporary_files()
        self._report_last()
        for name, active in list(self.store):
            if active.probation is not None and name in self.slots:
                self._rollback(
                    name,
                    active,
                    f"the device restarted during the probation of {active.version}",
                    active.probation.get("update_id"),
                )
            elif active.ab is not None and name in self.slots and self.slots[name].candidate is None:
                self._restore_candidate(name, active)
        self._tidy_downloads()
        for path in self._entries():
            entry = _read_entry(path)
            if entry.get("state") == DAMAGED:
                log.warning(
                    "OTA: the journal entry %s is damaged (%s): it is not resumed, and its id stays refused as used",
                    path,
                    entry["reason"],
                )
            elif entry.get("kind") == "model-update" and entry.get("state") not in DONE:
                self._work.put(("resume", entry))
        for topic in (self.topics.manifest, *(self.topics.group_manifest(g) for g in self.groups)):
            self.link.subscribe(topic, lambda m: self._work.put(("manifest", m)))
        for topic in (self.topics.cmd, *(self.topics.group_cmd(g) for g in self.groups)):
            self.link.subscribe(topic, lambda m: self._work.put(("command", m)))
        self._thread = threading.Thread(target=self._run, name="ota-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (an interrupted download resumes at the next start)."""
        self._stop.set()
        self._work.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout=10)

    def holding_slots(self) -> AbstractContextManager[Any]:
        """Hold back activations, rollbacks and probation ends while the caller checks which version
        is active and swaps a slot accordingly (a SIGHUP reload): otherwise an update activated
        between the two would be swapped out again by the older version."""
        return self._lock

    def idle(self) -> bool:
        """True when nothing is queued or in progress (for tests and clean shutdowns)."""
        return self._work.unfinished_tasks == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            kind, item = self._work.get()
            try:
                if kind == "manifest":
                    self._on_manifest(item)
                elif kind == "command":
                    self._on_command(item)
                elif kind == "resume":
                    self._resume(item)
            except Exception:  # a bug must not end OTA for good
                log.exception("OTA: handling a %s failed", kind)
            finally:
                self._work.task_done()

    # -- status and journal -----------------------------------------------------------
    def _status(
        self,
        ident: str | None,
        state: str,
        *,
        model: str | None = None,
        version: str | None = None,
        progress: float | None = None,
        reason: str = "",
        command: bool = False,
        retain: bool = True,
    ) -> None:
        """Publish a status record on ``P/ID/ota/status``: retained, unless ``retain`` is False
        (the refusal of a replay or of a payload refused unread: the retained record stays the
        outcome of the last update or command, ``_replayed``, ``_refused_unread``).

        A retained record is kept in ``last_status.json`` first, as published (``_keep``), for a
        start to publish again (``_report_last``); a record not retained is never kept.
        """
        record: dict[str, Any] = {
            "schema": 1,
            "command_id" if command else "update_id": ident,
            "model": model,
            "version": version,
            "state": state,
            "progress": round(progress if progress is not None else (1.0 if state in TERMINAL else 0.0), 3),
            "reason": reason,
            "ts": int(time.time()),
        }
        self.events = [*self.events[-49:], record]
        log.info("OTA %s: %s%s", _named(ident, model, version, command), state, f" ({reason})" if reason else "")
        payload = json.dumps(record).encode()
        if not retain:
            self.link.publish(self.topics.ota_status, payload, qos=1, retain=False)
            return
        with self._publishing:
            self._keep(payload)
            self.link.publish(self.topics.ota_status, payload, qos=1, retain=True)

    def _keep(self, payload: bytes) -> None:
        """Replace ``last_status.json`` with ``payload``, the retained record about to be published.

        Written to a hidden temporary file and renamed over it (never half a record), without an
        fsync: the file must outlive the process (a kill, a crash), which the page cache gives, not a
        power cut; after one, the journal says how each update ended (``_report_last``). So it costs
        two system calls per record, not two flash writes (a forged manifest's refusal is not retained,
        so never kept: a flood of them writes nothing). A record that cannot be kept (a full disk)
        is published all the same; the older one kept is deleted, so a start never publishes a
        record older than the one the broker holds.
        """
        path = self.dir / LAST_STATUS
        tmp = path.with_name(f".{path.stem}.{os.urandom(4).hex()}.tmp{path.suffix}")  # as ``atomic_output``
        try:
            try:
                tmp.write_bytes(payload)
                os.replace(tmp, path)
            except BaseException:
                with suppress(OSError):
                    tmp.unlink()
                raise
        except OSError as exc:
            try:
                path.unlink(missing_ok=True)
                then = "a restart publishes no record again until one is kept"
            except OSError:
                then = "a restart may publish an older record again"
            log.warning("OTA: cannot keep the status record in %s (%s): %s", path, exc.strerror or one_line(exc), then)

    def _replayed(self, kind: str, ident: str, model: str, version: str | None) -> None:
        """Refuse a replay (an id already used): a ``rejected`` record that is not retained.

        ``P/ID/ota/status`` holds one retained record, and a record names its id: a retained
        ``rejected`` record under the replayed id would replace that update's (or command's) own
        outcome, so an update that serves would show as rejected in the fleet view. Published live
        only, it tells whoever watches now (an operator who sent a changed manifest under the same
        id) why nothing happened, and the retained record stays the original's. The device does not
        act on a replay at all (PROTOCOL.md: never twice on one id).
        """
        what = "command" if kind == "command_id" else "update"
        reason = (
            f"{kind} {ident} was already used (replay): not acted on; the retained record is the "
            f"{what}'s own (a new {what} needs an id of its own)"
        )
        self._status(
            ident, "rejected", model=model, version=version, reason=reason, command=what == "command", retain=False
        )

    def _refused_unread(self, message: Message, claimed: dict[str, Any], reason: str, *, command: bool) -> None:
        """Refuse a payload that failed before it was verified and read (an unknown key, a bad
        signature, garbage, a signed document that is no manifest or command): a ``rejected`` record
        that is not retained.

        Such a payload is no update or command of this device: the id, model and version its record
        repeats are only what it claims (anyone may send it, naming any id, or none). Retained, its
        refusal would replace the outcome of the device's last real update or command, and name a
        stranger's choice of id as rejected. And a retained manifest comes back at every connect and
        start: its refusal, retained again each time, would put itself back over every outcome since.
        Published live only, it reaches whoever watches now (``ota publish --wait``, ``ota status
        --watch``). A retained copy of bytes refused here since the start is passed over with a DEBUG
        line: the broker repeating itself is no news (the first copy after a start is refused, one
        INFO line, so each start's log says the manifest is still there). Remembered in memory only,
        so it writes nothing, however many forged payloads arrive.
        """
        digest = hashlib.sha256(message.payload).hexdigest()
        if message.retained and digest in self._unread:
            log.debug("OTA: the retained copy on %s of a payload refused already: ignored", message.topic)
            return
        self._unread[digest] = None
        self._unread.move_to_end(digest)
        while len(self._unread) > UNREAD_KEPT:
            self._unread.popitem(last=False)
        self._status(
            claimed.get("command_id" if command else "update_id"),
            "rejected",
            model=claimed.get("model"),
            version=claimed.get("version"),
            reason=reason,
            command=command,
            retain=False,
        )

    def _entry(self, ident: str) -> Path:
        if not _IDENT.match(ident):  # ids come from verified documents; this is defence in depth
            raise UpdateRejected(f"identifier {ident[:40]!r} is not a valid update or command id")
        return self.journal / f"{ident}.json"

    def _journal(self, ident: str, **fields: Any) -> dict[str, Any]:
        path = self._entry(ident)
        entry = _read_entry(path) if path.exists() else {}
        if entry.get("state") == DAMAGED:
            entry = {}  # written whole again from here
        entry.update(fields)
        atomic_write(path, json.dumps(entry).encode())
        return entry

    def _seen(self, ident: str) -> dict[str, Any] | None:
        path = self._entry(ident)
        return _read_entry(path) if path.exists() else None

    def _entries(self) -> list[Path]:
        """The journal's entries, by name. A hidden ``.<id>.<random>.tmp.json`` is a journal write
        that a killed process left before its rename: never an entry (it may say a state the entry
        never reached, and resumed it would close the update again as ``superseded``)."""
        return sorted(p for p in self.journal.glob("*.json") if not p.name.startswith("."))

    def _remove_temporary_files(self) -> None:
        """Delete the temporary files that writes killed before their rename left (``atomic_write``,
        ``_keep``): in the journal, beside ``clock.json`` and ``last_status.json``, and beside the
        ``active.json`` of each model served.

        Nothing writes them yet: the worker and the probation watchers start later, and the only
        other writer of an ``active.json`` (the first start of a model, ``serve_from_store``) writes
        it before the model is served."""
        left = [*self.journal.glob(".*.tmp.json"), *self.dir.glob(".*.tmp.json")]
        for name in self.slots:
            left += (self.store.root / name).glob(".active.*.tmp.json")
        for path in left:
            try:
                path.unlink()
            except OSError as exc:
                log.warning("OTA: cannot remove %s, left by a process killed while writing it: %s", path, exc)
            else:
                log.info("OTA: removed %s, left by a process killed while writing it", path)

    def _report_last(self) -> None:
        """Publish again, retained, the last retained ``P/ID/ota/status`` record, as it was published.

        The link holds a record in memory until the broker has it, so a process killed (or stopped
        while the broker was out of reach) may have left the retained record on an earlier one: an
        update's ``validating`` when it is ``active`` on disk, for good. ``_status`` keeps each retained
        record in ``last_status.json`` before it publishes it; here that record is published again
        verbatim, its ``ts`` and its reason included. It is the newest this device retained, so it never
        replaces a newer one (short of a power cut: ``_keep``), and no file date decides anything (a
        clock set back moves them).

        One record is built instead: when the one kept is a step of an update (``validating``) whose
        journal already says how it ended (``_unreported``). And one is not published, as if no file were
        kept: the refusal of a payload that failed verification, which this release never retains but an
        earlier one (until 2026-12-07) retained and kept (``_kept_unverified``); published again, it
        would go back over the outcome of the device's last real update or command at every start,
        naming a stranger's choice of id, until the next outcome replaced it. It is left in the file for
        that outcome to replace, with one INFO line at each start. A missing file publishes nothing; a
        damaged one (a power cut: nothing here is fsynced) nothing but one WARNING line.
        """
        path = self.dir / LAST_STATUS
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return  # nothing retained yet (or not since this release)
        except OSError as exc:
            log.warning("OTA: cannot read %s (%s): no status record is published again", path, exc.strerror or exc)
            return
        record, why = _kept_record(raw)
        if record is None:
            log.warning("OTA: %s is damaged (%s): no status record is published again", path, why)
            return
        if self._unreported(record):
            return
        command = "command_id" in record
        ident, model, version = (record.get(k) for k in ("command_id" if command else "update_id", "model", "version"))
        named = _named(ident, model, version, command)
        if self._kept_unverified(record, ident):
            log.info(
                "OTA %s: its status record kept in %s is the refusal of a payload that failed verification (%s), "
                "retained by an earlier release: not published again (such a refusal is live only)",
                named,
                path,
                record.get("reason"),
            )
            return
        log.info("OTA %s: publishing its retained status record again (%s)", named, record["state"])
        self.events = [*self.events[-49:], record]
        with self._publishing:
            self.link.publish(self.topics.ota_status, raw, qos=1, retain=True)

    def _kept_unverified(self, record: dict[str, Any], ident: Any) -> bool:
        """Whether the record kept is the refusal of a payload that failed verification (an unknown key,
        a bad signature, garbage, a signed document that is no manifest or command), as a release before
        2026-12-07 retained and kept it; ``ident`` is the ``update_id`` or ``command_id`` it names.

        Such a refusal was never journaled: it names what the payload claims, any id or none. Every
        other ``rejected`` record (an update or command refused once it was verified) is written only
        after its journal entry says ``rejected`` with the same reason, and that entry stays so (an id
        is never used twice). So a ``rejected`` record is one of an unverified payload when its id is
        none or not a valid id, when the journal has no entry for it, or when the entry says otherwise
        (a forged payload claiming a real update's id). A damaged or unreadable entry tells nothing:
        the record is published again, as before.
        """
        if record["state"] != "rejected":
            return False
        if not isinstance(ident, str) or not _IDENT.match(ident):
            return True  # a verified update or command names a valid id
        try:
            entry = self._seen(ident)
        except (OSError, ValueError):
            return False
        if entry is None:
            return True
        if entry.get("state") == DAMAGED:
            return False
        reasons = {str(entry.get("reason") or ""), _reported(entry)}  # as published, or rebuilt (``_unreported``)
        return entry.get("state") != "rejected" or record.get("reason") not in reasons

    def _unreported(self, record: dict[str, Any]) -> bool:
        """Report how an update ended when the record kept is one of its steps: True if it did.

        Its journal says how it ended, and its record would have been kept next, but the process
        was killed in between (or the power cut took the record kept, never fsynced, while the
        journal was): that outcome was never published. Its record is built from the journal (a
        ``ts`` of now, the journal's reason), published, and kept. A kept outcome (``rejected`` ...)
        is never rebuilt, even if the journal of the id it names says otherwise: anyone may send a
        manifest naming an id, and its refusal is what was retained.
        """
        ident = record.get("update_id")
        if record["state"] in TERMINAL or not isinstance(ident, str) or not _IDENT.match(ident):
            return False
        try:
            entry = self._seen(ident)
        except (OSError, ValueError):
            return False  # the start's own reading of the journal says why
        if not isinstance(entry, dict) or entry.get("state") not in TERMINAL:
            return False  # unfinished: it is resumed and reports for itself; superseded: closed quietly
        model, version = record.get("model"), record.get("version")
        reason = _reported(entry)
        self._status(
            ident,
            str(entry["state"]),
            model=None if model is None else str(model),
            version=None if version is None else str(version),
            reason=reason,
        )
        return True

    def _tidy_downloads(self) -> None:
        """Delete the download folders that no unfinished update needs.

        A failed download keeps its chunks until the next update starts (or the next start), so
        the same file published again resumes from them; a refused, replaced or finished update's
        are deleted then at the latest, so partial downloads never pile up.
        """
        needed = set()
        for path in self._entries():
            entry = _read_entry(path)
            try:
                if entry.get("kind") == "model-update" and entry.get("state") not in DONE:
                    needed.add(str(entry["manifest"]["sha256"]))
            except (KeyError, TypeError):
                continue  # not an update this agent could resume
        for folder in self.downloads.iterdir():
            if folder.name not in needed:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("OTA: removed the download %s (no unfinished update needs it)", folder.name)

    def _clock(self) -> Clock:
        try:
            newest = float(json.loads((self.dir / "clock.json").read_text())["newest_issued"])
        except (OSError, ValueError, KeyError, TypeError):  # damaged ([1], null too): as if there were none
            newest = 0.0
        return Clock.current(newest, self.settings.clock_skew_s)

    def _saw_issued(self, issued: float) -> None:
        if issued > self._clock().newest_issued:
            atomic_write(self.dir / "clock.json", json.dumps({"newest_issued": issued}).encode())

    # -- manifests -----------------------------------------------------------------------
    def _on_manifest(self, message: Message) -> None:
        if not message.payload:
            log.debug("OTA: empty message on %s (a retained manifest cleared): ignored", message.topic)
            return
        claimed = _claimed(message.payload)
        try:
            document = open_envelope(message.payload, self.trusted)
            digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
            manifest = parse_manifest(document)
        except UpdateRejected as exc:
            self._refused_unread(message, claimed, str(exc), command=False)
            return
        seen = self._seen(manifest.update_id)
        if seen is not None:
            if seen.get("state") == DAMAGED:  # its digest is lost: a retained copy is taken for the same update
                same = message.retained
            else:
                same = seen.get("digest") == digest and (message.retained or seen.get("state") not in DONE)
            if same:
                log.debug("OTA %s: already handled (retained copy)", manifest.update_id)
                return
            self._replayed("update_id", manifest.update_id, manifest.model, manifest.version)
            return
        try:
            self._check(manifest)
        except UpdateRejected as exc:
            self._journal(manifest.update_id, kind="model-update", state="rejected", digest=digest, reason=str(exc))
            self._status(
                manifest.update_id, "rejected", model=manifest.model, version=manifest.version, reason=str(exc)
            )
            return
        self._saw_issued(manifest.issued)
        active = self.store.active(manifest.model)
        self._journal(
            manifest.update_id,
            kind="model-update",
            state="received",
            digest=digest,
            manifest=document,
            base=active.version if active else None,  # what it updates; a resume checks it is still so
        )
        self._status(manifest.update_id, "received", model=manifest.model, version=manifest.version)
        self._apply(manifest)

    def _check(self, manifest: Manifest) -> None:
        if manifest.model not in self.slots:
            raise UpdateRejected(f"this device does not serve a model named {manifest.model!r}")
        blob, limit = manifest.source.mqtt, self.link.settings.max_message_bytes
        if blob is not None and min(blob.chunk_size, manifest.size) > limit:  # the link drops them unread
            raise UpdateRejected(
                f"chunk_size {blob.chunk_size} bytes is above the {limit}-byte message limit of this "
                "device's MQTT link: its chunks could never arrive"
            )
        active = self.store.active(manifest.model)
        check_manifest(
            manifest,
            device=self.topics.device,
            groups=self.groups,
            clock=self._clock(),
            active_version=active.version if active else None,
            max_bytes=self.settings.max_bytes,
            blob_prefix=f"{self.topics.prefix}/blobs",
        )
        manifest.model_card()
        name, version = manifest.model, manifest.version
        if self.store.installed(name, version):
            record = self._store_record(name, version)
            if record.get("sha256") != manifest.sha256:
                how = "with other bytes" if record else "and its record in the store is damaged"
                raise UpdateRejected(
                    f"{name} {version} is installed here already, {how}: an update needs a version of its own"
                )

    def _store_record(self, name: str, version: str) -> dict[str, Any]:
        """The store's record of an installed version; ``{}`` where it is damaged (one WARNING line): it then
        matches no update, and the version's copy is checked again before anything serves it."""
        try:
            return self.store.manifest(name, version)
        except (OSError, ValueError) as exc:
            log.warning("OTA: the record of %s %s in the store cannot be read (%s)", name, version, exc)
            return {}

    def _resume(self, entry: dict[str, Any]) -> None:
        manifest = parse_manifest(entry["manifest"])
        uid, name, version = manifest.update_id, manifest.model, manifest.version
        active = self.store.active(name) if name in self.slots else None
        if (
            active is not None
            and active.version == version
            and self.store.installed(name, version)
            and self._store_record(name, version).get("update_id") == uid
        ):  # killed after switching over, before the journal said so
            self._journal(uid, state="active")
            self._status(uid, "active", model=name, version=version, reason="activated before a restart")
            return
        stale = self._stale(manifest, entry, active)
        if stale is not None:
            # Closed quietly: the retained status record belongs to whatever replaced it.
            log.info("OTA %s %s %s: not resumed after a restart: %s", uid, name, version, stale)
            self._journal(uid, state="superseded", reason=stale)
            self._tidy_downloads()
            return
        log.info("OTA %s: resuming after a restart (was %s)", uid, entry.get("state"))
        self._apply(manifest)

    def _stale(self, manifest: Manifest, entry: dict[str, Any], active: Active | None) -> str | None:
        """Why an unfinished update must not be resumed, or None when it may be."""
        name, version = manifest.model, manifest.version
        if entry.get("state") == "probation":
            # Its own probation was rolled back in start(); a probation left here was replaced.
            return "it was on probation and another update or a command replaced it"
        if active is None:
            return f"this device no longer serves a model named {name!r}"
        base = entry.get("base")
        if manifest.allow_downgrade:
            if base is not None and active.version != base:
                return f"{name} {active.version} became active after it was received (it was to replace {base})"
        elif version_tuple(version) <= version_tuple(active.version):
            return f"{name} {active.version} is active, not older than {version}"
        return None

    def _apply(self, manifest: Manifest) -> None:
        """Download, verify, install, validate, activate; every step reported.

        The new version is held in the store from install to activation, so another update's
        probation ending meanwhile cannot prune it.
        """
        name, version = manifest.model, manifest.version
        self._tidy_downloads()
        with self.store.hold(name, version):
            model = self._install(manifest)
            if model is not None:
                self._activate(manifest, model)

    def _not_activated(self, manifest: Manifest, model: Model, exc: Exception) -> None:
        """The store refused to switch to the new version (it vanished, the disk failed): nothing
        switched, so the update ends ``failed`` with the reason, never left ``validating``."""
        uid, name, version = manifest.update_id, manifest.model, manifest.version
        reason = (
            str(exc)
            if isinstance(exc, EdgerunError)
            else f"cannot activate {name} {version}: {type(exc).__name__}: {one_line(exc)}"
        )
        log.warning("OTA %s: %s", uid, reason)
        model.close()
        self._forget(name, version)
        self._journal(uid, state="failed", reason=reason)
        self._status(uid, "failed", model=name, version=version, reason=reason)

    def _install(self, manifest: Manifest) -> Model | None:
        """Download, verify, install and validate; the loaded model, or None when the update ended here."""
        uid, name, version = manifest.update_id, manifest.model, manifest.version
        last = [0.0]

        def progress(fraction: float) -> None:
            if fraction >= 1.0 or time.monotonic() - last[0] > 1.0:
                last[0] = time.monotonic()
                self._status(uid, "downloading", model=name, version=version, progress=fraction)

        step = "downloading"

        def verifying() -> None:
            # Called by download() once every byte is there, before the size and SHA-256 are
            # checked: a blob refused for them is reported verifying first, as the step it failed.
            nonlocal step
            step = "verifying"
            self._journal(uid, state="verifying")
            self._status(uid, "verifying", model=name, version=version, progress=1.0)

        try:
            card = manifest.model_card()
            if self._in_store(manifest):
                log.info("OTA %s: %s %s is in the store already (installed before a restart)", uid, name, version)
                discard(self.downloads, manifest.sha256)  # a kill after the install, before its download went
            else:
                self._journal(uid, state="downloading")
                blob = download(
                    manifest,
                    link=self.link,
                    downloads=self.downloads,
                    progress=progress,
                    verifying=verifying,
                    timeout_s=self.settings.download_timeout_s,
                    stop=self._stop,
                )
                _check_format(blob, manifest.format)
                record = {
                    "update_id": uid,
                    "sha256": manifest.sha256,
                    "size": manifest.size,
                    "format": manifest.format,
                    "installed": int(time.time()),
                }
                step = "installing"
                try:
                    self.store.install(name, version, manifest.format, blob, record, card.to_dict(), move=True)
                except OSError as exc:  # the store's disk (full, read-only): not the update's fault, so not rejected
                    cause = exc.strerror or one_line(exc)
                    raise UpdateFailed(f"cannot install {name} {version} in the store: {cause}") from exc
                discard(self.downloads, manifest.sha256)
            step = "validating"
            self._journal(uid, state="validating")
            self._status(uid, "validating", model=name, version=version, progress=1.0)
            model = self._load_and_validate(name, version, card, manifest)
        except UpdateFailed as exc:
            if step == "installing":
                self._forget(name, version)  # there only when the install's last step (an fsync) failed
            if self._stop.is_set():
                return None  # resumes at the next start
            # What was downloaded (chunks, or the whole blob when the store refused it) stays until the
            # next update or start (_tidy_downloads): published again, the update resumes from it.
            self._journal(uid, state="failed", reason=str(exc))
            self._status(uid, "failed", model=name, version=version, reason=str(exc))
            return None
        except EdgerunError as exc:
            reason = str(exc)
            discard(self.downloads, manifest.sha256)
            self._forget(name, version)
            self._journal(uid, state="rejected", reason=reason)
            self._status(uid, "rejected", model=name, version=version, reason=reason)
            return None
        except Exception as exc:  # a bug or a vendor error: end the update, never leave it half done
            reason = f"unexpected error while {step}: {type(exc).__name__.lstrip('_')}: {one_line(exc)}"
            log.warning("OTA %s: %s", uid, reason)
            log.debug("OTA %s: the unexpected error", uid, exc_info=True)
            state = "rejected" if step == "validating" else "failed"  # validating: the model is not proven
            discard(self.downloads, manifest.sha256)
            self._forget(name, version)
            self._journal(uid, state=state, reason=reason)
            self._status(uid, state, model=name, version=version, reason=reason)
            return None
        return model

    def _in_store(self, manifest: Manifest) -> bool:
        """Whether this very update installed its version before the process ended (killed while
        validating): it is validated from the store then, not downloaded again. A copy damaged since
        is left for the install to replace, after a new download."""
        name, version = manifest.model, manifest.version
        if not self.store.installed(name, version):
            return False
        try:
            record = self.store.manifest(name, version)
            if record.get("update_id") != manifest.update_id or record.get("sha256") != manifest.sha256:
                return False
            self.store.verified_file(name, version)
        except (OSError, ValueError, ModelLoadError) as exc:
            log.warning("OTA %s: the copy in the store is unusable (%s); downloading it again", manifest.update_id, exc)
            return False
        return True

    def _load_and_validate(self, name: str, version: str, card: ModelCard, manifest: Manifest) -> Model:
        path = self.store.verified_file(name, version)  # hashed, then opened: nothing rewrites it between
        model = self.load_model(path, card)
        current = self.slots[name].primary
        for new, old in zip(model.inputs, current.inputs):
            if new.shape[1:] != old.shape[1:]:
                raise UpdateRejected(f"input {new.describe()} differs from the serving model's {old.describe()}")
        samples = manifest.validation.samples if manifest.validation else ()
        if not samples:
            outputs = model.run(*model.constant_inputs())
            if not all(np.all(np.isfinite(o)) for o in outputs):
                raise UpdateRejected("the model gives non-finite outputs on a synthetic input")
        for i, sample in enumerate(samples):
            x, expected = _npy(sample.input, f"sample {i} input"), _npy(sample.output, f"sample {i} output")
            for what, array in (("input", x), ("output", expected)):
                if array.dtype.kind not in "biuf":  # strings, dates, records: nothing a model takes or gives
                    raise UpdateRejected(f"validation sample {i}: {what} dtype {array.dtype.str} is not numeric")
            got = model.run(x)[0]
            if got.shape != expected.shape or not np.allclose(got, expected, atol=sample.atol, rtol=0):
                worst = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
                raise UpdateRejected(f"validation sample {i} fails: max difference {worst:.4g} > atol {sample.atol}")
        return model

    def _forget(self, name: str, version: str) -> None:
        """Delete the version an update that ended here installed, unless ``active.json`` names it
        (``Active.needed``: the active version, a rollback target, an A/B candidate): an update that
        failed must never take one of those with it."""
        active = self.store.active(name)
        named = set() if active is None else active.needed()
        if self.store.installed(name, version) and version not in named:
            try:
                self.store.remove(name, version)  # set aside first: a crash never leaves a part of it listed
            except OSError as exc:  # left for the next prune or start; the update's own outcome stands
                log.warning("OTA: could not remove %s %s from the store: %s", name, version, exc)

    def _bound(self, manifest: Manifest, field: str) -> float:
        """A probation bound: the manifest's ``rollout`` value, else the device's own setting."""
        value = getattr(manifest.rollout, field, None)
        return float(getattr(self.settings, field) if value is None else value)

    def _activate(self, manifest: Manifest, model: Model) -> None:
        uid, name, version = manifest.update_id, manifest.model, manifest.version
        rollout = manifest.rollout
        probation_s = self._bound(manifest, "probation_s")
        slot = self.slots[name]
        previous = slot.primary.version
        probation = {"update_id": uid, "from": previous, "until": time.time() + probation_s} if probation_s else None
        fraction = rollout.ab_fraction if rollout else None
        with self._lock:
            current = self.store.active(name)
            if current is not None:
                self._close_replaced(name, current, f"update {uid} ({name} {version})")
            try:  # the switch on disk first: when it fails, nothing has changed
                if fraction is not None:
                    assert current is not None
                    current.ab = {"version": version, "fraction": fraction}
                    current.probation = probation
                    self.store.set_active(name, current)
                else:
                    self.store.activate(name, version, probation=probation)
            except Exception as exc:
                self._not_activated(manifest, model, exc)
                return
            if fraction is not None:
                slot.set_candidate(model, fraction)
            else:
                slot.swap(model)
                slot.set_candidate(None)  # a candidate of the update it replaced serves no more
            self._publish_models()
            self._journal(uid, state="probation" if probation else "active")
        if not probation:
            self._status(uid, "active", model=name, version=version)
            return
        self._status(
            uid,
            "probation",
            model=name,
            version=version,
            progress=1.0,
            reason=f"serving {f'a fraction {fraction:.2f} of' if fraction else 'all'} requests for {probation_s:.0f} s",
        )
        watch = threading.Thread(
            target=self._probation, args=(manifest, previous, probation_s), name=f"probation-{name}", daemon=True
        )
        self._probations[name] = watch
        watch.start()

    def _close_replaced(self, name: str, current: Active, by: str, *, state: str = "superseded") -> None:
        """Close the journal of the update on probation in ``current``, which ``by`` is about to replace.

        Without this its journal would still say ``probation`` and the next start would resume it,
        installing it again over whatever replaced it. ``superseded`` is reported as ``failed``
        (PROTOCOL.md has no state for it); ``rolled_back`` and ``active`` as themselves.
        """
        uid = (current.probation or {}).get("update_id")
        if not isinstance(uid, str) or not _IDENT.match(uid):
            return
        entry = self._seen(uid)
        if entry is None or entry.get("state") in DONE:
            return
        version = (current.ab or {}).get("version") or current.version
        reason = {
            "superseded": f"replaced by {by} during its probation",
            "rolled_back": f"rolled back by {by} during its probation",
            "active": f"made final by {by} during its probation",
        }[state]
        self._journal(uid, state=state, reason=reason)
        self._status(uid, "failed" if state == "superseded" else state, model=name, version=version, reason=reason)

    # -- probation ------------------------------------------------------------------------
    def _probation(self, manifest: Manifest, previous: str, probation_s: float) -> None:
        """Watch one update's probation until it passes, breaches, is replaced or the agent stops.

        Ending it is two steps: the switch (store and slot), then its records (journal, status).
        An error in either (a full or failing disk, a model removed meanwhile, a bug) is logged and
        the step tried again, 1 s later and then after longer pauses (up to 30 s), for as long as the
        agent runs; a switch that was made is never made twice, only its records are written again.
        Otherwise the thread would die, ``active.json`` and the journal would say ``probation`` for
        good, and the next start would roll the update back.
        """
        name, version, uid = manifest.model, manifest.version, manifest.update_id
        deadline = time.monotonic() + probation_s
        ended: _Ending | None = None  # set once the switch is made: only its records remain to write
        failures = 0
        pause = min(1.0, probation_s)
        while not self._stop.wait(pause):
            try:
                with self._lock:
                    if ended is None:
                        active = self.store.active(name)
                        if active is None or (active.probation or {}).get("update_id") != uid:
                            return  # another update or a command replaced it (and closed its journal)
                        ended = self._probation_ends(manifest, previous, active, deadline)
                    if ended is not None:
                        self._record(ended)
            except Exception as exc:
                failures += 1
                pause = min(30.0, 2.0 ** (failures - 1))
                what = f"{'recording the end of' if ended is not None else 'ending'} the probation failed"
                if failures == 1:
                    log.exception("OTA %s %s %s: %s; trying again in %.0f s", uid, name, version, what, pause)
                elif failures % 10 == 0:
                    log.error(
                        "OTA %s %s %s: %s %d times, still trying: %s", uid, name, version, what, failures, one_line(exc)
                    )
                continue
            if ended is not None:
                if failures:
                    log.info("OTA %s %s %s: the probation ended after %d failed attempts", uid, name, version, failures)
                return
            pause = min(1.0, max(0.0, deadline - time.monotonic()))

    def _probation_ends(self, manifest: Manifest, previous: str, active: Active, deadline: float) -> _Ending | None:
        """Make the switch that ends ``manifest``'s probation if it ends now, else None (under the lock)."""
        name, version, uid = manifest.model, manifest.version, manifest.update_id
        if name not in self.slots:
            return self._unserved(name, active, uid)
        max_errors, max_ratio = self._bound(manifest, "max_error_rate"), self._bound(manifest, "max_p95_ratio")
        breach = self._breach(name, version, previous, max_errors, max_ratio)
        if breach:
            return self._switch_back(name, active, breach, uid, command=False)
        if time.monotonic() >= deadline:
            return self._pass(name, active, uid)
        return None

    def _breach(self, name: str, version: str, previous: str, max_errors: float, max_ratio: float) -> str | None:
        totals = self.metrics.totals()
        new, old = totals.get(f"{name}@{version}"), totals.get(f"{name}@{previous}")
        if new is None:
            return None
        done = new["count"] + new["errors"]
        if done >= self.settings.min_samples:
            rate = new["errors"] / done
            if rate > max_errors:
                return f"error rate {rate:.1%} is above the {max_errors:.1%} bound"
        if old and new["count"] >= self.settings.min_samples and old["count"] >= self.settings.min_samples:
            p95_new = (new["stages_ms"]["infer"] or {}).get("p95")
            p95_old = (old["stages_ms"]["infer"] or {}).get("p95")
            if p95_new and p95_old and p95_new / p95_old > max_ratio:
                ratio = p95_new / p95_old
                return f"p95 latency {p95_new:.3f} ms is {ratio:.2f}x the previous version's (bound {max_ratio}x)"
        return None

    def _pass(self, name: str, active: Active, uid: str) -> _Ending:
        """The probation passed: the new version is final (the switch; its records are the caller's)."""
        slot = self.slots[name]
        if active.ab is not None:  # the candidate passed: it serves everything now
            candidate = slot.candidate
            version = active.ab["version"]
            self.store.activate(name, version)
            if candidate is not None:
                slot.swap(candidate[0])
        else:
            version = active.version
            active.probation = None
            self.store.set_active(name, active)
        return _Ending(uid, name, version, "active", "probation passed")

    def _unserved(self, name: str, active: Active, uid: str) -> _Ending:
        """The device stopped serving ``name`` during its probation (a config reload removed it).

        The probation cannot pass without requests, so it ends as a restart would end it: the
        store goes back to the previous version (nothing is loaded, there is no slot), and a
        model served again later starts on that one. If the previous version is not intact,
        the probation ends ``failed`` and the new version stays active.
        """
        version = (active.ab or {}).get("version") or active.version
        reason = f"this device stopped serving {name} during the probation of {version}"
        if active.ab is not None:
            active.ab, active.probation = None, None
            self.store.set_active(name, active)
            back = active.version
        else:
            back = active.previous[0] if active.previous else "the previous version"
            try:
                if not active.previous:
                    raise ModelLoadError("none is installed")
                self.store.verified_file(name, back)
            except (ModelLoadError, OSError, ValueError, KeyError) as exc:
                return self._keep_serving(name, active, reason, uid, back, exc)
            self.store.roll_back(name)
        log.warning("OTA %s %s: %s: %s is its active version again", uid, name, reason, back)
        return _Ending(uid, name, version, "rolled_back", f"{reason}; {back} is active again", journal_reason=reason)

    def _record(self, ended: _Ending) -> None:
        """Write what a switch ended: the models in the status record, the journal, the OTA status."""
        self._publish_models()
        if ended.ident is not None:
            fields = {"state": ended.state}
            if ended.journal_reason is not None:
                fields["reason"] = ended.journal_reason
            self._journal(ended.ident, **fields)
        self._status(
            ended.ident,
            ended.state,
            model=ended.model,
            version=ended.version,
            reason=ended.reason,
            command=ended.command,
        )

    def _rollback(self, name: str, active: Active, reason: str, ident: str | None, command: bool = False) -> None:
        with self._lock:
            self._record(self._switch_back(name, active, reason, ident, command=command))

    def _switch_back(self, name: str, active: Active, reason: str, ident: str | None, *, command: bool) -> _Ending:
        """Roll back to the previous version in the store and the slot; the records are the caller's.

        A rollback walks back through the history (``ModelStore.roll_back``): the version left is
        not remembered as a rollback target, so an operator's rollback after an automatic one goes
        further back instead of bringing back the version that failed.
        """
        slot = self.slots[name]
        before = replace(active)  # the branches below change ``active``
        if active.ab is not None:
            failed = active.ab["version"]
            slot.set_candidate(None)
            active.ab, active.probation = None, None
            self.store.set_active(name, active)
            back = active.version
        else:
            if not active.previous:
                raise UpdateRejected(nothing_earlier(name, active))
            failed, back = active.version, active.previous[0]
            try:
                model = self._load_version(name, back)
            except Exception as exc:
                if command:
                    raise
                return self._keep_serving(name, active, reason, ident, back, exc)
            self.store.roll_back(name)  # back one step: ``failed`` is never a rollback target again
            slot.swap(model)
        if command and ident is not None:
            self._close_replaced(name, before, f"command {ident}", state="rolled_back")
        return _Ending(
            ident,
            name,
            failed,
            "rolled_back",
            f"{reason}; serving {back} again",
            journal_reason=reason,
            command=command,
        )

    def _keep_serving(
        self, name: str, active: Active, reason: str, ident: str | None, back: str, exc: Exception
    ) -> _Ending:
        """A probation's rollback cannot load ``back``: end the probation as ``failed``, keep serving.

        The version on probation stays active (its probation cleared, so no restart tries again):
        a device serving the new model beats one that crash-loops trying to load the old one.
        """
        version = active.version
        why = f"{reason}; rolling back to {back} failed ({one_line(exc)}); still serving {version}"
        log.warning("OTA %s %s: %s", ident, name, why)
        active.probation = None
        self.store.set_active(name, active)
        return _Ending(ident, name, version, "failed", why, journal_reason=why)

    def _restore_candidate(self, name: str, active: Active) -> None:
        """Serve again the A/B candidate ``active.json`` names (a start loads only the primary).

        A candidate that no longer loads ends the split, so ``active.json`` never claims one the
        device does not serve.
        """
        ab = active.ab or {}
        version, fraction = str(ab.get("version")), float(ab.get("fraction") or 0.0)
        try:
            model = self._load_version(name, version)
        except Exception as exc:
            log.warning("OTA: the A/B candidate %s %s does not load (%s): the split ends", name, version, one_line(exc))
            active.ab = None
            self.store.set_active(name, active)
            return
        self.slots[name].set_candidate(model, fraction)
        log.info("OTA: %s %s serves a fraction %.2f of requests again (A/B split)", name, version, fraction)
        self._publish_models()

    def _load_version(self, name: str, version: str) -> Model:
        """The store's ``version`` of ``name``, loaded (and checked) as an update's is."""
        return self.load_model(self.store.verified_file(name, version), self._card(name, version))

    def _card(self, name: str, version: str) -> ModelCard:
        from edgerun.card import load_card

        path = self.store.model_file(name, version)
        return load_card(path.with_name(path.name + ".card.yaml"))

    def _publish_models(self) -> None:
        self.link.set_status(models={n: s.describe() for n, s in self.slots.items()})

    # -- commands -------------------------------------------------------------------------
    def _on_command(self, message: Message) -> None:
        if not message.payload:
            log.debug("OTA: empty message on %s (a retained message cleared): ignored", message.topic)
            return
        claimed = _claimed(message.payload)
        try:
            command = parse_command(open_envelope(message.payload, self.trusted))
        except UpdateRejected as exc:
            self._refused_unread(message, claimed, str(exc), command=True)
            return
        ident = command.command_id
        fresh = None  # a verified command_id used for the first time: the only kind ever journaled
        try:
            if self._seen(command.command_id) is not None:
                if not message.retained:
                    self._replayed("command_id", command.command_id, command.model, command.version)
                return
            fresh = command.command_id
            check_targets(command.targets, self.topics.device, self.groups)
            check_times(command.issued, command.expires, self._clock())
            self._journal(command.command_id, kind="command", state="received")
            self._saw_issued(command.issued)
            self._run_command(command)
        except EdgerunError as exc:
            # The journal says how the command ended, also when it was refused after ``received``.
            if fresh is not None:
                self._journal(fresh, kind="command", state="rejected", reason=str(exc))
            self._status(
                ident,
                "rejected",
                model=claimed.get("model"),
                version=claimed.get("version"),
                reason=str(exc),
                command=True,
            )
        except Exception as exc:  # a bug or a vendor error while it ran: ``failed``, never left ``received``
            if fresh is None:
                raise
            reason = f"unexpected error: {type(exc).__name__.lstrip('_')}: {one_line(exc)}"
            log.warning("OTA %s: %s", fresh, reason)
            log.debug("OTA %s: the unexpected error", fresh, exc_info=True)
            self._journal(fresh, state="failed", reason=reason)
            model, version = claimed.get("model"), claimed.get("version")
            self._status(fresh, "failed", model=model, version=version, reason=reason, command=True)

    def _run_command(self, command: Command) -> None:
        name = command.model
        if name not in self.slots:
            raise UpdateRejected(f"this device does not serve a model named {name!r}")
        with self._lock:
            self._run_command_locked(command)

    def _run_command_locked(self, command: Command) -> None:
        name = command.model
        active = self.store.active(name)
        assert active is not None
        slot = self.slots[name]
        if command.command == "rollback":
            self._rollback(name, active, "rollback command", command.command_id, command=True)
            return
        if command.command == "set-ab" and active.probation:
            raise UpdateRejected(_on_probation(name, active.probation))
        version = command.version or active.version
        if not self.store.installed(name, version):
            raise UpdateRejected(
                f"{name} {version} is not installed here (installed: {', '.join(self.store.versions(name))})"
            )
        fraction = float(command.fraction or 0.0)
        if command.command == "set-ab" and fraction == 0:  # the split ends, or there is none: nothing to load
            ended = active.ab
            active.ab = None
            self.store.set_active(name, active)
            slot.set_candidate(None)
            state = "active"
            reason = (
                f"A/B: the split to {ended['version']} ended; every request to {active.version}"
                if ended
                else f"A/B: no split to end; every request to {active.version}"
            )
        elif command.command == "activate":
            model = self._load_version(name, version)
            final = version == ((active.ab or {}).get("version") or active.version)
            by = f"command {command.command_id} (activate {version})"
            self._close_replaced(name, active, by, state="active" if final else "superseded")
            self.store.activate(name, version)
            slot.swap(model)
            slot.set_candidate(None)
            state, reason = "active", "activate command"
        else:
            model = self._load_version(name, version)  # before the store says so: one that fails to load splits nothing
            active.ab = {"version": version, "fraction": fraction}
            self.store.set_active(name, active)
            slot.set_candidate(model, fraction)
            state, reason = "active", f"A/B: {fraction:.2f} of requests to {version}"
        self._publish_models()
        self._journal(command.command_id, state=state)
        self._status(command.command_id, state, model=name, version=version, reason=reason, command=True)


def _on_probation(name: str, probation: dict[str, Any]) -> str:
    """Why a ``set-ab`` is refused during a probation, in one line.

    The probation's end acts on ``active.json`` as the update left it: passing makes the update's
    version final (its A/B candidate, or the active version), a breach rolls it back. A split set
    meanwhile would be promoted in its place, or rolled back while the failed version stays active.
    """
    until = probation.get("until")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until)) if isinstance(until, (int, float)) else "its end"
    return f"{name} is on probation (update {probation.get('update_id')}) until {when}: set-ab once it has ended"


def _named(ident: Any, model: Any, version: Any, command: bool) -> str:
    """How a log line names an update or command: its id, model and version, those it has; a payload
    refused unread may have none (``(a manifest that names no id)``), never ``None``."""
    named = " ".join(str(part) for part in (ident, model, version) if part is not None)
    return named or f"(a {'command' if command else 'manifest'} that names no id)"


def _reported(entry: dict[str, Any]) -> str:
    """The reason of the record a start builds from a journal entry (``_unreported``)."""
    return str(entry.get("reason") or "") or "reported after a restart (the process ended before reporting it)"


def _kept_record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The status record ``last_status.json`` holds, or None and why it is not one."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"not JSON: {one_line(exc)}" if raw else "empty"
    if not isinstance(record, dict) or record.get("schema") != 1:
        return None, "not a status record"
    if record.get("state") not in STATES or not isinstance(record.get("ts"), int):
        return None, "no state or no ts"
    return record, ""


def _claimed(raw: bytes) -> dict[str, Any]:
    """Identifiers from an envelope's payload before verification, for reporting only: anyone may
    send them, so a line break or another control character in one is escaped (one log line).
    Read as strictly as ``open_envelope`` reads (UTF-8 only): what it refuses claims nothing."""
    try:
        envelope = loads_utf8(raw)
        document = loads_utf8(base64.b64decode(envelope["payload"], validate=True))
    except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {k: shown(str(document[k])[:128]) for k in ("update_id", "command_id", "model", "version") if k in document}


def _check_format(blob: Path, declared: str) -> None:
    """The file's content must be the format the manifest declares (it decides the file's name)."""
    try:
        actual = detect_format(blob)
    except ModelLoadError:
        raise UpdateRejected("not a model: the file is neither an ONNX nor a TFLite file") from None
    if actual != declared:
        raise UpdateRejected(f"the manifest says {declared}, the file is {_FORMAT_NAMES[actual]} model")


def _npy(text: str, what: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
        return load_npy(io.BytesIO(raw), len(raw))  # its header checked first: np.load allocates what it declares
    except NPY_ERRORS as exc:  # binascii.Error is a ValueError
        raise UpdateRejected(f"{what} is not a base64 .npy array: {npy_reason(exc)}") from None


def _read_entry(path: Path) -> dict[str, Any]:
    """The journal entry at ``path``, or ``{"state": DAMAGED, "reason": ...}`` where it is not a JSON
    object (unreadable, not JSON, not UTF-8, a list): a damaged entry must not stop the agent's start,
    which would keep a device from serving at every boot until someone deleted the file."""
    try:
        return json_object(path.read_bytes())
    except (OSError, ValueError) as exc:
        return {"state": DAMAGED, "reason": one_line(exc)[:200]}
