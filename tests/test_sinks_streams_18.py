"""Annotated sinks against frames that are no BGR image and a full disk; streams that end or keep dropping.

Real models, real OpenCV, a real broker, a small real filesystem (a tmpfs) and real HTTP servers on
127.0.0.1 standing in for a camera's stream.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.publish as mqtt_publish
import pytest

import edgerun
from edgerun.errors import PipelineError, SourceError
from edgerun.pipeline import Pipeline
from edgerun.sinks.annotate import AnnotatedImageSink, AnnotatedVideoSink
from edgerun.sinks.base import Result
from edgerun.sources.base import Frame
from edgerun.sources.mqtt import MqttSource
from edgerun.sources.video import StreamSource
from tests.conftest import DIGITS, ROOT, SAMPLES, Broker, fill_disk, free_port, npy_bytes, run_cli

MODEL = str(DIGITS / "digits_int8.tflite")


def _frames_in(video: Path) -> int:
    """How many frames of ``video`` decode, read to its end (not the count its header declares)."""
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _noisy_video(path: Path, frames: int, size: tuple[int, int] = (96, 64)) -> Path:
    """A video of random pixels, which compresses badly: a few KB per frame."""
    rng = np.random.default_rng(18)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, size)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    writer.release()
    return path


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("edgerun: error:")]


def base64_npy(array: np.ndarray) -> bytes:
    """``array`` as an MQTT source takes it: a base64 ``.npy``."""
    return base64.b64encode(npy_bytes(array))


# -- frames that are no BGR image -----------------------------------------------------------------


def test_a_two_or_five_channel_array_is_a_failed_frame_left_out_of_annotated_sinks_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.png").write_bytes((SAMPLES / "digit_0.png").read_bytes())
    np.save(inputs / "b_two.npy", np.zeros((32, 32, 2), np.uint8))
    np.save(inputs / "c_five.npy", np.zeros((32, 32, 5), np.uint8))
    (inputs / "d.png").write_bytes((SAMPLES / "digit_1.png").read_bytes())
    result = run_cli(
        "run", MODEL, "--source", "in", "--sink", "out/", "--sink", "out.avi", "--sink", "out.mp4", "--sink", "out.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in result.stderr  # once: cv2.putText's assertion stopped the run at the first of them
    assert result.returncode == 1, result.stderr  # two inputs failed
    assert "4 frames (2 ok, 2 failed" in result.stderr
    assert _errors(result.stderr) == [
        "edgerun: error: in/b_two.npy: an image is HxW or HxWx1/3/4 pixels, got shape [32, 32, 2]",
        "edgerun: error: in/c_five.npy: an image is HxW or HxWx1/3/4 pixels, got shape [32, 32, 5]",
    ]
    assert not [line for line in result.stderr.splitlines() if line.startswith("WARNING")]  # failed: no warning
    rows = (tmp_path / "out.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["in/a.png", "in/b_two.npy", "in/c_five.npy", "in/d.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.jpg", "000003.jpg"]
    assert _frames_in(tmp_path / "out.avi") == _frames_in(tmp_path / "out.mp4") == 2


def test_one_bad_array_message_does_not_stop_a_live_pipeline_into_an_annotated_video(
    tmp_path: Path, own_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    model = edgerun.load(MODEL)
    topic = "cam/18"
    source = MqttSource(f"{own_broker.url}/{topic}/#", queue=8)
    video = AnnotatedVideoSink(str(tmp_path / "out.avi"))
    results: list[Result] = []
    pipeline = Pipeline(source, model, [video], on_result=results.append)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # the failure is the finding
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    two = base64_npy(np.zeros((32, 32, 2), np.uint8))
    good = (SAMPLES / "digit_3.png").read_bytes()
    # once the subscription is in place (a retained message is not run: it may be a stale one)
    deadline = time.monotonic() + 30
    subscribed = f"MQTT source subscribed to {topic}/#"
    while not any(subscribed in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    mqtt_publish.multiple(
        [{"topic": f"{topic}/a", "payload": two}, {"topic": f"{topic}/b", "payload": good}],
        hostname="127.0.0.1",
        port=own_broker.port,
    )
    deadline = time.monotonic() + 30
    while len(results) < 2 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop("test over")
    thread.join(timeout=30)
    assert not failure, failure  # once: PipelineError("sink: ... putText"), and the good message never ran
    assert sorted(r.ok for r in results) == [False, True]
    assert pipeline.summary.ok == pipeline.summary.errors == 1
    assert video.written == 1 and _frames_in(tmp_path / "out.avi") == 1


def test_gray_and_bgra_array_frames_reach_annotated_videos_and_images_as_bgr(tmp_path: Path) -> None:
    np.save(tmp_path / "b_bgra.npy", np.full((32, 32, 4), (40, 80, 160, 255), np.uint8))
    np.save(tmp_path / "c_gray.npy", np.full((32, 32, 1), 200, np.uint8))
    inputs = [str(SAMPLES / "digit_0.png"), "b_bgra.npy", "c_gray.npy", str(SAMPLES / "digit_1.png")]
    result = run_cli(
        "run", MODEL, "--source", *inputs, "--sink", "out.avi", "--sink", "out.mp4", "--sink", "out/", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "4 frames (4 ok, 0 failed" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    for name in ("out.avi", "out.mp4"):  # once 2: the writer dropped the 4- and 1-channel frames without a word
        assert _frames_in(tmp_path / name) == 4, name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:06d}.jpg" for i in range(4)]
    corner = (slice(24, 32), slice(24, 32))  # below the label
    bgra = cv2.imread(str(tmp_path / "out" / "000001.jpg"))[corner].reshape(-1, 3).mean(axis=0)
    gray = cv2.imread(str(tmp_path / "out" / "000002.jpg"))[corner].reshape(-1, 3).mean(axis=0)
    assert np.allclose(bgra, (40, 80, 160), atol=6), bgra  # BGRA read as preprocessing reads it, alpha dropped
    assert np.allclose(gray, (200, 200, 200), atol=6), gray


def test_the_annotated_sinks_write_every_gray_bgr_and_bgra_frame_and_skip_other_shapes(tmp_path: Path) -> None:
    video = AnnotatedVideoSink(str(tmp_path / "out.mp4"))
    images = AnnotatedImageSink(str(tmp_path / "out") + "/")
    record = {"input": "x", "model": "digits", "version": "1", "delegate": "cpu", "latency_ms": 0.1}
    record["output"] = [{"label": "3", "score": 0.9}]
    shapes = [(48, 64, 3), (48, 64), (48, 64, 1), (48, 64, 4), (48, 64, 2), (0, 64, 3), (48, 64, 5)]
    for i, shape in enumerate(shapes):
        for sink in (video, images):
            sink.publish(Result(Frame(np.full(shape, 90, np.uint8), 0.0, f"a{i}.npy", i), record))
    video.close()
    images.close()
    assert video.written == images.written == 4
    assert _frames_in(tmp_path / "out.mp4") == 4
    assert len(list((tmp_path / "out").iterdir())) == 4


# -- a full disk, the file-size limit ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.avi", "a.mp4"])
def test_an_annotated_video_on_a_full_disk_stops_the_run_with_the_reason(
    tmp_path: Path, small_disk: Callable[[int], Path], name: str
) -> None:
    disk = small_disk(128 * 1024)
    source = _noisy_video(tmp_path / "in.avi", 120)  # some 1.5 MB of MJPEG, or 300 KB of MPEG-4
    result = run_cli("run", MODEL, "--source", str(source), "--sink", str(disk / name))
    assert result.returncode == 1, result.stderr  # once 0, every frame ok, and a file that does not play
    assert "Traceback" not in result.stderr
    (line,) = _errors(result.stderr)
    assert re.fullmatch(rf"edgerun: error: sink( close)?: cannot write {disk / name}: No space left on device", line)


def test_a_small_annotated_video_the_disk_cannot_finish_fails_when_it_is_closed(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    """Small frames stay in the writer's buffer until the end: the full disk only shows when it is flushed."""
    disk = small_disk(128 * 1024)
    (disk / "other").write_bytes(bytes(100 * 1024))  # the card is mostly full already
    video = AnnotatedVideoSink(str(disk / "a.mp4"))
    record = {"input": "x", "model": "digits", "version": "1", "delegate": "cpu", "latency_ms": 0.1}
    record["output"] = [{"label": "3", "score": 0.9}]
    rng = np.random.default_rng(1)
    for i in range(40):  # fewer than 256 KiB together, so nothing is written before the end
        video.publish(Result(Frame(rng.integers(0, 256, (48, 64, 3), np.uint8), 0.0, f"f{i}", i), record))
    with pytest.raises(PipelineError, match=f"cannot write {disk / 'a.mp4'}: No space left on device"):
        video.close()


