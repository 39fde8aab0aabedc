"""What an interrupted delete or build leaves behind: the model store's pruning and replacing killed
for real (SIGKILL) while a version folder is being deleted, and the sample-model build scripts'
writers on a full disk (a real tmpfs) or killed part-way through a file."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
import pytest
import yaml

import edgerun
from edgerun.card import load_card
from edgerun.files import sha256_file
from edgerun.ota.store import ModelStore
from tests.conftest import DIGITS

#: The tree under test (the checkout, or another worktree on PYTHONPATH): the child processes import it too.
TREE = Path(edgerun.__file__).resolve().parent.parent
#: Padding that makes deleting a version folder take long enough to be killed in the middle of it.
PAD_DIRS = 50
PAD_FILES = 60


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TREE)}


def manifest_of(source: Path) -> dict[str, Any]:
    return {"update_id": "u-test", "sha256": sha256_file(source), "size": source.stat().st_size, "format": "onnx"}


def card_of(source: Path) -> dict[str, Any]:
    card: dict[str, Any] = yaml.safe_load(source.with_name(source.name + ".card.yaml").read_text())
    return card


def install(store: ModelStore, version: str, source: Path) -> None:
    store.install("digits", version, "onnx", source, manifest_of(source), card_of(source))


def pad(folder: Path) -> None:
    """Make a version folder large: many small files in many subfolders."""
    for i in range(PAD_DIRS):
        sub = folder / f"pad{i:03d}"
        sub.mkdir()
        for j in range(PAD_FILES):
            (sub / str(j)).touch()


def pads_left(versions: Path) -> int | None:
    """Padding subfolders still under ``versions/``, in version folders and hidden ones alike; None
    when a folder was renamed or deleted while they were counted (the count would be short)."""
    count = 0
    for entry in list(versions.iterdir()):
        if entry.is_file():
            continue
        try:
            count += sum(1 for sub in entry.iterdir() if sub.name.startswith("pad"))
        except FileNotFoundError:
            return None
    return count


def kill_mid_delete(code: str, *args: str, versions: Path) -> None:
    """Run ``code`` in a child process and SIGKILL it once it has deleted some padding, not all.

    The child runs at the lowest priority, so that on a busy machine this process, polling, is not
    kept waiting while the child deletes everything."""
    child = subprocess.Popen(
        ["nice", "-n", "19", sys.executable, "-c", code, *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while child.poll() is None and pads_left(versions) in (PAD_DIRS, None):
            time.sleep(0.0002)
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, f"the child ended by itself ({child.returncode}): {err.decode()}"
    assert 0 < (pads_left(versions) or 0) < PAD_DIRS, "the delete was not cut short: raise PAD_DIRS"


PRUNE = """
import sys
from pathlib import Path
from edgerun.ota.store import ModelStore
ModelStore(Path(sys.argv[1]), keep=1).activate("digits", "1.2.0")  # prunes 1.0.0
"""

REINSTALL = """
import json, sys
from pathlib import Path
from edgerun.ota.store import ModelStore
source, documents = Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
ModelStore(Path(sys.argv[1])).install("digits", "1.0.0", "onnx", source, documents["manifest"], documents["card"])
"""


def test_a_version_whose_pruning_is_killed_half_way_is_never_listed_and_is_gone_after_a_restart(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    store = ModelStore(root, keep=1)
    for version, source in (("1.0.0", "fp32"), ("1.1.0", "int8")):
        install(store, version, DIGITS / f"digits_{source}.onnx")
        store.activate("digits", version)  # 1.0.0 stays, the rollback target
    install(store, "1.2.0", DIGITS / "digits_fp32.onnx")
    versions = root / "digits" / "versions"
    pad(versions / "1.0.0")

    kill_mid_delete(PRUNE, str(root), versions=versions)

    # What the process killed mid-delete left: 1.0.0 is not installed, in whatever way it is asked.
    assert store.versions("digits") == ["1.1.0", "1.2.0"]
    assert not store.installed("digits", "1.0.0")
    active = store.active("digits")
    assert active is not None and active.version == "1.2.0"

    restarted = ModelStore(root, keep=1)  # the next start deletes the leftover
    assert sorted(os.listdir(versions)) == ["1.1.0", "1.2.0"]
    for version in restarted.versions("digits"):
        restarted.verified_file("digits", version)
    # Published again with other bytes, 1.0.0 is a new install, not "installed already".
    install(restarted, "1.0.0", DIGITS / "digits_int8.onnx")
    assert restarted.verified_file("digits", "1.0.0").read_bytes() == (DIGITS / "digits_int8.onnx").read_bytes()


def test_a_version_whose_replacement_is_killed_half_way_is_listed_whole_with_the_new_bytes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = ModelStore(root)
    for version, source in (("1.0.0", "fp32"), ("1.1.0", "int8")):
        install(store, version, DIGITS / f"digits_{source}.onnx")
        store.activate("digits", version)  # 1.0.0 stays, the rollback target
    versions = root / "digits" / "versions"
    pad(versions / "1.0.0")
    new = DIGITS / "digits_int8.onnx"
    documents = tmp_path / "documents.json"
    documents.write_text(json.dumps({"manifest": manifest_of(new), "card": card_of(new)}))

    kill_mid_delete(REINSTALL, str(root), str(new), str(documents), versions=versions)

    assert store.versions("digits") == ["1.0.0", "1.1.0"]
    assert sorted(os.listdir(versions / "1.0.0")) == ["manifest.json", "model.onnx", "model.onnx.card.yaml"]
    assert store.verified_file("digits", "1.0.0").read_bytes() == new.read_bytes()
    ModelStore(root)  # the next start deletes the leftover
    assert sorted(os.listdir(versions)) == ["1.0.0", "1.1.0"]


# -- the sample-model build scripts' writers ---------------------------------------------------------


@pytest.fixture(scope="module")
def mk() -> ModuleType:
    """tools/_modelkit.py, the build scripts' writers."""
    return importlib.import_module("tools._modelkit")


