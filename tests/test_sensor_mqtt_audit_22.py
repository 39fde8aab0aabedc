"""Sensor files and MQTT messages as a user's tools write them: quoted CSVs, pandas' index column,
``base64`` output wrapped at 76 columns, a raw ``.npy``, a retained message cleared, a closed stdin."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgerun.errors import ConfigError
from edgerun.sources.mqtt import MqttSource, decode_message, parse_mqtt_url
from edgerun.sources.sensor import SensorSource
from tests.conftest import ROOT, Broker, npy_bytes, run_cli
from tests.test_sources import frames_while_publishing

VIBRATION = ROOT / "models" / "vibration"
NORMAL = VIBRATION / "samples" / "normal.csv"


def _frames(path: Path, text: str, window: int = 2) -> list[tuple[str | None, list[list[float]] | None]]:
    path.write_text(text)
    return [
        (f.error, None if f.data is None else f.data.tolist()) for f in SensorSource(str(path), window=window).frames()
    ]


def _sample_rows() -> list[list[str]]:
    """The vibration sample's rows after its header ``t,x,y,z``, as their text."""
    return [line.split(",") for line in NORMAL.read_text().splitlines()[1:]]


def test_quoted_csv_fields_are_read_as_the_text_inside_their_quotes(tmp_path: Path) -> None:
    # Python's csv.writer with QUOTE_NONNUMERIC quotes the header only; QUOTE_ALL quotes every field
    quoted_header = tmp_path / "header.csv"
    assert _frames(quoted_header, '"t","x","y"\n0.0,1,2\n0.1,3,4\n') == [(None, [[1.0, 2.0], [3.0, 4.0]])]
    quoted_all = tmp_path / "all.csv"
    assert _frames(quoted_all, '"t","x","y"\n"0.0","1","2"\n"0.1", "3" ,"4"\n') == [(None, [[1.0, 2.0], [3.0, 4.0]])]
    comma = tmp_path / "comma.csv"  # a decimal comma inside quotes is one field, named as the file has it
    assert _frames(comma, 'x,"y"\n1,"2,5"\n1,2\n3,4\n')[0] == (
        f"{comma} line 2: field 2 ('y') is not a number: '2,5'; row skipped",
        None,
    )


def test_edgerun_run_takes_a_csv_whose_header_python_quoted_and_skips_its_time_column(tmp_path: Path) -> None:
    rows = _sample_rows()
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"t","x","y","z"\n' + "".join(",".join(row) + "\n" for row in rows[:256]))
    result = run_cli("run", str(VIBRATION / "vibration_fp32.onnx"), "--source", str(quoted))
    assert result.returncode == 0, result.stderr  # once: "has 4 channels per row, and vibration takes 3"
    assert result.stdout.startswith(f"{quoted}:257 ") and "normal" in result.stdout


def test_a_column_with_no_name_in_the_header_is_not_fed_to_the_model(tmp_path: Path) -> None:
    index = tmp_path / "index.csv"  # pandas' DataFrame.to_csv() writes its index column with an empty name
    assert _frames(index, ",t,x,y\n0,0.0,1,2\n1,0.1,3,4\n") == [(None, [[1.0, 2.0], [3.0, 4.0]])]
    trailing = tmp_path / "trailing.csv"  # a logger that ends every line with a comma
    assert _frames(trailing, "x,y,\n1,2,\n3,4,\n") == [(None, [[1.0, 2.0], [3.0, 4.0]])]
    row = tmp_path / "row.csv"  # a first row of numbers after an empty field is data, not a header
    assert _frames(row, ",1,2\n0,3,4\n0,5,6\n")[0] == (f"{row} line 1: field 1 is missing; row skipped", None)


def test_edgerun_run_takes_a_csv_that_pandas_wrote_with_its_index_column(tmp_path: Path) -> None:
    indexed = tmp_path / "indexed.csv"
    indexed.write_text(
        ",t,x,y,z\n" + "".join(f"{i}," + ",".join(row) + "\n" for i, row in enumerate(_sample_rows()[:256]))
    )
    result = run_cli("run", str(VIBRATION / "vibration_fp32.onnx"), "--source", str(indexed))
    assert result.returncode == 0, result.stderr  # once: "has 5 channels per row, and vibration takes 3"
    assert result.stdout.startswith(f"{indexed}:257 ")


