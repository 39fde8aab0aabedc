"""OpenCV, imported on first use (~20 ms, 15 MB), and quiet where edgerun is the application.

OpenCV and the FFmpeg inside it print their own lines on stderr when an input
is bad ("moov atom not found", "[ WARN:0] ... can't be used to capture by
name"). The command line reports each failure in one line of its own, so it
calls :func:`quiet` at start and both are silenced, unless the user sets
OpenCV's own ``OPENCV_LOG_LEVEL`` (for example ``WARNING``), which brings back
OpenCV's lines and FFmpeg's errors alike. Used as a library, edgerun leaves
OpenCV's logging as the application set it.

A daemon that only ever gets arrays never imports OpenCV at all.

Images are refused above :data:`MAX_IMAGE_PIXELS` before they are decoded (a
400 KB PNG can declare 20000x20000 pixels and take a gigabyte to decode):
OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS``, 1 << 30 by default, is lowered to
it unless the user set it, which must happen before ``cv2`` is first imported:
OpenCV reads the variable once, when it is loaded. An application that imported
``cv2`` before edgerun, without setting it, keeps OpenCV's 1 << 30 (3 GB decoded in
colour); edgerun then says so in one warning, and its messages give that limit.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MAX_IMAGE_PIXELS", "OPENCV_DEFAULT_PIXELS", "max_image_pixels", "opencv", "quiet"]

#: The largest image decoded, in pixels: 64 Mpx (8192 x 8192), about 200 MB decoded in colour.
MAX_IMAGE_PIXELS = 1 << 26

#: OpenCV's own limit, which it keeps when ``cv2`` was loaded without the variable set.
OPENCV_DEFAULT_PIXELS = 1 << 30

_module: Any = None
_quiet = False
_limit: int | None = None  # the limit OpenCV applies, once edgerun imported it (None: the variable decides)


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
    global _module, _limit
    if _module is None:
        if "cv2" in sys.modules and "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ:
            _limit = OPENCV_DEFAULT_PIXELS  # loaded by the application: too late to lower its limit
            log.warning(
                "cv2 was imported before edgerun: OpenCV decodes images of up to %s pixels, not edgerun's %s; "
                "set OPENCV_IO_MAX_IMAGE_PIXELS before importing cv2 to bound them",
                f"{OPENCV_DEFAULT_PIXELS:,}",
                f"{MAX_IMAGE_PIXELS:,}",
            )
        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
        import cv2

        if _quiet:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _module = cv2
    return _module


def max_image_pixels() -> int:
    """The decoding limit in force (OpenCV reads it once, when it is imported)."""
    if _limit is not None:
        return _limit
    try:
        return int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    except ValueError:
        return MAX_IMAGE_PIXELS