def test_the_build_scripts_writers_import_without_tensorflow() -> None:
    """CI installs the [test] extra only: the writers' tests must run there."""
    code = "import sys; sys.modules['tensorflow'] = sys.modules['tf2onnx'] = None; import tools._modelkit"
    done = subprocess.run([sys.executable, "-c", code], cwd=TREE, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_card_that_does_not_fit_on_the_disk_leaves_the_earlier_card_whole(
    mk: ModuleType, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(16 * 1024)
    path = disk / "digits_fp32.onnx.card.yaml"
    earlier = (DIGITS / "digits_fp32.onnx.card.yaml").read_text()
    path.write_text(earlier)
    card = yaml.safe_load(earlier)
    card["notes"] = "a held-out accuracy measured on every written file. " * 2000  # about 100 KB

    with pytest.raises(OSError) as failure:
        mk.write_card(path, card, "tools/build_digits.py")

    assert failure.value.errno == errno.ENOSPC
    assert path.read_text() == earlier
    assert os.listdir(disk) == [path.name]  # no temporary file left to fill the disk
    assert load_card(path, cache_dir=disk / "cache").name == "digits"


def write_onnx(mk: ModuleType, path: Path, source: Path) -> None:
    with mk.atomic_output(path) as tmp:
        onnx.save(onnx.load(str(source)), str(tmp))


def write_tflite(mk: ModuleType, path: Path, source: Path) -> None:
    mk.write_bytes(path, source.read_bytes())


@pytest.mark.parametrize(
    ("writer", "earlier", "bigger"),
    [(write_onnx, "digits_int8.onnx", "digits_fp32.onnx"), (write_tflite, "digits_int8.tflite", "digits_fp32.tflite")],
)
def test_a_model_file_that_does_not_fit_on_the_disk_leaves_the_earlier_model_loadable(
    mk: ModuleType,
    small_disk: Callable[[int], Path],
    writer: Callable[[ModuleType, Path, Path], None],
    earlier: str,
    bigger: str,
    tmp_path: Path,
) -> None:
    disk = small_disk(64 * 1024)  # the earlier file fits (36-44 KB), the bigger one (120 KB) does not
    path = disk / f"digits{Path(earlier).suffix}"
    shutil.copyfile(DIGITS / earlier, path)

    with pytest.raises(OSError) as failure:
        writer(mk, path, DIGITS / bigger)

    assert failure.value.errno == errno.ENOSPC
    assert path.read_bytes() == (DIGITS / earlier).read_bytes()
    assert os.listdir(disk) == [path.name]
    shutil.copyfile(DIGITS / (earlier + ".card.yaml"), tmp_path / (path.name + ".card.yaml"))
    shutil.copyfile(path, tmp_path / path.name)
    with edgerun.load(tmp_path / path.name, delegate="cpu", state_dir=tmp_path / "state") as model:
        assert model.run(*model.constant_inputs())[0].shape[-1] == 10


KILLED_WRITER = """
import sys, time
from pathlib import Path
import tools._modelkit as mk
target, data = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
with mk.atomic_output(target) as tmp, open(tmp, "wb") as fh:
    fh.write(data[: len(data) // 2])
    fh.flush()
    print("half written", flush=True)
    time.sleep(3600)  # killed here
    fh.write(data[len(data) // 2 :])
"""


def test_a_build_killed_while_writing_a_file_keeps_the_earlier_file_and_the_next_build_clears_its_leftover(
    mk: ModuleType, tmp_path: Path
) -> None:
    out = tmp_path / "digits"
    (out / "samples").mkdir(parents=True)
    target = out / "samples" / "digit_7.npy"
    shutil.copyfile(DIGITS / "samples" / "digit_7.npy", target)
    shutil.copyfile(DIGITS / "digits_int8.onnx", out / "digits_int8.onnx")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target), str(DIGITS / "digits_fp32.onnx")],
        cwd=TREE,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert line == "half written\n", err

    assert target.read_bytes() == (DIGITS / "samples" / "digit_7.npy").read_bytes()
    leftovers = [p for p in (out / "samples").iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].name.startswith("."), leftovers  # hidden: not the sample

    assert mk.remove_partial_files(out) == leftovers
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "digits_int8.onnx",
        "samples",
        "samples/digit_7.npy",
    ]
