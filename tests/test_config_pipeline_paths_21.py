"""A daemon pipeline's ``source`` and ``sinks``, where they name files, are taken from the config file's
folder with ``~`` expanded, as every other file a config names: never from the working directory.

Under systemd (working directory ``/``) ``source: inbox/`` and ``sinks: [results.jsonl]`` once read and
wrote elsewhere than ``edgerun config check`` in the config's folder suggested, and a sink spelled
otherwise than the source it would damage went unseen. A camera, a stream, an MQTT topic, standard
input and the standard output sinks are not files and stay as written.

Each command runs as a real process from a working directory other than the config's folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgerun.globbing import glob_files
from tests.conftest import ROOT, SAMPLES, run_cli, stop_process
from tests.test_config_fixes_20 import MODEL, _env, _folders, _one_error
from tests.test_sync import wait_until

VIBRATION = ROOT / "models" / "vibration"
IMAGES = ["digit_3.png", "digit_5.png", "digit_8.png"]


def _config(conf: Path, pipelines: str) -> Path:
    """``conf/c.yaml``: the digits model by its absolute path, no API, and ``pipelines`` (YAML)."""
    path = conf / "c.yaml"
    path.write_text(f"models:\n  m:\n    path: {MODEL}\napi:\n  enabled: false\npipelines:\n{pipelines}")
    return path


def _checked(config: Path, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The pipelines ``edgerun config check`` prints, run from ``cwd``: exit 0, no warning but for the sources
    these configs name and never make (``the pipeline waits for it``)."""
    result = run_cli("config", "check", str(config), cwd=cwd, env=env)
    warned = [
        line for line in result.stderr.splitlines() if not line.endswith("the pipeline waits for it (tried every 5 s)")
    ]
    assert result.returncode == 0 and warned == [], result.stderr
    pipelines: dict[str, Any] = yaml.safe_load(result.stdout)["pipelines"]
    return pipelines


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_the_daemon_reads_a_relative_image_folder_and_writes_relative_sinks_in_the_config_folder(
    tmp_path: Path,
) -> None:
    conf, work, _ = _folders(tmp_path)
    (conf / "inbox").mkdir()
    for name in IMAGES:
        shutil.copy(SAMPLES / name, conf / "inbox" / name)
    config = _config(conf, "  p:\n    source: inbox/\n    model: m\n    sinks: [results.jsonl, drawn/]\n")
    checked = _checked(config, work)["p"]
    assert checked["source"] == f"{conf}/inbox/"
    assert checked["sinks"] == [f"{conf}/results.jsonl", f"{conf}/drawn/"]  # the folder keeps its slash
    results = conf / "results.jsonl"
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_until(
                lambda: _lines(results) == len(IMAGES) or any(work.iterdir()) or proc.poll() is not None,
                60,
                "the daemon to write every result",
            )
        finally:
            code = stop_process(proc, 60)
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert list(work.iterdir()) == []  # nothing read or written in the working directory
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["input"] for r in records) == [f"{conf}/inbox/{name}" for name in IMAGES]
    assert [r["output"][0]["label"] for r in sorted(records, key=lambda r: r["input"])] == ["3", "5", "8"]
    assert len(list((conf / "drawn").glob("*.jpg"))) == len(IMAGES)


def test_tilde_is_expanded_in_a_pipeline_source_and_its_sinks(tmp_path: Path) -> None:
    conf, work, home = _folders(tmp_path)
    config = _config(
        conf,
        "  photos:\n    source: '~/inbox/*.png'\n    model: m\n    sinks: [~/out.csv, ~/drawn/]\n"
        "  line:\n    source: ~/in.csv\n    model: m\n    sinks: [~/line.jsonl]\n",
    )
    checked = _checked(config, work, _env(home))
    assert checked["photos"]["source"] == f"{home}/inbox/*.png"  # still a pattern
    assert checked["photos"]["sinks"] == [f"{home}/out.csv", f"{home}/drawn/"]
    assert checked["line"]["source"] == f"{home}/in.csv"
    assert checked["line"]["sinks"] == [f"{home}/line.jsonl"]
    user = "edgerun-no-such-user-21"
    config.write_text(config.read_text().replace("~/line.jsonl", f"~{user}/line.jsonl"))
    line = _one_error(run_cli("config", "check", "../conf/c.yaml", cwd=work, env=_env(home)))
    assert line == (
        f"edgerun: error: ../conf/c.yaml: pipelines.line: sinks.0: cannot expand ~{user} in ~{user}/line.jsonl: "
        f"no user '{user}' in the password database"
    )


