"""Annotated sinks: names FFmpeg would read as URLs, rates and frame sizes OpenCV cannot write, a full or
read-only disk at open, odd names in an image folder, and labels the Hershey fonts cannot draw.

Real models through the real command line, real OpenCV, and a small real filesystem (a tmpfs).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgerun.sinks.annotate import annotate
from edgerun.sinks.base import Result
from edgerun.sources.base import Frame
from tests.conftest import DIGITS, SAMPLES, fill_disk, run_cli

MODEL = str(DIGITS / "digits_int8.tflite")
DIGIT = str(SAMPLES / "digit_3.png")


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("edgerun: error:")]


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING")]


def _video(path: Path) -> tuple[int, float]:
    """(frames that decode, the rate the file declares) of the video at ``path``."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps


def _result(label: str, score: float | None = 0.97, size: tuple[int, int] = (48, 64)) -> Result:
    """A classification result on a gray frame of ``size`` (rows, columns); no score: a raw output."""
    output: object = [{"label": label, "score": score}] if score is not None else label
    record = {"input": "x", "model": "digits", "version": "1", "delegate": "cpu", "output": output}
    return Result(Frame(np.full((*size, 3), 90, np.uint8), 0.0, "x.png", 0), record)


def _drawn(label: str, score: float | None = 0.97, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    result = _result(label, score, size)
    return annotate(result.frame.data, result)


# -- names FFmpeg would read as URLs ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["12:30.mp4", "2026-01-02T10:11:12+01:00.mkv", "cam:1.mov"])
def test_a_relative_video_name_with_a_colon_is_written_as_a_file_of_that_name(tmp_path: Path, name: str) -> None:
    result = run_cli("run", MODEL, "--source", DIGIT, "--sink", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # once: "cannot write video 12:30.mp4", after the model ran
    assert _video(tmp_path / name)[0] == 1


def test_a_file_colon_video_name_leaves_the_file_after_the_colon_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "y.mp4").write_bytes(b"an earlier run's video")
    result = run_cli("run", MODEL, "--source", DIGIT, "--sink", "file:y.mp4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "y.mp4").read_bytes() == b"an earlier run's video"  # once: overwritten by FFmpeg's file:
    assert _video(tmp_path / "file:y.mp4")[0] == 1


# -- rates and frame sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lo.avi", "lo.mp4", "lo.mkv"])
def test_a_rate_too_low_for_opencv_is_written_at_its_lowest_with_one_warning(tmp_path: Path, name: str) -> None:
    result = run_cli("run", MODEL, "--source", DIGIT, "--fps", "0.001", "--sink", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # once: "cannot write video lo.avi", with no reason
    assert _warnings(result.stderr) == [
        f"WARNING edgerun.sinks.annotate: {name}: OpenCV writes videos at 0.002 to 1000 frames per second: "
        "this one plays at 0.002, not 0.001"
    ]
    frames, fps = _video(tmp_path / name)
    assert frames == 1 and fps == pytest.approx(0.002)


@pytest.mark.parametrize("name", ["hi.avi", "hi.mkv"])
def test_a_source_rate_above_1000_is_written_at_1000_with_every_frame(tmp_path: Path, name: str) -> None:
    """Above 1000 frames per second an AVI file lost frames (32 of 100 at 2000 decoded) and a Matroska file
    declared more than it held (102 for 100), so the check at close stopped the run either way."""
    source = tmp_path / "fast.mp4"  # a high-speed camera's clip: 2000 frames per second
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter.fourcc(*"mp4v"), 2000.0, (64, 48))
    for i in range(100):
        writer.write(np.full((48, 64, 3), 2 * i, np.uint8))
    writer.release()
    result = run_cli("run", MODEL, "--source", "fast.mp4", "--sink", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # once: "cannot write hi.avi: the finished file holds 32 of..."
    assert _warnings(result.stderr) == [
        f"WARNING edgerun.sinks.annotate: {name}: OpenCV writes videos at 0.002 to 1000 frames per second: "
        "this one plays at 1000, not 2000"
    ]
    assert _video(tmp_path / name) == (100, pytest.approx(1000.0))


@pytest.mark.parametrize(
    ("name", "size", "reason"),
    [
        ("big.mp4", (10, 8192), "a .mp4 video takes 2 to 8191 pixels a side, not 8192x10 (write .avi or .mkv)"),
        ("big.mov", (8192, 4), "a .mov video takes 2 to 8191 pixels a side, not 4x8192 (write .avi or .mkv)"),
        ("one.mp4", (1, 5), "a .mp4 video takes 2 to 8191 pixels a side, not 5x1 (write .avi)"),
    ],
)
def test_a_first_frame_the_container_cannot_hold_stops_the_run_with_the_sides_it_takes(
    tmp_path: Path, name: str, size: tuple[int, int], reason: str
) -> None:
    cv2.imwrite(str(tmp_path / "in.png"), np.full((*size, 3), 128, np.uint8))
    result = run_cli("run", MODEL, "--source", "in.png", "--sink", name, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert _errors(result.stderr) == [f"edgerun: error: sink: cannot write {name}: {reason}"]
    assert not (tmp_path / name).exists()


def test_a_one_pixel_frame_refused_in_a_matroska_file_is_written_into_an_avi(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "in.png"), np.full((1, 1, 3), 128, np.uint8))
    refused = run_cli("run", MODEL, "--source", "in.png", "--sink", "one.mkv", cwd=tmp_path)
    assert _errors(refused.stderr) == [  # once: "cannot write video one.mkv", with no reason
        "edgerun: error: sink: cannot write one.mkv: a .mkv video takes 2 to 65500 pixels a side, not 1x1 (write .avi)"
    ]
    result = run_cli("run", MODEL, "--source", "in.png", "--sink", "one.avi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _video(tmp_path / "one.avi")[0] == 1


# -- a full disk, a read-only one ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h.mp4", "h.mov", "h.avi", "h.mkv"])
def test_a_video_on_a_disk_full_before_it_opens_says_why_and_leaves_no_file(
    small_disk: Callable[[int], Path], name: str
) -> None:
    disk = small_disk(256 * 1024)
    fill_disk(disk)
    result = run_cli("run", MODEL, "--source", DIGIT, "--sink", str(disk / name))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = _errors(result.stderr)  # once: "cannot write video h.mp4", with no reason
    assert line in (
        f"edgerun: error: sink: cannot write {disk / name}: No space left on device",
        f"edgerun: error: sink close: cannot write {disk / name}: No space left on device",
    )
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # once: an empty h.avi, so the next run's was h-1


def test_a_video_on_a_read_only_file_system_says_so_before_the_run(small_disk: Callable[[int], Path]) -> None:
    disk = small_disk(256 * 1024)
    done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the tmpfs cannot be made read-only here: {done.stderr.strip()}")
    result = run_cli("run", MODEL, "--source", DIGIT, "--sink", str(disk / "v.mp4"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [  # once: "Permission denied"
        f"edgerun: error: cannot write {disk / 'v.mp4'}: Read-only file system"
    ]


# -- an image folder holding odd names -------------------------------------------------------------


def test_an_image_folder_holding_a_name_of_unicode_digits_is_numbered_from_its_ascii_ones(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "²0.jpg").write_bytes(b"")
    (folder / "٣.jpg").write_bytes(b"")  # an Arabic-Indic three
    (folder / "000004.jpg").write_bytes(b"")
    result = run_cli("run", MODEL, "--source", DIGIT, "--sink", "d/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # once: a traceback, ValueError from int('²0')
    assert sorted(p.name for p in folder.iterdir()) == ["000004.jpg", "000005.jpg", "²0.jpg", "٣.jpg"]


# -- labels as the Hershey fonts can draw them -----------------------------------------------------


@pytest.mark.parametrize(
    ("label", "as_drawn"),
    [
        ("nine\nnine", "nine nine"),  # once: a second line, below the black box
        ("nine\x00nul", "nine nul"),  # once: cut at the NUL, and the score with it
        ("a\tb\r", "a b "),
        ("caf\u00e9", "cafe"),  # once: "caf?"
        ("\uff21\uff22", "AB"),  # full-width letters
        ("\u4e5d\u00e9", "?e"),  # a character with no ASCII form is a question mark (as before), an accent dropped
        ("nine\u2028nine", "nine nine"),  # a line separator
    ],
)
def test_a_label_is_drawn_on_one_line_in_ascii(label: str, as_drawn: str) -> None:
    assert np.array_equal(_drawn(label), _drawn(as_drawn))


@pytest.mark.parametrize("size", [(32, 32), (48, 64), (480, 120)])
def test_a_label_too_wide_for_the_frame_is_shortened_with_an_ellipsis_and_the_score_stays_whole(
    size: tuple[int, int],
) -> None:
    label = "a label far too long for any frame here"
    drawn = _drawn(label, 0.13, size)
    assert not np.array_equal(drawn, _drawn(label, 0.97, size))  # once: the score was past the frame's edge
    shortened = [label[:n].rstrip() + "..." for n in range(len(label))]
    assert any(np.array_equal(drawn, _drawn(short, 0.13, size)) for short in shortened)


def test_a_frame_narrower_than_the_score_still_shows_all_of_it() -> None:
    drawn = _drawn("7", 0.13, (16, 16))
    assert not np.array_equal(drawn, _drawn("7", 0.19, (16, 16)))  # once: both cut after "0."
    assert np.array_equal(drawn, _drawn("", 0.13, (16, 16)))  # no room for the label: the score alone
