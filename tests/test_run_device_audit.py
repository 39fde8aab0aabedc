"""`edgerun run --mqtt` as an unattended device: bad TLS files and options refused before the model
loads, results queued when the input ends delivered before exit (a slow uplink, a slow first
connection), a signal during that delivery, a broker down at the end, and summary figures that match
what reached the broker. Real Mosquitto, real processes; a slow uplink is a real TCP relay in between.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.certs import make_pki
from tests.conftest import ROOT, SAMPLES, Broker, run_cli
from tests.test_sources import make_video
from tests.test_sync import Collector, wait_until
from tests.test_sync_stop import retained_status

MODEL = str(ROOT / "models" / "digits" / "digits_int8.onnx")
MISSING_MODEL = "/nonexistent/model.onnx"  # an option refused first is the only line; else this one


class SlowUplink:
    """A TCP relay in front of a broker: what the device sends goes through at ``rate`` bytes per
    second at most, and each connection reaches the broker only ``delay_s`` after it was accepted
    (a TLS handshake over a slow network). The broker's answers go back at once."""

    def __init__(self, broker_port: int, *, rate: float | None = None, delay_s: float = 0.0) -> None:
        self.broker_port, self.rate, self.delay_s = broker_port, rate, delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                device, _ = self._listener.accept()
            except OSError:
                return
            time.sleep(self.delay_s)
            try:
                broker = socket.create_connection(("127.0.0.1", self.broker_port))
            except OSError:
                device.close()
                continue
            self._sockets += [device, broker]
            threading.Thread(target=self._pump, args=(device, broker, self.rate), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, device, None), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        step = max(64, int(rate / 20)) if rate else 65536
        with contextlib.suppress(OSError):  # either side closed
            while data := src.recv(step):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            s.close()