def test_sources_and_sinks_that_are_not_files_stay_as_written(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    written = {
        "cam": "camera:0",
        "video": "/dev/video0",
        "stream": "rtsp://camera.local:554/stream1",
        "secure": "rtsps://camera.local/s",
        "web": "https://camera.local/mjpeg",
        "plain": "http://camera.local/mjpeg",
        "topic": "mqtt://127.0.0.1:1883/sensors/in",
        "pipe": "-",
        "input": "stdin",
        "other": "rtmp://camera.local/live",  # a URL edgerun cannot open: refused when opened, never a file here
        "file": "in.csv",  # the one file among them
    }
    config = _config(
        conf,
        "".join(
            f"  {n}:\n    source: '{s}'\n    model: m\n    sinks: [stdout, jsonl, JSON]\n" for n, s in written.items()
        ),
    )
    checked = _checked(config, work)
    assert {n: p["source"] for n, p in checked.items()} == {**written, "file": f"{conf}/in.csv"}
    assert all(p["sinks"] == ["stdout", "jsonl", "JSON"] for p in checked.values())


CLASHES = [
    pytest.param(
        "in.csv",
        "../conf/in.csv",
        "sink '../conf/in.csv' is the source file {conf}/in.csv: writing it would damage the input",
        id="sink-onto-source",
    ),
    pytest.param(
        "data/*.csv",
        "./data/in.csv",
        "sink './data/in.csv' is the source file {conf}/data/in.csv: writing it would damage the input",
        id="sink-onto-glob-source",
    ),
    pytest.param(
        "inbox/",
        "../conf/inbox/drawn/",
        "sink '../conf/inbox/drawn/' is inside the source folder {conf}/inbox/: the next run over it would "
        "take its annotated images for inputs (write them outside the folder)",
        id="images-into-source-folder",
    ),
    pytest.param(
        "inbox/",
        "out.jsonl, ../conf/out.jsonl",
        "sink '../conf/out.jsonl' names the file of sink 'out.jsonl' again: each record would be written twice",
        id="repeated-sink",
    ),
]


@pytest.mark.parametrize(("source", "sinks", "message"), CLASHES)
def test_a_sink_spelled_otherwise_than_the_file_it_clashes_with_is_refused_from_any_working_directory(
    tmp_path: Path, source: str, sinks: str, message: str
) -> None:
    conf, work, _ = _folders(tmp_path)
    original = (VIBRATION / "samples" / "normal.csv").read_bytes()
    for name in ("in.csv", "data/in.csv", "out.jsonl"):
        (conf / name).parent.mkdir(exist_ok=True)
        (conf / name).write_bytes(original)
    (conf / "inbox").mkdir()
    config = _config(conf, f"  p:\n    source: '{source}'\n    model: m\n    sinks: [{sinks}]\n")
    for args in (("config", "check", str(config)), ("daemon", "--config", str(config))):
        line = _one_error(run_cli(*args, cwd=work))
        assert line == f"edgerun: error: {config}: pipelines.p: " + message.format(conf=conf)
    assert (conf / "in.csv").read_bytes() == original and list(work.iterdir()) == []


def test_a_glob_source_under_a_config_folder_named_with_wildcards_lists_that_folder_only(tmp_path: Path) -> None:
    """``c[1]/`` joined as it is would make ``[1]`` a wildcard, matching ``c1/``."""
    conf, work = tmp_path / "c[1]", tmp_path / "work"
    for folder in (conf / "in", tmp_path / "c1" / "in", work):
        folder.mkdir(parents=True)
    shutil.copy(SAMPLES / "digit_3.png", tmp_path / "c1" / "in" / "digit_3.png")  # not the config's
    shutil.copy(SAMPLES / "digit_5.png", conf / "in" / "digit_5.png")
    config = _config(conf, "  p:\n    source: 'in/*.png'\n    model: m\n    sinks: [stdout]\n")
    pattern = _checked(config, work)["p"]["source"]
    assert pattern == f"{tmp_path}/c[[]1]/in/*.png"
    assert glob_files(pattern) == [f"{conf}/in/digit_5.png"]  # as the daemon's file source expands it


def test_under_a_config_folder_named_with_wildcards_a_plain_source_and_its_sinks_name_exactly_their_files(
    tmp_path: Path,
) -> None:
    """A plain source joined to ``c[1]/`` must glob to its own file only (the file source globs any name
    with a wildcard), a sink onto it must still be refused, and a sink is never a pattern."""
    conf, work = tmp_path / "c[1]", tmp_path / "work"
    for folder in (conf, tmp_path / "c1", work):
        folder.mkdir(parents=True)
    original = (VIBRATION / "samples" / "normal.csv").read_bytes()
    for where in (conf, tmp_path / "c1"):
        (where / "data.csv").write_bytes(original)
    config = _config(conf, "  p:\n    source: data.csv\n    model: m\n    window: 8\n    sinks: [data.csv]\n")
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line.startswith(f"edgerun: error: {config}: pipelines.p: sink 'data.csv' is the source file "), line
    assert (conf / "data.csv").read_bytes() == original
    config = _config(conf, "  p:\n    source: data.csv\n    model: m\n    window: 8\n    sinks: ['out[a].jsonl']\n")
    checked = _checked(config, work)["p"]
    assert glob_files(checked["source"]) == [f"{conf}/data.csv"]  # not c1/data.csv
    assert checked["sinks"] == [f"{conf}/out[a].jsonl"]  # as written, in the config's folder
    (conf / "inbox").mkdir()
    config = _config(conf, "  p:\n    source: inbox/\n    model: m\n    sinks: [inbox/drawn/]\n")
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line.startswith(f"edgerun: error: {config}: pipelines.p: sink 'inbox/drawn/' is inside the source "), line
