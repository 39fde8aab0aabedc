"""``keys generate`` never follows a symbolic link at a key's path: run as root in a folder others can
write to, a link planted at ``NAME.pem`` or ``NAME.pub.pem`` must neither overwrite the file it leads
to nor put the private key where it points. A link there is refused in one line (exit 2); one that
appears after that check is replaced by the rename, never followed; the private key is 0600 whatever
the umask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerun.cli.keys import _write_pair
from edgerun.ota.envelope import TrustedKeys, load_private_key, open_envelope, seal
from tests.conftest import ROOT, run_cli
from tests.test_outbox_keys_18 import a_pair, one_error_line

KEYS = ("op.pem", "op.pub.pem")
SECRET = b"root:$6$the-victim's-secret:19000:0:99999:7:::\n"


def victim(folder: Path) -> Path:
    """A file of root's that a planted link leads to (``/etc/shadow``, say): mode 0600."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "shadow"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def unchanged(path: Path) -> bool:
    return path.read_bytes() == SECRET and path.stat().st_mode & 0o777 == 0o600


def a_working_pair(private: Path, public: Path) -> bool:
    """Both regular files, the private one 0600, and an envelope sealed with it opens with the public one."""
    for path in (private, public):
        assert not path.is_symlink() and path.is_file(), path
    assert private.stat().st_mode & 0o777 == 0o600
    document = {"update": "digits", "version": "1.1.0"}
    return open_envelope(seal(document, load_private_key(private)), TrustedKeys.load([public])) == document


@pytest.mark.parametrize("force", [False, True], ids=["new", "force"])
@pytest.mark.parametrize("linked", [("op.pem",), ("op.pub.pem",), KEYS], ids=["private", "public", "both"])
def test_keys_generate_refuses_a_link_at_a_key_path_and_leaves_the_file_it_leads_to_untouched(
    tmp_path: Path, linked: tuple[str, ...], force: bool
) -> None:
    # It wrote the new key into the linked file (exit 0): root overwrote /etc/shadow with key material.
    shadow = victim(tmp_path / "etc")
    keys = tmp_path / "shared"
    keys.mkdir()
    for name in linked:
        (keys / name).symlink_to(shadow)
    done = run_cli("keys", "generate", str(keys / "op"), *(["--force"] if force else []))
    assert done.returncode == 2, done.stdout + done.stderr
    assert one_error_line(done.stderr) == (
        f"edgerun: error: {keys / linked[0]} is a symbolic link (to {shadow}): keys are never written through a link; "
        "give the path of the file it leads to, or remove the link"
    )
    assert unchanged(shadow)
    assert sorted(p.name for p in keys.iterdir()) == sorted(linked)
    assert all(os.readlink(keys / name) == str(shadow) for name in linked)
    assert sorted(p.name for p in shadow.parent.iterdir()) == ["shadow"]


@pytest.mark.parametrize("linked", KEYS)
def test_keys_generate_force_refuses_a_link_to_where_others_could_read_the_private_key(
    tmp_path: Path, linked: str
) -> None:
    # It wrote the new key through the link into the attacker's folder (exit 0), the old key's file unlinked there.
    loot = tmp_path / "attacker" / "loot.pem"
    loot.parent.mkdir()
    loot.touch(mode=0o666)
    loot.chmod(0o666)
    _, _, before = a_pair(tmp_path / "shared")
    (tmp_path / "shared" / linked).unlink()
    (tmp_path / "shared" / linked).symlink_to(loot)
    done = run_cli("keys", "generate", str(tmp_path / "shared" / "op"), "--force")
    assert done.returncode == 2
    assert f"is a symbolic link (to {loot})" in one_error_line(done.stderr)
    assert loot.read_bytes() == b"" and (tmp_path / "shared" / linked).is_symlink()
    (other,) = set(KEYS) - {linked}
    assert (tmp_path / "shared" / other).read_bytes() == before[other]


@pytest.mark.parametrize("name", KEYS)
def test_keys_generate_without_force_refuses_an_existing_key_file_in_one_line_as_before(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / name).write_bytes(b"the operator's key\n")
    done = run_cli("keys", "generate", str(tmp_path / "op"))
    assert done.returncode == 2
    assert one_error_line(done.stderr) == f"edgerun: error: {tmp_path / name} exists; use --force to overwrite it"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=["umask-000", "umask-022", "umask-277"])
def test_keys_generate_writes_a_private_key_of_mode_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    # Under umask 0277 the private key was 0400; under any umask it was never wider than 0600.
    for force in ([], ["--force"]):
        done = subprocess.run(
            [sys.executable, "-m", "edgerun", "keys", "generate", str(tmp_path / "op"), *force],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            umask=umask,
        )
        assert done.returncode == 0, done.stderr
        assert a_working_pair(tmp_path / "op.pem", tmp_path / "op.pub.pem")
        assert (tmp_path / "op.pub.pem").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == list(KEYS)


def pem_pair() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    return (
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


@pytest.mark.parametrize("linked", [("op.pem",), ("op.pub.pem",), KEYS], ids=["private", "public", "both"])
def test_a_link_planted_after_the_check_is_replaced_by_the_new_key_never_followed(
    tmp_path: Path, linked: tuple[str, ...]
) -> None:
    # The links planted between the command's check and its write (a race): the write itself must not follow them.
    shadow = victim(tmp_path / "etc")
    keys = tmp_path / "shared"
    keys.mkdir()
    for name in linked:
        (keys / name).symlink_to(shadow)
    private, public = pem_pair()
    _write_pair(keys / "op.pem", private, keys / "op.pub.pem", public)
    assert unchanged(shadow)
    assert a_working_pair(keys / "op.pem", keys / "op.pub.pem")
    assert sorted(p.name for p in keys.iterdir()) == list(KEYS)


def test_a_failed_pair_write_never_puts_what_a_planted_link_leads_to_in_the_public_key_s_place(tmp_path: Path) -> None:
    # The old public key was kept by reading through the link: on the failed private rename, op.pub.pem became a
    # regular file of mode 0644 holding the victim's secret.
    shadow = victim(tmp_path / "etc")
    keys = tmp_path / "shared"
    keys.mkdir()
    (keys / "op.pub.pem").symlink_to(shadow)
    (keys / "op.pem").mkdir()  # a folder where the private key goes: its rename fails after the public one's
    (keys / "op.pem" / "x").touch()
    private, public = pem_pair()
    with pytest.raises(OSError) as caught:
        _write_pair(keys / "op.pem", private, keys / "op.pub.pem", public)
    assert caught.value.filename == str(keys / "op.pem")
    assert unchanged(shadow)
    assert not (keys / "op.pub.pem").is_file() or (keys / "op.pub.pem").read_bytes() != SECRET
    assert sorted(p.name for p in keys.iterdir() if not p.name.startswith("op.")) == []
