"""A WARNING logged while ``edgerun predict`` draws its progress bar is written above the bar, on a line
of its own, and the bar is drawn again under it.

Before, the root logger's handler wrote it where the bar's text ended (``... 0/400 [00:00<?,
?input/s]WARNING edgerun.sync.link: ...``). A real process on a real pseudo-terminal, the real digits
model over real images, and a real refused MQTT connection (loopback port 1) as the source of the
WARNING: the link logs it the moment it starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.test_pipeline_sinks_20 import MODEL
from tests.test_predict_interrupt_21 import _drain, _images, _terminal


def test_a_warning_during_a_batch_predict_gets_its_own_line_above_the_bar(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    images = _images(tmp_path / "images")
    master, slave = _terminal()
    terminal = bytearray()
    try:
        reader = _drain(master, terminal)
        mqtt = ["--mqtt", "mqtt://127.0.0.1:1", "--device-id", "barlog", "--state-dir", str(tmp_path / "state")]
        proc = subprocess.run(
            [sys.executable, "-m", "edgerun", "predict", str(MODEL), str(images), *mqtt],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            timeout=120,
        )
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    raw = terminal.decode("utf-8", "replace")
    assert proc.returncode == 0, raw[-2000:]
    assert "input/s]" in raw, raw[:2000]  # the bar was drawn
    warnings = [i for i in range(len(raw)) if raw.startswith("WARNING edgerun.sync.link: MQTT: TCP: connection", i)]
    assert warnings, raw[:2000]
    for at in warnings:
        before = raw[max(0, at - 120) : at]
        # at the start of a line: after a new line, or after the bar's line was blanked out
        assert at == 0 or re.search(r"(\n|\r {20,}\r)$", before), f"the WARNING starts on the bar's line: {before!r}"
        bar_again = raw.find("%|", at)
        assert bar_again == -1 or raw.index("\n", at) < bar_again, "the bar is drawn on the WARNING's line"
