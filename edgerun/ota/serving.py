"""Starting to serve a model that OTA may update: the store's active version wins over the file given.

The first start installs the given file into the store as its card's version
and activates it; later starts serve whatever the store says is active (an
update received over the air survives restarts), after hashing it against its
manifest. A file given under the active version's number with other bytes (the
operator changed the file, not the version) replaces the store's copy where that
copy was given at start too, and is refused where an OTA update installed it: the
store's copy is what a rollback or an activation comes back to, so it must be
what serves. Both say so in a WARNING. A SIGHUP reload that asks again, for a file changed on disk,
gets the model serving already where the store's copy it runs still wins (``running``): the file's
change alone never swaps an update for a fresh load of itself.

The file given is loaded only where it serves: its name (the caller's, or its card's) and version are
read from its card (``_named``), so a start or reload the store's version wins loads that alone, not
the file first to learn its name (a second load, costly with TensorRT or an Edge TPU). A file given
that is not there serves the store's active version, with one WARNING naming it; with none, or none
usable, its load fails as it would without OTA.

Damaged state never stops a start (a failing SD card, a power cut, an edit by hand would otherwise
stop it at every boot): a damaged ``active.json`` is set aside by the store and the file given is
installed and made active as at a first start; an active version whose copy in the store is
unusable (its record, card or model file damaged or gone) gives way to the file given, made active,
the damaged version kept as a rollback target. Each says so in one WARNING line.

The store keeps one file a version, which every delegate of the device must be able to run from
there. Given an Edge TPU-compiled ``X_edgetpu.tflite`` with its CPU twin ``X.tflite`` beside it, the
twin is what the store keeps and compares (``_stored_file``); the pair given still serves, the Edge
TPU first. A compiled file kept as the store's ``model.tflite`` would run nowhere: not on the Edge
TPU (only an ``_edgetpu`` name is tried there), nor on the CPU (its one custom op).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edgerun.backends.base import one_line
from edgerun.card import ModelCard, card_candidates, cpu_twin, load_card
from edgerun.errors import CardError, EdgerunError, ModelLoadError
from edgerun.files import sha256_file
from edgerun.model import Model
from edgerun.ota.store import ModelStore

log = logging.getLogger(__name__)

__all__ = ["serve_from_store"]

LoadModel = Callable[[Path, "ModelCard | None"], Model]

#: The ``update_id`` of a version installed from a model file given at start, not over the air.
LOCAL = "local"


def _stored_file(path: Path) -> Path:
    """The file the store keeps for the model file ``path``: the CPU twin ``X.tflite`` of an Edge
    TPU-compiled ``X_edgetpu.tflite`` where it is beside it, else ``path`` (see the module docstring)."""
    twin = cpu_twin(path)
    return twin if twin is not None and twin.is_file() else path


def _not_there(path: Path) -> bool:
    """Whether no file is at ``path`` (nothing by that name, or a folder on the way that is not one); any
    other reason it cannot be read is left for its load to say."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _named(path: Path, name: str | None) -> tuple[str | None, str | None]:
    """The name the model file ``path`` serves under (``name`` where the caller knows it) and its version,
    from its card, without loading the model: a load is costly (a TensorRT engine, an Edge TPU) and the
    store's active version may be what serves. None for what only a load tells: no card beside it (an
    inferred card names the model after its file), or one that cannot be read (the load says why)."""
    card = next((c for c in card_candidates(path) if c.exists()), None)  # where the load looks (find_card)
    if card is None:
        return name, None
    try:
        read = load_card(card)
    except (OSError, EdgerunError):
        return name, None
    return name or read.name, read.version


