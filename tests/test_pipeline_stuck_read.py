"""SIGTERM stops a run whose source waits in a read that never returns.

A named pipe among the inputs (or ``--source /dev/stdin`` with a quiet producer) left the reader
thread blocked in ``open()`` or ``read()``, where no ``close()`` reaches it, and ``run`` waited
for that thread: SIGINT and SIGTERM were ignored until a writer came, and a service manager could
stop the process only with SIGKILL. The pipeline now stops waiting for such a reader a moment
after the stop (one WARNING line), and everything read before is finished and flushed; a pipe
itself is now read with poll(), so its reader sees the stop and ends (tests/test_reader_left_images_19.py).
Real processes, a real FIFO with no writer, a real model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgerun.errors import PipelineError, SourceError
from edgerun.pipeline import READ_STOP_GRACE_S
from tests.conftest import DIGITS, ROOT, SAMPLES


def test_sigterm_ends_a_run_whose_source_waits_on_a_pipe_with_no_writer(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLES / "digit_3.png", inputs / "a.png")
    shutil.copy(SAMPLES / "digit_7.png", inputs / "b.png")
    os.mkfifo(inputs / "z.png")  # sorted last: read after the two images, and no one ever writes it
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "edgerun", "run", str(DIGITS / "digits_int8.tflite")]
    command += ["--source", f"{inputs}/*", "--sink", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
            time.sleep(0.05)
        assert len(out.read_text().splitlines()) == 2, "the two images never came through"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=READ_STOP_GRACE_S + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    # the reader waits in poll() and sees the stop itself: nothing is left behind, nor warned about
    assert "still waiting for input" not in stderr, stderr
    assert "2 frames (2 ok, 0 failed" in stderr and "stopped by SIGTERM" in stderr, stderr
    assert "Traceback" not in stderr
    labels = [json.loads(line)["output"][0]["label"] for line in out.read_text().splitlines()]
    assert labels == ["3", "7"]


def test_a_daemon_pipeline_on_a_named_pipe_keeps_no_id_per_window(tmp_path: Path) -> None:
    """A file source's delivered inputs are remembered, so a retry leaves them out; a stream's are not:
    its line numbers start again on new data (a retry would have skipped fresh windows), and a daemon
    reading a sensor's pipe for months kept one string per window, for ever."""
    import threading

    from tests.test_daemon import _in_process_daemon
    from tests.test_sync import wait_until

    fifo = tmp_path / "sensor.csv"
    os.mkfifo(fifo)
    rows = (ROOT / "models/vibration/samples/normal.csv").read_text().splitlines()[:513]  # header + 2 windows
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"vibration": str(ROOT / "models" / "vibration" / "vibration_int8.tflite")},
        {"pipe": {"source": str(fifo), "model": "vibration", "sinks": [str(tmp_path / "out.jsonl")]}},
    )
    daemon.start()
    done = threading.Event()

    def write() -> None:
        with open(fifo, "w") as pipe:  # waits for the daemon to open it
            pipe.write("\n".join(rows) + "\n")
            pipe.flush()
            done.wait(30)  # kept open: the stream goes on

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        out = tmp_path / "out.jsonl"
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 2, 30, "two windows' results")
        assert json.loads(out.read_text().splitlines()[0])["output"][0]["label"] == "normal"
        assert daemon.runners["pipe"]._delivered == set()
    finally:
        done.set()
        daemon.stop()
        writer.join(10)


class _FailsToStart:
    """A library user's source whose ``frames()`` is a plain function that fails before it returns."""

    live = False
    uri = "failing://cam"
    dropped = 0

    def frames(self) -> Any:
        raise SourceError("camera gone")

    def close(self) -> None:
        pass


def test_a_source_whose_frames_call_fails_stops_the_run_with_its_reason(tmp_path: Path) -> None:
    # The reader's loop once started outside its try: the exception ended the thread without the end of
    # input being passed on, and run() waited for ever.
    import threading

    import edgerun
    from edgerun.pipeline import Pipeline

    outcome: list[BaseException] = []
    with edgerun.load(DIGITS / "digits_int8.tflite") as model:
        pipeline = Pipeline(_FailsToStart(), model, [])

        def run() -> None:
            try:
                pipeline.run()
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(20)
    assert not thread.is_alive(), "run() never returned"
    assert len(outcome) == 1 and isinstance(outcome[0], PipelineError), outcome
    assert str(outcome[0]) == "source failing://cam: camera gone"
