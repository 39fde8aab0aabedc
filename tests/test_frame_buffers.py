"""Video sources decode into the memory of frames no one holds any more, and never into a frame someone holds.

Real generated videos through OpenCV; each frame's content is checked against a
plain decode of the same file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgerun.sources.video import FrameBuffers, StreamSource, VideoFileSource
from tests.test_sources import make_video
from tests.test_stream_recording_19 import _decoded as plain_decode


def test_frames_that_are_kept_are_never_written_over(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.avi", frames=40)
    expected = plain_decode(video)
    kept: dict[int, np.ndarray] = {}
    views: dict[int, np.ndarray] = {}
    addresses = set()
    for frame in VideoFileSource(str(video)).frames():
        addresses.add(frame.data.ctypes.data)
        if frame.index % 3 == 0:
            kept[frame.index] = frame.data  # the array itself
        elif frame.index % 5 == 0:
            views[frame.index] = frame.data[4:20, 8:30, 1]  # only a view of it: its base must stay as it was
    assert len(expected) == 40 and kept and views
    assert len(addresses) < 40 - len(kept) - len(views)  # the frames let go lent their memory: the test's premise
    for index, image in kept.items():
        assert np.array_equal(image, expected[index]), index
    for index, view in views.items():
        assert np.array_equal(view, expected[index][4:20, 8:30, 1]), index


def test_frames_let_go_lend_their_memory_to_the_next_ones(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.avi", frames=30)
    expected = plain_decode(video)
    buffers = FrameBuffers()
    cap = cv2.VideoCapture(str(video))
    for i in range(30):
        image = buffers.read(cap)
        assert image is not None and np.array_equal(image, expected[i])
        assert image is buffers._arrays[0] and len(buffers._arrays) == 1  # one array, used again and again
        del image
    cap.release()


def test_a_capture_of_another_size_starts_the_pool_again(tmp_path: Path) -> None:
    # as a stream reconnected at another resolution: one pool, two captures
    big = make_video(tmp_path / "big.avi", frames=6, size=(96, 64))
    small = make_video(tmp_path / "small.avi", frames=6, size=(32, 24))
    buffers = FrameBuffers(size=4)
    held = []
    for path, shape in ((big, (64, 96, 3)), (small, (24, 32, 3)), (big, (64, 96, 3))):
        cap = cv2.VideoCapture(str(path))
        expected = plain_decode(path)
        for i in range(6):
            image = buffers.read(cap)
            assert image is not None and image.shape == shape
            assert np.array_equal(image, expected[i])
            if i == 2:
                held.append((image, expected[i]))  # held across the size changes
        assert buffers.read(cap) is None  # the end of the capture
        cap.release()
    for image, expected_image in held:
        assert np.array_equal(image, expected_image)


def test_the_pool_holds_no_more_arrays_than_its_size(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.avi", frames=12)
    buffers = FrameBuffers(size=3)
    cap = cv2.VideoCapture(str(video))
    held = [buffers.read(cap) for _ in range(12)]  # every frame held: none can be used again
    cap.release()
    assert all(image is not None for image in held)
    assert len({image.ctypes.data for image in held}) == 12
    assert len(buffers._arrays) == 3


def test_a_stream_keeps_every_frame_it_hands_on_intact(tmp_path: Path) -> None:
    # a recording opened as a stream (the served-file case): every frame kept stays as decoded while
    # those let go lend their memory to later ones
    video = make_video(tmp_path / "v.avi", frames=20)
    expected = plain_decode(video)
    source = StreamSource(str(video), queue=64, retries=1, retry_delay_s=0.01)
    kept = []
    for frame in source.frames():
        if frame.index % 2:
            kept.append(frame)
    assert [f.index for f in kept] == list(range(1, 20, 2))
    for frame in kept:
        assert np.array_equal(frame.data, expected[frame.index]), frame.index
    # how many arrays were used again depends on how far the capture thread ran ahead of this loop (all 20
    # frames can wait in its buffer at once on a loaded machine): reuse itself is asserted by the tests above


def test_frames_made_read_only_by_their_holder_leave_the_pool_and_the_video_goes_on(tmp_path: Path) -> None:
    # OpenCV refuses to write into a read-only array: once let go, such a frame stopped the source with cv2.error
    video = make_video(tmp_path / "v.avi", frames=12)
    expected = plain_decode(video)
    got = 0
    for frame in VideoFileSource(str(video)).frames():
        assert np.array_equal(frame.data, expected[frame.index])
        frame.data.setflags(write=False)
        got += 1
    assert got == 12