def test_an_annotated_video_at_the_file_size_limit_stops_the_run_with_the_reason(tmp_path: Path) -> None:
    source = _noisy_video(tmp_path / "in.avi", 120)

    def limit() -> None:  # `ulimit -f 100`, for the run alone (Python ignores SIGXFSZ: writes fail with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))

    for name in ("a.avi", "a.mp4"):
        out = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "edgerun", "run", MODEL, "--source", str(source), "--sink", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=limit,
        )
        assert result.returncode == 1, result.stderr
        (line,) = _errors(result.stderr)
        assert re.fullmatch(rf"edgerun: error: sink( close)?: cannot write {out}: File too large", line)


def test_an_annotated_video_with_room_on_its_disk_is_written_whole(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(4 * 1024 * 1024)
    source = _noisy_video(tmp_path / "in.avi", 120)
    for name in ("a.avi", "a.mp4"):
        result = run_cli("run", MODEL, "--source", str(source), "--sink", str(disk / name))
        assert result.returncode == 0, result.stderr
        assert _frames_in(disk / name) == 120


def test_an_annotated_image_folder_on_a_full_disk_says_why_and_leaves_no_torn_image(
    small_disk: Callable[[int], Path],
) -> None:
    disk = small_disk(64 * 1024)
    folder = disk / "d"
    folder.mkdir()
    fill_disk(disk)
    result = run_cli("run", MODEL, "--source", str(SAMPLES / "digit_3.png"), "--sink", f"{folder}/")
    assert result.returncode == 1, result.stderr
    assert _errors(result.stderr) == [  # once: "cannot write .../000000.jpg", and no reason
        f"edgerun: error: sink: cannot write {folder / '000000.jpg'}: No space left on device"
    ]
    assert list(folder.iterdir()) == []  # no empty or half-written JPEG left behind


# -- streams that end, and streams that keep dropping -----------------------------------------------


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert server.poll() is None, "the test server died"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@contextlib.contextmanager
def _server(args: list[str], cwd: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A test server on 127.0.0.1:``port``, as a real process, killed on the way out."""
    server = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, server)
        yield server
    finally:
        server.kill()
        server.wait(timeout=10)


MJPEG_SERVER = """
import sys, time, socketserver, http.server, cv2, numpy as np
port, frames, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for i in range(frames):  # then the connection closes cleanly, as a camera that restarts does
            jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), i * 20, np.uint8))[1].tobytes()
            head = b"--frame\\r\\nContent-Type: image/jpeg\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(jpeg)
            self.wfile.write(head + jpeg + b"\\r\\n")
            self.wfile.flush()
            time.sleep(pause)

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", port), Handler).serve_forever()
"""


def _read_until(source: StreamSource, enough: int) -> tuple[list[Frame], bool]:
    """Frames of ``source`` until it ends by itself (True) or ``enough`` came (False, and it is closed)."""
    got: list[Frame] = []
    ended: list[bool] = []

    def read() -> None:
        for frame in source.frames():
            got.append(frame)
            if len(got) == enough:
                source.close()
                return
        ended.append(True)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        source.close()
        thread.join(timeout=10)
    return got, bool(ended)


def test_a_video_file_served_over_http_is_a_recording_that_ends_instead_of_playing_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _noisy_video(tmp_path / "a.avi", 30)
    port = free_port()
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with _server(server, tmp_path, port):
        source = StreamSource(f"http://127.0.0.1:{port}/a.avi", queue=64, retry_delay_s=0.01)
        got, ended = _read_until(source, 60)
    assert ended  # once: played again and again at once, 23,750 frames of a 30-frame video in 8 s
    assert [f.index for f in got] == list(range(30)) and source.dropped == 0
    assert source.reconnects == 0 and source.declared_frames == 30
    assert f"stream http://127.0.0.1:{port}/a.avi ended after its 30 frames (a recording, not a live stream)" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_live_stream_that_keeps_dropping_is_reconnected_after_waits_that_double(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "mjpeg.py").write_text(MJPEG_SERVER)
    port = free_port()
    with _server([sys.executable, "mjpeg.py", str(port), "5", "0"], tmp_path, port):
        url = f"http://127.0.0.1:{port}/cam"
        source = StreamSource(url, queue=64, retry_delay_s=0.02)
        assert source.declared_frames is None  # a live stream: no length
        got, ended = _read_until(source, 25)
    # the fifth drop may be seen (and logged, with its wait of 0.32 s) before the reader closes the source
    assert not ended and source.reconnects in (4, 5)
    assert [f.index for f in got] == list(range(25))  # numbered on across connections
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops[:4] == [  # once "stream ... dropped; reconnecting", at once and a thousand times a second
        f"stream {url} dropped after 5 frames; reconnecting in {wait} s" for wait in ("0.02", "0.04", "0.08", "0.16")
    ]
    assert drops[4:] in ([], [f"stream {url} dropped after 5 frames; reconnecting in 0.32 s"])


def test_a_stream_gone_for_good_after_a_drop_still_stops_after_its_attempts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "mjpeg.py").write_text(MJPEG_SERVER)
    port = free_port()
    url = f"http://127.0.0.1:{port}/cam"
    got: list[Frame] = []
    gone = rf"^stream {re.escape(url)} unreachable after 2 attempts: not opened$"
    server_args = [sys.executable, "mjpeg.py", str(port), "3", "0"]
    with pytest.raises(SourceError, match=gone), _server(server_args, tmp_path, port) as server:
        source = StreamSource(url, queue=64, retries=2, retry_delay_s=0.5, timeout_s=2)
        for frame in source.frames():
            got.append(frame)
            if len(got) == 3:  # the server goes away within the first wait, before the reconnection
                server.kill()
    assert [f.index for f in got] == [0, 1, 2]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        f"stream {url} dropped after 3 frames; reconnecting in 0.5 s",
        f"stream {url}: attempt 1 of 2 failed: not opened",
        f"stream {url}: attempt 2 of 2 failed: not opened",
    ]
