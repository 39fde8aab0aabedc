"""Ctrl-C ends a batch predict that draws a progress bar on a terminal while its stdout goes to a pager
that reads nothing (``edgerun predict MODEL DIR/ | less``).

Once the pipe was full, the result line being written held tqdm's lock, and closing the bar after the
stop waited on it for ever. The bar only wraps a stdout that is the terminal it draws on; a piped
stdout is written as without a bar, so the stop ends the run as for any blocked stdout.

A real process with a real pseudo-terminal as stderr (so tqdm draws), a real pipe (made small with
``F_SETPIPE_SZ``) nobody reads as stdout, the real digits model over real images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from edgerun.pipeline import SINK_STOP_GRACE_S
from tests.conftest import ROOT, SAMPLES
from tests.test_pipeline_sinks_20 import MODEL, _ended, _full, _small
from tests.test_sync import wait_until


def _images(folder: Path) -> Path:
    """400 digit images in ``folder``: far more result lines than the pipe and stdout's buffer hold."""
    digits = sorted(SAMPLES.glob("digit_*.png"))
    for i in range(400):
        shutil.copyfile(digits[i % len(digits)], folder / f"d{i:03d}.png")
    return folder


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (master, slave) 100 columns wide: tqdm draws a bar as wide as its terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    return master, slave


def _drain(master: int, into: bytearray) -> threading.Thread:
    """Read the terminal as a terminal emulator would, so that the bar's writes never wait."""

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the process has ended
            while chunk := os.read(master, 4096):
                into.extend(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _shown(raw: bytes) -> list[str]:
    """The lines a terminal shows for ``raw``: each line as its last carriage return left it, blank ones out."""
    lines = (line.rstrip("\r").rsplit("\r", 1)[-1] for line in raw.decode("utf-8", "replace").split("\n"))
    return [line for line in lines if line.strip()]


def test_ctrl_c_ends_a_batch_predict_with_a_bar_whose_piped_stdout_is_never_read(tmp_path: Path) -> None:
    images = _images(tmp_path)
    master, slave = _terminal()
    read, write = os.pipe()
    _small(read)
    terminal = bytearray()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "predict", str(MODEL), str(images)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=slave,
        )
        os.close(slave)
        os.close(write)
        slave = write = -1
        drained = _drain(master, terminal)
        try:
            wait_until(_full(read), 60, "the pipe to fill")
            proc.send_signal(signal.SIGINT)
            code, _ = _ended(proc)  # the grace for the blocked stdout, then the end
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        drained.join(timeout=10)
    finally:
        for fd in (master, slave, read, write):
            if fd >= 0:
                os.close(fd)
    shown = _shown(bytes(terminal))
    assert code == 130, shown
    assert b"%|" in terminal, shown  # the bar was drawn
    # the WARNING may follow the bar's text on its line (the pipeline logs it while the bar is drawn)
    assert len(shown) == 2, shown
    assert shown[0].endswith(
        f"WARNING edgerun.pipeline: pipeline: the sink stdout has taken nothing for {SINK_STOP_GRACE_S:.0f} s "
        "after the stop (blocked in a write); stopped without it, its output not flushed"
    ), shown
    assert shown[1].startswith("# ") and shown[1].endswith("; not flushed: stdout"), shown
