"""OTA review fixes: ``active.json`` stays what every release reads, and pruning keeps good history
after rollbacks. A real store on disk with the real digits model. (The review's other fixes are tested
beside their kin: a URL download cut short in test_ota_url_faults.py, ``set-ab`` during a probation in
test_ota_fixes_18.py.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgerun.errors import UpdateRejected
from edgerun.ota.store import Active, ModelStore
from tests.conftest import DIGITS

KEYS = {"version", "previous", "probation", "ab"}  # what releases before b150bec read with Active(**...)


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
