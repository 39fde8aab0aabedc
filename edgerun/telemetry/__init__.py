"""In-process measurements: per-model latencies and counts, and system figures."""

from edgerun.telemetry.metrics import LatencyStats, Metrics, NoMetrics
from edgerun.telemetry.system import SystemSampler

__all__ = ["LatencyStats", "Metrics", "NoMetrics", "SystemSampler"]
