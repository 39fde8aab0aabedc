"""The model store: every installed version of every model, and an atomic ``active`` pointer per model.

Layout under ``<state dir>/models``::

    <name>/versions/<version>/model.<onnx|tflite>     the model file, never modified once here
    <name>/versions/<version>/model.<fmt>.card.yaml   its card (JSON, which is YAML)
    <name>/versions/<version>/manifest.json           what was verified: sha256, size, update id
    <name>/active.json                                {"version", "previous", "probation", "ab"}

``previous`` is the history a rollback walks back through, newest first, like a stack: an
activation pushes the version it replaces, a rollback pops the version it goes back to and never
pushes the one it leaves. That version is then named nowhere in ``active.json`` and is pruned like
any other, so successive rollbacks walk further back (1.6.0 -> 1.5.0 -> 1.3.0) and never bring
back a version rolled back from. ``active.json`` holds exactly the four keys earlier releases
read with ``Active(**...)``: a file this store writes stays readable after a downgrade.

Invariants, whatever is killed when:

* a version folder appears under ``versions/`` only complete (built beside it,
  fsynced, then renamed into place);
* ``active.json`` is replaced atomically (write, fsync, rename, fsync the
  folder) and only ever names a complete version;
* the versions ``active.json`` names (``Active.needed``: the active version, the ``keep`` most
  recent previous ones, an A/B candidate) are never deleted, so a store holds at most ``keep + 1``
  versions besides a candidate and those held;
* nor is a version held by an update still in progress (installed, not yet activated or
  refused: ``hold``), nor a ``.building`` folder an install of this store is writing;
* a version folder leaves ``versions/`` whole too: it is renamed to a hidden
  ``.<version>.<random>.removing`` name first (atomic, fsynced), then deleted. A process
  killed meanwhile leaves that hidden folder, which ``versions()`` never lists and the next
  start (``ModelStore()``) or prune deletes, never a half-deleted version that still looks
  installed.

Damage from outside (a failing SD card, a power cut, an edit by hand) is never deleted, and never
stops a start: a damaged ``active.json`` is renamed aside (``active``), and a version whose copy
was damaged since it was installed stays in ``versions/``, named as a rollback target, when the
model file given at start takes its place (``activate``; edgerun/ota/serving.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.errors import ModelLoadError, UpdateRejected
from edgerun.files import atomic_write, fsync_dir, set_aside, sha256_file
from edgerun.ota.envelope import json_object
from edgerun.ota.manifest import version_tuple

log = logging.getLogger(__name__)

#: Suffix of a version folder set aside to be deleted (hidden, so ``versions()`` never lists it).
_REMOVING = ".removing"

__all__ = ["Active", "ModelStore", "nothing_earlier"]


@dataclass
class Active:
    """What ``active.json`` says about one model."""

    version: str
    previous: list[str] = field(default_factory=list)  # rollback targets, newest first
    probation: dict[str, Any] | None = None  # {"update_id", "until", "from"} while on probation
    ab: dict[str, Any] | None = None  # {"version", "fraction"}: a candidate serving a fraction

    @classmethod
    def from_json(cls, raw: str | bytes) -> Active:
        """Read ``active.json``, ignoring keys it does not know.

        A build of 2026-12-07 (never released) wrote ``withdrawn`` (versions rolled back from); such
        a file is read without it, and those versions are pruned like any other at the next change.

        Raises:
            ValueError: it is not such a pointer (damaged: not UTF-8, not JSON, not an object, no
                ``version``, a key of the wrong type), the reason in one line.
        """
        data = json_object(raw.encode() if isinstance(raw, str) else raw)
        version, previous = data.get("version"), data.get("previous") or []
        probation, ab = data.get("probation"), data.get("ab")
        if not isinstance(version, str) or not version:
            raise ValueError(f'"version" is {version!r}, not a version')
        if not isinstance(previous, list) or not all(isinstance(v, str) and v for v in previous):
            raise ValueError(f'"previous" is {previous!r}, not a list of versions')
        if probation is not None and not isinstance(probation, dict):
            raise ValueError(f'"probation" is {probation!r}, not an object')
        if ab is not None:
            candidate, fraction = (ab.get("version"), ab.get("fraction")) if isinstance(ab, dict) else (None, None)
            if not isinstance(candidate, str) or not candidate or _fraction(fraction) is None:
                raise ValueError(f'"ab" is {ab!r}, not a candidate\'s version and fraction')
        return cls(version=version, previous=list(previous), probation=probation, ab=ab)

    def to_json(self) -> bytes:
        """The four keys every release reads: ``version``, ``previous``, ``probation``, ``ab``."""
        return json.dumps(self.__dict__, indent=1).encode()

    def needed(self) -> set[str]:
        """The versions this pointer names, which nothing may delete: the active one, the rollback
        targets and an A/B candidate. The one place that says so (``ModelStore._prune`` adds the
        versions held by installs in progress; the OTA agent's clean-up after a failed update)."""
        candidate = (self.ab or {}).get("version")
        return {self.version, *self.previous, *([str(candidate)] if candidate else [])}


def _fraction(value: Any) -> float | None:
    """``value`` as an A/B fraction (a number from 0 to 1), or None where it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return None  # NaN fails the bounds too
    return float(value)


class ModelStore:
    """Installed model versions and the active one of each model."""

    def __init__(self, root: Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep at least one previous version")
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], int] = {}  # (name, version) -> holders: spared by _prune
        self._building: set[Path] = set()  # folders an install is writing now: spared by _prune
        for leftover in self.root.glob(f"*/versions/.*{_REMOVING}"):  # a delete a killed process left half done
            shutil.rmtree(leftover, ignore_errors=True)

    # -- paths -----------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        return self.root / name

    def version_dir(self, name: str, version: str) -> Path:
        """The folder of one installed version (names are checked by the manifest schema)."""
        if "/" in name + version or name.startswith(".") or version.startswith(".") or "\x00" in name + version:
            raise UpdateRejected(f"model name {name!r} or version {version!r} would leave the store")
        return self._model_dir(name) / "versions" / version

    def model_file(self, name: str, version: str) -> Path:
        """The model file of an installed version."""
        folder = self.version_dir(name, version)
        for fmt in ("onnx", "tflite"):
            candidate = folder / f"model.{fmt}"
            if candidate.is_file():
                return candidate
        raise ModelLoadError(f"{name} {version} is not installed (no model file in {folder})")

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        """The verified manifest of an installed version.

        Raises:
            OSError: it cannot be read (missing: the version is not installed).
            ValueError: it is damaged (not UTF-8, not JSON, not a JSON object).
        """
        path = self.version_dir(name, version) / "manifest.json"
        try:
            return json_object(path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"{path} is {exc}") from None

    # -- queries ---------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of models with an active version."""
        return sorted(p.parent.name for p in self.root.glob("*/active.json"))

    def versions(self, name: str) -> list[str]:
        """Installed versions of a model, oldest first."""
        folder = self._model_dir(name) / "versions"
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(found, key=version_tuple)

    def installed(self, name: str, version: str) -> bool:
        """True when that version is complete in the store."""
        return (self.version_dir(name, version) / "manifest.json").is_file()

    def active(self, name: str) -> Active | None:
        """The active pointer of a model, or None when it has none.

        The one place that decides whether ``active.json`` is damaged (a failing SD card, a power
        cut, an edit by hand): unreadable, not a pointer (``Active.from_json``), or naming a version
        that would leave the store. A damaged pointer is renamed aside (``active.json.damaged-<UTC
        time>``, for whoever wants to read it), said in one WARNING line, and the model has none:
        ``serve_from_store`` then installs the model file given and makes it active, as at a first
        start, and the versions installed stay as its rollback targets (``activate``), so a device
        keeps serving instead of failing at every boot.
        """
        path = self._model_dir(name) / "active.json"
        try:
            active = Active.from_json(path.read_bytes())
            for version in active.needed():
                self.version_dir(name, version)  # UpdateRejected where it would leave the store
            return active
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UpdateRejected) as exc:
            why = exc.strerror or exc if isinstance(exc, OSError) else exc
            try:
                aside = set_aside(path)[0]
            except FileNotFoundError:
                return None  # set aside meanwhile by another thread's reading
            except OSError as err:
                log.warning(
                    "model store: %s is damaged (%s) and cannot be set aside (%s): %s has no active version",
                    path,
                    why,
                    err.strerror or err,
                    name,
                )
                return None
            log.warning(
                "model store: %s is damaged (%s): set aside as %s; the model file given for %s is served and made "
                "active again, as at a first start",
                path,
                why,
                aside.name,
                name,
            )
            return None

    def verified_file(self, name: str, version: str) -> Path:
        """The model file, after hashing it against its manifest: the bytes that will be loaded.

        Nothing in the store rewrites a version folder, so what is hashed here is what
        the runtime opens next.
        """
        path = self.model_file(name, version)
        expected = self.manifest(name, version).get("sha256")
        if not isinstance(expected, str):
            raise ModelLoadError(f"{name} {version} in the store has no sha256 in its record (damaged)")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelLoadError(
                f"{name} {version} in the store is corrupt: sha256 {actual[:12]}... is not {expected[:12]}..."
            )
        return path

    # -- changes ---------------------------------------------------------------
    def _linked(self, source: Path, target: Path) -> bool:
        """Hard-link ``source`` as ``target``; False where the filesystems allow no link between them."""
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            log.info("the store %s cannot link %s (%s): copying it", self.root, source.name, exc.strerror)
            return False
        return True

    def install(
        self,
        name: str,
        version: str,
        fmt: str,
        source: Path,
        manifest: dict[str, Any],
        card: dict[str, Any],
        *,
        move: bool = False,
        replace_active: bool = False,
    ) -> Path:
        """Put a version in the store beside the others (complete, or not at all).

        With ``move``, ``source`` is hard-linked into the store (or copied, where the store is on
        another filesystem or one without links: a USB disk, FAT) and deleted once the version is
        in place; until then it stays where it was, whatever fails or however the process ends, so
        an update resumed or published again installs it without downloading it again.

        A version in use (active, or an A/B candidate) is refused, unless ``replace_active``: at
        start, before anything serves from the store, a model file given again under the active
        version's number replaces that version's copy (``serve_from_store``).

        Raises:
            OSError: the store's disk refused (full, read-only, a path that is not a folder).
            UpdateRejected: the version is installed and in use.
        """
        final = self.version_dir(name, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        building = final.parent / f".{version}.{secrets.token_hex(4)}.building"
        aside: Path | None = None  # the copy of this version installed before, while it is replaced
        with self._lock:
            building.mkdir()
            self._building.add(building)
        try:
            target = building / f"model.{fmt}"
            if not (move and self._linked(source, target)):
                shutil.copyfile(source, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            for file_name, document in ((f"model.{fmt}.card.yaml", card), ("manifest.json", manifest)):
                with open(building / file_name, "w") as fh:
                    json.dump(document, fh, indent=1)
                    fh.flush()
                    os.fsync(fh.fileno())
            fsync_dir(building)
            if final.exists():
                active = self.active(name)
                in_use = active is not None and version in (active.version, (active.ab or {}).get("version"))
                if in_use and not replace_active:
                    raise UpdateRejected(f"{name} {version} is installed and in use; it cannot be replaced")
                aside = self._set_aside(final)  # the old copy goes once the new one is in its place
            os.replace(building, final)
            fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            if aside is not None and not final.exists():  # the new copy never took its place
                with contextlib.suppress(OSError):
                    os.rename(aside, final)
            raise
        finally:
            with self._lock:
                self._building.discard(building)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        if move:  # the version is in place, durably: the download goes
            try:
                os.unlink(source)
            except OSError as exc:
                log.warning("installed %s %s, but cannot delete %s: %s", name, version, source, exc)
        log.info("installed %s %s in the store", name, version)
        return final / f"model.{fmt}"

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version (nothing when it is not there), so that a process killed
        meanwhile never leaves a part of it listed; the caller has checked that nothing needs it."""
        aside = self._set_aside(self.version_dir(name, version))
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
            log.info("removed %s %s from the store", name, version)

    def _set_aside(self, folder: Path) -> Path | None:
        """Rename a version folder to a hidden name to be deleted, durably: one atomic step after
        which no query sees the version, so deleting its files can be cut short by a crash.
        The hidden name, or None when the folder is not there."""
        aside = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}{_REMOVING}")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            return None
        fsync_dir(folder.parent)
        return aside

    def set_active(self, name: str, active: Active) -> None:
        """Replace the active pointer atomically, then prune versions nobody needs."""
        if not self.installed(name, active.version):
            raise ModelLoadError(f"cannot activate {name} {active.version}: not installed")
        atomic_write(self._model_dir(name) / "active.json", active.to_json())
        self._prune(name, active)

    def activate(self, name: str, version: str, *, probation: dict[str, Any] | None = None) -> Active:
        """Make ``version`` active, remembering the one it replaces as the first rollback target.

        For an update or an ``activate`` command; a rollback uses ``roll_back``, which remembers
        nothing. The ``keep`` newest previous versions stay rollback targets; older ones are pruned.
        """
        current = self.active(name)
        if current is not None:  # a version named but not in the store at all (deleted by hand) is no target
            there = set(self.versions(name))
            previous = [v for v in [current.version, *current.previous] if v != version and v in there]
        else:  # a first start, or a pointer set aside as damaged: the versions installed stay, newest first
            previous = [v for v in reversed(self.versions(name)) if v != version and self.installed(name, v)]
        active = Active(version=version, previous=previous[: self.keep], probation=probation)
        self.set_active(name, active)
        return active

    def roll_back(self, name: str) -> Active:
        """Go back one step in the history: the newest previous version becomes active.

        The version taken off ``previous`` is the one now active, and the version left is put
        nowhere: it is pruned (unless an install in progress holds it), so a second rollback goes
        further back instead of toggling between two versions, no rollback brings back a version
        rolled back from, and failed versions never crowd good rollback targets out of the store.
        An A/B split and a probation end with it.

        Raises:
            UpdateRejected: there is no earlier version to go back to.
            ModelLoadError: the previous version is no longer installed.
            OSError: the store's disk refused the write.
        """
        current = self.active(name)
        if current is None or not current.previous:
            raise UpdateRejected(nothing_earlier(name, current))
        back, *rest = current.previous
        active = Active(version=back, previous=rest)
        self.set_active(name, active)
        return active

    @contextmanager
    def hold(self, name: str, version: str) -> Iterator[None]:
        """Spare ``version`` from pruning while an update installs, validates and activates it.

        Without it, another update's probation ending meanwhile (``set_active``) would delete
        the version the worker is about to activate.
        """
        key = (name, version)
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]

    def _prune(self, name: str, active: Active) -> None:
        with self._lock:
            needed = active.needed()
            needed |= {version for held, version in self._held if held == name}
            for version in self.versions(name):
                if version not in needed:
                    try:
                        self.remove(name, version)
                    except OSError as exc:  # the switch is made: a version left over goes at the next prune
                        log.warning("cannot remove %s %s from the store: %s", name, version, exc)
            versions = self._model_dir(name) / "versions"
            for leftover in versions.glob(".*.building"):
                if leftover not in self._building:  # left by a process killed while installing
                    shutil.rmtree(leftover, ignore_errors=True)
            for leftover in versions.glob(f".*{_REMOVING}"):  # left by a process killed while deleting
                shutil.rmtree(leftover, ignore_errors=True)

    def __iter__(self) -> Iterator[tuple[str, Active]]:
        for name in self.models():
            active = self.active(name)
            if active is not None:
                yield name, active


def nothing_earlier(name: str, current: Active | None) -> str:
    """Why ``name`` cannot be rolled back: no version before the active one, in one line."""
    if current is None:
        return f"{name} has no active version to roll back from"
    return f"{name} has no previous version to roll back to: {current.version} is the earliest in its history"
