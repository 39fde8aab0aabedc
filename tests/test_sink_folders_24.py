"""A sink's missing folder: what is made, what is refused.

A new-user walkthrough found ``--sink /nonexistent/d/`` (annotated images) exit 0 having made the whole
path (as root, ``/nonexistent`` at the file system's root), while ``--sink /nonexistent/x.csv`` is refused
in one line. A file sink (CSV, JSON Lines, a video) needs its folder there; a ``DIR/`` sink makes its last
folder, and without ``parents`` (``AnnotatedImageSink(DIR, parents=False)``) only that: a parent that is not
there is refused before anything is made, since a mistyped name would make a tree. A daemon pipeline's
``DIR/`` is still made with its folders, as ``config check`` says (``edgerun.config``), so it never waits on one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgerun.errors import ConfigError
from edgerun.sinks.annotate import AnnotatedImageSink
from tests.conftest import ROOT, run_cli
from tests.test_daemon import _in_process_daemon
from tests.test_sync import wait_until

MODEL = ROOT / "models/digits/digits_int8.onnx"
SAMPLES = ROOT / "models/digits/samples"


def _tree(root: Path) -> list[str]:
    """Every path under ``root``, relative, sorted: what a sink left there."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_an_images_folder_whose_parent_is_not_there_is_refused_without_parents_and_nothing_is_made(
    tmp_path: Path,
) -> None:
    spec = str(tmp_path / "nonexistent" / "d") + "/"
    with pytest.raises(ConfigError) as refused:
        AnnotatedImageSink(spec, parents=False)
    assert str(refused.value) == (
        f"cannot create {spec}: its folder {tmp_path / 'nonexistent'} is not there "
        "(only the last folder of a DIR/ sink is made)"
    )
    assert _tree(tmp_path) == []


def test_an_images_folder_whose_parent_is_there_is_made_without_parents(tmp_path: Path) -> None:
    AnnotatedImageSink(str(tmp_path / "drawn") + "/", parents=False)
    assert (tmp_path / "drawn").is_dir()
    AnnotatedImageSink(str(tmp_path / "drawn") + "/", parents=False)  # there already: opened as it is
    assert _tree(tmp_path) == ["drawn"]


def test_an_images_folder_under_a_file_is_refused_with_the_systems_reason(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for parents in (False, True):
        with pytest.raises(ConfigError, match=r"^cannot create .*afile/d/: Not a directory$"):
            AnnotatedImageSink(str(tmp_path / "afile" / "d") + "/", parents=parents)


def test_by_default_an_images_folder_is_made_with_its_folders(tmp_path: Path) -> None:
    """The daemon's ``DIR/`` (``open_sink``): made with the folders above it, as ``config check`` documents."""
    AnnotatedImageSink(str(tmp_path / "a" / "b" / "drawn") + "/")
    assert _tree(tmp_path) == ["a", "a/b", "a/b/drawn"]


@pytest.mark.parametrize("name", ["x.csv", "x.jsonl", "v.mp4", "v.avi"])
def test_run_refuses_a_file_sink_whose_folder_is_not_there_before_the_run(tmp_path: Path, name: str) -> None:
    sink = str(tmp_path / "nonexistent" / name)
    done = run_cli("run", str(MODEL), "--source", str(SAMPLES), "--sink", sink, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"edgerun: error: cannot write {sink}: No such file or directory"]
    assert done.stdout == ""  # no input ran
    assert _tree(tmp_path) == []


def test_run_makes_the_last_folder_of_an_images_sink(tmp_path: Path) -> None:
    done = run_cli("run", str(MODEL), "--source", str(SAMPLES), "--sink", "drawn/", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "drawn").glob("*.jpg"))) == len(list(SAMPLES.glob("*.png")))


def test_run_refuses_an_images_sink_whose_parent_is_not_there_before_the_run(tmp_path: Path) -> None:
    sink = str(tmp_path / "nonexistent" / "d") + "/"
    done = run_cli("run", str(MODEL), "--source", str(SAMPLES), "--sink", sink, cwd=tmp_path)
    assert _tree(tmp_path) == []
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"edgerun: error: cannot create {sink}: its folder {tmp_path / 'nonexistent'} is not there "
        "(only the last folder of a DIR/ sink is made)"
    ]


def test_a_daemon_pipeline_makes_its_images_sink_with_its_folders_and_waits_for_a_file_sinks_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    drawn, res = tmp_path / "out" / "a" / "drawn", tmp_path / "res" / "r.jsonl"
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"digits": str(MODEL)},
        {
            "p": {
                "source": str(SAMPLES),
                "model": "digits",
                "sinks": [str(drawn) + "/", str(res)],
                "restart_s": 0.2,
            }
        },
    )
    daemon.start()
    try:
        said = f"pipeline p: cannot write {res}: No such file or directory; retrying in 0.2 s"
        wait_until(lambda: any(said in r.getMessage() for r in list(caplog.records)), 30, "the missing folder's line")
        assert daemon.runners["p"].state == "waiting"
        assert drawn.is_dir()  # made with out/ and out/a/ when the pipeline first opened its sinks
        res.parent.mkdir()
        wait_until(lambda: daemon.runners["p"].state == "finished", 60, "the pipeline finished")
    finally:
        daemon.stop()
    inputs = sorted(p.name for p in SAMPLES.iterdir())
    assert sorted(Path(json.loads(line)["input"]).name for line in res.read_text().splitlines()) == inputs
    assert len(list(drawn.glob("*.jpg"))) == len(list(SAMPLES.glob("*.png")))  # the .npy has no image to draw
