"""Two defects a review of the twenty-third session's changes found: a temporary image an annotated sink
writes (or a kill left) read as an input by a folder source, and a missing source folder under a config
folder named with ``[`` neither waited for by the daemon nor named by ``config check``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import DIGITS, SAMPLES

MODEL = DIGITS / "digits_int8.tflite"


def test_a_temporary_image_in_a_folder_is_not_read_as_an_input(tmp_path: Path) -> None:
    folder = tmp_path / "drawn"
    folder.mkdir()
    shutil.copy(SAMPLES / "digit_3.png", folder / "000001.png")
    torn = (SAMPLES / "digit_5.png").read_bytes()
    (folder / ".000002.abcd1234.tmp.png").write_bytes(torn[: len(torn) // 2])  # what a kill leaves
    (folder / ".000003.png").write_bytes((SAMPLES / "digit_7.png").read_bytes())  # hidden, yet an image: read
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "predict", str(MODEL), str(folder), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    inputs = [json.loads(line)["input"] for line in done.stdout.splitlines()]
    assert sorted(Path(i).name for i in inputs) == [".000003.png", "000001.png"]


def test_a_missing_source_folder_under_a_config_folder_named_with_a_bracket_is_named_by_config_check(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "c[1]"
    conf.mkdir()
    config = conf / "c.yaml"
    config.write_text(
        f"models:\n  digits:\n    path: {MODEL}\npipelines:\n  folder:\n    source: inbox/\n    model: digits\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "config", "check", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"edgerun: warning: {config}: pipelines.folder.source {tmp_path}/c[[]1]/inbox/ is not there: the pipeline "
        "waits for it (tried every 5 s)"
    ]
    (conf / "inbox").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "config", "check", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr == ""
