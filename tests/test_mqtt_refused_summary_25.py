"""The ``# MQTT:`` summary line and ``--json`` record of ``run`` and ``predict`` name the records the
broker refused, and say ``everything delivered`` only when it accepted every one.

A walkthrough found both saying ``everything delivered`` (``"undelivered": 0``) when a Mosquitto ACL
had refused every record with PUBACK 0x87: refused records leave the outbox, so the outbox was empty
and the records were lost. Each test starts a private Mosquitto with a password file and an
``acl_file`` that lets user dev9 write its own status topic only, and runs the real command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DIGITS, SAMPLES, Broker, run_cli

INPUTS = len([p for p in SAMPLES.iterdir() if p.suffix in (".png", ".npy")])


@pytest.fixture
def status_only_broker(tmp_path: Path) -> Iterator[Broker]:
    """User dev9 (password pw9) may write ``edgerun/dev9/status`` and nothing else; no anonymous clients."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(passwd), "dev9", "pw9"], check=True, timeout=10, capture_output=True)
    acl.write_text("user dev9\ntopic write edgerun/dev9/status\n")
    b = Broker(tmp_path / "broker")
    root = "user root\n" if os.geteuid() == 0 else ""  # as root, mosquitto would drop to a user that cannot read tmp
    b.conf.write_text(
        f"listener {b.port} 127.0.0.1\n{root}persistence false\n"
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    )
    b.start()
    yield b
    b.stop()


def _mqtt(broker: Broker, state: Path) -> list[str]:
    return [
        "--mqtt", f"mqtt://dev9:pw9@127.0.0.1:{broker.port}", "--publish-results",
        "--device-id", "dev9", "--state-dir", str(state),
    ]  # fmt: skip


def _run(broker: Broker, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = run_cli("run", str(DIGITS / "digits_fp32.onnx"), "--source", str(SAMPLES), *_mqtt(broker, state), *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _outbox_refused(state: Path) -> int:
    """What ``edgerun outbox`` says the broker refused since the outbox's epoch (every run with ``state``)."""
    done = run_cli("outbox", "--state-dir", str(state), "--json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["refused"])


def test_a_run_whose_records_the_broker_refused_says_how_many_and_never_everything_delivered(
    tmp_path: Path, status_only_broker: Broker
) -> None:
    state = tmp_path / "state"
    first = _run(status_only_broker, state)
    # refusals lose records, as an unreachable broker keeps them: neither is the run's failure (exit 0)
    assert first.returncode == 0, first.stderr
    assert "Not authorized [code:135]" in first.stderr, first.stderr
    line = first.stderr.splitlines()[-1]
    refused = _outbox_refused(state)
    assert refused > INPUTS  # every result, and the metrics records
    assert line == (
        f"# MQTT: {INPUTS} results queued, 0 over --results-rate; "
        f"{refused} record(s) refused by the broker (its ACL or packet size limit), dropped"
    ), first.stderr
    # the outbox counts refusals over every run with this state directory; a run's line says its own
    second = _run(status_only_broker, state)
    assert second.returncode == 0, second.stderr
    again = _outbox_refused(state) - refused
    assert again > INPUTS
    assert second.stderr.splitlines()[-1].endswith(
        f"; {again} record(s) refused by the broker (its ACL or packet size limit), dropped"
    )


def test_a_run_json_record_names_the_refused_records(tmp_path: Path, status_only_broker: Broker) -> None:
    state = tmp_path / "state"
    done = _run(status_only_broker, state, "--json")
    assert done.returncode == 0, done.stderr
    mqtt = json.loads(done.stdout.splitlines()[-1])["mqtt"]
    assert mqtt == {
        "results": INPUTS,
        "results_skipped": 0,
        "undelivered": 0,
        "refused": _outbox_refused(state),
        "outbox": str(state / "outbox.sqlite"),
    }
    assert mqtt["refused"] > INPUTS


def test_predict_whose_records_the_broker_refused_says_how_many(tmp_path: Path, status_only_broker: Broker) -> None:
    state = tmp_path / "state"
    done = run_cli(
        "predict", str(DIGITS / "digits_fp32.onnx"), str(SAMPLES), *_mqtt(status_only_broker, state), "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"# MQTT: {INPUTS} results queued, 0 over --results-rate; "
        f"{_outbox_refused(state)} record(s) refused by the broker (its ACL or packet size limit), dropped"
    ), done.stdout


def test_the_line_still_says_something_where_the_refused_count_could_not_be_read() -> None:
    from edgerun.cli.common import mqtt_line

    line = mqtt_line({"undelivered": 0, "refused": None, "outbox": "st/outbox.sqlite"})  # was "# MQTT: "
    assert line == "# MQTT: every record queued left the outbox; how many the broker refused is unknown"
