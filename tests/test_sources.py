"""Sources against real files, generated videos, a video standing in for a camera, and a real broker."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgerun.errors import ConfigError, SourceError
from edgerun.sources import open_source
from edgerun.sources.base import Frame, LatestBuffer, connect_with_retries
from edgerun.sources.files import FileSource
from edgerun.sources.mqtt import MqttSource, decode_message, parse_mqtt_url
from edgerun.sources.sensor import SensorSource
from edgerun.sources.video import CameraSource, StreamSource, VideoFileSource, open_decoder
from tests.conftest import SAMPLES, Broker, free_port, held_by_this_process, npy_bytes


def make_video(path: Path, frames: int = 30, size: tuple[int, int] = (64, 48), fourcc: str = "MJPG") -> Path:
    """A small generated video whose frame i has brightness i*8 (mod 256)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8))
    writer.release()
    return path


def test_a_directory_is_walked_in_sorted_stable_order_and_globs_expand(tmp_path: Path) -> None:
    source = FileSource([str(SAMPLES)])
    names = [Path(f.source_id).name for f in source.frames()]
    assert names == sorted(names) and len(names) == 11
    globbed = FileSource([str(SAMPLES / "digit_[12].png")])
    assert [Path(f.source_id).name for f in globbed.frames()] == ["digit_1.png", "digit_2.png"]


def test_a_walk_takes_nested_files_and_linked_files_but_not_linked_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = (SAMPLES / "digit_1.png").read_bytes()
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for name in ("a.png", "b/c.PNG", "b/deep/d.png", "b/notes.txt"):
        (tmp_path / name).write_bytes(png)
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "loop").symlink_to(tmp_path / "b", target_is_directory=True)  # not walked: no duplicates, no loop
    want = ["a.png", "b/c.PNG", "b/deep/d.png", "link.png"]
    assert [r.path for r in FileSource([str(tmp_path)]).refs] == [str(tmp_path / n) for n in want]
    monkeypatch.chdir(tmp_path)
    assert [r.path for r in FileSource(["."]).refs] == want  # named as the user would, without "./"


def test_unreadable_paths_become_error_frames_and_the_rest_still_come(tmp_path: Path) -> None:
    frames = list(FileSource([str(tmp_path / "nope.png"), str(SAMPLES / "digit_1.png")]).frames())
    assert frames[0].error is not None and "no such file" in frames[0].error
    assert frames[1].error is None and isinstance(frames[1].data, bytes)


def test_a_video_file_yields_every_frame_in_order(tmp_path: Path) -> None:
    source = open_source(str(make_video(tmp_path / "v.avi", frames=12)))
    assert isinstance(source, VideoFileSource) and not source.live
    frames = list(source.frames())
    assert [f.index for f in frames] == list(range(12))
    assert frames[5].data.shape == (48, 64, 3)
    assert abs(int(frames[5].data.mean()) - 40) <= 3


def test_a_video_decodes_on_one_thread_by_default_with_the_same_frames_as_on_several(tmp_path: Path) -> None:
    video = str(make_video(tmp_path / "v.mp4", frames=6, size=(320, 240), fourcc="mp4v"))
    assert open_decoder(video, cv2.CAP_ANY, 3).get(cv2.CAP_PROP_N_THREADS) == 3  # the decoder takes the setting
    assert VideoFileSource(video)._cap.get(cv2.CAP_PROP_N_THREADS) == 1  # and the source's default is one
    one = [f.data for f in open_source(video).frames()]
    several = [f.data for f in open_source(video, decode_threads=3).frames()]
    assert len(one) == len(several) == 6
    assert all(np.array_equal(a, b) for a, b in zip(one, several, strict=True))


