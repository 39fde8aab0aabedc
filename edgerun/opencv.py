"""OpenCV, imported on first use (~20 ms, 15 MB), and quiet where edgerun is the application.

OpenCV and the FFmpeg inside it print their own lines on stderr when an input
is bad ("moov atom not found", "[ WARN:0] ... can't be used to capture by
name"). The command line reports each failure in one line of its own, so it
calls :func:`quiet` at start and both are silenced, unless the user sets
OpenCV's own ``OPENCV_LOG_LEVEL`` (for example ``WARNING``), which brings back
OpenCV's lines and FFmpeg's errors alike. Used as a library, edgerun leaves
OpenCV's logging as the application set it.

A daemon that only ever gets arrays never imports OpenCV at all.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["opencv", "quiet"]

_module: Any = None
_quiet = False


def quiet() -> None:
    """Silence OpenCV and its FFmpeg in this process (FFmpeg's setting, an environment variable, also in the
    processes it starts); OpenCV itself is not imported now."""
    global _quiet
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    _quiet = True
    # read by OpenCV when it first opens a video: FFmpeg's messages go through OpenCV's
    # logging, at AV_LOG_QUIET
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if _module is not None:
        _module.utils.logging.setLogLevel(_module.utils.logging.LOG_LEVEL_SILENT)


def opencv() -> Any:
    """The ``cv2`` module, imported once."""
    global _module
    if _module is None:
        import cv2

        if _quiet:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _module = cv2
    return _module
