"""The outbox refuses another program's database and is shown without writing; ``keys generate
--force`` replaces both keys or neither."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgerun.errors import ConfigError
from edgerun.sync.outbox import Outbox
from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, fill_disk, free_port, run_cli

FOREIGN = [
    ("create table t(x); insert into t values(1);", "it holds the table(s) t"),
    ("create table records(x); insert into records values(1);", "its table records has the column(s) x, not id,"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` and its bytes; of a ``-shm`` file only that it is there: SQLite's
    shared-memory index of a WAL, in which every reader, even a read-only one, marks what it reads."""
    return {p.name: b"" if p.name.endswith("-shm") else p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def foreign_db(folder: Path, script: str, *, wal: bool = False) -> Path:
    """Another program's database at ``folder/outbox.sqlite``; with ``wal``, in WAL mode with its
    last rows still in the WAL (the program was killed), as a running program leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "outbox.sqlite"
    code = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        + ("db.execute('PRAGMA journal_mode=WAL')\n" if wal else "")
        + "db.executescript(sys.argv[2])\n"
        + ("os._exit(0)\n" if wal else "db.close()\n")
    )
    subprocess.run([sys.executable, "-c", code, str(path), script], check=True, timeout=60)
    return path


def one_error_line(stderr: str) -> str:
    """The ``edgerun: error:`` line of ``stderr``, checked to be the only one and to carry no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("edgerun: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# -- 1. another program's database -------------------------------------------------------------


@pytest.mark.parametrize(("script", "reason"), FOREIGN)
def test_edgerun_outbox_refuses_another_program_s_database_in_one_line_and_leaves_it_untouched(
    tmp_path: Path, script: str, reason: str
) -> None:
    # It once made it an outbox (tables, an epoch, WAL mode: exit 0), or crashed on a "records" table.
    path = foreign_db(tmp_path / "state", script)
    before = snapshot(path.parent)
    result = run_cli("outbox", "--state-dir", str(path.parent))
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result.stderr) == f"edgerun: error: {path} is not an edgerun outbox: " + reason + (
        "" if "records" not in reason else " stream, seq, topic, qos, payload, created"
    )
    assert snapshot(path.parent) == before


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal-with-rows-in-its-wal"])
@pytest.mark.parametrize(("script", "reason"), FOREIGN)
def test_opening_an_outbox_on_another_program_s_database_refuses_it_before_changing_a_byte(
    tmp_path: Path, script: str, reason: str, wal: bool
) -> None:
    path = foreign_db(tmp_path / "state", script, wal=wal)
    before = snapshot(path.parent)
    with pytest.raises(ConfigError) as caught:
        Outbox(path)
    assert str(caught.value).startswith(f"{path} is not an edgerun outbox: {reason}")
    assert snapshot(path.parent) == before


@pytest.mark.parametrize("command", ["run", "predict", "daemon"])
def test_run_predict_and_the_daemon_refuse_another_program_s_database_as_their_outbox_in_one_line(
    broker: Broker, tmp_path: Path, command: str
) -> None:
    # ``run --mqtt`` once logged "the link failed (OperationalError: no such column: id)" and
    # reported one record not delivered, having written its tables into the file.
    state = tmp_path / "state"
    path = foreign_db(state, FOREIGN[0][0])
    before = (path.read_bytes(), sorted(p.name for p in state.iterdir()))
    model, url = str(DIGITS / "digits_int8.tflite"), broker.url
    if command == "daemon":
        config = tmp_path / "c.yaml"
        config.write_text(
            f"models:\n  digits:\n    path: {model}\napi:\n  port: {free_port()}\nmqtt:\n  url: {url}\n"
            f"state_dir: {state}\n"
        )
        result = run_cli("daemon", "--config", str(config))
    elif command == "run":
        result = run_cli("run", model, "--source", str(SAMPLES), "--state-dir", str(state), "--mqtt", url)
    else:
        result = run_cli("predict", model, str(SAMPLES), "--state-dir", str(state), "--mqtt", url)
    assert result.returncode == 2, result.stderr[-2000:]
    assert one_error_line(result.stderr).endswith(f"{path} is not an edgerun outbox: it holds the table(s) t")
    assert "not delivered" not in result.stdout + result.stderr
    assert path.read_bytes() == before[0]
    assert not (state / "outbox.sqlite-wal").exists() and not (state / "outbox.sqlite-shm").exists()


def test_an_empty_or_missing_file_still_becomes_a_new_outbox_with_its_tables_and_epoch(tmp_path: Path) -> None:
    for path in (tmp_path / "missing" / "outbox.sqlite", tmp_path / "empty.sqlite"):
        if path.name == "empty.sqlite":
            path.touch()
        box = Outbox(path)
        assert box.put("metrics", "t", {}) == 1 and len(box.epoch) == 16
        box.close()
        again = Outbox(path)
        assert again.put("metrics", "t", {}) == 2 and len(again) == 2
        again.close()


# -- 2. shown without writing --------------------------------------------------------------------


def queued(folder: Path, count: int, *, killed: bool = False) -> Path:
    """An outbox in ``folder`` with ``count`` records; closed cleanly, or with ``killed`` left as
    ``kill -9`` leaves it (the records in its WAL, its ``-shm`` index beside it)."""
    path = folder / "outbox.sqlite"
    code = (
        "import os, sys\nfrom edgerun.sync.outbox import Outbox\n"
        "box = Outbox(sys.argv[1])\n"
        "box.put_many([('results/digits', 't', {'i': i}, 1) for i in range(int(sys.argv[2]))])\n"
        + ("os._exit(0)\n" if killed else "box.close()\n")
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(count)], check=True, cwd=ROOT, timeout=60)
    return path


