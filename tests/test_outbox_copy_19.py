"""``edgerun outbox`` reads an outbox whose WAL has no ``-shm`` index through a copy in a temporary
folder: an unusable ``TMPDIR`` is passed over for Python's next temporary folder; where the copy
does not fit, or no folder is usable at all, one line names the folder and the room the copy needs,
exit 2, and the outbox is left byte for byte as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, fill_disk, run_cli
from tests.test_outbox_keys_18 import one_error_line, queued, read_only, snapshot

HINT = "point TMPDIR at a writable folder with room for it)"


def wal_without_index(folder: Path, count: int) -> Path:
    """An outbox of ``count`` records as a writer killed while closing leaves it: the records in its
    WAL and no ``-shm`` index, which ``edgerun outbox`` can only read from a copy."""
    path = queued(folder, count, killed=True)
    Path(f"{path}-shm").unlink()
    return path


def needs(path: Path) -> int:
    """The bytes a copy of the outbox ``path`` and its WAL takes."""
    return path.stat().st_size + Path(f"{path}-wal").stat().st_size


def environment(tmpdir: Path) -> dict[str, str]:
    """This process's environment with ``TMPDIR`` the only temporary folder named, and this tree's
    ``edgerun`` first on the path (for a process run from another folder)."""
    env = {name: value for name, value in os.environ.items() if name not in ("TEMP", "TMP")}
    paths = [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return env | {"TMPDIR": str(tmpdir), "PYTHONPATH": os.pathsep.join(paths)}


def test_edgerun_outbox_whose_copy_does_not_fit_the_temporary_folder_names_that_folder_not_the_outbox(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    # It said "cannot read the outbox PATH: No space left on device", as if the outbox's disk were full.
    path = wal_without_index(tmp_path / "state", 2000)
    small = small_disk(64 * 1024)  # room for Python's test file in it, not for the copy
    assert needs(path) > 64 * 1024
    before = snapshot(path.parent)
    done = run_cli("outbox", "--state-dir", str(path.parent), env=environment(small))
    assert done.returncode == 2, done.stdout
    assert one_error_line(done.stderr) == (
        f"edgerun: error: cannot read the outbox {path}: it has a WAL and no -shm index, so it is read from a copy, "
        f"which could not be made in {small}: No space left on device (the copy needs {needs(path)} bytes: " + HINT
    )
    assert snapshot(path.parent) == before
    assert list(small.iterdir()) == []  # what part of the copy was made is gone


@pytest.mark.parametrize("tmpdir", ["missing", "a-file", "read-only", "full"])
def test_edgerun_outbox_with_an_unusable_tmpdir_reads_its_copy_in_python_s_next_temporary_folder(
    tmp_path: Path, small_disk: Callable[[int], Path], tmpdir: str
) -> None:
    path = wal_without_index(tmp_path / "state", 5)
    folder = tmp_path / "missing"
    if tmpdir == "a-file":
        folder = tmp_path / "a-file"
        folder.write_bytes(b"")
    elif tmpdir in ("read-only", "full"):
        folder = small_disk(64 * 1024)
        if tmpdir == "full":
            fill_disk(folder)
        else:
            read_only(folder)
    left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    before = snapshot(path.parent)
    done = run_cli("outbox", "--state-dir", str(path.parent), "--json", env=environment(folder))
    assert done.returncode == 0, done.stderr
    assert '"records": 5' in done.stdout
    assert snapshot(path.parent) == before
    assert (sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None) == left


def test_edgerun_outbox_with_no_usable_temporary_folder_at_all_says_so_in_one_line(tmp_path: Path) -> None:
    # It said "cannot read the outbox PATH: No usable temporary directory found in [...]", not why it needed one.
    path = wal_without_index(tmp_path / "state", 5)
    before = snapshot(path.parent)
    # A private mount namespace in which /tmp, /var/tmp, /usr/tmp and the current folder are read-only.
    script = (
        'for d in /tmp /var/tmp /usr/tmp "$0"; do [ ! -d "$d" ] || { mount --bind "$d" "$d" && '
        'mount -o remount,bind,ro "$d"; } || exit 99; done; cd "$0" && exec "$@"'
    )
    edgerun = [sys.executable, "-m", "edgerun", "outbox", "--state-dir", str(path.parent)]
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(tmp_path), *edgerun],
        capture_output=True,
        text=True,
        env=environment(tmp_path / "missing"),
    )
    if done.returncode == 99 or "unshare failed" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"no private mount namespace with read-only folders here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stdout
    line = one_error_line(done.stderr)
    assert line.startswith(
        f"edgerun: error: cannot read the outbox {path}: it has a WAL and no -shm index, so it is read from a copy, "
        f"which could not be made: No usable temporary directory found in ['{tmp_path / 'missing'}', '/tmp', "
    ), line
    assert line.endswith(f"'{tmp_path}'] (the copy needs {needs(path)} bytes: " + HINT), line
    assert snapshot(path.parent) == before
