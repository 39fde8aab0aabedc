"""Starting to serve a model that OTA may update: the store's active version wins over the file given.

The first start installs the given file into the store as its card's version
and activates it; later starts serve whatever the store says is active (an
update received over the air survives restarts), after hashing it against its
manifest. The given file is served itself only where it is the active version's
very bytes; a file of the same version with other bytes is refused with a WARNING
(the store's copy is what a rollback or an activation would come back to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edgerun.card import ModelCard, load_card
from edgerun.errors import ModelLoadError
from edgerun.files import sha256_file
from edgerun.model import Model
from edgerun.ota.store import ModelStore

log = logging.getLogger(__name__)

__all__ = ["serve_from_store"]

LoadModel = Callable[[Path, "ModelCard | None"], Model]


def serve_from_store(path: Path, store: ModelStore, load: LoadModel) -> Model:
    """The model to serve for ``path``: the store's active version of its name, seeding the store first."""
    given = load(path, None)
    name = given.name
    active = store.active(name)
    if active is None:
        manifest = {
            "update_id": "local",
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "format": given.format,
            "source": str(path),
        }
        try:
            store.install(name, given.version, given.format, path, manifest, given.card.to_dict())
            store.activate(name, given.version)
        except OSError as exc:  # a full or read-only disk: the store is left as it was (install is all or nothing)
            given.close()
            raise ModelLoadError(
                f"cannot put {name} {given.version} in the model store {store.root}: {exc.strerror or exc}"
            ) from exc
        log.info("model store: %s %s installed from %s and active", name, given.version, path)
        return given
    if active.version == given.version and not active.ab:
        if _installed_as(path, store, name, active.version):
            return given
        log.warning(
            "model store: %s is not the %s %s in the store (the same version, other bytes): serving the store's; "
            "give the new file a version of its own in its card, or send it as an OTA update",
            path,
            name,
            active.version,
        )
    installed = store.verified_file(name, active.version)
    card = load_card(installed.with_name(installed.name + ".card.yaml"))
    given.close()
    log.info("model store: serving %s %s from the store instead of %s", name, active.version, path)
    return load(installed, card)


def _installed_as(path: Path, store: ModelStore, name: str, version: str) -> bool:
    """Whether ``path`` holds the bytes the store has for ``name`` ``version`` (size, then SHA-256)."""
    record = store.manifest(name, version)
    return bool(path.stat().st_size == record.get("size") and sha256_file(path) == record.get("sha256"))
