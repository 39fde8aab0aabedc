"""How a source starts: a camera's first opening and a pipe with no sensor suffix.

A camera missing or busy at the start failed at once, in one attempt, where a stream got 3: a USB camera
that enumerates a second or two after the service starts (a board booting, ``edgerun run --source camera:0``
in a unit) stopped the run. Its first opening is now the same attempts as its reopening, ended early by a
stop. A video file stands in for the device at ``open_capture``.

A named pipe with no ``.csv``/``.jsonl`` name (or ``/dev/stdin``) is an image input read whole, as
docs/pipelines.md says, and stays one: ``cat shot.png | edgerun run MODEL --source /dev/stdin``. Given to a
sensor model, it failed with ``p: vibration has no image preprocessing ...``, which does not say that the
pipe's name is what decides; the run is now refused before it reads, with the name to give it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from edgerun.errors import SourceError
from edgerun.sources import open_source
from edgerun.sources.video import CameraSource
from tests.conftest import ROOT, held_by_this_process, run_cli
from tests.test_sensor_stdin_jsonl_23 import _objects
from tests.test_sources import make_video
from tests.test_sync import wait_until

MODEL = ROOT / "models/vibration/vibration_int8.tflite"
SAMPLE = ROOT / "models/vibration/samples/bearing_fault.csv"
DIGITS = ROOT / "models/digits/digits_int8.tflite"
ABSENT = "camera:97"  # no /dev/video97 on any machine these tests run on


def _opener(*captures: Any) -> tuple[Any, list[Any]]:
    """An ``open_capture`` giving ``captures()`` in turn (the last one for every later opening), and what it made."""
    made: list[Any] = []

    def open_capture(device: int | str) -> Any:
        made.append(captures[min(len(made), len(captures) - 1)]())
        return made[-1]

    return open_capture, made


def test_a_camera_whose_device_appears_on_the_second_attempt_opens_and_gives_frames(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = make_video(tmp_path / "cam.avi", frames=6)
    open_capture, made = _opener(cv2.VideoCapture, lambda: cv2.VideoCapture(str(video)))
    camera = CameraSource("camera:0", queue=64, retries=3, retry_delay_s=0.01, open_capture=open_capture)
    try:
        assert len(made) == 2  # not there, then there
        frames = []
        for frame in camera.frames():
            frames.append(frame)
            if len(frames) == 6:
                break
        assert [f.source_id for f in frames] == [f"camera:0#{i}" for i in range(6)]
    finally:
        camera.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "camera camera:0: attempt 1 of 3 failed: not found: no /dev/video0" in warnings
    assert not held_by_this_process(video)


def test_a_camera_absent_on_every_attempt_is_one_clear_error_after_its_attempts() -> None:
    open_capture, made = _opener(cv2.VideoCapture)
    with pytest.raises(SourceError) as failure:
        CameraSource(ABSENT, retries=3, retry_delay_s=0.01, open_capture=open_capture)
    assert str(failure.value) == f"camera {ABSENT} unreachable after 3 attempts: not found: no /dev/video97"
    assert len(made) == 3


def test_a_stop_during_a_camera_s_first_attempts_ends_them_and_the_source_gives_nothing() -> None:
    open_capture, made = _opener(cv2.VideoCapture)
    stop = threading.Event()
    opened: list[Any] = []
    failed: list[BaseException] = []

    def start() -> None:
        try:  # 60 s between attempts: only the stop can end the wait
            opened.append(CameraSource(ABSENT, retry_delay_s=60.0, open_capture=open_capture, stop=stop))
        except BaseException as exc:
            failed.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    wait_until(lambda: bool(made) or not starter.is_alive(), 30, "the first attempt")
    stop.set()
    starter.join(30)
    assert not starter.is_alive(), "the attempts went on after the stop"
    assert not failed, failed  # a stop, not an error
    assert len(made) == 1
    camera = opened[0]
    assert list(camera.frames()) == []
    camera.close()


def test_open_source_hands_its_stop_to_a_camera_s_first_attempts(caplog: pytest.LogCaptureFixture) -> None:
    """The real V4L2 opening of a camera that is not there: ``edgerun run``'s stop on a signal, a daemon's."""
    stop = threading.Event()
    opened: list[Any] = []
    failed: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(open_source(ABSENT, stop=stop))
        except BaseException as exc:
            failed.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    wait_until(
        lambda: any("attempt 1 of 3 failed" in r.getMessage() for r in list(caplog.records)) or not starter.is_alive(),
        30,
        "the first attempt",
    )
    stop.set()  # during the 1 s wait before the second attempt
    starter.join(30)
    assert not starter.is_alive()
    assert not failed, failed
    assert list(opened[0].frames()) == []
    opened[0].close()


def _feed(fifo: Path, data: bytes, done: threading.Event) -> threading.Thread:
    """A thread writing ``data`` into ``fifo`` once a reader has it open; it gives up once ``done`` is set
    with no reader come (the run refused the pipe without opening it)."""

    def write() -> None:
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has the pipe open
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or done.is_set():
                    return
                time.sleep(0.05)
        os.set_blocking(fd, True)
        try:
            _write_all(fd, data)
        except BrokenPipeError:  # the reader went away
            pass
        finally:
            os.close(fd)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _run_on(fifo: Path, data: bytes) -> subprocess.CompletedProcess[str]:
    """``edgerun run MODEL --source FIFO --sink jsonl`` as a real process, ``data`` written into the pipe."""
    done = threading.Event()
    writer = _feed(fifo, data, done)
    try:
        return run_cli("run", str(MODEL), "--source", str(fifo), "--sink", "jsonl")
    finally:
        done.set()
        writer.join(30)


def _labels(stdout: str) -> list[str]:
    return [r["output"][0]["label"] for r in map(json.loads, stdout.splitlines()) if "output" in r]


FORMATS = {"csv": SAMPLE.read_bytes(), "jsonl": "".join(_objects()).encode()}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_pipe_with_no_sensor_name_given_to_a_sensor_model_is_refused_with_the_name_it_needs(
    tmp_path: Path, fmt: str
) -> None:
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    refused = _run_on(fifo, FORMATS[fmt])
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"edgerun: error: {fifo} is a pipe, read whole as one image, and vibration takes no images (its input "
        "tensor serving_default_input:0 [1,256,3] int8 (scale 0.00914533, zero point -13) has no image "
        "preprocessing): name a pipe of sensor readings .csv or .jsonl (mkfifo accel.csv), or give standard "
        "input as -"
    ]
    named = tmp_path / f"accel.{fmt}"  # the fix the line names
    os.mkfifo(named)
    ran = _run_on(named, FORMATS[fmt])
    assert ran.returncode == 0, ran.stderr
    expected = run_cli("run", str(MODEL), "--source", str(SAMPLE), "--sink", "jsonl")
    assert _labels(ran.stdout) == _labels(expected.stdout) == ["bearing_fault"] * 8


def test_dev_stdin_is_refused_for_a_sensor_model_and_still_read_as_one_image_for_an_image_model() -> None:
    def run(model: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "edgerun", "run", str(model), "--source", "/dev/stdin", "--sink", "jsonl"]
        return subprocess.run(command, cwd=ROOT, input=data, capture_output=True, timeout=120)

    refused = run(MODEL, SAMPLE.read_bytes())
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.decode().endswith("or give standard input as -\n"), refused.stderr
    image = run(DIGITS, (ROOT / "models/digits/samples/digit_3.png").read_bytes())
    assert image.returncode == 0, image.stderr
    assert _labels(image.stdout.decode()) == ["3"]
