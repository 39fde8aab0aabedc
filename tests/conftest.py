"""Shared fixtures: the real sample models, fake device trees, and a guard against logged errors."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgerun.opencv import opencv
from tools.broker import Broker, free_port

# OpenCV through edgerun before any test module imports cv2, as the command line loads it: its
# image-size bound applies in-process too, and the warning for a cv2 imported first does not land in
# whichever test happens to call OpenCV first (a test's logs must not depend on the order tests run in).
opencv()

__all__ = ["Broker", "fill_disk", "free_port"]

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
SAMPLES = DIGITS / "samples"
DIGIT_MODELS = ["digits_fp32.onnx", "digits_int8.onnx", "digits_fp32.tflite", "digits_int8.tflite"]


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it, in this process and every process a test starts: a suite started in the
    background of a shell (`pytest ... &`, a CI script's job) inherits SIGINT ignored, and so would every
    process it starts, so that the tests that send SIGINT would wait for ever (a pipeline interrupted
    in-process) or fail (a bench or predict stopped by it)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Caches (cards, fastest delegates) go to a temporary state directory, never the user's."""
    path = tmp_path_factory.mktemp("edgerun-state")
    old = os.environ.get("EDGERUN_STATE_DIR")
    os.environ["EDGERUN_STATE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EDGERUN_STATE_DIR", None)
    else:
        os.environ["EDGERUN_STATE_DIR"] = old


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


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Ed25519 private key from ``edgerun keys generate``."""
    base = tmp_path_factory.mktemp("keys") / "op"
    done = run_cli("keys", "generate", str(base))
    assert done.returncode == 0, done.stderr
    return base.with_name("op.pem")


@pytest.fixture
def fake_tree(tmp_path: Path) -> FakeTree:
    """An empty fake device tree with an x86 CPU."""
    return FakeTree(tmp_path / "root").cpu("fpu sse2 avx2 fma avx512f avx512_vnni")


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgerun ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "edgerun", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def held_by_this_process(path: Path) -> bool:
    """Whether a file descriptor of this process points at ``path`` (Linux's /proc): a capture left open."""
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fds / fd) == str(path.resolve()) for fd in os.listdir(fds))


def start_daemon(config: Path, *, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """``edgerun daemon --config CONFIG`` as a real process from the repository root, its stdout discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def stop_process(proc: subprocess.Popen[Any], timeout_s: float) -> int:
    """SIGTERM ``proc`` (if still running) and its exit code; SIGKILL where it has not ended in ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.fixture(autouse=True)
def no_logged_errors(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test in which edgerun logged at ERROR or above (a swallowed bug).

    A test that provokes such a log on purpose says so with ``@pytest.mark.logs_errors``.
    """
    caplog.set_level(logging.INFO, logger="edgerun")
    yield
    if request.node.get_closest_marker("logs_errors"):
        return
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith("edgerun")]
    assert not bad, f"edgerun logged errors: {[r.getMessage() for r in bad]}"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One private broker for the session (never the machine's own on 1883)."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private broker for this test alone, which it may stop and start (persistent, so sessions
    survive a clean restart) or fill with retained messages no other test should meet."""
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def fill_disk(folder: Path) -> Path:
    """Fill the filesystem ``folder`` is on with one real file, to its last page, as a full SD card;
    returns the file (delete it to free the disk)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for block in (1 << 20, 1 << 16, 1 << 12):
            try:
                while True:
                    os.write(fd, bytes(block))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``small_disk(size_bytes)``: a folder on a real filesystem of that size (a tmpfs mounted under
    ``tmp_path``, unmounted after the test), for a full SD card without faking a write."""
    mounted: list[Path] = []

    def make(size_bytes: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"a small tmpfs cannot be mounted here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=False)
