"""A camera that stops giving frames is opened again: a video file stands in for the device at ``open_capture``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from edgerun.errors import SourceError
from edgerun.sources.video import CameraSource
from tests.conftest import held_by_this_process
from tests.test_sources import make_video


class FlakyCapture:
    """A real ``cv2.VideoCapture`` over a video file whose ``read()`` fails after ``reads`` frames (None: never).

    It records what ``set()`` asked of it, and sets ``failed`` once a read failed.
    """

    def __init__(self, video: Path | None, reads: int | None = None) -> None:
        self.cap = cv2.VideoCapture(str(video)) if video is not None else cv2.VideoCapture()
        self.reads_left = reads
        self.settings: list[tuple[int, float]] = []
        self.failed = threading.Event()

    def isOpened(self) -> bool:  # OpenCV's name
        return bool(self.cap.isOpened())

    def set(self, prop: int, value: float) -> bool:
        self.settings.append((prop, value))
        return bool(self.cap.set(prop, value))

    def get(self, prop: int) -> float:
        return float(self.cap.get(prop))

    def read(self, *image: Any) -> tuple[bool, Any]:
        if self.reads_left == 0:
            ok, frame = False, None
        else:
            if self.reads_left is not None:
                self.reads_left -= 1
            ok, frame = self.cap.read(*image)
        if not ok:
            self.failed.set()
        return ok, frame

    def release(self) -> None:
        self.cap.release()


def opener(*captures: Callable[[], FlakyCapture], then: Callable[[], FlakyCapture]) -> tuple[Any, list[FlakyCapture]]:
    """An ``open_capture`` giving the captures made by ``captures`` in turn, then ``then()``'s for every later open."""
    made: list[FlakyCapture] = []

    def open_capture(device: int | str) -> FlakyCapture:
        n = len(made)
        made.append(captures[n]() if n < len(captures) else then())
        return made[-1]

    return open_capture, made


def unplugged() -> FlakyCapture:
    return FlakyCapture(None)


def read_all(camera: CameraSource) -> tuple[list[Any], SourceError | None]:
    """Every frame the camera gives until it ends, and the error it ended with."""
    frames = []
    try:
        for frame in camera.frames():
            frames.append(frame)
    except SourceError as exc:
        return frames, exc
    return frames, None


def test_a_camera_whose_read_fails_once_is_opened_again_and_its_frames_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = make_video(tmp_path / "cam.avi", frames=8)
    open_capture, made = opener(lambda: FlakyCapture(video, reads=5), lambda: FlakyCapture(video), then=unplugged)
    camera = CameraSource("camera:0", queue=64, retries=2, retry_delay_s=0.01, open_capture=open_capture)
    frames, error = read_all(camera)
    assert [f.index for f in frames] == list(range(13))  # 5 before the failed read, then the 8 of the second opening
    assert [f.source_id for f in frames] == [f"camera:0#{i}" for i in range(13)]
    assert camera.reconnects == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "stopped giving" in r.msg]
    assert warnings[0] == "camera camera:0 stopped giving frames after 5 frames; opening it again in 0.01 s"
    assert error is not None  # the stand-in video ended, and then the device was gone for good
    assert len(made) == 2 + 2  # the first opening, the one after the failed read, then 2 attempts in vain
    assert not held_by_this_process(video)  # every capture opened was released


def test_a_camera_unplugged_and_plugged_in_again_within_its_attempts_goes_on(tmp_path: Path) -> None:
    video = make_video(tmp_path / "cam.avi", frames=4)
    open_capture, made = opener(
        lambda: FlakyCapture(video, reads=3), unplugged, unplugged, lambda: FlakyCapture(video), then=unplugged
    )
    camera = CameraSource("camera:0", queue=64, retries=3, retry_delay_s=0.01, open_capture=open_capture)
    frames, _ = read_all(camera)
    assert [f.index for f in frames] == list(range(7))  # 3, then the 4 after two attempts found no device
    assert camera.reconnects == 1
    assert len(made) == 4 + 3  # then the video ended, and 3 attempts found no device


def test_a_camera_that_never_comes_back_ends_with_an_error_naming_it_after_its_attempts(tmp_path: Path) -> None:
    video = make_video(tmp_path / "cam.avi", frames=8)
    open_capture, made = opener(lambda: FlakyCapture(video, reads=3), then=unplugged)
    camera = CameraSource("camera:0", queue=64, retries=3, retry_delay_s=0.01, open_capture=open_capture)
    frames, error = read_all(camera)
    assert [f.index for f in frames] == [0, 1, 2]
    assert len(made) == 1 + 3  # the first opening, then the 3 attempts
    assert error is not None and str(error).startswith("camera camera:0 unreachable after 3 attempts: ")
    assert camera.reconnects == 0
    assert not held_by_this_process(video)


def test_closing_a_camera_while_it_waits_to_open_again_ends_the_wait_and_the_capture(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = make_video(tmp_path / "cam.avi", frames=8)
    open_capture, made = opener(lambda: FlakyCapture(video, reads=2), then=lambda: FlakyCapture(video))
    camera = CameraSource("camera:0", queue=64, retry_delay_s=60.0, open_capture=open_capture)
    frames = camera.frames()
    assert [next(frames).index, next(frames).index] == [0, 1]
    assert made[0].failed.wait(30)  # the read failed: the capture thread now waits 60 s to open the camera again
    closer = threading.Thread(target=camera.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive()
    assert camera._thread is not None and not camera._thread.is_alive()  # the wait ended, not close()'s 5 s bound
    assert list(frames) == []  # a stop, not an error
    assert len(made) == 1 and not held_by_this_process(video)
    assert any("opening it again in 60 s" in r.getMessage() for r in caplog.records)


def test_a_camera_opened_again_gets_the_requested_width_height_and_rate_again(tmp_path: Path) -> None:
    video = make_video(tmp_path / "cam.avi", frames=30)
    open_capture, made = opener(lambda: FlakyCapture(video, reads=2), then=lambda: FlakyCapture(video))
    camera = CameraSource(
        "camera:0", width=320, height=240, fps=15, queue=64, retry_delay_s=0.01, open_capture=open_capture
    )
    seen = []
    for frame in camera.frames():
        seen.append(frame.index)
        if frame.index == 5:  # past the reopening
            camera.close()
    assert seen[:6] == list(range(6))
    wanted = [(cv2.CAP_PROP_FRAME_WIDTH, 320.0), (cv2.CAP_PROP_FRAME_HEIGHT, 240.0), (cv2.CAP_PROP_FPS, 15.0)]
    assert len(made) >= 2 and all(c.settings == wanted for c in made)
    assert camera.reconnects >= 1
    assert not held_by_this_process(video)  # the camera opened again was released on close
