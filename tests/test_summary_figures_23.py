"""The figures of ``predict``'s and ``run``'s summaries are real: a quick run's time is never ``0.00 s``, the
rate counts the inputs that succeeded and is left out where none did, ``run --json`` carries unrounded
figures with ``fps`` 0.0 where nothing succeeded; ``--state-dir``'s help gives the order the code resolves
one in; docs/pipelines.md names only options ``run`` takes for it; README.md's library example runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT, SAMPLES, run_cli

MODEL = str(DIGITS / "digits_int8.onnx")
#: what precedes the rate, if any: `in 3.20 ms` (predict: ` (1560 inputs/s)`; run: `, 1560 fps`)
ELAPSED = re.compile(r" in (\d+(?:\.\d+)?) (ms|s)\b")
SAMPLE_COUNT = len([p for p in SAMPLES.iterdir() if p.suffix in (".png", ".npy")])


def _seconds(line: str) -> float:
    """The elapsed time a summary line gives, in seconds; it must be non-zero and, under 10 s, have three
    significant figures (a quick run read `in 0.00 s`)."""
    found = ELAPSED.search(line)
    assert found is not None, line
    text, unit = found.groups()
    value = float(text)
    assert value > 0, line
    if unit == "ms" or value < 10:
        assert len(text.replace(".", "").lstrip("0")) == 3, line
    return value / 1000 if unit == "ms" else value


def _missing(tmp_path: Path, count: int) -> list[str]:
    return [str(tmp_path / f"gone{i}.png") for i in range(count)]


@pytest.mark.parametrize("count", [1, 5], ids=["direct", "pipeline"])  # up to 4 inputs run without a pipeline
def test_predict_where_every_input_failed_gives_its_time_and_no_rate(tmp_path: Path, count: int) -> None:
    done = run_cli("predict", MODEL, *_missing(tmp_path, count), "--no-progress")
    assert done.returncode == 1, done.stderr
    summary = done.stdout.splitlines()[-1]
    assert summary.startswith(f"# 0 ok, {count} failed in "), summary
    _seconds(summary)
    assert "inputs/s" not in summary and "0.00 s" not in summary, summary


@pytest.mark.parametrize("batch", [False, True], ids=["direct", "pipeline"])
def test_predict_rate_counts_the_inputs_that_succeeded(tmp_path: Path, batch: bool) -> None:
    inputs = [str(SAMPLES)] if batch else [str(SAMPLES / "digit_3.png")]
    ok = SAMPLE_COUNT if batch else 1
    done = run_cli("predict", MODEL, *inputs, *_missing(tmp_path, 1), "--no-progress")
    assert done.returncode == 1, done.stderr
    summary = done.stdout.splitlines()[-1]
    found = re.fullmatch(rf"# {ok} ok, 1 failed in .+ \((\d+(?:\.\d+)?) inputs/s\)", summary)
    assert found is not None, summary
    # three significant figures each way: ok over the time, never ok + failed
    assert float(found.group(1)) * _seconds(summary) == pytest.approx(ok, rel=0.02), summary


def test_run_where_every_frame_failed_gives_its_time_and_no_rate(tmp_path: Path) -> None:
    done = run_cli("run", MODEL, "--source", *_missing(tmp_path, 1))
    assert done.returncode == 1, done.stderr
    summary = next(line for line in done.stderr.splitlines() if line.startswith("# digits "))
    assert "1 frames (0 ok, 1 failed, 0 dropped, 0 skipped) in " in summary, summary
    _seconds(summary)
    assert "fps" not in summary and "0.00 s" not in summary, summary
    assert summary.endswith("; stopped by end of input"), summary


def test_run_rate_counts_the_frames_that_succeeded(tmp_path: Path) -> None:
    done = run_cli("run", MODEL, "--source", str(SAMPLES), *_missing(tmp_path, 1), "--sink", str(tmp_path / "o.jsonl"))
    assert done.returncode == 1, done.stderr
    summary = next(line for line in done.stderr.splitlines() if line.startswith("# digits "))
    found = re.search(r" in .+, (\d+(?:\.\d+)?) fps; stopped by end of input$", summary)
    assert found is not None, summary
    assert float(found.group(1)) * _seconds(summary) == pytest.approx(SAMPLE_COUNT, rel=0.02), summary


def test_run_json_where_every_frame_failed_has_fps_zero_and_a_real_time(tmp_path: Path) -> None:
    done = run_cli("run", MODEL, "--source", *_missing(tmp_path, 1), "--json")
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    assert (record["frames"], record["ok"], record["errors"]) == (1, 0, 1)
    assert record["fps"] == 0.0 and isinstance(record["fps"], float)  # once 1/elapsed: a rate of failures
    assert record["elapsed_s"] > 0  # once rounded to the millisecond: 0.0


def test_run_json_fps_is_the_frames_that_succeeded_over_the_unrounded_time(tmp_path: Path) -> None:
    done = run_cli("run", MODEL, "--source", str(SAMPLES), *_missing(tmp_path, 1), "--sink", "jsonl", "--json")
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout.splitlines()[-1])
    assert (record["frames"], record["ok"]) == (SAMPLE_COUNT + 1, SAMPLE_COUNT)
    assert list(record)[:10] == [
        "model", "version", "delegate", "frames", "ok", "errors", "dropped", "skipped", "elapsed_s", "fps",
    ]  # fmt: skip
    assert record["fps"] == pytest.approx(SAMPLE_COUNT / record["elapsed_s"], rel=1e-9)


def test_state_dir_help_gives_the_order_the_state_directory_is_resolved_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = "(default: $EDGERUN_STATE_DIR, else $XDG_STATE_HOME/edgerun, else ~/.local/state/edgerun)"
    for command in ("predict", "run", "bench", "devices"):
        done = run_cli(command, "--help")
        assert done.returncode == 0, done.stderr
        assert said in " ".join(done.stdout.split()), done.stdout  # once without $XDG_STATE_HOME
    from edgerun.state import state_dir

    monkeypatch.setenv("EDGERUN_STATE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "own"
    monkeypatch.delenv("EDGERUN_STATE_DIR")
    assert state_dir() == tmp_path / "xdg" / "edgerun"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "edgerun"


def test_pipelines_doc_names_for_run_only_the_numeric_options_run_takes() -> None:
    doc = (ROOT / "docs" / "pipelines.md").read_text()
    paragraph = doc[doc.index("Numeric options take the ranges") : doc.index("a value outside,")]
    run_help = run_cli("run", "--help").stdout
    predict_help = run_cli("predict", "--help").stdout
    named = re.findall(r"(`predict`'s |`run` has no )?`(--[a-z-]+)`", paragraph)
    assert ("`predict`'s ", "--top-k") in named, paragraph
    for said, option in named:
        if said == "`run` has no ":
            assert f"{option} " not in run_help, option
        else:  # once `--top-k`, among run's, which `run` refuses: unrecognized arguments
            assert f"{option} " in (predict_help if said else run_help), option


def test_readme_library_example_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.S | re.M)
    assert len(blocks) == 1, "README.md's python blocks changed: run each of them here"
    done = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("{'label': '3', 'index': 3, "), done.stdout
    assert lines[-1] == "7", done.stdout  # the .npy sample is a 7