def shown(folder: Path) -> dict[str, object]:
    """``edgerun outbox --json`` on ``folder``, which must succeed."""
    result = run_cli("outbox", "--state-dir", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def read_only(folder: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the tmpfs cannot be made read-only here: {done.stderr.strip()}")


def test_edgerun_outbox_shows_the_queue_on_a_full_disk_and_creates_no_file(
    small_disk: Callable[[int], Path],
) -> None:
    # It said "is unusable: the disk is full (disk I/O error)" and left -shm and -wal behind.
    disk = small_disk(1024 * 1024)
    queued(disk, 7)
    fill_disk(disk)
    before = snapshot(disk)
    stats = shown(disk)
    assert stats["records"] == 7 and stats["streams"] == {
        "results/digits": {"records": 7, "bytes": stats["bytes"], "first_seq": 1, "last_seq": 7}
    }
    assert snapshot(disk) == before


@pytest.mark.parametrize("left", ["closed", "killed", "killed-without-its-index"])
def test_edgerun_outbox_shows_the_queue_on_a_read_only_filesystem(small_disk: Callable[[int], Path], left: str) -> None:
    # It said "unable to open database file". A killed writer's records are in its WAL only.
    disk = small_disk(1024 * 1024)
    path = queued(disk, 5, killed=left != "closed")
    if left == "killed-without-its-index":
        Path(f"{path}-shm").unlink()
    assert Path(f"{path}-wal").exists() == (left != "closed")
    read_only(disk)
    before = snapshot(disk)
    stats = shown(disk)
    assert stats["records"] == 5 and stats["evicted"] == 0 and len(str(stats["epoch"])) == 16
    assert snapshot(disk) == before


def test_edgerun_outbox_beside_a_running_writer_shows_what_it_committed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        box.put_many([("metrics", "t", {"i": i}, 1) for i in range(3)])
        assert shown(tmp_path)["records"] == 3
        box.put("metrics", "t", {})
        assert shown(tmp_path)["records"] == 4
    finally:
        box.close()
    # the writer's reserve (room to delete on a full disk) stays; ``edgerun outbox`` made nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.sqlite", "outbox.sqlite-reserve"]


def test_edgerun_outbox_on_a_file_sqlite_cannot_read_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(b"not a database" * 100)
    result = run_cli("outbox", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"edgerun: error: cannot read the outbox {tmp_path / 'outbox.sqlite'}: file is not a database"
    )


# -- 3. keys generate --force -------------------------------------------------------------------


def a_pair(folder: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A generated pair ``folder/op.pem`` and ``op.pub.pem``, and the folder's files."""
    folder.mkdir(parents=True, exist_ok=True)
    done = run_cli("keys", "generate", str(folder / "op"))
    assert done.returncode == 0, done.stderr
    return folder / "op.pem", folder / "op.pub.pem", snapshot(folder)


def matches(private: Path, public: Path) -> bool:
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    derived = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return derived == public.read_bytes()


def chattr(flag: str, path: Path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} does not work here: {done.stderr.strip()}")


@pytest.mark.parametrize("immutable", ["op.pub.pem", "op.pem"])
def test_keys_generate_force_that_cannot_replace_one_key_keeps_the_old_pair(tmp_path: Path, immutable: str) -> None:
    # With op.pub.pem immutable it rewrote op.pem, then failed: the old private key lost, the pair mismatched.
    private, public, before = a_pair(tmp_path / "keys")
    chattr("+i", tmp_path / "keys" / immutable)
    try:
        done = run_cli("keys", "generate", str(tmp_path / "keys" / "op"), "--force")
    finally:
        chattr("-i", tmp_path / "keys" / immutable)
    assert done.returncode == 2
    assert one_error_line(done.stderr) == (
        f"edgerun: error: cannot write the key pair {tmp_path / 'keys' / immutable}: Operation not permitted"
    )
    assert snapshot(tmp_path / "keys") == before and matches(private, public)


def test_keys_generate_force_with_a_folder_where_the_public_key_goes_keeps_the_old_private_key(
    tmp_path: Path,
) -> None:
    private, public, _ = a_pair(tmp_path / "keys")
    public.unlink()
    public.mkdir()
    old = private.read_bytes()
    done = run_cli("keys", "generate", str(tmp_path / "keys" / "op"), "--force")
    assert done.returncode == 2
    assert one_error_line(done.stderr) == f"edgerun: error: cannot write the key pair {public}: Is a directory"
    assert private.read_bytes() == old
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["op.pem", "op.pub.pem"]


def test_keys_generate_force_on_a_full_disk_changes_nothing_and_leaves_no_temporary_file(
    small_disk: Callable[[int], Path],
) -> None:
    disk = small_disk(256 * 1024)
    private, public, _ = a_pair(disk / "keys")
    public.unlink()  # the old private key alone: its rewrite fits in its own page, a new file does not
    filler = fill_disk(disk)
    before = snapshot(disk / "keys")
    done = run_cli("keys", "generate", str(disk / "keys" / "op"), "--force")
    assert done.returncode == 2
    assert "No space left on device" in one_error_line(done.stderr)
    assert snapshot(disk / "keys") == before
    filler.unlink()
    done = run_cli("keys", "generate", str(disk / "keys" / "op"), "--force")
    assert done.returncode == 0, done.stderr
    assert matches(private, public) and sorted(p.name for p in (disk / "keys").iterdir()) == ["op.pem", "op.pub.pem"]


def test_keys_generate_force_writes_a_matching_pair_with_a_private_key_for_its_owner_only(tmp_path: Path) -> None:
    private, public, before = a_pair(tmp_path / "keys")
    private.chmod(0o644)
    done = run_cli("keys", "generate", str(tmp_path / "keys" / "op"), "--force")
    assert done.returncode == 0, done.stderr
    assert private.stat().st_mode & 0o777 == 0o600 and matches(private, public)
    assert snapshot(tmp_path / "keys") != before
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["op.pem", "op.pub.pem"]
