"""Glob sources over real trees with links, and the sink-onto-source check that matches a pattern without walking.

``glob_files`` must end on a tree with symlink loops, where Python's glob follows links under ``**``
for ever, and otherwise give what glob gives; ``glob_lists`` must decide, from the strings and the
sink's own path, whether that expansion lists a sink, as a config is loaded.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerun.config import load_config, parse_config
from edgerun.errors import ConfigError
from edgerun.globbing import glob_files, glob_lists
from edgerun.sources.files import FileSource
from tests.conftest import DIGITS

MODEL = DIGITS / "digits_int8.tflite"
HANG_GUARD_S = 30  # Python's glob takes for ever over two loops; this only turns that into a failure


def _refs_in_a_subprocess(cwd: Path, *patterns: str) -> list[list[str]]:
    """``FileSource([pattern]).refs`` for each pattern, opened in a child process that is killed
    if it does not end: a glob that follows a loop would otherwise hang the test run."""
    code = (
        "import json, sys\n"
        "from edgerun.sources.files import FileSource\n"
        "print(json.dumps([[r.path for r in FileSource([p]).refs] for p in sys.argv[1:]]))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *patterns],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"opening {patterns} did not end in {HANG_GUARD_S} s: the glob followed a symlink loop")
    refs: list[list[str]] = json.loads(done.stdout)
    return refs


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")  # read as bytes only; nothing here decodes it


def test_a_double_star_source_over_a_symlink_loop_ends_and_reads_each_real_file_once(tmp_path: Path) -> None:
    for name in ("data/a.png", "data/sub/b.png", "data/sub/deep/c.png"):
        _png(tmp_path / name)
    (tmp_path / "data" / "sub" / "deep" / "up").symlink_to("..", target_is_directory=True)  # deep/up/deep/up/...
    want = ["data/a.png", "data/sub/b.png", "data/sub/deep/c.png"]
    relative, absolute, everything, folders = _refs_in_a_subprocess(
        tmp_path, "data/**/*.png", f"{tmp_path}/data/**/*.png", "data/**", "data/**/deep"
    )
    assert relative == everything == want
    assert absolute == [f"{tmp_path}/{name}" for name in want]
    assert folders == ["data/sub/deep/c.png"]  # the folder matched, walked once; deep/up/deep not matched


def test_a_double_star_source_over_two_loops_into_each_others_parents_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each folder holds two links back into the tree, so Python's glob branches at every step until a
    path crosses the 40 links the system allows: some 2**40 paths. Here each real file is read once,
    and the links to folders are neither entered nor listed."""
    for name in ("data/a/x.png", "data/b/y.png", "data/top.png"):
        _png(tmp_path / name)
    (tmp_path / "data" / "a" / "to_b").symlink_to("../b", target_is_directory=True)
    (tmp_path / "data" / "b" / "to_a").symlink_to("../a", target_is_directory=True)
    (tmp_path / "data" / "a" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "data" / "b" / "up").symlink_to("..", target_is_directory=True)
    pngs, all_pngs = _refs_in_a_subprocess(tmp_path, "data/**/*.png", "**/*.png")
    assert pngs == all_pngs == ["data/a/x.png", "data/b/y.png", "data/top.png"]
    monkeypatch.chdir(tmp_path)
    everything = glob_files("data/**")
    assert everything == ["data/", "data/a", "data/a/x.png", "data/b", "data/b/y.png", "data/top.png"]
    assert glob_files("data/*/to_?") == ["data/a/to_b", "data/b/to_a"]  # a one-name wildcard still gives a link


