"""Faults in one input or one peer that must never stop a run silently or kill it outright.

An MQTT source against real private Mosquitto brokers (the session's, and ones
with their own configuration: no anonymous access, a password file): a message
no decoder can take is one error frame, and a broker that refuses the connection
stops the source at once with paho's reason. An annotated
image sink over a folder that holds an empty and an oversized image writes the
good ones and reports the bad ones. The command lines run as real processes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgerun.errors import ConfigError, SourceError
from edgerun.sources.base import Frame
from edgerun.sources.mqtt import MqttSource, decode_message, split_credentials
from tests.conftest import DIGITS, SAMPLES, Broker, run_cli

DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's recursion limit


def _private_broker(workdir: Path, conf: str) -> Broker:
    """A started private broker whose whole configuration is ``conf`` (plus listener and user)."""
    b = Broker(workdir)
    root = "user root\n" if os.geteuid() == 0 else ""  # as root, mosquitto would drop to a user that cannot read tmp
    b.conf.write_text(f"listener {b.port} 127.0.0.1\n{root}persistence false\n{conf}")
    b.start()
    return b


@pytest.fixture
def locked_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that admits only ``reader``/``s3cret``, to read and write ``allowed/#``.

    (Mosquitto 2.0's ACL file never refuses a subscription in the SUBACK, it only
    withholds messages, so the source's handling of a refused SUBACK has no broker here.)
    """
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "reader", "s3cret"], check=True, timeout=30)
    passwords.chmod(0o600)
    acl = tmp_path / "acl"
    acl.write_text("user reader\ntopic readwrite allowed/#\n")
    b = _private_broker(tmp_path / "broker", f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n")
    yield b
    b.stop()


def _frames_until(source: MqttSource, enough: int, publish: list[bytes], port: int, topic: str) -> list[Frame]:
    """Frames from ``source`` while ``publish`` is sent again and again (until subscribed), 20 s at most."""
    stop = threading.Event()

    def publisher() -> None:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.username_pw_set("reader", "s3cret")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for _ in range(200):
            for payload in publish:
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
            if stop.wait(0.1):
                break
        pub.loop_stop()
        pub.disconnect()

    got: list[Frame] = []

    def consume() -> None:
        for frame in source.frames():
            got.append(frame)
            if len(got) >= enough:
                break

    threads = [threading.Thread(target=publisher), threading.Thread(target=consume, daemon=True)]
    for t in threads:
        t.start()
    threads[1].join(timeout=20)
    stop.set()
    source.close()
    threads[0].join()
    return got


def _failure(source: MqttSource) -> BaseException | None:
    """What ``source.frames()`` raised, waiting 20 s at most (a source that never fails returns None)."""
    caught: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in source.frames():
                pass
        except BaseException as exc:
            caught.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=20)
    source.close()
    consumer.join(timeout=10)
    return caught[0] if caught else None


def test_a_json_message_nested_too_deeply_is_a_plain_decoding_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_message(DEEP, len(DEEP))


def test_a_message_nested_too_deeply_is_an_error_frame_and_the_source_keeps_receiving(broker: Broker) -> None:
    topic = f"test/deep/{time.monotonic_ns()}"
    source = MqttSource(f"{broker.url}/{topic}", queue=64)
    got = _frames_until(source, 4, [DEEP, b"[1.0, 2.0, 3.0]"], broker.port, topic)
    assert len(got) >= 4, "the source stopped receiving after the deep message"
    assert any("nested too deeply" in (f.error or "") for f in got)
    assert any(f.error is None and f.data.tolist() == [1.0, 2.0, 3.0] for f in got)
    assert source.bad_messages >= 1


def test_a_broker_that_refuses_the_connection_stops_the_source_with_its_reason(locked_broker: Broker) -> None:
    source = MqttSource(f"{locked_broker.url}/allowed/x")  # anonymous, which this broker refuses
    failure = _failure(source)
    assert isinstance(failure, SourceError), failure
    assert str(failure) == f"MQTT broker 127.0.0.1:{locked_broker.port} refused the connection: Not authorized"


def test_wrong_credentials_in_the_url_are_refused_the_same_way(locked_broker: Broker) -> None:
    source = MqttSource(f"mqtt://reader:wrong@127.0.0.1:{locked_broker.port}/allowed/x")
    assert source.uri == f"mqtt://reader@127.0.0.1:{locked_broker.port}/allowed/x"  # never the password
    failure = _failure(source)
    assert isinstance(failure, SourceError), failure
    assert "refused the connection: Not authorized" in str(failure)


def test_credentials_in_the_url_log_in_and_receive_messages(locked_broker: Broker) -> None:
    topic = f"allowed/{time.monotonic_ns()}"
    source = MqttSource(f"mqtt://reader:s3cret@127.0.0.1:{locked_broker.port}/{topic}")
    got = _frames_until(source, 2, [b"[4.0, 5.0]"], locked_broker.port, topic)
    assert [f.data.tolist() for f in got[:2]] == [[4.0, 5.0], [4.0, 5.0]]


