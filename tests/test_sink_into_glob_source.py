"""An annotated-images sink (``DIR/``) whose drawings a glob source of the same run or pipeline lists.

A folder source was refused a ``DIR/`` sink inside it (the next run over the folder would read the drawings),
and across two pipelines a glob listing another's drawings was refused too; but within one run or one
pipeline a glob was "not looked at": ``run --source 'shots/**/*.jpg' --sink shots/drawn/`` and a pipeline
with ``source: drawn/*.jpg`` and ``sinks: [drawn/]`` were taken, each run then reading the last one's
drawings (``000000.jpg`` on) as inputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DIGITS, SAMPLES, run_cli
from tests.test_config_fixes_20 import _folders, _one_error
from tests.test_config_shared_sinks_23 import _config

MODEL = str(DIGITS / "digits_int8.onnx")


def _shots(tmp_path: Path) -> Path:
    shots = tmp_path / "shots"
    shots.mkdir()
    for sample in sorted(SAMPLES.glob("*.png"))[:2]:
        shutil.copy(sample, shots / sample.name)
    return shots


@pytest.mark.parametrize(
    ("pattern", "sink"),
    [("shots/**/*.jpg", "shots/drawn/"), ("shots/*", "shots/"), ("shots/*.jpg", "shots/")],
)
def test_run_refuses_a_dir_sink_whose_drawings_the_glob_source_lists(tmp_path: Path, pattern: str, sink: str) -> None:
    _shots(tmp_path)
    done = run_cli("run", MODEL, "--source", pattern, "--sink", sink, cwd=tmp_path)
    assert done.returncode == 2, done.stderr  # was 0, the drawings written where the next run reads them
    assert done.stderr.strip() == (
        f"edgerun: error: --sink {sink} is where the source {pattern} lists its annotated images: the next run "
        "would take them for inputs (write them where the pattern lists nothing)"
    )
    assert not (tmp_path / "shots" / "drawn").exists() and not list((tmp_path / "shots").glob("0*.jpg"))


@pytest.mark.parametrize(("pattern", "sink"), [("shots/*.png", "shots/drawn/"), ("shots/*", "shots/drawn/")])
def test_run_takes_a_dir_sink_the_glob_does_not_list(tmp_path: Path, pattern: str, sink: str) -> None:
    _shots(tmp_path)
    done = run_cli("run", MODEL, "--source", pattern, "--sink", sink, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "shots" / "drawn").glob("*.jpg"))) == 2


def test_a_pipeline_whose_glob_lists_its_own_drawings_is_refused(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    config = _config(conf, {"cam": ("drawn/*.jpg", ["drawn/"])})
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line == (
        f"edgerun: error: {config}: pipelines.cam: sink 'drawn/' is where the source {conf}/drawn/*.jpg lists its "
        "annotated images: the next run would take them for inputs (write them where the pattern lists nothing)"
    )
