"""An annotated-images folder this user cannot write in is refused when the sink opens.

A new-user walkthrough found ``edgerun run MODEL --source imgs/ --sink ro/`` (``ro/`` of mode 555, as a
user other than root) run inference and fail at the first image (``sink: cannot write ro/000000.jpg:
Permission denied``, exit 1), while ``--sink ro/x.jsonl``, ``ro/x.mp4`` and ``ro/sub/`` are refused at open
(exit 2) before any input runs. A ``DIR/`` sink now tries writing in its folder when it opens (a hidden
temporary image, removed at once), for ``edgerun run`` and for a daemon pipeline, which waits for the folder
as it waits for a file sink's. A folder it cannot list is refused too: its images' numbers are unknown, and
numbering from 0 would replace the images there.

Root writes anywhere, so these run the command as ``nobody`` (``setpriv``) in a folder it may enter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process
from tests.test_sync import wait_until

MODEL = ROOT / "models/digits/digits_int8.onnx"
SAMPLES = ROOT / "models/digits/samples"
NOBODY = 65534


def _as_user() -> list[str]:
    """The prefix that runs a command as a user who is not root: none where this is not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to run the command as nobody (root writes in any folder)")
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if subprocess.run([*prefix, sys.executable, "-c", "import edgerun"], capture_output=True).returncode != 0:
        pytest.skip(f"nobody cannot run {sys.executable} with edgerun: no user but root to test with")
    return prefix


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder any user may enter (pytest's own are root's alone), with ``imgs/`` holding the samples."""
    with tempfile.TemporaryDirectory(prefix="edgerun-sink-dir-") as name:
        here = Path(name)
        here.chmod(0o755)
        shutil.copytree(SAMPLES, here / "imgs")
        yield here


def _run(place: Path, sink: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgerun", "run", str(MODEL), "--source", "imgs/", "--sink", sink]
    return subprocess.run([*_as_user(), *command], cwd=place, capture_output=True, text=True, timeout=120)


def _errors(stderr: str) -> list[str]:
    """edgerun's own lines (onnxruntime may say it cannot keep its telemetry id in nobody's home)."""
    return [line for line in stderr.splitlines() if line.startswith("edgerun:")]


@pytest.mark.parametrize(
    ("sink", "said"),
    [
        ("ro/", "cannot write ro/: Permission denied"),
        ("ro/x.jsonl", "cannot write ro/x.jsonl: Permission denied"),
        ("ro/x.mp4", "cannot write ro/x.mp4: Permission denied"),
        ("ro/sub/", "cannot create ro/sub/: Permission denied"),
    ],
)
def test_run_refuses_a_sink_in_a_folder_it_cannot_write_in_before_any_input_runs(
    place: Path, sink: str, said: str
) -> None:
    (place / "ro").mkdir(mode=0o555)
    (place / "ro").chmod(0o555)  # whatever the umask
    done = _run(place, sink)
    assert done.returncode == 2, done.stderr
    assert _errors(done.stderr) == [f"edgerun: error: {said}"]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # no input ran
    assert os.listdir(place / "ro") == []


def test_run_into_a_folder_it_can_write_in_leaves_no_file_but_the_images(place: Path) -> None:
    (place / "out").mkdir()
    (place / "out").chmod(0o777)
    done = _run(place, "out/")
    assert done.returncode == 0, done.stderr
    names = os.listdir(place / "out")
    assert len(names) == len(list((place / "imgs").glob("*.png")))  # the .npy has no image to draw
    assert all(re.fullmatch(r"[0-9]{6}\.jpg", name) for name in names), names  # no probe left beside them


def test_run_refuses_an_images_folder_it_cannot_list_and_replaces_no_image_there(place: Path) -> None:
    out = place / "out"
    out.mkdir()
    (out / "000000.jpg").write_bytes(b"an earlier run's image")
    out.chmod(0o733)  # others may make files in it, not list it: the numbers taken are unknown
    done = _run(place, "out/")
    assert done.returncode == 2, done.stderr
    assert _errors(done.stderr) == ["edgerun: error: cannot read out/: Permission denied"]
    assert done.stdout == ""
    assert os.listdir(out) == ["000000.jpg"]
    assert (out / "000000.jpg").read_bytes() == b"an earlier run's image"


def test_a_daemon_pipeline_waits_for_an_images_folder_it_cannot_write_in_without_running_an_input(
    place: Path,
) -> None:
    ro, state = place / "ro", place / "state"
    ro.mkdir()
    ro.chmod(0o555)
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, NOBODY, NOBODY)
    config = place / "edgerun.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {MODEL}\n"
        f"pipelines:\n  p:\n    source: {place / 'imgs'}\n    model: digits\n    sinks: [{ro}/]\n    restart_s: 0.2\n"
        f"api:\n  enabled: false\nstate_dir: {state}\n"
    )
    log = place / "daemon.log"
    command = [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([*_as_user(), *command], cwd=place, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        said = f"pipeline p: cannot write {ro}/: Permission denied; retrying in 0.2 s"
        wait_until(lambda: log.read_text().count(said) >= 2, 60, "the pipeline to wait for its folder twice")
    finally:
        code = stop_process(proc, 10)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert "000000.jpg" not in text  # no input ran into the sink
    assert os.listdir(ro) == []