def test_a_user_without_a_password_in_the_url_takes_it_from_the_environment(
    locked_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGERUN_MQTT_PASSWORD", "s3cret")  # kept out of the process list
    topic = f"allowed/{time.monotonic_ns()}"
    source = MqttSource(f"mqtt://reader@127.0.0.1:{locked_broker.port}/{topic}")
    got = _frames_until(source, 1, [b"[6.0]"], locked_broker.port, topic)
    assert [f.data.tolist() for f in got[:1]] == [[6.0]]


def test_url_credentials_are_percent_decoded_and_optional() -> None:
    assert split_credentials("mqtt://u%40x:p%3Aw%40@host:1884/t/#") == ("mqtt://host:1884/t/#", "u@x", "p:w@")
    assert split_credentials("mqtt://u@host/t") == ("mqtt://host/t", "u", None)
    assert split_credentials("mqtt://host/t@x") == ("mqtt://host/t@x", None, None)  # an @ in the topic


def test_a_filter_paho_would_refuse_inside_a_callback_is_refused_before_connecting(broker: Broker) -> None:
    # paho's subscribe() raised for this filter inside on_connect: the source then stopped with
    # "on_connect failed: Invalid subscription filter"; the filter is now checked before anything connects
    with pytest.raises(ConfigError, match="not a valid subscription filter"):
        MqttSource(f"{broker.url}/a/#/b")


def test_edgerun_run_stops_with_one_line_when_the_broker_refuses_the_connection(locked_broker: Broker) -> None:
    result = run_cli(
        "run", str(DIGITS / "digits_fp32.onnx"), "--source", f"{locked_broker.url}/allowed/x", "--sink", "jsonl"
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")]
    assert len(errors) == 1 and errors[0].endswith(
        f"MQTT broker 127.0.0.1:{locked_broker.port} refused the connection: Not authorized"
    ), result.stderr


def test_an_annotated_image_sink_skips_an_empty_and_an_oversized_image_and_writes_the_rest(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a_empty.png").write_bytes(b"")
    cv2.imwrite(str(inputs / "b_big.png"), np.zeros((64, 64), np.uint8))  # over the limit set below
    for n in (1, 2):
        (inputs / f"c_digit_{n}.png").write_bytes((SAMPLES / f"digit_{n}.png").read_bytes())
    out = tmp_path / "annotated"
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "2000"}  # the 32x32 digits are under it
    result = run_cli("run", str(DIGITS / "digits_fp32.onnx"), "--source", str(inputs), "--sink", f"{out}/", env=env)
    assert result.returncode == 1, (result.stdout, result.stderr)  # two inputs failed
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgerun: error:")]
    assert len(errors) == 2, result.stderr
    assert "a_empty.png: empty file" in errors[0] and "b_big.png: image has more than 2,000 pixels" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["000002.jpg", "000003.jpg"]


def test_a_refusal_while_the_broker_restarts_mid_run_is_retried_and_the_source_receives_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_conf = "allow_anonymous true\n"
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "other", "pw"], check=True, timeout=30)
    passwords.chmod(0o600)
    b = _private_broker(tmp_path / "broker", open_conf)
    listener = b.conf.read_text().replace(open_conf, "")
    source = MqttSource(f"mqtt://127.0.0.1:{b.port}/in", retries=3, retry_delay_s=0.2)
    got: list[Frame] = []
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            got.extend(source.frames())
        except BaseException as exc:
            failed.append(exc)

    def publish_until(count: int) -> None:
        """Publish anonymously until ``got`` holds ``count`` frames (20 s at most)."""
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
                pub.connect("127.0.0.1", b.port)
                pub.loop_start()
                pub.publish("in", b"[1.0, 2.0]", qos=1).wait_for_publish(2)
                pub.loop_stop()
                pub.disconnect()
            time.sleep(0.2)
        assert len(got) >= count, f"{len(got)} frames, {count} expected"

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        publish_until(1)
        b.stop()  # the broker restarts with anonymous access off: paho's reconnect is refused
        b.conf.write_text(f"{listener}allow_anonymous false\npassword_file {passwords}\n")
        b.start()
        deadline = time.monotonic() + 30
        while "reconnection refused" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reconnection refused" in caplog.text and not failed
        b.stop()  # and back: the source was never ended
        b.conf.write_text(f"{listener}{open_conf}")
        b.start()
        publish_until(len(got) + 1)
        assert not failed
    finally:
        source.close()
        consumer.join(timeout=10)
        b.stop()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers: a wedged IP camera."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_stream_that_accepts_and_never_answers_times_out_instead_of_holding_for_ffmpegs_30_s(
    silent_server: int,
) -> None:
    from edgerun.sources.video import StreamSource

    start = time.monotonic()
    with pytest.raises(SourceError, match="unreachable after 1 attempt: not opened"):
        StreamSource(f"rtsp://127.0.0.1:{silent_server}/cam", retries=1, timeout_s=0.5)
    assert time.monotonic() - start < 15  # FFmpeg's own limit, which held before, is 30 s


def test_a_stop_given_to_a_stream_ends_its_first_connection_retries(
    silent_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.sources.video import StreamSource

    stop = threading.Event()
    stop.set()  # a daemon stopping while the pipeline opens: no attempt is made, nor waited for
    url = f"rtsp://127.0.0.1:{silent_server}/cam"
    source = StreamSource(url, retries=3, retry_delay_s=60, timeout_s=0.5, stop=stop)
    assert list(source.frames()) == []
    source.close()
    attempts = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert attempts == []
