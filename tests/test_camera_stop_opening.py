"""A stop while a camera is being opened does not wait for the attempt under way.

``CameraSource._open_device`` reads the first frame inside each attempt, and OpenCV's V4L2 read of a
device that opens but gives no frame blocks until its select timeout (about 10 s). Made on the caller's
thread, that attempt held a stop (a daemon's, ``edgerun run``'s on a signal) as long. The device is faked
at the ``open_capture`` boundary: a capture that opens and whose first read blocks until the test lets it go.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from edgerun.sources.video import CameraSource


class _SilentCamera:
    """A device that opens, and whose reads give nothing until ``answer`` is set (then one black frame)."""

    def __init__(self, answer: threading.Event) -> None:
        self.answer = answer
        self.reading = threading.Event()
        self.released = threading.Event()

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0

    def read(self, image: object = None) -> tuple[bool, np.ndarray]:
        self.reading.set()
        self.answer.wait(60)
        return True, np.zeros((4, 4, 3), np.uint8)

    def release(self) -> None:
        self.released.set()


def test_a_stop_during_the_first_read_of_an_opening_camera_ends_the_opening_and_releases_it_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer, stop = threading.Event(), threading.Event()
    camera_device = _SilentCamera(answer)
    made: list[CameraSource] = []
    opening = threading.Thread(
        target=lambda: made.append(
            CameraSource("camera:0", retries=3, retry_delay_s=60.0, open_capture=lambda _: camera_device, stop=stop)
        )
    )
    with caplog.at_level(logging.WARNING):
        opening.start()
        assert camera_device.reading.wait(30)  # the attempt is in its first read
        stop.set()
        opening.join(30)
        assert not opening.is_alive()  # was: held until the read returned (V4L2: some 10 s)
        assert not answer.is_set()  # it ended while the device was still silent
        camera = made[0]
        assert list(camera.frames()) == []  # stopped while opening: no frames, and no error
        camera.close()
        answer.set()  # the device answers at last: the attempt left behind lets go of it
        assert camera_device.released.wait(30)
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]  # a stop, not a failed attempt
