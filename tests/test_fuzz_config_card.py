"""Fuzzing the files users hand-edit: device configs (``load_config``) and model cards (``load_card``).

The property, for every input: the file loads, or it is refused with a ``ConfigError`` /
``CardError`` whose message is one line naming the file (and, for a key that is wrong, the
key); never another exception (``KeyError``, ``TypeError``, ``OSError``, ``RecursionError``, a
YAML error leaking), never a hang, and never an object built from a YAML tag. What loads stays
usable: a config's effective form (what ``config check`` prints) loads again, and a card is
JSON without NaN (the API and the MQTT status record carry it). The command line is run as a
real process on a few generated bad files: one ``edgerun: error:`` line, no traceback.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerun.card import ModelCard, load_card, parse_card
from edgerun.config import Config, load_config, parse_config
from edgerun.errors import CardError, ConfigError, shown
from tests.conftest import DIGITS, ROOT

CONFIGS = sorted((ROOT / "device-configs").glob("*.yaml"))
CARDS = sorted((ROOT / "models").glob("**/*.card.yaml"))
MODEL = DIGITS / "digits_int8.tflite"

_names = itertools.count()

# Values of every kind a hand edit (or a hostile manifest) can put at a key: wrong types, huge,
# negative, NaN and infinite numbers, very long strings, control characters, NUL bytes, names
# longer than a file system allows, globs, URLs, nesting.
NASTY_STRINGS = [
    "",
    " ",
    "a\0b",
    "line\nbreak",
    "\u2028",
    "x" * 5000,
    "/".join(["a" * 300] * 3),
    "a" * 300 + ".tflite",
    "../../etc/passwd",
    "**/*.jsonl",
    "camera:0",
    "mqtt://[::1",
    "mqtts://u:p@h:99999",
    "édgé",
    "!!python/object/apply:os.system",
    "0.0.0.0",
    "auto",
    "cpu",
    "stdout",
    "out.jsonl",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 0, 1, 2**31, 2**63, 10**30, -(10**30), 10**400]),
    st.floats(),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 5e-324]),
    st.text(max_size=12),
    st.sampled_from(NASTY_STRINGS),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)

# Pieces of YAML syntax, strung together at random: anchors, aliases, merges, tags (the Python
# ones among them), flow and block collections, scalars YAML 1.1 reads as numbers or dates.
TOKENS = [
    "models:",
    "pipelines:",
    "api:",
    "mqtt:",
    "name:",
    "preprocess:",
    "labels:",
    "metrics:",
    "path: ",
    "digits",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "- ",
    ": ",
    ", ",
    "? ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "<<: ",
    "!!python/object/apply:os.system ['true'] ",
    "!!python/name:os.system ",
    "!!binary aGk= ",
    "!!set ",
    "!!omap ",
    "!!str ",
    "!!float ",
    "!local ",
    "|\n  ",
    ">-\n  ",
    "'",
    '"',
    '"\\0"',
    '"\\x85"',
    "#",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    ".nan",
    "-.inf",
    "1e400",
    "1.0e+400",
    "0x1F",
    "0o17",
    "99999999999999999999999",
    "~",
    "yes",
    "2001-12-14",
    "\x01",
    "\ufeff",
    "é",
]
YAMLISH = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _file(folder: Path, content: str | bytes, suffix: str = ".yaml") -> Path:
    """A new file in ``folder`` (a new name each time: the card cache is keyed by path, size and time)."""
    path = folder / f"f{next(_names)}{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _one_line_naming(message: str, path: Path) -> None:
    assert message.startswith(f"{path}: "), message
    assert len(message.splitlines()) == 1, message


def _config_or_error(path: Path) -> Config | ConfigError:
    """The config in ``path``, or the ``ConfigError`` refusing it (checked); any other exception propagates."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        _one_line_naming(str(exc), path)
        return exc
    # What `config check` prints as the effective config is a config too.
    printed = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(config.effective())), sort_keys=False))
    assert parse_config(printed, "effective") == config
    return config