def test_a_base64_npy_wrapped_in_lines_as_the_base64_command_writes_it_is_decoded() -> None:
    window = np.arange(12, dtype=np.float32).reshape(4, 3)
    encoded = base64.encodebytes(npy_bytes(window))  # 76 columns a line, as GNU `base64 x.npy` writes it
    assert b"\n" in encoded.strip()
    assert decode_message(encoded, 10_000).tolist() == window.tolist()
    with pytest.raises(ValueError, match="neither a JSON array"):  # other text is still refused
        decode_message(b"aGVsbG8g\nd29ybGQ=\n", 10_000)


def test_a_raw_npy_message_is_decoded_as_the_http_api_takes_one() -> None:
    window = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert decode_message(npy_bytes(window), 10_000).tolist() == window.tolist()  # `mosquitto_pub -f w.npy`
    pickled = npy_bytes(window)[:8] + b"\x00" * 8  # a damaged header: refused in plain words, never unpickled
    with pytest.raises(ValueError, match="npy that does not load"):
        decode_message(pickled, 10_000)


def test_an_object_npy_message_is_refused_without_unpickling_it_raw_or_base64() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for payload in (buffer.getvalue(), base64.b64encode(buffer.getvalue())):
        with pytest.raises(ValueError, match="allow_pickle=False"):
            decode_message(payload, 10_000)


def test_clearing_a_retained_message_is_no_input_and_no_error(broker: Broker) -> None:
    topic = f"test/audit22/{time.monotonic_ns()}"
    source = MqttSource(f"{broker.url}/{topic}", queue=64)
    # `mosquitto_pub -r -n` deletes a topic's retained message: subscribers get an empty message, not retained
    got = frames_while_publishing(source, broker.port, topic, [b"", b"[1.0, 2.0]"], 4)
    assert [f.error for f in got] == [None] * 4, [f.error for f in got]  # once: "...: empty message" each time
    assert all(f.data.tolist() == [1.0, 2.0] for f in got)
    assert source.bad_messages == 0 and source.empty_skipped >= 2


def test_edgerun_run_over_mqtt_exits_0_when_a_retained_message_is_cleared(broker: Broker) -> None:
    topic = f"test/audit22/{time.monotonic_ns()}"
    window = np.loadtxt(NORMAL, delimiter=",", skiprows=1)[:256, 1:]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgerun",
            "run",
            str(VIBRATION / "vibration_fp32.onnx"),
            "--max-frames",
            "1",
            "--source",
            f"{broker.url}/{topic}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        for _ in range(300):  # until the source has subscribed and run one window
            pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
            pub.publish(topic, str(window.tolist()).encode(), qos=1).wait_for_publish(5)
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        _, err = proc.communicate(timeout=60)
    finally:
        pub.loop_stop()
        pub.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "empty message" not in err and "1 frames (1 ok, 0 failed" in err


def test_a_closed_standard_input_is_one_line_saying_so() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgerun", "run", str(VIBRATION / "vibration_fp32.onnx"), "--source", "-"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(0),  # `edgerun run ... <&-`
    )
    assert result.returncode == 1
    assert result.stderr == "edgerun: error: source -: standard input cannot be read: it is closed\n"


@pytest.mark.parametrize("url", ["mqtt://bob:s3cr/t@127.0.0.1:1883/t", "mqtts://bob:s3cr/t@127.0.0.1/t"])
def test_a_password_with_an_unencoded_slash_is_not_shown_in_the_error(url: str) -> None:
    result = run_cli("run", str(VIBRATION / "vibration_fp32.onnx"), "--source", url)
    assert result.returncode == 2
    assert "s3cr" not in result.stderr and "bob:***@127.0.0.1" in result.stderr  # once: the URL, password and all
    assert "%2F" in result.stderr


def test_an_at_sign_in_a_topic_is_still_shown_where_the_port_is_bad() -> None:
    with pytest.raises(ConfigError, match=r"bad host or port: 'mqtt://host:99999/dev@x'$"):
        parse_mqtt_url("mqtt://host:99999/dev@x")
