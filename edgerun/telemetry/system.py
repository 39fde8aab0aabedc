"""Process and board figures: CPU %, RSS, temperature, Raspberry Pi throttling.

CPU and RSS cover this process and every live descendant: with ``isolation: process``
a model's runtime runs in a worker process, and a figure that left it out would
report an idle daemon while the worker keeps a core busy. Temperature and throttling
are read from sysfs under a configurable root (the same idea as the accelerator
probes) and are ``None`` where the board has no such file, never a made-up value.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["SystemSampler"]

# Raspberry Pi firmware's throttle bits, as vcgencmd get_throttled reports them.
_THROTTLE_FILES = (
    "sys/devices/platform/soc/soc:firmware/get_throttled",
    "sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon/throttled",
)
# The firmware answers the mailbox with a 32-bit word: anything wider is not that field.
_THROTTLE_MAX = 0xFFFFFFFF
# Thermal zones that are not a sensor. On Jetson Nano, TX1 and TX2 "PMIC-Die" is a
# trip-point placeholder that always reads 100000 (100.0 °C); the hottest zone would
# then be 100 °C on every such board, whatever the real temperatures.
_NOT_SENSORS = frozenset({"PMIC-Die"})


class SystemSampler:
    """Samples CPU % (since the previous sample) and RSS of this process and its descendants,
    and the board's sensors.

    ``cpu_pct`` is CPU time over wall time, in percent of one core (100 = one core busy the
    whole interval; up to 100 x cores). ``rss_mb`` is the sum of the processes' resident sets
    in MiB (pages they share, such as the tensors of an isolated model, count in each).
    """

    def __init__(self, root: str | Path = "/") -> None:
        import psutil

        self._root = Path(root)
        self._proc = psutil.Process()
        self._last = (time.monotonic(), self._cpu_seconds(self._processes()))  # the first sample covers since now

    def _processes(self) -> list[Any]:
        """This process and its live descendants (those that vanish while listed are skipped)."""
        import psutil

        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            return [self._proc]

    def _cpu_seconds(self, processes: list[Any]) -> float:
        """CPU seconds used by ``processes``: their own and their reaped children's."""
        import psutil

        total = 0.0
        for proc in processes:
            try:
                t = proc.cpu_times()
            except psutil.Error:  # exited since it was listed
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def cpu_percent(self, processes: list[Any]) -> float:
        """CPU % of the process tree (``_processes()``) since the previous call (or since construction)."""
        now, cpu = time.monotonic(), self._cpu_seconds(processes)
        then, cpu_then = self._last
        self._last = (now, cpu)
        if now <= then:
            return 0.0
        # A child that exited and was not yet reaped takes its time out of the sum until it is:
        # never report a negative figure for that.
        return max(0.0, (cpu - cpu_then) / (now - then) * 100.0)

    def rss_mb(self, processes: list[Any]) -> float:
        """Resident set of the process tree (``_processes()``), in MiB."""
        import psutil

        total = 0
        for proc in processes:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total / (1024 * 1024)

    def temperature_c(self) -> float | None:
        """The hottest thermal zone in °C, or None when the board reports none."""
        hottest = None
        for zone in sorted((self._root / "sys/class/thermal").glob("thermal_zone*/temp")):
            try:
                kind = (zone.parent / "type").read_text().strip()
            except (OSError, ValueError):
                kind = ""
            if kind in _NOT_SENSORS:
                continue
            try:
                value = int(zone.read_text().strip()) / 1000.0  # millidegrees Celsius (sysfs ABI)
            except (OSError, ValueError):
                continue
            if -40.0 < value < 150.0:  # discard disconnected sensors (-273, 255...)
                hottest = value if hottest is None else max(hottest, value)
        return hottest

    def throttled(self) -> int | None:
        """The Raspberry Pi throttle bit field (0 = never throttled), or None off a Pi."""
        for name in _THROTTLE_FILES:
            try:
                value = int((self._root / name).read_text().strip(), 16)
            except (OSError, ValueError):
                continue
            if 0 <= value <= _THROTTLE_MAX:
                return value
        return None

    def sample(self) -> dict[str, Any]:
        """``{"cpu_pct", "rss_mb", "temp_c", "throttled"}`` as in PROTOCOL.md."""
        processes = self._processes()  # listed once: it walks /proc
        return {
            "cpu_pct": round(self.cpu_percent(processes), 1),
            "rss_mb": round(self.rss_mb(processes), 1),
            "temp_c": self.temperature_c(),
            "throttled": self.throttled(),
        }
