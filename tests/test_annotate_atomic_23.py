"""Annotated images are written whole or not at all: a process killed while writing one (SIGKILL, or the kernel at
the file-size limit) leaves no part of an image under an image's name, only a hidden temporary file, which the
next run neither numbers nor keeps.

Real models through the real command line, real OpenCV, real signals and a real file-size limit (``ulimit -f``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgerun.sinks.annotate import TEMPORARY
from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

MODEL = str(DIGITS / "digits_int8.tflite")
DIGIT = str(SAMPLES / "digit_3.png")

#: The child's file-size limit, in bytes: an annotated noise image of 600 x 800 pixels is many times this.
LIMIT = 64 * 1024

#: ``python -c``: the command line (``sys.argv[2:]``) under a file-size limit of ``sys.argv[1]`` bytes. With
#: ``kill``, SIGXFSZ as the kernel has it (Python ignores it, so a write past the limit fails with EFBIG): the
#: process is killed by the write that crosses the limit, as a SIGKILL or a power cut would stop it mid-write.
_UNDER_LIMIT = """
import resource, runpy, signal, sys
limit, kill = sys.argv.pop(1).split(":")
if kill == "kill":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
sys.argv[0] = "edgerun"
runpy.run_module("edgerun", run_name="__main__")
"""


def _noise(path: Path, rows: int, cols: int) -> Path:
    """A PNG of random pixels (which JPEG hardly compresses) at ``path``."""
    cv2.imwrite(str(path), np.random.default_rng(7).integers(0, 256, (rows, cols, 3), np.uint8))
    return path


def _under_limit(source: str, folder: Path, *, kill: bool) -> subprocess.CompletedProcess[str]:
    """``edgerun run`` from ``source`` into ``folder/`` under a file-size limit of ``LIMIT`` bytes."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    code = f"{LIMIT}:{'kill' if kill else 'fail'}"
    args = [sys.executable, "-c", _UNDER_LIMIT, code, "run", MODEL, "--source", source, "--sink", f"{folder}/"]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def _whole_jpeg(path: Path, rows: int, cols: int) -> bool:
    """Whether ``path`` holds a whole JPEG of ``rows`` x ``cols`` pixels: OpenCV decodes a cut one with a gray
    bottom and a warning, so its end marker is looked at too."""
    data = path.read_bytes()
    image = cv2.imread(str(path))
    return data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" and image is not None and image.shape == (rows, cols, 3)


def _numbered(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".jpg" and p.stem.isdigit())


# -- killed while writing ----------------------------------------------------------------------------


def test_a_process_killed_partway_through_writing_an_image_leaves_nothing_under_its_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = _under_limit(str(_noise(tmp_path / "big.png", 600, 800)), out, kill=True)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    assert not (out / "000000.jpg").exists()  # once: the first 64 KiB of the JPEG, an image that decodes gray
    (left,) = out.iterdir()
    assert TEMPORARY.fullmatch(left.name) and left.name.startswith(".000000.")
    assert left.stat().st_size == LIMIT


def test_a_run_killed_with_sigkill_mid_run_leaves_only_whole_images_under_their_names(tmp_path: Path) -> None:
    rows, cols = 1200, 1600
    source = tmp_path / "src"
    source.mkdir()
    first = _noise(source / "f000.png", rows, cols)
    for i in range(1, 40):  # the same picture under 40 names: 40 frames of a few MB each to encode and write
        os.link(first, source / f"f{i:03d}.png")
    out = tmp_path / "out"
    with open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "run", MODEL, "--source", str(source), "--sink", f"{out}/"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            for _ in range(3000):
                if (out.is_dir() and len(_numbered(out)) >= 3) or proc.poll() is not None:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, f"the run ended before it was killed: {(tmp_path / 'stderr').read_text()}"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    images = _numbered(out)
    assert 3 <= len(images) < 40
    assert [p.name for p in images if not _whole_jpeg(p, rows, cols)] == []
    assert all(TEMPORARY.fullmatch(p.name) for p in out.iterdir() if p not in images)


def test_an_image_past_the_file_size_limit_stops_the_run_with_the_reason_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _under_limit(str(_noise(tmp_path / "big.png", 600, 800)), out, kill=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")]
    assert errors == [f"edgerun: error: sink: cannot write {out / '000000.jpg'}: File too large"]
    assert list(out.iterdir()) == []  # neither the image nor its temporary file


# -- what a killed run left ----------------------------------------------------------------------------


def test_temporary_images_a_killed_run_left_are_not_numbered_and_are_removed_at_start(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "000004.jpg").write_bytes(b"an earlier run's image")
    killed = _under_limit(str(_noise(tmp_path / "big.png", 600, 800)), out, kill=True)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    (left,) = (p for p in out.iterdir() if p.name.startswith("."))
    assert TEMPORARY.fullmatch(left.name) and left.name.startswith(".000005.")
    later = out / ".000099.0123abcd.tmp.jpg"  # a run killed later, at a higher number
    later.write_bytes(left.read_bytes())
    hour_ago = time.time() - 3600
    for path in (left, later):
        os.utime(path, (hour_ago, hour_ago))
    young = out / ".000098.89abcdef.tmp.jpg"  # written a moment ago: maybe another writer's, renamed next
    young.write_bytes(b"\xff\xd8")
    others = [".000007.tmp.jpg", ".notes.0123abcd.tmp.jpg", "x.000007.0123abcd.tmp.jpg", ".000007.0123abcd.tmp.png"]
    for name in others:  # not the sink's temporary names: never removed
        (out / name).write_bytes(b"someone else's")
        os.utime(out / name, (hour_ago, hour_ago))

    result = run_cli("-v", "run", MODEL, "--source", DIGIT, "--sink", f"{out}/")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["000004.jpg", "000005.jpg", young.name, *others])
    assert (out / "000004.jpg").read_bytes() == b"an earlier run's image"
    assert [line for line in result.stderr.splitlines() if line.startswith("INFO edgerun.sinks")] == [
        f"INFO edgerun.sinks.annotate: {out}/: removed 2 temporary images left by a process killed while writing them"
    ]


# -- numbering and overwriting, as before -------------------------------------------------------------


def test_images_are_numbered_on_from_the_folder_with_the_mode_the_umask_gives(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "000002.jpg").write_bytes(b"an earlier run's image")
    (out / "notes.jpg").write_bytes(b"not a number")
    digits = [str(SAMPLES / f"digit_{d}.png") for d in (1, 2)]
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "edgerun", "run", MODEL, "--source", *digits, "--sink", f"{out}/"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: os.umask(0o002),
        )
        assert done.returncode == 0, done.stderr
        (warning,) = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
        assert "holds images up to" in warning and "this run's are numbered on from there" in warning
    assert sorted(p.name for p in out.iterdir()) == [
        "000002.jpg",
        "000003.jpg",
        "000004.jpg",
        "000005.jpg",
        "000006.jpg",
        "notes.jpg",
    ]
    assert (out / "000002.jpg").read_bytes() == b"an earlier run's image"
    assert (out / "notes.jpg").read_bytes() == b"not a number"
    for path in _numbered(out)[1:]:
        assert _whole_jpeg(path, 32, 32), path
        assert path.stat().st_mode & 0o777 == 0o664  # as open() makes a file, not mkstemp's 0o600