def _card_or_error(path: Path, cache: Path) -> ModelCard | CardError:
    """The card in ``path``, or the ``CardError`` refusing it (checked); any other exception propagates."""
    try:
        card = load_card(path, cache)
    except CardError as exc:
        _one_line_naming(str(exc), path)
        return exc
    data = card.to_dict()
    json.dumps(data, allow_nan=False)  # as /v1/models and the MQTT status record must send it
    assert parse_card(data, "again") == card
    assert load_card(path, cache) == card  # from the cache now
    return card


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every node below ``data`` (mapping keys and list indices)."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _leaves(data: Any) -> list[tuple[Any, ...]]:
    return [p for p in _paths(data) if not isinstance(_get(data, p), (dict, list))]


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _mutate(data: Any, draw: Any) -> tuple[str, tuple[Any, ...]]:
    """One hand edit of ``data`` (in place): drop a key, set a value, add a key, swap two values."""
    paths = list(_paths(data))
    kind = draw(st.sampled_from(["drop", "set", "add", "swap"]))
    if kind == "drop":
        path = draw(st.sampled_from(paths))
        del _get(data, path[:-1])[path[-1]]
    elif kind == "set":
        path = draw(st.sampled_from(paths))
        _set(data, path, draw(VALUES))
    elif kind == "add":
        mappings = [()] + [p for p in paths if isinstance(_get(data, p), dict)]
        parent = draw(st.sampled_from(mappings))
        path = (*parent, draw(st.text(min_size=1, max_size=10)))
        _get(data, parent)[path[-1]] = draw(VALUES)
    else:
        path, other = draw(st.sampled_from(paths)), draw(st.sampled_from(paths))
        if path[: len(other)] != other and other[: len(path)] != path:  # neither holds the other
            a, b = _get(data, path), _get(data, other)
            _set(data, path, b)
            _set(data, other, a)
    return kind, path


def _names_a_prefix(message: str, path: tuple[Any, ...]) -> bool:
    """Whether ``message`` names the key at ``path`` or a section above it."""
    return any(".".join(shown(str(p)) for p in path[:n]) in message for n in range(1, len(path) + 1))


# --- device configs -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=YAMLISH)
def test_any_yaml_like_text_as_a_config_loads_or_is_one_config_error_line(work: Path, text: str) -> None:
    _config_or_error(_file(work, text))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_config_load_or_are_one_config_error_line(work: Path, raw: bytes) -> None:
    _config_or_error(_file(work, raw))


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(CONFIGS), draw=st.data())
def test_a_hand_edited_device_config_loads_or_is_refused_naming_the_file_and_the_key(
    work: Path, source: Path, draw: st.DataObject
) -> None:
    data = yaml.safe_load(source.read_text())
    kind, path = _mutate(data, draw.draw)
    outcome = _config_or_error(_file(work, _dump(data)))
    if isinstance(outcome, ConfigError) and kind != "swap":
        assert _names_a_prefix(str(outcome), path), (path, str(outcome))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(CONFIGS), draw=st.data())
def test_a_shipped_config_cut_or_spliced_as_text_loads_or_is_one_config_error_line(
    work: Path, source: Path, draw: st.DataObject
) -> None:
    text = source.read_text()
    start = draw.draw(st.integers(0, len(text)))
    end = draw.draw(st.integers(start, min(len(text), start + 40)))
    _config_or_error(_file(work, text[:start] + draw.draw(YAMLISH) + text[end:]))


def _once(paths: list[tuple[Any, ...]], seen: set[str]) -> Iterator[tuple[Any, ...]]:
    """The paths whose keys (list indices aside) no other shipped file has had checked yet."""
    for path in paths:
        keys = ".".join(str(p) for p in path if isinstance(p, str))
        if keys not in seen:
            seen.add(keys)
            yield path


