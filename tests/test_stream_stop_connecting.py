"""A stop that comes while a stream source is connecting ends without waiting for the attempt.

``cv2.VideoCapture``'s open cannot be interrupted: on a camera that accepts the connection and never
answers it blocks until its timeout (10 s). SIGTERM or SIGINT to ``edgerun run`` while it connected,
a daemon's stop, or ``close()`` while the capture thread reconnected after a drop, all waited for that
attempt to fail (``attempt 1 of 3 failed: not opened``, then the stop). Each attempt now runs on a
thread of its own, which a stop leaves behind; what it opens, if it ever does, it lets go of.

The camera is a real server on 127.0.0.1 (``_Camera``): MJPEG over HTTP for the connections told to
answer, silence for the others.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from edgerun.sources.base import Frame
from edgerun.sources.video import StreamSource
from tests.conftest import DIGITS, ROOT

#: Seconds that only a hung test reaches.
PATIENCE_S = 60.0


class _Camera:
    """A camera on a loopback port: the first ``answered`` connections get ``frames`` MJPEG frames and are
    closed (a drop); every later one is accepted and held, never answered, until ``answer_held``."""

    def __init__(self, answered: int, frames: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(PATIENCE_S)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/cam"
        self._answered, self._frames = answered, frames
        self.held: list[socket.socket] = []
        self.accepted = threading.Semaphore(0)  # one release per connection accepted
        self._serving = threading.Thread(target=self._serve, daemon=True)
        self._serving.start()

    def _serve(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            n += 1
            if n <= self._answered:
                with conn, contextlib.suppress(OSError):  # the client may go first
                    _send_mjpeg(conn, self._frames)
            else:
                self.held.append(conn)
            self.accepted.release()

    def wait_for_connection(self) -> None:
        """Until one more connection was accepted (an attempt to connect is under way)."""
        assert self.accepted.acquire(timeout=PATIENCE_S), f"no connection to {self.url}"

    def answer_held(self) -> bool:
        """Answer the held connection at last, with frames until the client lets go of it: True once it did."""
        conn = self.held.pop()
        conn.settimeout(PATIENCE_S)
        with conn:
            try:
                conn.sendall(_MJPEG_HEAD)
                for _ in range(100_000):  # about 1 KB each: far more than a socket buffers
                    conn.sendall(_mjpeg_frame(0))
            except OSError:  # reset or broken pipe: the client closed it
                return True
        return False

    def close(self) -> None:
        """Stop listening and close the held connections: an attempt still left behind fails at once."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not, on Linux)
        self._serving.join(timeout=PATIENCE_S)
        self._listener.close()
        for conn in self.held:
            conn.close()
        for thread in threading.enumerate():  # what the stop left behind ends before the next test
            if thread.name == f"open {self.url}":
                thread.join(timeout=PATIENCE_S)


_MJPEG_HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"


def _mjpeg_frame(i: int) -> bytes:
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), i * 20, np.uint8))[1].tobytes()
    return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)


def _send_mjpeg(conn: socket.socket, frames: int) -> None:
    conn.recv(65536)  # the request
    conn.sendall(_MJPEG_HEAD + b"".join(_mjpeg_frame(i) for i in range(frames)))


@pytest.fixture
def silent_camera() -> Iterator[_Camera]:
    camera = _Camera(answered=0, frames=0)
    yield camera
    camera.close()


def _attempt_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_run_connects_to_a_camera_that_never_answers_ends_the_run_without_the_attempt(
    sig: signal.Signals, silent_camera: _Camera
) -> None:
    run = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "run", str(DIGITS / "digits_int8.onnx"), "--source", silent_camera.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        silent_camera.wait_for_connection()  # the first attempt is under way, and will get no answer
        run.send_signal(sig)
        out, err = run.communicate(timeout=PATIENCE_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    assert err.splitlines()[-1] == (
        f"# digits 1.0.0 on cpu: 0 frames (0 ok, 0 failed, 0 dropped, 0 skipped) in 0.00 ms; stopped by {sig.name}"
    )
    # and no "attempt 1 of 3 failed: not opened" before it: the attempt was left behind, not waited for
    assert "attempt" not in err and "not opened" not in err and "Traceback" not in err, err
    assert out == ""


def test_a_stop_while_a_stream_source_opens_gives_a_source_without_capture_and_no_failed_attempt(
    silent_camera: _Camera, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    opened: list[StreamSource] = []
    opening = threading.Thread(target=lambda: opened.append(StreamSource(silent_camera.url, stop=stop)), daemon=True)
    opening.start()  # as a daemon's pipeline opens its source
    silent_camera.wait_for_connection()
    stop.set()
    opening.join(timeout=PATIENCE_S)
    assert not opening.is_alive() and len(opened) == 1
    source = opened[0]
    assert list(source.frames()) == []  # the caller discards it
    source.close()
    assert _attempt_warnings(caplog) == []


def test_closing_a_stream_that_reconnects_to_a_camera_that_never_answers_ends_its_capture_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    camera = _Camera(answered=1, frames=3)  # 3 frames, a drop, then silence
    try:
        source = StreamSource(camera.url, queue=64, retry_delay_s=0.01)
        got: list[Frame] = []
        reading = threading.Thread(target=lambda: got.extend(source.frames()), daemon=True)
        reading.start()
        camera.wait_for_connection()  # the first connection, answered
        camera.wait_for_connection()  # the reconnection after the drop, under way
        source.close()
        assert source._thread is not None and not source._thread.is_alive()  # ended, not close()'s 5 s bound
        reading.join(timeout=PATIENCE_S)
        assert not reading.is_alive()
    finally:
        camera.close()
    assert [f.index for f in got] == [0, 1, 2]
    assert source.reconnects == 0
    assert _attempt_warnings(caplog) == []  # the reconnection was left behind, not waited for to fail
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"stream {camera.url} dropped after 3 frames; reconnecting in 0.01 s"
    ]


def test_an_attempt_left_behind_by_a_stop_lets_go_of_the_connection_when_the_camera_answers_late(
    silent_camera: _Camera,
) -> None:
    stop = threading.Event()
    opening = threading.Thread(target=lambda: StreamSource(silent_camera.url, stop=stop).close(), daemon=True)
    opening.start()
    silent_camera.wait_for_connection()
    stop.set()
    opening.join(timeout=PATIENCE_S)
    assert not opening.is_alive()
    # the camera answers now: the attempt left behind opens the stream, and closes it, as no one takes it
    assert silent_camera.answer_held()
