"""A file or folder one daemon pipeline writes is no other pipeline's.

Before, only a pipeline's own sinks were compared: two pipelines given one ``results.jsonl`` interleaved
their records, two given one ``shots/`` numbered their images from the same point over each other's, two
given one ``out.mp4`` replaced or corrupted it, and a pipeline reading another's sink file
(``readings.csv``) read rows still being written. Now ``edgerun config check``, the daemon's start and a
SIGHUP refuse such a config in one line naming both pipelines and the path, the paths compared where the
daemon opens them (the config's folder, ``~`` expanded), whatever their spelling. Standard output, MQTT
topics and URLs are not files: any number of pipelines may use them.

Each command runs as a real process from a working directory other than the config's folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from edgerun.config import load_config
from edgerun.errors import ConfigError
from tests.conftest import run_cli
from tests.test_config_fixes_20 import MODEL, _env, _folders, _one_error


def _config(conf: Path, pipelines: dict[str, tuple[str, list[str]]], state: Path | None = None) -> Path:
    """``conf/c.yaml``: the digits model by its absolute path, no API, ``pipelines`` (name: source, sinks)
    and, when given, the state directory ``state``."""
    path = conf / "c.yaml"
    listed = {name: {"source": source, "model": "m", "sinks": sinks} for name, (source, sinks) in pipelines.items()}
    data = {"models": {"m": {"path": str(MODEL)}}, "api": {"enabled": False}, "pipelines": listed}
    path.write_text(yaml.safe_dump({**data, **({} if state is None else {"state_dir": str(state)})}))
    return path


REASON = "a sink is one pipeline's: give each its own"


def _read(reader: str, writer: str) -> str:
    """Why a sink of ``writer`` that ``reader``'s source reads is refused."""
    return f"(a sink is no other pipeline's source: {reader} would read what {writer} is still writing)"


REFUSED = [
    pytest.param(
        {"cam": ("inbox/", ["out.jsonl", "stdout"]), "door": ("inbox/", ["jsonl", "./out.jsonl"])},
        f"cam and door both write out.jsonl (door as ./out.jsonl; {REASON})",
        id="one-jsonl-spelled-two-ways",
    ),
    pytest.param(
        {"cam": ("inbox/", ["~/out.jsonl"]), "door": ("inbox/", ["../conf/out.jsonl"])},
        f"cam and door both write ~/out.jsonl (door as ../conf/out.jsonl; {REASON})",
        id="one-jsonl-through-home",
    ),
    pytest.param(
        {"cam": ("inbox/", ["shots/"]), "door": ("x.png", ["stdout", "shots/"])},
        f"cam and door both write shots/ ({REASON})",
        id="one-images-folder",
    ),
    pytest.param(
        {"cam": ("inbox/", ["shots/"]), "door": ("x.png", ["./shots/"])},
        f"cam and door both write shots/ (door as ./shots/; {REASON})",
        id="one-images-folder-spelled-two-ways",
    ),
    pytest.param(
        {"cam": ("in.mp4", ["out.mp4"]), "door": ("x.png", ["results.csv", "out.mp4"])},
        f"cam and door both write out.mp4 ({REASON})",
        id="one-video",
    ),
    pytest.param(
        {"cam": ("inbox/", ["readings.csv"]), "line": ("./readings.csv", ["jsonl"])},
        "cam writes readings.csv, which line reads as ./readings.csv " + _read("line", "cam"),
        id="a-sink-that-is-another-source-file",
    ),
    pytest.param(
        {"line": ("readings.csv", ["jsonl"]), "cam": ("inbox/", ["readings.csv"])},
        "cam writes readings.csv, which line reads " + _read("line", "cam"),
        id="the-reader-named-first",
    ),
    pytest.param(
        {"cam": ("x.png", ["inbox/drawn/"]), "door": ("inbox/", ["stdout"])},
        "cam writes inbox/drawn/, inside the source folder of door, inbox/ " + _read("door", "cam"),
        id="images-into-another-source-folder",
    ),
    pytest.param(
        {"cam": ("inbox/", ["logs/a.jsonl"]), "g": ("logs/*.jsonl", ["jsonl"])},
        "cam writes logs/a.jsonl, which the source of g, logs/*.jsonl, lists " + _read("g", "cam"),
        id="a-sink-another-glob-lists",
    ),
    pytest.param(
        {"cam": ("inbox/", ["drawn/"]), "g": ("drawn/*.jpg", ["stdout"])},
        "cam writes drawn/, which the source of g, drawn/*.jpg, lists " + _read("g", "cam"),
        id="images-another-glob-lists",
    ),
]


