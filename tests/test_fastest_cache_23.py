"""``--delegate fastest``'s cache and what changed since it was written.

A delegate usable now that was not when the winner was timed is timed: after a first run on an Edge TPU
whose runtime was not installed yet, ``fastest`` kept xnnpack from the cache for good ("not timed then
(cached)") while ``auto`` took the Edge TPU, and so it did when the Edge TPU model was put beside the model
later. And ``--strict-accelerator`` refuses a cached choice that fell back as it refuses a timed one: it
ran on xnnpack, exit 0. The Edge TPU is faked at the hardware boundary only: a probe root with
``/dev/apex_0``, and either no ``libedgetpu.so.1`` or a stand-in LiteRT loads as a delegate that claims
no node (the model then runs on LiteRT's own kernels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, FakeTree, run_cli
from tests.test_bench_devices_audit import _loads

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or _loads("libedgetpu.so.1"), reason="needs Linux without libedgetpu"
)

# What LiteRT's load_delegate calls in an external delegate library: a TfLiteDelegate whose Prepare
# claims no node, so every op stays on LiteRT's kernels (and verification against the CPU passes).
_STAND_IN = r"""
#include <stdint.h>
#include <stdlib.h>
typedef struct {
    void *data_;
    int (*Prepare)(void *context, void *delegate);
    void *copy_from, *copy_to, *free_handle;
    int64_t flags;
    void *opaque_builder;
} Delegate;
static int prepare(void *context, void *delegate) { return 0; }
void *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report)(const char *)) {
    Delegate *d = calloc(1, sizeof(Delegate));
    if (d) d->Prepare = prepare;
    return d;
}
void tflite_plugin_destroy_delegate(void *d) { free(d); }
"""


@pytest.fixture(scope="module")
def libedgetpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a stand-in ``libedgetpu.so.1``, for ``LD_LIBRARY_PATH``: the Edge TPU runtime installed."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler for the stand-in libedgetpu.so.1")
    folder = tmp_path_factory.mktemp("libedgetpu")
    (folder / "stand_in.c").write_text(_STAND_IN)
    built = subprocess.run(
        [cc, "-shared", "-fPIC", "-o", str(folder / "libedgetpu.so.1"), str(folder / "stand_in.c")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return folder


def _edge_tpu(tmp_path: Path) -> Path:
    """A probe root with an Edge TPU's /dev node."""
    return FakeTree(tmp_path / "root").cpu("avx2 fma").file("dev/apex_0").root


def _env(library: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if library is not None:
        env["LD_LIBRARY_PATH"] = str(library)
    return env


def _devices(
    model: Path, root: Path, state: Path, *, library: Path | None = None, strict: bool = False
) -> tuple[bool, dict[str, dict[str, object]]]:
    """``devices --model --delegate fastest --json``: whether it came from the cache, and each attempt by name."""
    done = run_cli("devices", "--model", str(model), "--delegate", "fastest", "--probe-root", str(root),
                   "--state-dir", str(state), "--json", *(["--strict-accelerator"] if strict else []),
                   env=_env(library))  # fmt: skip
    assert done.returncode == 0, done.stderr
    selection = json.loads(done.stdout)["model"]["selection"]
    return selection["cached"], {a["delegate"]: a for a in selection["attempts"]}


def _timed(attempt: dict[str, object]) -> bool:
    return attempt["status"] in ("chosen", "usable") and attempt["latency_ms"] is not None


def test_an_edge_tpu_runtime_installed_after_the_first_fastest_run_gets_the_edge_tpu_timed(
    tmp_path: Path, model_copy: Callable[[str, str], Path], libedgetpu: Path
) -> None:
    root, state = _edge_tpu(tmp_path), tmp_path / "state"
    model = model_copy("digits_int8.tflite", "digits.tflite")
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")  # stands in for the compiled model
    cached, first = _devices(model, root, state)
    assert not cached and first["edgetpu"]["status"] == "failed"
    cached, installed = _devices(model, root, state, library=libedgetpu)
    assert not cached  # it was "chosen xnnpack (fastest, from cache)", edgetpu "not timed then (cached)"
    assert _timed(installed["edgetpu"]), installed["edgetpu"]
    cached, again = _devices(model, root, state, library=libedgetpu)  # nothing changed since: the cache
    assert cached
    assert again["edgetpu"]["latency_ms"] == installed["edgetpu"]["latency_ms"]


def test_an_edge_tpu_model_put_beside_the_model_after_the_first_fastest_run_is_timed(
    tmp_path: Path, model_copy: Callable[[str, str], Path], libedgetpu: Path
) -> None:
    root, state = _edge_tpu(tmp_path), tmp_path / "state"
    model = model_copy("digits_int8.tflite", "digits.tflite")
    cached, first = _devices(model, root, state, library=libedgetpu)
    assert not cached and first["edgetpu"]["status"] == "unavailable"
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    cached, paired = _devices(model, root, state, library=libedgetpu)
    assert not cached
    assert _timed(paired["edgetpu"]), paired["edgetpu"]
    assert paired["edgetpu"]["path"] == str(model.with_name("digits_edgetpu.tflite"))
    cached, _ = _devices(model, root, state, library=libedgetpu)
    assert cached


def test_with_nothing_changed_the_cache_is_used_and_shows_the_edge_tpu_failed_as_when_timed(
    tmp_path: Path, model_copy: Callable[[str, str], Path]
) -> None:
    root, state = _edge_tpu(tmp_path), tmp_path / "state"
    model = model_copy("digits_int8.tflite", "digits.tflite")
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    cached, timed = _devices(model, root, state)
    assert not cached and timed["edgetpu"]["status"] == "failed"
    cached, again = _devices(model, root, state)
    assert cached
    assert again["edgetpu"]["status"] == "failed"  # it said "not-tried", "not timed then (cached)"
    assert again["edgetpu"]["reason"] == f"{timed['edgetpu']['reason']} (cached)"
    assert "libedgetpu.so.1 could not be loaded" in str(again["edgetpu"]["reason"])


def _strict(command: str, model: Path, root: Path, state: Path) -> subprocess.CompletedProcess[str]:
    args = {
        "predict": ["predict", str(model), str(SAMPLES / "digit_0.png")],
        "devices": ["devices", "--model", str(model)],
        "run": ["run", str(model), "--source", str(SAMPLES / "digit_0.png")],
    }[command]
    return run_cli(*args, "--delegate", "fastest", "--strict-accelerator", "--probe-root", str(root),
                   "--state-dir", str(state), env=_env(None))  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "devices", "run"])
def test_strict_refuses_a_cached_fastest_choice_that_fell_back_as_it_refuses_a_timed_one(
    tmp_path: Path, model_copy: Callable[[str, str], Path], command: str
) -> None:
    root = _edge_tpu(tmp_path)
    model = model_copy("digits_int8.tflite", "digits.tflite")
    model_copy("digits_int8.tflite", "digits_edgetpu.tflite")
    timed = _strict(command, model, root, tmp_path / "empty")
    assert timed.returncode == 1
    assert timed.stderr.startswith("edgerun: error: --strict-accelerator: digits.tflite would fall back (edgetpu: ")
    state = tmp_path / "state"
    cached, _ = _devices(model, root, state)  # a run without strict caches xnnpack
    assert not cached
    again = _strict(command, model, root, state)
    assert (again.returncode, again.stderr) == (timed.returncode, timed.stderr)  # was: "on xnnpack", exit 0
