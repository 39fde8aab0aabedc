"""Recordings served over HTTP that end before the frame count they declare, or whose connection drops.

Real generated videos (cut short, with a corrupt tail, or with a header that declares more frames than
they hold), real FFmpeg decoding, and real HTTP servers on 127.0.0.1: Python's own, and one that cuts
its first answers short as a network that drops the connection does.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgerun.sources.base import Frame
from edgerun.sources.video import StreamSource
from tests.conftest import free_port, run_cli
from tests.test_sinks_streams_18 import MJPEG_SERVER, MODEL, _noisy_video, _read_until, _server

DECLARED = 30

CUT_SERVER = """
import socketserver, sys, threading, http.server
port, path, cuts = int(sys.argv[1]), sys.argv[2], [int(n) for n in sys.argv[3].split(",")]
data = open(path, "rb").read()
answered = []
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock:
            answered.append(self.path)
            n = len(answered)
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(data)))  # the whole file, even when it is cut short
        self.end_headers()
        self.wfile.write(data[: cuts[n - 1]] if n <= len(cuts) else data)
        self.wfile.flush()
        self.close_connection = True  # so the connection closes where the answer was cut

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", port), Handler).serve_forever()
"""


def _decoded(video: Path) -> list[np.ndarray]:
    """Every frame FFmpeg decodes from ``video``, read to where it stops (as the stream source reads it)."""
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def _declared(video: Path) -> float:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return count


def _cut(video: Path, fraction: float) -> Path:
    """``video`` truncated to ``fraction`` of its bytes, as a copy that stopped early is."""
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * fraction)])
    return video


def _corrupt_tail(video: Path) -> Path:
    """``video`` with the second half of its bytes zeroed: its length is whole, its tail is not."""
    data = bytearray(video.read_bytes())
    half = len(data) // 2
    data[half:] = bytes(len(data) - half)
    video.write_bytes(bytes(data))
    return video


def _declaring(video: Path, frames: int) -> Path:
    """``video`` (an AVI) whole, with a header that declares ``frames`` frames (its main and stream headers)."""
    data = bytearray(video.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, frames)  # AVIMAINHEADER.dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, frames)  # AVISTREAMHEADER.dwLength
    video.write_bytes(bytes(data))
    return video


def _images(frames: list[Frame]) -> list[np.ndarray]:
    return [f.data for f in frames if f.error is None]


def _same(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    return len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("edgerun")]


# -- recordings that end before their declared count ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spoil"),
    [
        ("half.avi", lambda v: _cut(v, 0.5)),
        ("most.avi", lambda v: _cut(v, 0.9)),
        ("half.mkv", lambda v: _cut(v, 0.5)),
        ("tail.avi", _corrupt_tail),
        ("sixty.avi", lambda v: _declaring(v, 60)),
    ],
    ids=["avi cut at half", "avi cut at 90%", "mkv cut at half", "avi with a zeroed tail", "avi declaring 60 of 30"],
)
def test_a_served_recording_that_ends_early_gives_each_frame_once_then_an_error_with_where_it_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, spoil: Callable[[Path], Path]
) -> None:
    video = spoil(_noisy_video(tmp_path / name, DECLARED))
    local = _decoded(video)
    declared = int(_declared(video))
    assert 0 < len(local) < declared  # the premise: fewer frames decode than the container declares
    n = len(local)
    port = free_port()
    url = f"http://127.0.0.1:{port}/{name}"
    with _server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], tmp_path, port):
        source = StreamSource(url, queue=256, retry_delay_s=0.01)
        assert source.declared_frames == declared
        got, ended = _read_until(source, 4 * declared)
    assert ended  # once: played again from its start after each drop, forever, waiting up to 30 s between
    assert _same(_images(got), local)  # every frame once, in order: none played again
    assert [f.index for f in got] == list(range(n + 1)) and source.dropped == 0
    assert got[-1].data is None and got[-1].source_id == f"{url}#{n}"
    assert got[-1].error == (
        f"{url}: decoding stopped at frame {n} of {declared} on two connections (truncated or corrupt recording)"
    )
    assert source.reconnects == 1  # the one that finds the recording stops where it stopped before
    assert _warnings(caplog) == [  # its last frame read may be torn: read again
        f"stream {url} dropped at frame {n} of the {declared} its recording declares; "
        f"reconnecting in 0.01 s to go on from frame {n - 1}"
    ]


def test_a_run_over_a_truncated_served_recording_ends_and_reports_where_it_stopped(tmp_path: Path) -> None:
    video = _cut(_noisy_video(tmp_path / "half.avi", DECLARED), 0.5)
    n = len(_decoded(video))
    port = free_port()
    url = f"http://127.0.0.1:{port}/half.avi"
    with _server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], tmp_path, port):
        result = run_cli("run", MODEL, "--source", url)  # once: never ended (the 120 s limit of run_cli)
    assert result.returncode == 1, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")] == [
        f"edgerun: error: {url}: decoding stopped at frame {n} of {DECLARED} on two connections "
        "(truncated or corrupt recording)"
    ]
    assert "1 failed" in result.stderr and "stopped by end of input" in result.stderr
    inputs = [line.split()[0] for line in result.stdout.splitlines()]
    assert inputs and len(set(inputs)) == len(inputs)  # a live source may drop frames, never repeat one
    assert {int(i.rsplit("#", 1)[1]) for i in inputs} <= set(range(n))


# -- recordings whose connection drops --------------------------------------------------------------


@pytest.mark.parametrize(
    "cuts",
    [(0.5,), (0.75, 0.25)],
    ids=["dropped once", "dropped again while passing over the frames already given"],
)
def test_a_served_recording_whose_connection_drops_goes_on_from_where_it_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cuts: tuple[float, ...]
) -> None:
    video = _noisy_video(tmp_path / "a.avi", DECLARED)
    whole = _decoded(video)
    assert len(whole) == DECLARED
    data = video.read_bytes()
    ends = [int(len(data) * c) for c in cuts]  # the bytes each cut answer gives
    cut = []  # what each cut answer decodes to
    for i, end in enumerate(ends):
        (tmp_path / f"cut{i}.avi").write_bytes(data[:end])
        cut.append(_decoded(tmp_path / f"cut{i}.avi"))
    n = len(cut[0])  # where the first connection stops
    assert not np.array_equal(cut[0][-1], whole[n - 1])  # the premise: its last frame is decoded from part
    again = len(cut[1]) if len(cut) > 1 else None
    assert again is None or again < n - 1  # the second drop falls among the frames already given
    (tmp_path / "cut_server.py").write_text(CUT_SERVER)
    port = free_port()
    url = f"http://127.0.0.1:{port}/a.avi"
    server = [sys.executable, "cut_server.py", str(port), str(video), ",".join(map(str, ends))]
    with _server(server, tmp_path, port):
        source = StreamSource(url, queue=256, retry_delay_s=0.01)
        got, ended = _read_until(source, 4 * DECLARED)
    assert ended
    # once: frames 0 to n-1 twice, the second time numbered on from n; and frame n-1 as torn where the cut fell
    assert _same(_images(got), whole)
    assert [f.index for f in got] == list(range(DECLARED)) and not [f for f in got if f.error]
    assert source.reconnects == len(cuts)
    drops = [(n, "0.01"), (again, "0.02")] if again is not None else [(n, "0.01")]
    assert _warnings(caplog) == [
        f"stream {url} dropped at frame {at} of the {DECLARED} its recording declares; "
        f"reconnecting in {wait} s to go on from frame {n - 1}"
        for at, wait in drops
    ]
    assert f"stream {url} ended after its {DECLARED} frames (a recording, not a live stream)" in [
        r.getMessage() for r in caplog.records
    ]


# -- live streams, which declare no count ------------------------------------------------------------


def test_a_live_stream_without_a_declared_count_is_still_reconnected_after_each_drop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "mjpeg.py").write_text(MJPEG_SERVER)
    port = free_port()
    url = f"http://127.0.0.1:{port}/cam"
    with _server([sys.executable, "mjpeg.py", str(port), "5", "0"], tmp_path, port):
        source = StreamSource(url, queue=64, retry_delay_s=0.01)
        assert source.declared_frames is None
        got, ended = _read_until(source, 15)
    assert not ended and source.reconnects >= 2  # it went on past three connections of 5 frames
    assert [f.index for f in got] == list(range(15)) and not [f for f in got if f.error]
    brightness = [int(f.data.mean()) for f in got]
    assert brightness[:5] == brightness[5:10] == brightness[10:15]  # each connection is the camera's 5 frames
    drops = _warnings(caplog)
    assert drops[:2] == [f"stream {url} dropped after 5 frames; reconnecting in {w} s" for w in ("0.01", "0.02")]


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "truncated"])
def test_a_daemon_pipeline_on_a_served_recording_finishes_at_its_end_and_does_not_play_it_again(
    tmp_path: Path, whole: bool
) -> None:
    from tests.test_daemon import _in_process_daemon
    from tests.test_sync import wait_until

    video = _noisy_video(tmp_path / "a.avi", DECLARED)
    if not whole:
        video = _cut(video, 0.5)
    n = len(_decoded(video))
    port = free_port()
    url = f"http://127.0.0.1:{port}/{video.name}"
    out = tmp_path / "out.jsonl"
    with _server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], tmp_path, port):
        daemon = _in_process_daemon(
            tmp_path / "state",
            {"m": str(MODEL)},
            {"rec": {"source": url, "model": "m", "sinks": [str(out)], "restart_s": 0.1}},
        )
        daemon.start()
        try:
            # before: a live source that ended was opened again after restart_s, and a recording played again
            wait_until(lambda: daemon.runners["rec"].state == "finished", 60, "the pipeline to finish")
        finally:
            daemon.stop()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    indexes = [int(r["input"].rsplit("#", 1)[1]) for r in records]
    # each frame at most once, in order (a live source's buffer may drop some on the way), and no second play
    assert indexes == sorted(set(indexes)) and all(r["input"].startswith(f"{url}#") for r in records)
    if whole:
        assert indexes[-1] == n - 1 and not any("error" in r for r in records)
    else:  # its frames, then where it stopped
        assert indexes[-1] == n and [i for i, r in zip(indexes, records) if "error" in r] == [n]


RETRY_SERVER = """
import socketserver, sys, threading, http.server
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, "rb").read()
answered = [0]
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock:
            answered[0] += 1
            n = answered[0]
        if 2 <= n <= 4:  # away for the source's three reconnection attempts: the source fails
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if n == 1 else data)  # the first answer cut at half
        self.wfile.flush()
        self.close_connection = True

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", port), Handler).serve_forever()
"""


def test_a_daemon_retrying_a_served_recording_after_its_source_failed_gives_no_frame_twice(tmp_path: Path) -> None:
    # the source gives up after its reconnections fail; the daemon opens it again after restart_s, and the
    # recording plays from its first frame: the frames delivered before are left out, as a file's are
    from tests.test_daemon import _in_process_daemon
    from tests.test_sync import wait_until

    video = _noisy_video(tmp_path / "a.avi", DECLARED)
    (tmp_path / "server.py").write_text(RETRY_SERVER)
    port = free_port()
    url = f"http://127.0.0.1:{port}/a.avi"
    out = tmp_path / "out.jsonl"
    with _server([sys.executable, "server.py", str(port), str(video)], tmp_path, port):
        daemon = _in_process_daemon(
            tmp_path / "state",
            {"m": str(MODEL)},
            {"rec": {"source": url, "model": "m", "sinks": [str(out)], "restart_s": 0.1, "queue": 64}},
        )
        daemon.start()
        try:
            wait_until(lambda: daemon.runners["rec"].state == "finished", 90, "the pipeline to finish")
        finally:
            daemon.stop()
    inputs = [json.loads(line)["input"] for line in out.read_text().splitlines()]
    assert len(inputs) == len(set(inputs))  # before: frames 0-13 twice (44 records for 30 frames)
    assert inputs[-1] == f"{url}#{DECLARED - 1}" and len(inputs) > DECLARED // 2  # it did play on to the end