def test_a_wrong_type_or_an_unknown_key_anywhere_in_a_config_is_refused_naming_that_key(work: Path) -> None:
    wrong: set[str] = set()
    unknown: set[str] = set()
    for source in CONFIGS:
        original = yaml.safe_load(source.read_text())
        for path in _once(_leaves(original), wrong):
            data = yaml.safe_load(source.read_text())
            _set(data, path, {"wrong": [1]})  # no key of the schema takes a mapping at a leaf
            error = _config_or_error(_file(work, _dump(data)))
            keys = ".".join(str(p) for p in path if isinstance(p, str))
            assert isinstance(error, ConfigError) and keys in str(error), (source.name, path, str(error))
        sections = [p for p in _paths(original) if isinstance(_get(original, p), dict)]
        for path in _once([(), *(p for p in sections if p not in (("models",), ("pipelines",)))], unknown):
            data = yaml.safe_load(source.read_text())  # (models and pipelines take any name)
            _get(data, path)["bogus"] = 1
            error = _config_or_error(_file(work, _dump(data)))
            where = ".".join(str(p) for p in (*path, "bogus"))
            assert isinstance(error, ConfigError) and f"{where}: unknown key" in str(error), str(error)


def test_strings_that_no_file_name_can_be_are_refused_naming_the_key(work: Path) -> None:
    """A NUL byte passed every check and stopped the daemon with ``ValueError: embedded null byte``;
    a name longer than the file system allows leaked ``OSError`` out of ``load_config``."""
    model = f"models:\n  m:\n    path: {MODEL}\n"
    for extra, key in [
        ('state_dir: "/var/lib/e\\0x"\n', "state_dir"),
        ('api:\n  token_file: "t\\0"\n', "api.token_file"),
        ('mqtt:\n  url: mqtt://h\n  password_file: "p\\0"\n', "mqtt.password_file"),
        ('mqtt:\n  url: mqtts://h\n  ca_file: "c\\0"\n', "mqtt.ca_file"),
        ('pipelines:\n  p:\n    model: m\n    source: "in\\0.csv"\n', "pipelines.p.source"),
        ('pipelines:\n  p:\n    model: m\n    source: in.csv\n    sinks: ["o\\0.jsonl"]\n', "pipelines.p.sinks.0"),
    ]:
        error = _config_or_error(_file(work, model + extra))
        assert isinstance(error, ConfigError) and f"{key}: holds a NUL byte" in str(error), str(error)
    error = _config_or_error(_file(work, 'models:\n  m:\n    path: "m\\0.tflite"\n'))
    assert isinstance(error, ConfigError) and "models.m.path: holds a NUL byte" in str(error)
    long = "a" * 300  # one name over the 255 bytes of ext4, tmpfs and most others
    for text in [
        f"models:\n  m:\n    path: {long}.tflite\n",
        f"{model}api:\n  token_file: {long}\n",
        f"{model}ota:\n  trusted_keys: [{long}.pem]\nmqtt:\n  url: mqtt://h\n",
    ]:
        _config_or_error(_file(work, text))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for name in ["a.csv", "b.jsonl", ".hidden.csv", "d/e.csv", "d/.h/f.csv", "d/g/h.csv", "d/g/i/j.jsonl"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("t,x\n0,1\n")
    return root


GLOB_PARTS = ["*", "**", "?.csv", "*.csv", "*.jsonl", "d", ".h", "[ab].*", ".*", "g", "i", "e.csv"]


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(GLOB_PARTS), min_size=1, max_size=4), pick=st.integers(0, 6))
def test_a_sink_is_refused_exactly_when_the_source_glob_lists_it(tree: Path, parts: list[str], pick: int) -> None:
    """The glob is matched against the sinks, not expanded: loading walks no folder (a ``/**`` source,
    or a tree with a symlink loop, took for ever); the verdict is still glob's."""
    pattern = "/".join([str(tree), *parts])
    sink = sorted(str(p) for p in tree.rglob("*") if p.is_file())[pick]
    data = {
        "models": {"m": {"path": str(MODEL)}},
        "pipelines": {"p": {"source": pattern, "model": "m", "sinks": [sink]}},
    }
    listed = {os.path.abspath(p) for p in glob.glob(pattern, recursive=True) if os.path.exists(p)}
    if sink in listed:
        with pytest.raises(ConfigError, match="is the source file"):
            parse_config(data, "c.yaml")
    else:
        parse_config(data, "c.yaml")


