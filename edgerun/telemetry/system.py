"""Process and board figures: CPU %, RSS, temperature, Raspberry Pi throttling.

Temperature and throttling are read from sysfs under a configurable root (the
same idea as the accelerator probes) and are ``None`` where the board has no
such file, never a made-up value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["SystemSampler"]

# Raspberry Pi firmware's throttle bits, as vcgencmd get_throttled reports them.
_THROTTLE_FILES = (
    "sys/devices/platform/soc/soc:firmware/get_throttled",
    "sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon/throttled",
)


class SystemSampler:
    """Samples this process's CPU % (since the previous sample), RSS and the board's sensors."""

    def __init__(self, root: str | Path = "/") -> None:
        import psutil

        self._root = Path(root)
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call only starts the interval

    def temperature_c(self) -> float | None:
        """The hottest thermal zone in °C, or None when the board reports none."""
        hottest = None
        for zone in sorted((self._root / "sys/class/thermal").glob("thermal_zone*/temp")):
            try:
                value = int(zone.read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
            if -40.0 < value < 150.0:  # discard disconnected sensors (-273, 255...)
                hottest = value if hottest is None else max(hottest, value)
        return hottest

    def throttled(self) -> int | None:
        """The Raspberry Pi throttle bit field (0 = never throttled), or None off a Pi."""
        for name in _THROTTLE_FILES:
            try:
                return int((self._root / name).read_text().strip(), 16)
            except (OSError, ValueError):
                continue
        return None

    def sample(self) -> dict[str, Any]:
        """``{"cpu_pct", "rss_mb", "temp_c", "throttled"}`` as in PROTOCOL.md."""
        return {
            "cpu_pct": round(self._proc.cpu_percent(None), 1),
            "rss_mb": round(self._proc.memory_info().rss / (1024 * 1024), 1),
            "temp_c": self.temperature_c(),
            "throttled": self.throttled(),
        }
