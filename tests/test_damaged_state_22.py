"""A damaged file in the state directory (a failing SD card, a power cut, an edit by hand) must not stop a device.

Before: a damaged ``outbox.sqlite`` stopped ``edgerun daemon`` (with ``mqtt:``) and ``edgerun run --mqtt`` at
start with "outbox ... is unusable: file is not a database"; a damaged ``models/<name>/active.json`` ended
``edgerun run --ota-key`` (and the daemon with OTA on) with a traceback (``JSONDecodeError``, ``TypeError``); an
active version whose copy in the store lost its ``manifest.json`` did too, and one whose model file was damaged
stopped the start with "... in the store is corrupt". Under systemd ``Restart=always`` each was an inference
outage at every boot. Now the damaged file is set aside (renamed, never deleted), one ERROR/WARNING line says
so, and the device serves.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from edgerun.card import load_card
from edgerun.errors import ConfigError
from edgerun.files import sha256_file
from edgerun.ota.serving import serve_from_store
from edgerun.ota.store import Active, ModelStore
from edgerun.sync.outbox import Outbox
from tests.conftest import DIGITS, SAMPLES, Broker, free_port, run_cli, start_daemon
from tests.ota_helpers import load_digits, make_key, model_with_card
from tests.test_ota_probation_faults import DAEMON_CONFIG
from tests.test_sync import wait_until

GARBAGE = b"\x8f\x02not a database at all" * 150  # what `head -c 3000 /dev/urandom` leaves, reproducibly


def aside_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.damaged-*"))


def queued_outbox(path: Path, records: int = 2000) -> bytes:
    """A real outbox holding ``records`` records, closed; its bytes."""
    box = Outbox(path)
    box.put_many([("results", "t", {"pad": "x" * 200, "i": i}, 1) for i in range(records)])
    box.close()
    return path.read_bytes()


# -- 1. the outbox ----------------------------------------------------------------------------------------


@pytest.mark.logs_errors
@pytest.mark.parametrize("damage", ["not-a-database", "truncated"])
def test_a_damaged_outbox_is_set_aside_and_a_new_empty_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "outbox.sqlite"
    if damage == "truncated":
        whole = queued_outbox(path)
        path.write_bytes(whole[: len(whole) // 2])  # a power cut on a file system without data journaling
    else:
        path.write_bytes(GARBAGE)
    damaged = path.read_bytes()
    Path(f"{path}-wal").write_bytes(b"w" * 100)  # what a killed writer leaves beside it goes with it
    with pytest.raises(ConfigError, match="is unusable"):  # the library's default is unchanged
        Outbox(path)
    assert path.read_bytes() == damaged and not aside_files(tmp_path, "outbox.sqlite")

    box = Outbox(path, set_aside_damaged=True)
    try:
        assert len(box) == 0 and len(box.epoch) == 16
        assert box.put("metrics", "t", {}) == 1
    finally:
        box.close()
    (aside,) = [p for p in aside_files(tmp_path, "outbox.sqlite") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged  # set aside byte for byte, not deleted
    assert Path(f"{aside}-wal").read_bytes() == b"w" * 100  # under the name SQLite looks for beside it
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"outbox {path} is damaged (")
    assert f"set aside as {aside.name}, " in errors[0] and f" {aside.name}-wal" in errors[0]
    assert "will not be delivered" in errors[0]


@pytest.mark.logs_errors
def test_setting_a_damaged_outbox_aside_never_overwrites_one_set_aside_before(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    for n in range(3):  # three in the same second: each keeps a name of its own
        path.write_bytes(GARBAGE + bytes([n]))
        Outbox(path, set_aside_damaged=True).close()
    kept = sorted(p.read_bytes()[-1] for p in aside_files(tmp_path, "outbox.sqlite") if not p.name.endswith("-shm"))
    assert kept == [0, 1, 2]


def test_what_is_not_damage_is_still_refused_and_left_where_it_is(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"  # another program's database
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    before = other.read_bytes()
    with pytest.raises(ConfigError, match="is not an edgerun outbox"):
        Outbox(other, set_aside_damaged=True)
    assert other.read_bytes() == before and not aside_files(tmp_path, "other.sqlite")

    locked = tmp_path / "outbox.sqlite"  # its write lock held by another connection
    queued_outbox(locked, 3)
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ConfigError, match="another connection holds its write lock"):
            Outbox(locked, set_aside_damaged=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not aside_files(tmp_path, "outbox.sqlite")
    box = Outbox(locked)
    assert len(box) == 3
    box.close()


def test_edgerun_outbox_reports_a_damaged_outbox_and_sets_nothing_aside(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(GARBAGE)
    result = run_cli("outbox", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"edgerun: error: cannot read the outbox {tmp_path / 'outbox.sqlite'}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.sqlite"]
    assert (tmp_path / "outbox.sqlite").read_bytes() == GARBAGE


@pytest.mark.slow
def test_edgerun_run_with_mqtt_starts_over_a_damaged_outbox_and_delivers_its_results(
    broker: Broker, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(GARBAGE)
    result = run_cli(
        *("run", str(DIGITS / "digits_int8.onnx"), "--source", str(SAMPLES), "--sink", "jsonl"),
        *("--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--device-id", "dmg-outbox", "--state-dir", str(state)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and f"outbox {state / 'outbox.sqlite'} is damaged" in errors[0], result.stderr
    (aside,) = aside_files(state, "outbox.sqlite")
    assert aside.read_bytes() == GARBAGE
    assert len(result.stdout.splitlines()) == len(list(SAMPLES.iterdir()))
    assert "# MQTT: everything delivered" in result.stderr


# -- 2. the model store's active pointer ------------------------------------------------------------------

NOT_A_POINTER = {
    "not-json": b"xx",
    "not-utf8": b'{"version": "\xff"}',
    "a-list": b'["1.0.0"]',
    "no-version": b'{"previous": []}',
    "version-a-number": b'{"version": 3}',
    "previous-not-a-list": b'{"version": "1.0.0", "previous": "0.9.0"}',
    "probation-not-an-object": b'{"version": "1.0.0", "probation": 5}',
    "ab-without-fraction": b'{"version": "1.0.0", "ab": {"version": "1.1.0"}}',
    "empty": b"",
}


@pytest.mark.parametrize("damage", list(NOT_A_POINTER), ids=list(NOT_A_POINTER))
def test_active_from_json_says_a_damaged_pointer_is_not_one_with_a_value_error(damage: str) -> None:
    with pytest.raises(ValueError):
        Active.from_json(NOT_A_POINTER[damage])


def test_active_from_json_still_reads_every_pointer_a_release_wrote() -> None:
    raw = b'{"version": "1.1.0", "previous": ["1.0.0"], "probation": null, "ab": {"version": "1.2.0", "fraction": 0.1}}'
    assert Active.from_json(raw) == Active("1.1.0", ["1.0.0"], None, {"version": "1.2.0", "fraction": 0.1})
    assert Active.from_json(b'{"version": "1.0.0", "withdrawn": ["0.9.0"]}') == Active("1.0.0")


def install(store: ModelStore, source: Path, version: str, *, activate: bool = True) -> None:
    """``source`` in the store as digits ``version`` (made active), as the OTA agent installs an update."""
    card = {**load_card(source.with_name(source.name + ".card.yaml")).to_dict(), "name": "digits", "version": version}
    record = {"update_id": f"u-{version}", "sha256": sha256_file(source), "size": source.stat().st_size}
    store.install("digits", version, "onnx", source, {**record, "format": "onnx"}, card)
    if activate:
        store.activate("digits", version)


@pytest.mark.parametrize("damage", ["not-json", "a-list", "version-leaves-the-store"])
def test_a_damaged_active_pointer_is_set_aside_and_the_file_given_served_with_the_versions_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    given = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")  # digits 1.0.0
    store = ModelStore(tmp_path / "models")
    serve_from_store(given, store, load_digits).close()
    install(store, DIGITS / "digits_int8.onnx", "1.1.0")  # an update made active since
    pointer = tmp_path / "models" / "digits" / "active.json"
    raw = {"not-json": b"xx", "a-list": b"[1]", "version-leaves-the-store": b'{"version": "../../etc"}'}[damage]
    pointer.write_bytes(raw)

    assert list(store) == []  # as the OTA agent's start iterates it: no traceback, nothing active
    model = serve_from_store(given, store, load_digits)
    model.close()
    assert model.version == "1.0.0"
    (aside,) = aside_files(pointer.parent, "active.json")
    assert aside.read_bytes() == raw
    assert store.active("digits") == Active("1.0.0", ["1.1.0"])  # the update stays, as a rollback target
    assert store.versions("digits") == ["1.0.0", "1.1.0"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"model store: {pointer} is damaged (")
    assert f"set aside as {aside.name};" in warnings[0]


@pytest.mark.parametrize("damage", ["record-gone", "record-not-json", "record-a-list", "model-file-damaged"])
def test_an_active_version_whose_copy_in_the_store_is_damaged_gives_way_to_the_file_given(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    given = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")  # digits 1.0.0
    store = ModelStore(tmp_path / "models")
    serve_from_store(given, store, load_digits).close()
    install(store, DIGITS / "digits_int8.onnx", "1.1.0")
    folder = store.version_dir("digits", "1.1.0")
    if damage == "record-gone":
        (folder / "manifest.json").unlink()
    elif damage == "model-file-damaged":
        with open(folder / "model.onnx", "r+b") as fh:
            fh.write(b"\x00" * 64)
    else:
        (folder / "manifest.json").write_bytes(b"xx" if damage == "record-not-json" else b"[]")

    model = serve_from_store(given, store, load_digits)
    model.close()
    assert model.version == "1.0.0"
    assert store.active("digits") == Active("1.0.0", ["1.1.0"])
    assert folder.is_dir()  # kept, for whoever can repair it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("model store: digits 1.1.0, active in the store, is unusable (")


@pytest.mark.slow
def test_edgerun_run_with_ota_serves_the_file_given_over_a_damaged_active_pointer(
    broker: Broker, tmp_path: Path
) -> None:
    _, _, public = make_key(tmp_path)
    state = tmp_path / "state"
    args = (
        *("run", str(DIGITS / "digits_int8.onnx"), "--source", str(SAMPLES), "--sink", "jsonl"),
        *("--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--device-id", "dmg-active"),
        *("--ota-key", str(public), "--state-dir", str(state)),
    )
    assert run_cli(*args).returncode == 0
    pointer = state / "models" / "digits" / "active.json"
    pointer.write_bytes(b"xx")

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and f"{pointer} is damaged" in warnings[0], result.stderr
    assert [p.read_bytes() for p in aside_files(pointer.parent, "active.json")] == [b"xx"]
    assert json.loads(pointer.read_text())["version"] == "1.0.0"  # recorded as active again
    assert {json.loads(line)["version"] for line in result.stdout.splitlines()} == {"1.0.0"}


@pytest.mark.slow
@pytest.mark.logs_errors
def test_the_daemon_starts_and_serves_over_a_damaged_outbox_and_active_pointer(broker: Broker, tmp_path: Path) -> None:
    from tests.test_daemon import _ready, http

    _, _, public = make_key(tmp_path)
    given = model_with_card(tmp_path / "v1", "digits_fp32.onnx", "digits.onnx")  # digits 1.0.0
    state = tmp_path / "state"
    store = ModelStore(state / "models")
    install(store, given, "1.0.0")  # the first start's seeding
    install(store, DIGITS / "digits_int8.onnx", "3.0.0")  # then an update made 3.0.0 active
    queued_outbox(state / "outbox.sqlite", 10)
    (state / "outbox.sqlite").write_bytes(GARBAGE)
    (state / "models" / "digits" / "active.json").write_bytes(b'{"version": ')  # cut short by a power cut
    port = free_port()
    config = tmp_path / "edgerun.yaml"
    config.write_text(
        DAEMON_CONFIG.format(
            device="dmg-daemon",
            models=f"  digits:\n    path: {given}",
            mqtt=broker.port,
            key=public,
            port=port,
            state=state,
        )
    )
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = start_daemon(config, stderr=log)
        try:
            wait_until(lambda: proc.poll() is not None or _ready(port), 60, "the daemon to be ready")
            assert proc.poll() is None, log_path.read_text()[-3000:]
            status, record = http(port, "/v1/models/digits/predict", (SAMPLES / "digit_3.png").read_bytes())
            assert status == 200 and record["version"] == "1.0.0" and record["output"][0]["label"] == "3"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert len([line for line in text.splitlines() if " is damaged (" in line]) == 2, text[-3000:]
    assert [p.read_bytes() for p in aside_files(state, "outbox.sqlite")] == [GARBAGE]
    assert len(aside_files(state / "models" / "digits", "active.json")) == 1
    assert store.active("digits") == Active("1.0.0", ["3.0.0"])
    assert os.path.isdir(store.version_dir("digits", "3.0.0"))