def test_a_control_character_or_a_line_break_in_a_key_is_still_one_line(work: Path) -> None:
    for text in ["models:\n  m:\n    path: x\x01\n", 'models:\n  m:\n    path: x\n"bad\\nkey": 1\n']:
        path = _file(work, text)
        error = _config_or_error(path)
        assert isinstance(error, ConfigError), text
    assert "not valid YAML at line 3: character '\\x01' is not allowed" in str(
        _config_or_error(_file(work, "models:\n  m:\n    path: x\x01\n"))
    )


# --- model cards ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=YAMLISH)
def test_any_yaml_like_text_as_a_card_loads_or_is_one_card_error_line(work: Path, text: str) -> None:
    _card_or_error(_file(work, text, ".card.yaml"), work / "cache")


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_card_load_or_are_one_card_error_line(work: Path, raw: bytes) -> None:
    _card_or_error(_file(work, raw, ".card.yaml"), work / "cache")


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(CARDS), draw=st.data())
def test_a_hand_edited_card_loads_or_is_refused_naming_the_file_and_the_key(
    work: Path, source: Path, draw: st.DataObject
) -> None:
    data = yaml.safe_load(source.read_text())
    kind, path = _mutate(data, draw.draw)
    outcome = _card_or_error(_file(work, _dump(data), ".card.yaml"), work / "cache")
    if isinstance(outcome, CardError) and kind != "swap" and "not valid YAML" not in str(outcome):
        named = [shown(p) for p in path if isinstance(p, str)]
        assert not named or any(p in str(outcome) for p in named), (path, str(outcome))
    # The same mapping as an OTA manifest's card: the same verdict, in the same form.
    try:
        parse_card(data, "card")
    except CardError as exc:
        assert exc.args[0].startswith("card: ") and len(str(exc).splitlines()) == 1


def test_a_wrong_type_or_an_unknown_key_anywhere_in_a_card_is_refused_naming_that_key(work: Path) -> None:
    wrong: set[str] = set()
    unknown: set[str] = set()
    for source in CARDS:
        original = yaml.safe_load(source.read_text())
        for path in _once(_leaves(original), wrong):
            data = yaml.safe_load(source.read_text())
            _set(data, path, {"wrong": [1]})
            error = _card_or_error(_file(work, _dump(data), ".card.yaml"), work / "cache")
            keys = ".".join(str(p) for p in path if isinstance(p, str))
            assert isinstance(error, CardError) and keys in str(error), (source.name, path, str(error))
        sections = [p for p in _paths(original) if isinstance(_get(original, p), dict) and p != ("metrics",)]
        for path in _once([(), *sections], unknown):
            data = yaml.safe_load(source.read_text())
            _get(data, path)["bogus"] = 1
            error = _card_or_error(_file(work, _dump(data), ".card.yaml"), work / "cache")
            assert isinstance(error, CardError) and "unknown field `bogus`" in str(error), str(error)
            assert all(str(p) in str(error) for p in path), str(error)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("metrics:\n  accuracy: .nan\n", "metrics.accuracy: must be a finite number, got nan"),
        ("metrics:\n  accuracy: -.inf\n", "metrics.accuracy: must be a finite number, got -inf"),
        ("metrics:\n  accuracy: 1" + "0" * 400 + "\n", "metrics.accuracy: must be a finite number, got int"),
        ("metrics:\n  accuracy: [1]\n", "metrics.accuracy: must be a finite number, got list"),
        ("preprocess:\n  scale: .inf\n", "scale must be a finite number, not NaN or infinite - at `$.preprocess`"),
        ("preprocess:\n  mean: [.nan]\n", "mean must be a finite number"),
        ("preprocess:\n  std: [.inf]\n", "std must be a finite number"),
        ("name: digits\n", "not valid YAML at line 2: duplicate key 'name' in one mapping"),
        ("preprocess:\n  color: gray\n  color: rgb\n", "not valid YAML at line 4: duplicate key 'color'"),
        ("notes: !!float _\n", "not valid YAML at line 2: cannot read '_' as !!float"),
        ("notes: !!bool maybe\n", "not valid YAML at line 2: cannot read 'maybe' as !!bool"),
        ("notes: !!timestamp x\n", "not valid YAML at line 2: cannot read 'x' as !!timestamp"),
        ("notes: !!int ''\n", "not valid YAML at line 2: cannot read '' as !!int"),
        ("notes: [\n", "not valid YAML at line 3:"),
        ("notes: x\x01\n", "not valid YAML at line 2: character '\\x01' is not allowed"),
        ('"bad\\nkey": 1\n', "unknown field `bad\\nkey`"),
    ],
)
def test_a_card_with_nan_a_key_twice_or_a_yaml_slip_is_one_line_naming_where(
    work: Path, edit: str, message: str
) -> None:
    """NaN and infinities reached the API and the MQTT status record, which are JSON and have
    neither; a key given twice silently kept the last, where the daemon's config refuses it."""
    path = _file(work, "name: digits\n" + edit, ".card.yaml")
    error = _card_or_error(path, work / "cache")
    assert isinstance(error, CardError) and message in str(error), str(error)