def test_a_wildcard_follows_a_linked_folder_as_glob_does_while_double_star_does_not_enter_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("data/own.png", "elsewhere/x.png", "elsewhere/deep/y.png"):
        _png(tmp_path / name)
    (tmp_path / "data" / "link").symlink_to("../elsewhere", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for pattern in ("data/*/*.png", "data/*/*/*.png", "data/link/**/*.png", "data/l?nk/*.png"):
        assert glob_files(pattern) == sorted(glob.glob(pattern, recursive=True)) != []  # `*` and a named link
    assert [r.path for r in FileSource(["data/*"]).refs] == ["data/link/deep/y.png", "data/link/x.png", "data/own.png"]
    with caplog.at_level(logging.INFO, logger="edgerun.globbing"):
        assert [r.path for r in FileSource(["data/**/*.png"]).refs] == ["data/own.png"]
    skipped = "'**' does not enter data/link, a link to a folder (name it in the pattern to read it)"
    assert [r.getMessage() for r in caplog.records] == [skipped]  # said, not silently left out
    assert [r.path for r in FileSource(["data/**/*/*.png"]).refs] == ["data/link/x.png"]  # `*` took the link


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A symlink-free tree, five folders below a folder of its own, so that patterns with up to four
    ``..`` never reach a folder another test writes."""
    top = tmp_path_factory.mktemp("globbing")
    root = top / "1" / "2" / "3" / "4" / "root"
    for name in ["a.csv", "b.jsonl", ".hidden.csv", "d/e.csv", "d/.h/f.csv", "d/g/h.csv", "d/g/i/j.jsonl", "x**y"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("t,x\n0,1\n")
    (root / "empty").mkdir()
    (top / "1" / "2" / "3" / "4" / "beside.csv").write_text("t\n0\n")
    return root


PARTS = ["*", "**", "?.csv", "*.csv", "*.jsonl", "d", ".h", "[ab].*", ".*", "g", "i", "e.csv", "x**", "empty"]
PARTS += [".", ".."]
PATTERNS = st.tuples(st.sampled_from(PARTS), st.lists(st.sampled_from([*PARTS, ""]), max_size=3)).map(
    lambda first_rest: "/".join([first_rest[0], *first_rest[1]])  # never a leading "": that is `/`
)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(pattern=PATTERNS)
def test_without_links_the_expansion_is_globs_sorted_once(
    tree: Path, monkeypatch: pytest.MonkeyPatch, pattern: str
) -> None:
    monkeypatch.chdir(tree)
    for spelled in (pattern, f"{tree}/{pattern}"):
        assert glob_files(spelled) == sorted(set(glob.glob(spelled, recursive=True))), spelled


@SETTINGS
@given(pattern=PATTERNS)
def test_without_links_a_file_is_matched_exactly_when_the_expansion_lists_it(
    tree: Path, monkeypatch: pytest.MonkeyPatch, pattern: str
) -> None:
    """As the config check uses it: each file, named relative or absolute, against the pattern."""
    monkeypatch.chdir(tree)
    parts = pattern.split("/")
    wildcard_then_up = any(p == ".." and any(glob.has_magic(q) for q in parts[:i]) for i, p in enumerate(parts))
    files = sorted(os.path.relpath(p, tree) for p in tree.parent.rglob("*") if p.is_file())  # ../beside.csv too
    for spelled in (pattern, f"{tree}/{pattern}"):
        listed = {os.path.abspath(p) for p in glob_files(spelled)}
        for name in files:
            expected = os.path.abspath(name) in listed and not wildcard_then_up  # `*/..`: documented as False
            assert glob_lists(str(name), spelled) == expected, (spelled, name)
            assert glob_lists(str(tree / name), spelled) == expected, (spelled, name)


def _config(source: str, sink: str) -> dict[str, object]:
    return {
        "models": {"m": {"path": str(MODEL)}},
        "pipelines": {"p": {"source": source, "model": "m", "sinks": [sink]}},
    }


def test_a_config_with_a_relative_glob_source_loads_when_the_working_folder_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "out.jsonl").write_text("")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    text = f"models:\n  m:\n    path: {MODEL}\npipelines:\n  p:\n    source: 'data/*.jsonl'\n    model: m\n"
    (tmp_path / "apart.yaml").write_text(text + "    sinks: [results/out.jsonl]\n")
    config = load_config(tmp_path / "apart.yaml")  # taken from the config's folder: no working folder needed
    assert config.pipelines["p"].source == f"{tmp_path}/data/*.jsonl"
    assert config.pipelines["p"].sinks == [f"{tmp_path}/results/out.jsonl"]
    (tmp_path / "relative.yaml").write_text(text + "    sinks: [data/out.jsonl]\n")
    absolute = text.replace("'data/*.jsonl'", f"'{tmp_path}/data/*.jsonl'")
    (tmp_path / "absolute.yaml").write_text(absolute + f"    sinks: [{tmp_path}/data/out.jsonl]\n")
    for name in ("relative.yaml", "absolute.yaml"):  # the sink among the files the source lists, either way
        with pytest.raises(ConfigError, match="is the source file"):
            load_config(tmp_path / name)


def test_a_working_folder_whose_name_holds_wildcard_characters_is_taken_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run[1]"  # a wildcard in a pattern, a plain name as the working folder
    folder.mkdir()
    (folder / "out.jsonl").write_text("{}\n")
    monkeypatch.chdir(folder)
    assert glob_files("*.jsonl") == ["out.jsonl"]
    for sink in ("out.jsonl", str(folder / "out.jsonl")):
        with pytest.raises(ConfigError, match="is the source file"):
            parse_config(_config("*.jsonl", sink), "c.yaml")


@pytest.fixture
def linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``link -> real/inner``, so ``link/..`` is ``real``, not the working folder; ``out/x.jsonl``
    exists under both ``real`` and the working folder."""
    for name in ("real/inner/keep.csv", "real/out/x.jsonl", "out/x.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "link").symlink_to("real/inner", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_sink_the_pattern_reaches_through_a_linked_folder_and_dot_dot_is_refused(linked: Path) -> None:
    assert glob_files("link/../out/*.jsonl") == ["link/../out/x.jsonl"]  # the system's `..`: real/out
    for sink in ("real/out/x.jsonl", f"{linked}/real/out/x.jsonl", "link/../out/x.jsonl"):
        with pytest.raises(ConfigError, match="is the source file"):
            parse_config(_config("link/../out/*.jsonl", sink), "c.yaml")


def test_a_sink_only_spelled_like_the_pattern_with_dot_dot_taken_as_text_is_not_refused(linked: Path) -> None:
    for sink in ("out/x.jsonl", f"{linked}/out/x.jsonl"):  # not what link/../out/ names
        parse_config(_config("link/../out/*.jsonl", sink), "c.yaml")


def test_a_sink_and_a_pattern_naming_one_folder_through_a_link_and_its_target_are_a_clash(linked: Path) -> None:
    (linked / "real" / "inner" / "r.jsonl").write_text("{}\n")
    for source, sink in [
        ("real/inner/*.jsonl", "link/r.jsonl"),
        ("link/*.jsonl", "real/inner/r.jsonl"),
        (f"{linked}/link/*.jsonl", f"{linked}/real/inner/r.jsonl"),
        ("real/*/*.jsonl", "link/r.jsonl"),  # the sink's folder resolved, then matched by the wildcard
        ("real/**/r.jsonl", f"{linked}/link/r.jsonl"),
    ]:
        with pytest.raises(ConfigError, match="is the source file"):
            parse_config(_config(source, sink), "c.yaml")


def test_a_sink_under_a_linked_folder_is_refused_only_where_double_star_reaches_its_real_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("data/sub/in.jsonl", "elsewhere/out.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "data" / "inside").symlink_to("sub", target_is_directory=True)
    (tmp_path / "data" / "outside").symlink_to("../elsewhere", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert glob_files("data/**/*.jsonl") == ["data/sub/in.jsonl"]
    with pytest.raises(ConfigError, match="is the source file"):  # its real file is data/sub/in.jsonl
        parse_config(_config("data/**/*.jsonl", "data/inside/in.jsonl"), "c.yaml")
    parse_config(_config("data/**/*.jsonl", "data/outside/out.jsonl"), "c.yaml")  # `**` does not go there


def test_a_pattern_whose_first_wildcard_is_in_the_root_folder_is_matched_from_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/**/x.jsonl`` once started from the working folder: the sink onto the source went unseen from
    elsewhere, and a relative sink was refused for a pattern that lists nothing."""
    sink = tmp_path / "w" / "out.jsonl"
    sink.parent.mkdir()
    sink.write_text("{}\n")
    top = tmp_path.parts[1]  # `/tmp/...` -> 'tmp'
    monkeypatch.chdir("/usr")
    for pattern in ("/**/out.jsonl", f"/{top[0]}*/{os.path.relpath(sink, '/' + top)}"):
        assert glob_lists(str(sink), pattern), pattern
        with pytest.raises(ConfigError, match="is the source file"):
            parse_config(_config(pattern, str(sink)), "c.yaml")
    monkeypatch.chdir(sink.parent)
    assert glob_files("/*.jsonl") == [] or "/out.jsonl" not in glob_files("/*.jsonl")
    assert not glob_lists("out.jsonl", "/*.jsonl")
    parse_config(_config("/*.jsonl", "out.jsonl"), "c.yaml")


def test_a_pattern_through_a_missing_folder_and_dot_dot_lists_nothing_and_refuses_no_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "out.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert glob_files("missing/../data/*.jsonl") == []  # the system resolves no `..` through a missing folder
    assert not glob_lists("data/out.jsonl", "missing/../data/*.jsonl")
    parse_config(_config("missing/../data/*.jsonl", "data/out.jsonl"), "c.yaml")
