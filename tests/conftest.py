"""Shared fixtures: the real sample models, fake device trees, and a guard against logged errors."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
SAMPLES = DIGITS / "samples"
DIGIT_MODELS = ["digits_fp32.onnx", "digits_int8.onnx", "digits_fp32.tflite", "digits_int8.tflite"]


@pytest.fixture(params=DIGIT_MODELS)
def digits_model(request: pytest.FixtureRequest) -> Path:
    """Each of the four committed digits models in turn."""
    return DIGITS / request.param


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A private state directory, so tests never share caches."""
    return tmp_path / "state"


@pytest.fixture
def model_copy(tmp_path: Path) -> Callable[[str, str], Path]:
    """Copy a digits model and its card into tmp_path under a new file name."""

    def copy(source: str, name: str) -> Path:
        target = tmp_path / "models" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DIGITS / source, target)
        card = DIGITS / f"{source}.card.yaml"
        if card.exists():
            shutil.copy(card, target.with_name(name + ".card.yaml"))
        return target

    return copy


class FakeTree:
    """A fake device filesystem for the probes: files and device nodes under a temporary root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def file(self, path: str, text: str = "") -> FakeTree:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return self

    def cpu(self, flags: str, model: str = "Test CPU", cores: int = 2, key: str = "flags") -> FakeTree:
        blocks = [f"processor\t: {i}\nmodel name\t: {model}\n{key}\t\t: {flags}\n" for i in range(cores)]
        return self.file("proc/cpuinfo", "\n".join(blocks))

    def usb(self, name: str, vendor: str, product: str) -> FakeTree:
        self.file(f"sys/bus/usb/devices/{name}/idVendor", vendor + "\n")
        return self.file(f"sys/bus/usb/devices/{name}/idProduct", product + "\n")


@pytest.fixture
def fake_tree(tmp_path: Path) -> FakeTree:
    """An empty fake device tree with an x86 CPU."""
    return FakeTree(tmp_path / "root").cpu("fpu sse2 avx2 fma avx512f avx512_vnni")


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgerun ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "edgerun", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(autouse=True)
def no_logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test in which edgerun logged at ERROR or above (a swallowed bug)."""
    caplog.set_level(logging.INFO, logger="edgerun")
    yield
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith("edgerun")]
    assert not bad, f"edgerun logged errors: {[r.getMessage() for r in bad]}"