@pytest.mark.parametrize(("pipelines", "message"), REFUSED)
def test_a_file_two_pipelines_share_is_refused_by_config_check_the_daemon_and_the_loader(
    tmp_path: Path, pipelines: dict[str, tuple[str, list[str]]], message: str
) -> None:
    conf, work, _ = _folders(tmp_path)
    for folder in ("inbox", "logs", "drawn"):
        (conf / folder).mkdir()
    config = _config(conf, pipelines)
    for args in (("config", "check", str(config)), ("daemon", "--config", str(config))):
        line = _one_error(run_cli(*args, cwd=work, env=_env(conf)))  # ~ is the config's folder
        assert line == f"edgerun: error: {config}: pipelines: {message}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(conf))
        with pytest.raises(ConfigError) as refused:
            load_config(config)
    assert str(refused.value) == f"{config}: pipelines: {message}"
    assert sorted(p.name for p in conf.iterdir()) == ["c.yaml", "drawn", "inbox", "logs"]  # nothing written
    assert list(work.iterdir()) == []


ALLOWED = [
    pytest.param(
        {"cam": ("inbox/", ["stdout", "jsonl"]), "door": ("x.png", ["stdout", "JSON"]), "t": ("in.mp4", ["jsonl"])},
        id="stdout-in-every-pipeline",
    ),
    pytest.param({"cam": ("inbox/", ["a.jsonl", "a/"]), "door": ("x.png", ["b.jsonl", "b/"])}, id="different-files"),
    pytest.param(
        {"cam": ("inbox/", ["shots/"]), "door": ("x.png", ["shots/log.jsonl", "shots/sub/"])},
        id="a-folder-and-what-is-inside-it",
    ),
    pytest.param(
        {"cam": ("x.png", ["inbox/out.mp4", "inbox/out.jsonl", "inbox.csv"]), "door": ("inbox/", ["stdout"])},
        id="files-a-folder-source-does-not-read",
    ),
    pytest.param(
        {"a": ("mqtt://127.0.0.1:1883/in", ["jsonl"]), "b": ("mqtt://127.0.0.1:1883/in", ["jsonl"])},
        id="one-mqtt-topic",
    ),
    pytest.param(
        {"cam": ("inbox/", ["logs/a.csv"]), "g": ("logs/*.jsonl", ["jsonl"])}, id="a-file-another-glob-does-not-list"
    ),
    pytest.param({"cam": ("in.csv", ["jsonl"]), "line": ("in.csv", ["stdout"])}, id="one-source-read-twice"),
]


@pytest.mark.parametrize("pipelines", ALLOWED)
def test_pipelines_on_standard_output_or_on_files_of_their_own_are_taken(
    tmp_path: Path, pipelines: dict[str, tuple[str, list[str]]]
) -> None:
    conf, work, _ = _folders(tmp_path)
    for folder in ("inbox", "logs", "shots"):
        (conf / folder).mkdir()
    config = _config(conf, pipelines)
    result = run_cli("config", "check", str(config), cwd=work)
    waits = "is not there: the pipeline waits for it (tried every 5 s)"  # sources never made here
    assert result.returncode == 0 and all(line.endswith(waits) for line in result.stderr.splitlines()), result.stderr
    checked = yaml.safe_load(result.stdout)["pipelines"]
    assert sorted(checked) == sorted(pipelines)
    assert sorted(load_config(config).pipelines) == sorted(pipelines)


@pytest.mark.logs_errors
def test_a_sighup_onto_pipelines_sharing_a_file_keeps_the_running_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.daemon import Daemon

    conf, _, _ = _folders(tmp_path)
    state = tmp_path / "state"
    config = _config(conf, {}, state)
    daemon = Daemon(load_config(config), config)
    daemon.start()
    try:
        running = daemon.config
        _config(conf, {"cam": ("inbox/", ["shots/"]), "door": ("x.png", ["./shots/"])}, state)
        daemon.reload()
        assert daemon.config is running and daemon.runners == {}
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == [
            f"SIGHUP: config not reloaded, the running one is kept: {config}: pipelines: cam and door both write "
            f"shots/ (door as ./shots/; {REASON})"
        ]
    finally:
        daemon.stop()
    assert sorted(p.name for p in conf.iterdir()) == ["c.yaml"]