def test_a_missing_or_undecodable_video_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video not found"):
        open_source(str(tmp_path / "absent.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(SourceError, match=r"cannot (open|decode) video"):
        open_source(str(garbage))


def test_a_video_file_stands_in_for_the_camera_at_the_opencv_boundary(tmp_path: Path) -> None:
    video = make_video(tmp_path / "cam.avi", frames=40)
    opened: list[int | str] = []

    def open_capture(device: int | str) -> Any:  # the video once, then the camera is gone
        opened.append(device)
        return cv2.VideoCapture(str(video)) if len(opened) == 1 else cv2.VideoCapture()

    camera = CameraSource("camera:0", queue=3, retries=1, retry_delay_s=0.01, open_capture=open_capture)
    assert camera.live
    seen = []
    with pytest.raises(SourceError, match="camera camera:0 unreachable after 1 attempt:"):
        for frame in camera.frames():
            seen.append(frame.index)
            time.sleep(0.01)  # a consumer slower than the capture
    assert seen == sorted(seen)
    assert camera.dropped > 0  # only the newest frames were kept
    assert len(seen) + camera.dropped == 40


def test_a_video_or_camera_closed_before_it_was_read_lets_go_of_its_file_at_once(tmp_path: Path) -> None:
    video = make_video(tmp_path / "in.avi", frames=5)
    file_source = open_source(str(video))
    camera = CameraSource("camera:0", open_capture=lambda device: cv2.VideoCapture(str(video)))
    assert held_by_this_process(video)
    file_source.close()
    camera.close()
    assert not held_by_this_process(video)  # both still referenced here: closing released them
    assert list(file_source.frames()) == []  # and a closed source yields nothing


def test_an_absent_camera_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match=r"^camera camera:9 unreachable after 3 attempts: not found: no /dev/video9$"):
        CameraSource("camera:9", retry_delay_s=0.01, open_capture=lambda device: cv2.VideoCapture())
    for spec in ("camera:front", "camera:-1", "camera:1.5", "camera:\u00b2", "camera:"):
        with pytest.raises(SourceError) as err:
            CameraSource(spec, open_capture=lambda device: cv2.VideoCapture())
        assert str(err.value) == (
            f"camera index must be a non-negative whole number (camera:0 is /dev/video0), got {spec!r}"
        )


def test_an_unreachable_stream_fails_after_a_bounded_number_of_attempts() -> None:
    attempts = []

    def refuse(url: str) -> Any:
        attempts.append(url)
        return cv2.VideoCapture()

    why = r"^stream rtsp://127\.0\.0\.1:9/none unreachable after 3 attempts: not opened$"
    with pytest.raises(SourceError, match=why):
        StreamSource("rtsp://127.0.0.1:9/none", retries=3, retry_delay_s=0.01, open_capture=refuse)
    assert len(attempts) == 3


class _RecordingStop(threading.Event):
    """A stop event that records how long each retry would have waited (and waits not at all)."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self._stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if self._stop_after is not None and len(self.waits) >= self._stop_after:
            self.set()
        return self.is_set()


def test_a_retried_connection_backs_off_and_does_not_wait_after_its_last_attempt() -> None:
    stop = _RecordingStop()

    def refuse() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(SourceError, match=r"^peer x unreachable after 3 attempts: Connection refused$"):
        connect_with_retries("peer x", refuse, retries=3, delay_s=0.5, stop=stop)
    assert stop.waits == [0.5, 1.0]  # linear back-off between attempts, nothing after the third


def test_a_retried_connection_returns_the_first_success_or_none_when_stopped() -> None:
    outcomes: list[Any] = [OSError("not opened"), "connected"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    assert connect_with_retries("peer", flaky, retries=3, delay_s=0.01, stop=_RecordingStop()) == "connected"
    stop = _RecordingStop(stop_after=1)  # closed during the first wait: no second attempt, no error
    attempts: list[int] = []

    def never() -> None:
        attempts.append(1)
        raise OSError("not opened")

    assert connect_with_retries("peer", never, retries=3, delay_s=0.01, stop=stop) is None
    assert attempts == [1]


def test_a_source_closed_during_its_last_attempt_stops_without_an_error() -> None:
    stop = _RecordingStop()

    def closed_meanwhile() -> None:
        if len(stop.waits) == 1:  # the last of 2 attempts: the source is closed while it runs
            stop.set()
        raise OSError("not opened")

    assert connect_with_retries("peer", closed_meanwhile, retries=2, delay_s=0.01, stop=stop) is None


def test_a_dropped_stream_reconnects(tmp_path: Path) -> None:
    video = tmp_path / "s.mjpeg"  # raw MJPEG, as a camera sends it: no declared length (a live stream, not a recording)
    video.write_bytes(
        b"".join(cv2.imencode(".jpg", np.full((48, 64, 3), i * 8, np.uint8))[1].tobytes() for i in range(5))
    )
    stream = StreamSource(
        "http://127.0.0.1:9/mjpeg", queue=100, retry_delay_s=0.01, open_capture=lambda url: cv2.VideoCapture(str(video))
    )
    got = []
    for frame in stream.frames():
        got.append(frame)
        if len(got) == 12:
            stream.close()
    assert stream.reconnects >= 2  # each end of the stand-in stream is a drop
    assert [f.index for f in got[:12]] == list(range(12))


def test_a_stream_reports_the_frame_rate_it_declares(tmp_path: Path) -> None:
    video = make_video(tmp_path / "s.avi", frames=2)  # declares 30 frames per second
    stream = StreamSource("http://127.0.0.1:9/mjpeg", open_capture=lambda url: cv2.VideoCapture(str(video)))
    stream.close()
    assert stream.fps == 30.0


def test_the_latest_buffer_keeps_the_newest_and_counts_what_it_drops() -> None:
    buf = LatestBuffer(2)
    from edgerun.sources.base import Frame

    for i in range(5):
        buf.put(Frame(i, 0.0, "x", i))
    buf.close()
    assert [buf.get().index, buf.get().index] == [3, 4]  # type: ignore[union-attr]
    assert buf.get() is None and buf.dropped == 3


def test_csv_sensor_windows_with_hop_and_a_time_column(tmp_path: Path) -> None:
    rows = "\n".join(f"{i / 1000:.3f},{i},{-i},{2 * i}" for i in range(10))
    path = tmp_path / "s.csv"
    path.write_text("t,x,y,z\n" + rows + "\n")
    frames = list(SensorSource(str(path), window=4, hop=2).frames())
    assert [f.data[0, 0] for f in frames] == [0, 2, 4, 6]
    assert frames[0].data.shape == (4, 3) and frames[0].data.dtype == np.float32
    assert frames[1].data[:, 1].tolist() == [-2, -3, -4, -5]


def test_bad_csv_rows_are_reported_with_their_line_and_the_run_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("x,y\n1,2\n3,oops\n5,\n7,8\n9,10\n")
    source = SensorSource(str(path), window=2)
    frames = list(source.frames())
    errors = [f.error for f in frames if f.error]
    assert len(errors) == 2 and "line 3" in errors[0] and "not a number" in errors[0]
    assert "line 4" in errors[1] and "missing" in errors[1]
    good = [f.data.tolist() for f in frames if f.error is None]
    assert good == [[[1, 2], [7, 8]]]
    assert source.bad_rows == 2


def test_json_lines_sensor_rows_as_arrays_or_objects(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('[1, 2]\n{"t": 0.1, "a": 3, "b": 4}\n"text"\n[5, 6]\n')
    frames = list(SensorSource(str(path), window=3).frames())
    assert frames[0].error is not None and "line 3" in frames[0].error
    assert frames[1].data.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_json_lines_object_rows_are_read_by_the_names_of_the_first_good_one(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    rows = [
        {"x": 1, "y": "two", "zz": 3},  # a bad first row names no channels
        {"x": 1, "y": 2, "z": 3},
        {"z": 6, "t": 0.2, "y": 5, "x": 4},  # another order, and a time column: the same channels
        {"x": 7, "y": 8},  # z missing
        {"x": 7, "y": 8, "z": 9, "w": 0},  # a name the first row does not have
        {"Z": 9, "Y": 8, "X": 7},  # names are matched as written
        [7, 8, 9],
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = SensorSource(str(path), window=3)
    frames = list(source.frames())
    errors = [f.error for f in frames if f.error]
    assert len(errors) == 4 and source.bad_rows == 4
    assert "line 1" in errors[0] and "not a number" in errors[0]
    assert "line 4" in errors[1] and "has no 'z'" in errors[1]
    assert "line 5" in errors[2] and "'w'" in errors[2]
    assert "line 6" in errors[3] and "has no 'x'" in errors[3]
    assert [f.data.tolist() for f in frames if f.error is None] == [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]


@pytest.mark.parametrize("kind", ["video file", "sensor file"])
def test_several_videos_or_sensor_files_are_refused_as_one_source(tmp_path: Path, kind: str) -> None:
    if kind == "video file":
        names = [make_video(tmp_path / f"v{i}.avi", frames=2).name for i in range(2)]
    else:
        names = [f"s{i}.csv" for i in range(2)]
        for name in names:
            (tmp_path / name).write_text("x,y\n1,2\n")
    paths = [str(tmp_path / name) for name in names]
    with pytest.raises(ConfigError) as listed:
        open_source(paths, window=1)
    assert str(listed.value) == (
        f"2 sources were given, and {paths[0]} is a {kind}: only images and .npy arrays can be given "
        f"several at a time; a {kind} must be the only source"
    )
    pattern = str(tmp_path / f"{names[0][0]}*{Path(names[0]).suffix}")
    with pytest.raises(ConfigError, match=f"matches 2 files, and {paths[0]} is a {kind}"):
        open_source(pattern, window=1)
    (tmp_path / names[1]).unlink()  # a glob that matches one file opens it
    assert open_source(pattern, window=1).uri == paths[0]


@pytest.mark.parametrize(
    ("text", "rows"),
    [("", 0), ("x,y\n", 0), ("x,y\n1,2\n3,4\n", 2), ("x,y\n1,2\n3,oops\n", 1), ("# only a comment\n", 0)],
)
def test_a_sensor_input_that_ends_before_one_window_is_an_error(tmp_path: Path, text: str, rows: int) -> None:
    path = tmp_path / "s.csv"
    path.write_text(text)
    plural = "" if rows == 1 else "s"
    with pytest.raises(SourceError, match=f"ended after {rows} readable data row{plural}, fewer than one window of 3"):
        list(SensorSource(str(path), window=3).frames())


def test_a_sensor_source_stopped_before_one_window_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("x,y\n1,2\n3,4\n5,6\n")
    source = SensorSource(str(path), window=10)
    frames = source.frames()
    source.close()  # as SIGTERM does: a stop is not a short input
    assert list(frames) == []


def test_a_sensor_source_needs_a_window() -> None:
    with pytest.raises(ConfigError, match="window"):
        open_source(str(SAMPLES.parent / "x.csv"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884/a/b", ("127.0.0.1", 1884, "a/b")),
        ("mqtt://host/sensors/#", ("host", 1883, "sensors/#")),
        ("mqtt://[::1]:1884/t", ("::1", 1884, "t")),
        ("mqtt://[::1]/t", ("::1", 1883, "t")),
    ],
)
def test_mqtt_urls_keep_wildcards_in_the_topic(url: str, expected: tuple[str, int, str]) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mqtt://host", "no topic"),
        ("mqtt://host:99999/t", "bad host or port"),
        ("mqtt://host:0/t", "bad host or port"),
        ("http://host/t", "not an MQTT source URL"),
        ("mqtt://[::1/t", "bad host or port"),  # taken for a host named '[::1' once, and never connected
        ("mqtt://[::1]x/t", "bad host or port"),
        ("mqtts://host/t", "over TLS are not supported"),
    ],
)
def test_malformed_mqtt_urls_are_config_errors(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_mqtt_url(url)
    if url.startswith(("mqtt://", "mqtts://")):  # and the command line's source reaches the same check
        with pytest.raises(ConfigError, match=why):
            open_source(url)


@pytest.mark.parametrize(("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("[::1]", "[::1]")])
def test_an_mqtt_source_whose_broker_cannot_be_reached_stops_after_its_attempts(host: str, shown: str) -> None:
    port = free_port()  # nothing listens there: every connection is refused
    source = MqttSource(f"mqtt://{host}:{port}/t", retries=2, retry_delay_s=0.05)
    with pytest.raises(SourceError) as failure:  # an IPv6 address once shown as ::1:PORT
        list(source.frames())
    source.close()
    assert str(failure.value).startswith(f"MQTT broker {shown}:{port} unreachable after 2 attempts: "), failure.value


def _npy_b64(array: np.ndarray) -> bytes:
    return base64.b64encode(npy_bytes(array))


def test_mqtt_messages_decode_as_json_arrays_base64_npy_or_images() -> None:
    assert decode_message(b"[[1, 2], [3, 4]]", 1000).shape == (2, 2)
    assert decode_message(_npy_b64(np.arange(6, dtype=np.int16)), 1000).tolist() == list(range(6))
    png = (SAMPLES / "digit_1.png").read_bytes()
    assert decode_message(png, 10_000) == png
    for bad, why in [(b"{}", "neither"), (b"[1, [2]]", "JSON array"), (b"x" * 50, "limit"), (b"", "empty")]:
        with pytest.raises(ValueError, match=why):
            decode_message(bad, 40)


def frames_while_publishing(source: Any, port: int, topic: str, payloads: list[bytes], count: int) -> list[Frame]:
    """The first ``count`` frames of an MQTT ``source`` while ``payloads`` are published to ``topic`` in
    turn, every 0.1 s, until the subscription is in place and they have arrived (100 rounds at most)."""
    stop = threading.Event()

    def publish() -> None:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for _ in range(100):
            for p in payloads:
                pub.publish(topic, p, qos=1).wait_for_publish(5)
            if stop.wait(0.1):
                break
        pub.loop_stop()
        pub.disconnect()

    publisher = threading.Thread(target=publish)
    publisher.start()
    got: list[Frame] = []
    try:
        for frame in source.frames():
            got.append(frame)
            if len(got) >= count:
                break
    finally:
        stop.set()
        source.close()
        publisher.join()
    return got


def test_an_mqtt_topic_source_receives_real_messages_and_counts_bad_ones(broker: Broker) -> None:
    topic = f"test/sensor/{time.monotonic_ns()}"
    source = MqttSource(f"{broker.url}/{topic}", queue=64)
    payloads = [json.dumps([1.0, 2.0, 3.0]).encode(), b"garbage", _npy_b64(np.ones((2, 2), np.float32))]
    got = frames_while_publishing(source, broker.port, topic, payloads, 6)
    kinds = {("error" if f.error else type(f.data).__name__) for f in got}
    assert kinds == {"ndarray", "error"}
    assert source.bad_messages >= 1
    assert any("neither a JSON array" in (f.error or "") for f in got)
