"""A daemon pipeline whose source folder (or file) is not there yet waits for it, as for a camera not plugged in:
it used to read the missing path as one failed input and finish for good (state ``finished``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_daemon import _in_process_daemon
from tests.test_sync import wait_until

MODEL = ROOT / "models/digits/digits_int8.tflite"
SAMPLES = ROOT / "models/digits/samples"


def _labels(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(line)["output"][0]["label"] for line in out.read_text().splitlines()]


def test_a_source_folder_made_after_the_start_is_waited_for_and_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out.jsonl"
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"digits": str(MODEL)},
        {"folder": {"source": str(inbox), "model": "digits", "sinks": [str(out)], "restart_s": 0.2}},
    )
    daemon.start()
    try:
        said = f"pipeline folder: source {inbox}: no such file or folder; retrying in 0.2 s"
        wait_until(lambda: any(said in r.getMessage() for r in list(caplog.records)), 30, "the missing inbox's line")
        assert daemon.runners["folder"].state == "waiting"
        assert not out.exists()  # no failed record for a folder that is not there yet
        inbox.mkdir()
        for digit in (3, 7):
            shutil.copy(SAMPLES / f"digit_{digit}.png", inbox)
        wait_until(lambda: daemon.runners["folder"].state == "finished", 30, "the inbox read")
        assert _labels(out) == ["3", "7"]
    finally:
        daemon.stop()


def test_config_check_names_a_source_and_a_sink_folder_not_there_yet(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {MODEL}\n"
        "pipelines:\n  folder:\n    source: inbox\n    model: digits\n    sinks: [res/out.jsonl, drawn/]\n"
        "    restart_s: 2\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "config", "check", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"edgerun: warning: {config}: pipelines.folder.source {tmp_path / 'inbox'} is not there: the pipeline waits "
        "for it (tried every 2 s)",
        f"edgerun: warning: {config}: pipelines.folder.sinks[0] {tmp_path / 'res/out.jsonl'}: its folder is not "
        "there: the pipeline waits for it (tried every 2 s)",
    ]
    (tmp_path / "inbox").mkdir()
    (tmp_path / "res").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "config", "check", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr == ""  # drawn/ is made by its sink: never named