def _device(source: str, port: int, device: str, state: Path, *extra: str) -> subprocess.Popen[str]:
    """``edgerun run`` publishing every result, its summary as JSON on stdout."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgerun",
            "run",
            MODEL,
            "--source",
            source,
            "--sink",
            str(state.parent / f"{device}.jsonl"),
            "--mqtt",
            f"mqtt://127.0.0.1:{port}",
            "--device-id",
            device,
            "--state-dir",
            str(state),
            "--publish-results",
            "--json",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """Wait for the process (bounded), check it exited 0, and return its JSON summary and stderr."""
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _distinct_seqs(collector: Collector, device: str) -> set[int]:
    return set(collector.seqs(f"edgerun/{device}/results/digits"))


# -- refused before the model loads ------------------------------------------------------------


def _encrypted_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


@pytest.mark.parametrize(
    "case",
    ["ca-not-a-certificate", "cert-not-a-certificate", "key-not-a-key", "key-of-another-cert", "key-encrypted"],
)
def test_tls_files_that_cannot_work_are_one_line_naming_the_option_before_the_model_loads(
    tmp_path: Path, case: str
) -> None:
    pki = make_pki(tmp_path / "pki")
    text = tmp_path / "notes.txt"
    text.write_text("not PEM at all\n")
    options, option, path = {
        "ca-not-a-certificate": (["--mqtt-ca", str(text)], "--mqtt-ca", text),
        "cert-not-a-certificate": (["--mqtt-cert", str(text), "--mqtt-key", str(pki.client_key)], "--mqtt-cert", text),
        "key-not-a-key": (["--mqtt-cert", str(pki.client_cert), "--mqtt-key", str(text)], "--mqtt-key", text),
        "key-of-another-cert": (
            ["--mqtt-cert", str(pki.client_cert), "--mqtt-key", str(pki.server_key)],
            "--mqtt-key",
            pki.server_key,
        ),
        "key-encrypted": (
            ["--mqtt-cert", str(pki.client_cert), "--mqtt-key", str(_encrypted_key(tmp_path / "enc.key"))],
            "--mqtt-key",
            tmp_path / "enc.key",
        ),
    }[case]
    result = run_cli("run", MISSING_MODEL, "--source", str(SAMPLES), "--mqtt", "mqtts://localhost:8883", *options)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgerun: error: {option} {path} "), lines
    assert "Traceback" not in result.stderr


def test_a_topic_prefix_with_a_wildcard_is_one_line_before_the_model_loads() -> None:
    result = run_cli(
        "run", MISSING_MODEL, "--source", str(SAMPLES), "--mqtt", "mqtt://127.0.0.1:9", "--mqtt-prefix", "fleet/#"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "edgerun: error: topic prefix 'fleet/#' is invalid: no wildcards, no leading or trailing '/'"
    ]


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--publish-results"], "--publish-results needs an MQTT broker (--mqtt URL)"),
        (["--mqtt", "mqtt://127.0.0.1:9", "--results-rate", "5"], "--results-rate limits published results"),
    ],
    ids=["publish-results-without-mqtt", "results-rate-without-publish-results"],
)
def test_results_options_that_would_publish_nothing_are_refused(options: list[str], line: str) -> None:
    result = run_cli("run", MISSING_MODEL, "--source", str(SAMPLES), *options)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgerun: error: {line}"), lines


# -- the end of the input with results still queued --------------------------------------------


def test_results_queued_when_a_video_ends_reach_the_broker_before_exit_over_a_slow_uplink(
    broker: Broker, tmp_path: Path
) -> None:
    """A fast model queues results far faster than a 12 kB/s uplink takes them: when the video
    ends, the run goes on delivering while the broker acknowledges, then exits 0 with all of them
    delivered (it used to give up after 5 s and leave most of them on disk without a word)."""
    frames, device = 300, "slow-uplink-dev"  # some 7 s at 12 kB/s: past the 5 s the run once gave itself
    video = make_video(tmp_path / "in.avi", frames=frames)
    uplink = SlowUplink(broker.port, rate=12_000)
    collector = Collector(broker.port, f"edgerun/{device}/#")
    try:
        summary, err = _finish(_device(str(video), uplink.port, device, tmp_path / "state"))
        assert summary["stopped_by"] == "end of input" and summary["frames"] == frames
        wait_until(lambda: len(_distinct_seqs(collector, device)) == frames, 10, "every result at the broker")
        assert _distinct_seqs(collector, device) == set(range(1, frames + 1))
        assert summary["mqtt"]["results"] == frames and summary["mqtt"]["undelivered"] == 0, err[-2000:]
        assert (retained_status(broker.port, f"edgerun/{device}/status") or {}).get("state") == "offline"
    finally:
        collector.close()
        uplink.close()


def test_a_short_run_whose_first_connection_is_slow_still_delivers_its_results(broker: Broker, tmp_path: Path) -> None:
    """Eleven images take a few milliseconds; a connection that needs a second (TLS over a slow
    network) used to come too late, and nothing was published at all, not even ``online``."""
    device = "slow-connect-dev"
    uplink = SlowUplink(broker.port, delay_s=1.0)
    collector = Collector(broker.port, f"edgerun/{device}/#")
    try:
        summary, err = _finish(_device(str(SAMPLES), uplink.port, device, tmp_path / "state"))
        wait_until(lambda: len(_distinct_seqs(collector, device)) == 11, 10, "the 11 results at the broker")
        states = [s["state"] for s in collector.on(f"edgerun/{device}/status")]
        assert states[0] == "online" and states[-1] == "offline", states
        assert summary["frames"] == 11 and summary["mqtt"] == {
            "undelivered": 0,
            "refused": 0,
            "outbox": str(tmp_path / "state" / "outbox.sqlite"),
            "results": 11,
            "results_skipped": 0,
        }, err[-2000:]
    finally:
        collector.close()
        uplink.close()


def test_a_signal_during_the_final_delivery_ends_it_and_keeps_the_rest_for_the_next_start(
    broker: Broker, tmp_path: Path
) -> None:
    """SIGTERM while a run whose input ended delivers its backlog: exit 0 soon, the summary still says
    the input ended, the rest stays in the outbox, and the next start with that state sends it."""
    frames, device, state = 600, "term-delivery-dev", tmp_path / "state"
    video = make_video(tmp_path / "in.avi", frames=frames)
    uplink = SlowUplink(broker.port, rate=4_000)
    collector = Collector(broker.port, f"edgerun/{device}/#")
    proc = _device(str(video), uplink.port, device, state)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the run says it is delivering (an event, not a time)
            if line.startswith("# MQTT: delivering"):
                break
        else:
            raise AssertionError("the run exited without delivering its queued results")
        proc.send_signal(signal.SIGTERM)
        summary, _ = _finish(proc)
        assert summary["stopped_by"] == "end of input"  # the signal came after the input ended
        left = summary["mqtt"]["undelivered"]
        assert left > 0
        sent = _distinct_seqs(collector, device)
        assert len(sent) < frames
        # The next start, with the broker reachable directly, sends what was left, in order.
        _finish(_device(str(SAMPLES / "digit_3.png"), broker.port, device, state))
        wait_until(lambda: len(_distinct_seqs(collector, device)) == frames + 1, 20, "every result at the broker")
        assert _distinct_seqs(collector, device) == set(range(1, frames + 2))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        collector.close()
        uplink.close()


def test_a_video_that_ends_while_the_broker_is_down_exits_keeping_every_record_and_says_so(
    own_broker: Broker, tmp_path: Path
) -> None:
    frames, device, state = 120, "down-at-end-dev", tmp_path / "state"
    video = make_video(tmp_path / "in.avi", frames=frames)
    collector = Collector(own_broker.port, f"edgerun/{device}/#")
    own_broker.stop()
    try:
        summary, err = _finish(_device(str(video), own_broker.port, device, state))
        said = [line for line in err.splitlines() if "not delivered" in line]
        assert len(said) == 1 and f"{frames + 1} record(s)" in said[0] and str(state) in said[0], err[-2000:]
        assert summary["mqtt"]["results"] == frames
        assert summary["mqtt"]["undelivered"] == frames + 1  # and the last metrics record
        own_broker.start()
        _finish(_device(str(SAMPLES / "digit_3.png"), own_broker.port, device, state))
        wait_until(lambda: len(_distinct_seqs(collector, device)) == frames + 1, 20, "every result at the broker")
    finally:
        collector.close()


def test_the_summary_counts_results_over_the_rate_limit_and_they_match_what_reached_the_broker(
    broker: Broker, tmp_path: Path
) -> None:
    frames, device = 400, "rate-dev"
    video = make_video(tmp_path / "in.avi", frames=frames)
    collector = Collector(broker.port, f"edgerun/{device}/#")
    try:
        summary, _ = _finish(
            _device(str(video), broker.port, device, tmp_path / "state", "--results-rate", "20", "--fps", "400")
        )
        assert "mqtt" in summary, "the summary does not say what was published"
        published, skipped = summary["mqtt"]["results"], summary["mqtt"]["results_skipped"]
        assert summary["frames"] == frames and published + skipped == frames and skipped > 0
        assert summary["mqtt"]["undelivered"] == 0
        wait_until(lambda: len(_distinct_seqs(collector, device)) == published, 10, "the published results")
        assert _distinct_seqs(collector, device) == set(range(1, published + 1))
        metrics = collector.on(f"edgerun/{device}/metrics")
        assert sum(m["models"]["digits"]["count"] for m in metrics if "digits" in m["models"]) == frames
    finally:
        collector.close()
