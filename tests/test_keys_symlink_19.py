"""``keys generate`` writes through symbolic links: the files linked to get the new pair and the
links stay; a dangling link, a link to the other key or a linked file in a read-only folder is one
line, exit 2, and changes nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_outbox_keys_18 import a_pair, matches, one_error_line, read_only

KEYS = ("op.pem", "op.pub.pem")


def entries(*folders: Path) -> dict[str, str | bytes]:
    """Every entry of ``folders``: a link as where it points, a file as its bytes."""
    return {
        f"{p.parent.name}/{p.name}": f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes()
        for folder in folders
        for p in sorted(folder.iterdir())
    }


def linked_keys(tmp_path: Path, store: Path, linked: tuple[str, ...]) -> Path:
    """``tmp_path/keys`` with the names in ``linked`` as relative links to the keys of ``store`` (as
    a config-management tool makes them) and the other key a copy of the stored one."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in KEYS:
        if name in linked:
            (keys / name).symlink_to(os.path.relpath(store / name, keys))
        else:
            shutil.copy2(store / name, keys / name)
    return keys


@pytest.mark.parametrize(
    "linked", [("op.pub.pem",), ("op.pem",), KEYS, ("chain",)], ids=["public", "private", "both", "through-a-chain"]
)
def test_keys_generate_force_writes_the_new_pair_into_the_linked_files_and_keeps_the_links(
    tmp_path: Path, linked: tuple[str, ...]
) -> None:
    # The rename replaced the link with a regular file: the linked file kept the old key, the link was gone.
    store = tmp_path / "store"
    a_pair(store)
    if linked == ("chain",):  # keys/op.pem -> current/op.pem -> ../store/op.pem, and the same for op.pub.pem
        current = linked_keys(tmp_path, store, KEYS).rename(tmp_path / "current")
        keys = linked_keys(tmp_path, current, KEYS)
        linked = KEYS
    else:
        keys = linked_keys(tmp_path, store, linked)
    old = {name: (keys / name).read_bytes() for name in KEYS}
    links = {name: os.readlink(keys / name) for name in linked}
    done = run_cli("keys", "generate", str(keys / "op"), "--force")
    assert done.returncode == 0, done.stderr
    assert {name: os.readlink(keys / name) for name in KEYS if (keys / name).is_symlink()} == links
    assert all((keys / name).read_bytes() != old[name] for name in KEYS)
    assert matches(keys / "op.pem", keys / "op.pub.pem")
    assert (keys / "op.pem").stat().st_mode & 0o777 == 0o600
    for name in linked:  # what the links lead to has the new keys, beside no temporary file
        assert (store / name).read_bytes() == (keys / name).read_bytes()
    assert sorted(p.name for p in store.iterdir()) == list(KEYS)
    assert sorted(p.name for p in keys.iterdir()) == list(KEYS)


@pytest.mark.parametrize("force", [False, True], ids=["new", "force"])
@pytest.mark.parametrize("dangling", KEYS)
def test_keys_generate_through_a_dangling_link_says_where_it_leads_and_writes_nothing(
    tmp_path: Path, dangling: str, force: bool
) -> None:
    # It replaced the link with a regular file (exit 0): the key landed beside the link, not where it led.
    keys, store = tmp_path / "keys", tmp_path / "store"
    keys.mkdir()
    store.mkdir()
    (keys / dangling).symlink_to(f"../store/{dangling}")
    before = entries(keys, store)
    done = run_cli("keys", "generate", str(keys / "op"), *(["--force"] if force else []))
    assert done.returncode == 2
    assert one_error_line(done.stderr) == (
        f"edgerun: error: {keys / dangling} is a link to {os.path.realpath(store / dangling)}, which does not exist: "
        "create that file or remove the link"
    )
    assert entries(keys, store) == before


def test_keys_generate_force_with_the_public_key_a_link_to_the_private_key_writes_nothing(tmp_path: Path) -> None:
    # It wrote the public key into op.pem, then the private key over it: exit 0 and no public key anywhere.
    private, public, _ = a_pair(tmp_path / "keys")
    public.unlink()
    public.symlink_to("op.pem")
    before = entries(tmp_path / "keys")
    done = run_cli("keys", "generate", str(tmp_path / "keys" / "op"), "--force")
    assert done.returncode == 2
    assert one_error_line(done.stderr) == (
        f"edgerun: error: {private} and {public} are both {os.path.realpath(private)}: each key needs a file of its own"
    )
    assert entries(tmp_path / "keys") == before


@pytest.mark.parametrize("linked", KEYS)
def test_keys_generate_force_with_a_key_linked_into_a_read_only_folder_keeps_the_old_pair(
    tmp_path: Path, small_disk: Callable[[int], Path], linked: str
) -> None:
    # The rename beside the link succeeded (exit 0): the link became a file, the read-only one kept the old key.
    disk = small_disk(256 * 1024)
    a_pair(disk / "store")
    keys = linked_keys(tmp_path, disk / "store", (linked,))
    read_only(disk)
    before = entries(keys, disk / "store")
    done = run_cli("keys", "generate", str(keys / "op"), "--force")
    assert done.returncode == 2
    assert one_error_line(done.stderr) == (
        f"edgerun: error: cannot write the key pair {os.path.realpath(disk / 'store' / linked)} "
        f"(linked from {keys / linked}): Read-only file system"
    )
    assert entries(keys, disk / "store") == before
    assert matches(keys / "op.pem", keys / "op.pub.pem")
