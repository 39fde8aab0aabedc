"""Video files and annotated videos, audited through the real command line: a video this user may not
read, and frames of odd sides, which OpenCV's FFmpeg writer cuts to even ones.

Real models, real OpenCV, generated videos; the permission test drops root's capabilities with setpriv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import DIGITS, ROOT, run_cli

MODEL = str(DIGITS / "digits_int8.tflite")


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("edgerun: error:")]


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING")]


def _mjpeg(path: Path, frames: int, width: int, height: int) -> Path:
    """A raw MJPEG file of ``frames`` JPEG frames of ``width`` x ``height``, as a camera sends them: OpenCV's
    own writers could not make one of odd sides."""
    image = np.full((height, width, 3), 90, np.uint8)
    image[:, -1] = 255  # the last column and row, white, where the writer's cut would fall
    image[-1, :] = 255
    path.write_bytes(cv2.imencode(".jpg", image)[1].tobytes() * frames)
    return path


def _size_and_frames(path: Path) -> tuple[int, int, int]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n, size = 0, (0, 0)
    while True:
        ok, image = cap.read()
        if not ok:
            break
        n, size = n + 1, (image.shape[1], image.shape[0])
    cap.release()
    return size[0], size[1], n


def test_a_video_file_this_user_may_not_read_is_one_line_saying_permission_denied(tmp_path: Path) -> None:
    video = _mjpeg(tmp_path / "locked.mjpeg", 3, 32, 24)
    video.chmod(0o000)
    command = [sys.executable, "-m", "edgerun", "run", MODEL, "--source", str(video), "--sink", "jsonl"]
    if os.geteuid() == 0:  # root reads every file: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        os.chown(video, 54321, 54321)
        command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *command]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert _errors(result.stderr) == [f"edgerun: error: cannot open video {video}: Permission denied"]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("name", ["out.mp4", "out.mkv", "out.avi"])
def test_an_annotated_video_of_odd_sides_says_in_one_warning_that_it_leaves_out_the_last_column_and_row(
    tmp_path: Path, name: str
) -> None:
    video = _mjpeg(tmp_path / "odd.mjpeg", 5, 17, 9)
    out = tmp_path / name
    result = run_cli("run", MODEL, "--source", str(video), "--sink", str(out))
    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == [
        f"WARNING edgerun.sinks.annotate: {out}: OpenCV's video writer takes frames of even sides only: "
        "these 17x9 frames are written as 16x8 (their last column and row left out)"
    ]
    assert _size_and_frames(out) == (16, 8, 5)  # what the warning says the file holds


def test_an_annotated_video_of_one_odd_side_names_that_side_alone(tmp_path: Path) -> None:
    video = _mjpeg(tmp_path / "odd.mjpeg", 3, 18, 9)
    out = tmp_path / "out.mp4"
    result = run_cli("run", MODEL, "--source", str(video), "--sink", str(out))
    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == [
        f"WARNING edgerun.sinks.annotate: {out}: OpenCV's video writer takes frames of even sides only: "
        "these 18x9 frames are written as 18x8 (their last row left out)"
    ]
    assert _size_and_frames(out) == (18, 8, 3)


def test_an_annotated_video_of_even_sides_or_one_pixel_wide_in_an_avi_is_written_whole_without_a_warning(
    tmp_path: Path,
) -> None:
    for width, height in ((16, 8), (1, 9)):  # a side of 1 goes to OpenCV's own MJPEG writer, which keeps it
        video = _mjpeg(tmp_path / f"v{width}.mjpeg", 3, width, height)
        out = tmp_path / f"out{width}.avi"
        result = run_cli("run", MODEL, "--source", str(video), "--sink", str(out))
        assert result.returncode == 0, result.stderr
        assert _warnings(result.stderr) == []
        assert _size_and_frames(out) == (width, height, 3)
