"""MQTT sync for one process: the outbox, the link, the metrics timer and results sinks, wired together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.publish import MetricsPublisher, ResultsSink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["SyncService", "OUTBOX_FILE"]

OUTBOX_FILE = "outbox.sqlite"


class SyncService:
    """Owns the device's MQTT side; ``start()`` returns at once, offline or not."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str,
        state_dir: Path,
        metrics: Metrics,
        interval_s: float = 10.0,
        outbox_max_bytes: int = 64 * 1024 * 1024,
        results_qos: int = 1,
        results_max_per_s: float | None = None,
    ) -> None:
        self.topics = Topics(settings.topic_prefix, device_id)
        self.outbox = Outbox(Path(state_dir) / OUTBOX_FILE, max_bytes=outbox_max_bytes)
        self.link = MqttLink(settings, self.topics, self.outbox)
        self.metrics_publisher = MetricsPublisher(metrics, self.outbox, self.link, self.topics, interval_s=interval_s)
        self._results_qos = results_qos
        self._results_rate = results_max_per_s

    def start(self) -> None:
        """Connect in the background and start the metrics timer."""
        self.link.start()
        self.metrics_publisher.start()

    def set_models(self, models: dict[str, dict[str, Any]], accelerators: list[str] | None = None) -> None:
        """What the retained status record says is running (accelerators unchanged when None)."""
        if accelerators is None:
            self.link.set_status(models=models)
        else:
            self.link.set_status(models=models, accelerators=accelerators)

    def results_sink(self) -> ResultsSink:
        """A sink that publishes every result on ``P/ID/results/<model>``."""
        return ResultsSink(self.outbox, self.link, self.topics, qos=self._results_qos, max_per_s=self._results_rate)

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Queue a last metrics record, deliver what can be delivered in time, publish offline, close.

        What is not delivered stays in the outbox for the next start. Every step
        runs even when an earlier one failed (a full disk refuses the last metrics
        record; the link still delivers what is queued, says offline and
        disconnects, and the outbox is still closed): each failure is one ERROR
        line, and ``stop`` itself does not raise, so a daemon's SIGTERM still ends
        with exit code 0.
        """
        _step("queue the last metrics record", self.metrics_publisher.stop)
        _step("stop the MQTT link", lambda: self.link.stop(flush_timeout_s))
        left = len(self.outbox)
        if left:
            log.info("%d record(s) stay in the outbox for the next connection", left)
        _step("close the outbox", self.outbox.close)


def _step(what: str, action: Callable[[], None]) -> None:
    """Run one stop step; a failure is logged in one line (a bug's traceback at DEBUG), never raised."""
    try:
        action()
    except EdgerunError as exc:  # the outbox's disk full or failing: the reason is the message
        log.error("MQTT sync stop: could not %s: %s", what, exc)
    except Exception as exc:  # a bug: the later steps still run
        log.error("MQTT sync stop: could not %s (%s: %s)", what, type(exc).__name__, exc)
        log.debug("MQTT sync stop: %s failed", what, exc_info=exc)