# --- what every loader must refuse, and must not build --------------------------------------------

PYTHON_TAGS = [
    "!!python/object/apply:os.mkdir [{sentinel}]",
    "!!python/object/apply:subprocess.call [[mkdir, {sentinel}]]",
    "!!python/object/new:pathlib.Path [{sentinel}]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:edgerun.config.Config {{}}",
    "!!python/tuple [1, 2]",
]


@pytest.mark.parametrize("tag", PYTHON_TAGS, ids=lambda t: t.split()[0])
def test_python_tags_are_refused_and_never_constructed(work: Path, tag: str) -> None:
    sentinel = work / f"pwned{next(_names)}"
    value = tag.format(sentinel=sentinel)
    for text in (f"models: {value}\n", f"models:\n  m:\n    path: {value}\n", f"{value}\n"):
        error = _config_or_error(_file(work, text))
        assert isinstance(error, ConfigError) and "could not determine a constructor" in str(error), str(error)
    for text in (f"name: {value}\n", f"name: m\nmetrics:\n  a: {value}\n", f"{value}\n"):
        error = _card_or_error(_file(work, text, ".card.yaml"), work / "cache")
        assert isinstance(error, CardError) and "could not determine a constructor" in str(error), str(error)
    assert not sentinel.exists()


def _laughs(levels: int = 6, width: int = 10) -> str:
    """Anchors that would expand to width**levels strings if anything copied them out."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "where",
    [
        "models:\n  m:\n    path: x\n    delegate: *l5\n",
        "models:\n  m:\n    path: *l5\n",
        "device:\n  groups: *l5\nmodels:\n  m:\n    path: x\n",
        "models:\n  m:\n    path: x\npipelines:\n  p:\n    model: m\n    source: a.csv\n    sinks: *l5\n",
        "models:\n  m:\n    path: x\nota:\n  trusted_keys: *l5\n",
    ],
)
def test_billion_laughs_in_a_config_is_refused_without_expanding(work: Path, where: str) -> None:
    error = _config_or_error(_file(work, _laughs() + where))
    assert isinstance(error, ConfigError)


def _laughs_inline(levels: int = 6, width: int = 10) -> str:
    """The same, as one flow list whose last item expands to width**levels strings: a card has no
    free key to hold the anchors, so they are defined inside the value itself."""
    items = [f"&q0 [{', '.join(['lol'] * width)}]"]
    items += [f"&q{i} [{', '.join([f'*q{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("key", ["labels", "notes", "metrics", "preprocess", "description"])
def test_billion_laughs_in_a_card_is_refused_without_expanding(work: Path, key: str) -> None:
    value = _laughs_inline() if key not in ("metrics", "preprocess") else f"{{mean: {_laughs_inline()}}}"
    text = f"name: m\n{key}: {value}\n"
    error = _card_or_error(_file(work, text, ".card.yaml"), work / "cache")
    assert isinstance(error, CardError) and key in str(error), str(error)
    with pytest.raises(CardError):  # the same data as a manifest's card: refused the same way
        parse_card(yaml.safe_load(text), "card")


def test_aliases_that_make_sense_still_load(work: Path) -> None:
    config = _config_or_error(
        _file(work, f"models:\n  a: &m\n    path: {MODEL}\n    threads: 1\n  b:\n    <<: *m\n    threads: 2\n")
    )
    assert isinstance(config, Config) and config.models["b"].threads == 2
    card = _card_or_error(_file(work, "name: m\nlabels: &l [a, b]\nnotes: ok\n", ".card.yaml"), work / "cache")
    assert isinstance(card, ModelCard) and card.labels == ("a", "b")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "# only a comment\n",
        "---\n",
        "---\n...\n",
        "a: 1\n---\nb: 2\n",
        "~\n",
        "[]\n",
        "just a string\n",
        "\ufeffmodels: 1\n",
        "[" * 600 + "]" * 600,  # past Python's recursion limit (the config's pure-Python loader)
        "{a: " * 600 + "1" + "}" * 600,
        "".join("  " * i + "a:\n" for i in range(600)),
        "- " * 1200 + "x\n",  # and past libyaml's depth bound (the card's)
        "models: !!binary aGk=\n",
        "models: !!set {a, b}\n",
        "models: 2001-12-14\n",
        "? [a, b]\n: 1\n",
        "models: {[a]: 1}\n",
        "%TAG !e! tag:example.com,2000:\nmodels: !e!x 1\n",
        "&a a: *a\n",
        "models: *nowhere\n",
        "models: !!set digits\n",
        "models: !!set [a]\n",
        "models: !!map [a]\n",
        "models: !!float _\n",
        "models: !!int 0b\n",
        "models: !!bool maybe\n",
        "models: !!timestamp 2001-13\n",
    ],
)
def test_empty_deep_odd_or_multi_document_yaml_is_one_error_line(work: Path, text: str) -> None:
    assert isinstance(_config_or_error(_file(work, text)), ConfigError)
    assert isinstance(_card_or_error(_file(work, text, ".card.yaml"), work / "cache"), CardError)


@pytest.mark.parametrize(
    "raw", ["models: caf\xe9\n".encode("latin-1"), "models: x\n".encode("utf-16"), b"\xff\xfe\x00", b"\x80"]
)
def test_text_that_is_not_utf8_is_one_error_line(work: Path, raw: bytes) -> None:
    assert "not UTF-8 text" in str(_config_or_error(_file(work, raw)))
    assert "not UTF-8 text" in str(_card_or_error(_file(work, raw, ".card.yaml"), work / "cache"))


# --- the command line, as a real process ----------------------------------------------------------


def _run_all(commands: list[list[str]], cwd: Path, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands at once (each is a fresh interpreter, ~0.5 s); a hang fails after 60 s."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edgerun", *c],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for c in commands
    ]
    done = []
    for args, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"edgerun {' '.join(args)} did not finish in 60 s")
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "EDGERUN_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}


def test_config_check_on_bad_files_exits_non_zero_with_one_error_line(tmp_path: Path) -> None:
    model = f"models:\n  m:\n    path: {MODEL}\n"
    loop = tmp_path / "frames"
    loop.mkdir()
    (loop / "up").symlink_to(".")  # two links back to the folder: a glob of ** walks 2**40 paths
    (loop / "again").symlink_to(".")
    bad = {
        "python-tag": "models: !!python/object/apply:os.system ['echo pwned']\n",
        "laughs": _laughs() + "models:\n  m:\n    path: x\n    delegate: *l5\n",
        "latin-1": ("models: caf\xe9\n", "latin-1"),
        "twice": model + "models: {}\n",
        "nul-state-dir": model + 'state_dir: "/tmp/e\\0x"\n',
        "long-name": "models:\n  m:\n    path: " + "a" * 300 + ".tflite\n",
        "long-token-file": "models:\n  m:\n    path: /nowhere.tflite\napi:\n  token_file: " + "t" * 300 + "\n",
        "glob-loop": model + f"pipelines:\n  p:\n    model: m\n    source: {loop}/**/*.jpg\nbogus: 1\n",
    }
    files = []
    for name, text in bad.items():
        path = tmp_path / f"{name}.yaml"
        if isinstance(text, tuple):
            path.write_bytes(text[0].encode(text[1]))
        else:
            path.write_text(text)
        files.append(path)
    for path, result in zip(files, _run_all([["config", "check", str(p)] for p in files], tmp_path, _env(tmp_path))):
        assert result.returncode != 0 and "Traceback" not in result.stderr, (path.name, result.stderr[-600:])
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"edgerun: error: {path}: "), (path.name, lines)


def test_predict_with_a_broken_card_exits_non_zero_with_one_error_line(tmp_path: Path) -> None:
    card = (DIGITS / "digits_int8.tflite.card.yaml").read_text()
    broken = {
        "nan-metric": card.replace("accuracy: 0.9911", "accuracy: .nan"),
        "key-twice": card + "task: raw\n",
        "python-tag": card.replace("name: digits", "name: !!python/object/apply:os.system ['echo pwned']"),
        "dropped-name": card.replace("name: digits\n", ""),
    }
    commands = []
    for name, text in broken.items():
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(MODEL, folder / MODEL.name)
        (folder / f"{MODEL.name}.card.yaml").write_text(text)
        commands.append(["predict", str(folder / MODEL.name), str(DIGITS / "samples" / "digit_3.png")])
    for (name, _), result in zip(broken.items(), _run_all(commands, tmp_path, _env(tmp_path)), strict=True):
        assert result.returncode != 0 and "Traceback" not in result.stderr, (name, result.stderr[-600:])
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgerun: error: "), (name, lines)
        assert f"{name}/{MODEL.name}.card.yaml" in lines[0], (name, lines)
    assert not (tmp_path / "pwned").exists()


def test_a_merged_anchor_that_overrides_a_key_is_not_a_duplicate(tmp_path: Path) -> None:
    """PyYAML flattens an anchored mapping in place when it is merged: a key it overrides, written
    once, must not be taken for a key given twice (nor a key two merged mappings share)."""
    from edgerun.card import yaml_loader

    text = (
        "a: &a {threads: 1, delegate: cpu}\n"
        "c: &c {threads: 3}\n"
        "defs: {base: &b {<<: *a, threads: 2}}\n"
        "m: {<<: *b}\n"
        "n: {<<: [*a, *c]}\n"
    )
    for pure in (True, False):
        data = yaml.load(text, Loader=yaml_loader(pure))
        assert data["m"] == {"threads": 2, "delegate": "cpu"} and data["n"]["delegate"] == "cpu"
    with pytest.raises(yaml.YAMLError, match="duplicate key 'threads'"):
        yaml.load("m: {threads: 1, threads: 2}\n", Loader=yaml_loader())


def test_a_card_cached_before_the_stricter_rules_is_checked_again(tmp_path: Path) -> None:
    """A card with a key given twice passed before duplicate keys were refused, and its cache entry
    (written then, without ``rules``) must not keep serving it."""
    import msgspec

    from edgerun.card import _cache_entry, load_card
    from edgerun.errors import CardError

    good = (DIGITS / "digits_int8.onnx.card.yaml").read_text()
    card = tmp_path / "m.onnx.card.yaml"
    card.write_text(good + "name: digits\n")  # `name` is in the card already: now a duplicate
    cache = tmp_path / "cards"
    where, resolved, stamp = _cache_entry(card, cache)  # type: ignore[misc]
    cache.mkdir()
    old_entry = {
        "path": resolved,
        "stamp": stamp,
        "card": msgspec.to_builtins(load_card(DIGITS / "digits_int8.onnx.card.yaml", tmp_path / "c2")),
    }
    where.write_bytes(msgspec.json.encode(old_entry))  # as the cache was written before `rules`
    with pytest.raises(CardError, match="duplicate key 'name'"):
        load_card(card, cache)