def serve_from_store(
    path: Path, store: ModelStore, load: LoadModel, running: Model | None = None, *, name: str | None = None
) -> Model:
    """The model to serve for ``path``: the store's active version of its name, seeding the store first.

    ``name``: the name it serves under, where the caller decides it (the daemon: the config's key);
    else its card's. Name and version come from the card, so the file given is loaded only where it
    serves: where the store's active version wins, only that is loaded. A file given that is not
    there serves the store's active version (one WARNING naming it); with none, or none usable, its
    load fails as without OTA.

    ``running``: the model serving that name now, loaded with the settings ``load`` uses (a SIGHUP
    reload for a file changed on disk, its model section unchanged). Where the store's active
    version serves, from the very file ``running`` was loaded from, ``running`` itself is returned,
    not loaded again: the change does not bear on what serves (an update is active, or the file
    given is not the copy of the active version that an update installed).
    """
    given: Model | None = None
    name, version = _named(path, name)
    if name is None:  # no card to name it: the load infers its name from the file
        given = load(path, None)
        name, version = given.name, given.version
    active = store.active(name)
    gone = given is None and _not_there(path)
    if active is None:
        given = given or load(path, None)  # not there: fails as it would without OTA
        _install_local(_stored_file(path), store, given, first=True)
        log.info("model store: %s %s installed from %s and active", name, given.version, path)
        return given
    if version is None and not gone:  # a card only its load reads (or says why it cannot)
        given = load(path, None)
        version = given.version
    stored = _stored_file(path)  # what the store holds of it: an Edge TPU pair's CPU twin
    if not gone and active.version == version and not active.ab:
        try:
            record = store.manifest(name, active.version)
        except (OSError, ValueError) as exc:  # a version folder damaged by hand: serve the file given, as before
            log.warning("model store: the record of %s %s cannot be read (%s): serving %s", name, version, exc, path)
            return given or load(path, None)
        digest = sha256_file(stored)
        if stored.stat().st_size == record.get("size") and digest == record.get("sha256"):
            return given or load(path, None)
        if record.get("update_id") == LOCAL:  # the operator's own file, changed under the same version: it wins
            given = given or load(path, None)
            _install_local(stored, store, given, first=False, digest=digest)
            log.warning(
                "model store: %s %s replaced by %s (the same version, other bytes; give a new file a version of "
                "its own in its card, so that a rollback can tell the two apart)",
                name,
                given.version,
                path,
            )
            return given
        log.warning(
            "model store: %s is not the %s %s that an OTA update installed (the same version, other bytes): serving "
            "the update's; give the new file a version of its own in its card, or send it as an OTA update",
            path,
            name,
            active.version,
        )
    try:
        installed = store.verified_file(name, active.version)
        card = load_card(installed.with_name(installed.name + ".card.yaml"))
    except (OSError, ValueError, ModelLoadError, CardError) as exc:  # damaged since: not a reason to stop serving
        if gone:  # nothing else to serve: the load of the file given says it is not there
            log.warning(
                "model store: %s %s, active in the store, is unusable (%s), and %s is not there",
                name,
                active.version,
                one_line(exc),
                path,
            )
        given = given or load(path, None)
        if active.version == given.version:  # the store's copy of this very version: the file given serves
            log.warning(
                "model store: %s %s in the store is unusable (%s): serving %s",
                name,
                active.version,
                one_line(exc),
                path,
            )
            return given
        kept = active.version in store.versions(name)  # its folder, left for whoever can repair it
        log.warning(
            "model store: %s %s, active in the store, is unusable (%s): %s %s from %s is served and made active "
            "instead%s",
            name,
            active.version,
            one_line(exc),
            name,
            given.version,
            path,
            f" ({active.version} stays in the store, as a rollback target)" if kept else "",
        )
        _install_local(stored, store, given, first=True)
        return given
    if given is not None:  # loaded only to learn its version: the store's copy serves
        given.close()
    if gone:
        log.warning("model store: %s is not there: serving %s %s, active in the store", path, name, active.version)
    if running is not None and running.version == active.version and Path(running.path) == installed:
        # the same bytes and card: a version's copy is only ever replaced above, where the file given serves
        return running
    if not gone:
        log.info("model store: serving %s %s from the store instead of %s", name, active.version, path)
    return load(installed, card)


def _install_local(path: Path, store: ModelStore, given: Model, *, first: bool, digest: str | None = None) -> None:
    """Put the model file given into the store under its card's version: ``first``, and make it active;
    else over the active version's copy, before anything serves from the store. ``digest``: its SHA-256,
    where the caller has it already."""
    manifest = {
        "update_id": LOCAL,
        "sha256": digest or sha256_file(path),
        "size": path.stat().st_size,
        "format": given.format,
        "source": str(path),
    }
    name, version = given.name, given.version
    try:
        store.install(name, version, given.format, path, manifest, given.card.to_dict(), replace_active=not first)
        if first:
            store.activate(name, version)
    except OSError as exc:  # a full or read-only disk: the store is left as it was (install is all or nothing)
        given.close()
        reason = exc.strerror or exc
        raise ModelLoadError(f"cannot put {name} {version} in the model store {store.root}: {reason}") from exc
