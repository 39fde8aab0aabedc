"""MQTT sync for one process: the outbox, the link, the metrics timer and results sinks, wired together."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError
from edgerun.state import OUTBOX_FILE, claim_state_dir, release_state_dir
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.publish import MetricsPublisher, ResultsSink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import METRICS_INTERVAL_MAX_S, METRICS_INTERVAL_MIN_S, Topics
from edgerun.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["SyncService", "OUTBOX_FILE"]


class SyncService:
    """Owns the device's MQTT side; ``start()`` returns at once, offline or not.

    A run whose input ended calls ``deliver()`` before ``stop()``; ``undelivered`` then says
    how many records stayed in the outbox (each also said in one WARNING line), and ``refused``
    how many of this service's the broker refused (they left the outbox, lost: an ACL, or a
    record over its packet size), so that a summary never calls a refused record delivered.
    """

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
        if not METRICS_INTERVAL_MIN_S <= interval_s <= METRICS_INTERVAL_MAX_S:  # as the CLI and config bound it
            raise ValueError(
                f"metrics interval must be {METRICS_INTERVAL_MIN_S:g}-{METRICS_INTERVAL_MAX_S:g} s, not {interval_s!r}"
            )
        self.topics = Topics(settings.topic_prefix, device_id)
        self._state_dir = Path(state_dir)
        claim_state_dir(self._state_dir)  # one owner of an outbox: a second is refused in one line
        try:
            # A damaged outbox is set aside and a new one started: a device whose SD card damaged it must
            # not refuse to start at every boot (the records in it are lost to the broker, not deleted).
            self.outbox = Outbox(self._state_dir / OUTBOX_FILE, max_bytes=outbox_max_bytes, set_aside_damaged=True)
            # the outbox counts refusals since its epoch, over every run before this one: this run's is the rise
            self._refused_before = self._refused_total()
        except BaseException:
            release_state_dir(self._state_dir)
            raise
        self.link = MqttLink(settings, self.topics, self.outbox)
        self.metrics_publisher = MetricsPublisher(metrics, self.outbox, self.link, self.topics, interval_s=interval_s)
        self._results_qos = results_qos
        self._results_rate = results_max_per_s
        self.undelivered: int | None = None  # records left in the outbox by ``stop`` (None before it)
        #: records the broker refused since this service started, counted by ``stop`` (None before it,
        #: or where the outbox's count could not be read); disjoint from ``undelivered``
        self.refused: int | None = None
        self._started = False  # a service stopped before it started (a failed start) queues no last metrics

    def start(self) -> None:
        """Connect in the background and start the metrics timer."""
        self._started = True
        self.link.start()
        self.metrics_publisher.start()

    def set_models(self, models: dict[str, dict[str, Any]], accelerators: list[str] | None = None) -> None:
        """What the retained status record says is running (accelerators unchanged when None)."""
        if accelerators is None:
            self.link.set_status(models=models)
        else:
            self.link.set_status(models=models, accelerators=accelerators)

    def set_groups(self, groups: Iterable[str]) -> None:
        """The groups the retained status record names (config ``device.groups``, ``--group``), each once.

        ``edgerun ota publish --wait --group G`` reads them: a device online whose record names its
        groups and not G is no target, and is not waited for (docs/protocol-notes.md). A record
        without the field (an older edgerun) tells nothing, so ``[]`` is published for no group.
        """
        self.link.set_status(groups=list(dict.fromkeys(groups)))

    def results_sink(self, pipeline: str | None = None) -> ResultsSink:
        """A sink that publishes every result on ``P/ID/results/<model>``.

        With ``pipeline`` (the daemon's, which prints no summary) the results skipped over the
        rate limit are logged under that name, at most once a minute (``ResultsSink``).
        """
        return ResultsSink(
            self.outbox,
            self.link,
            self.topics,
            qos=self._results_qos,
            max_per_s=self._results_rate,
            label=None if pipeline is None else f"pipeline {pipeline}",
        )

    def deliver(self, *, max_s: float, stalled_s: float = 5.0, cancel: threading.Event | None = None) -> int:
        """Wait while the broker takes the queued records; returns how many are still queued.

        For a run whose input ended, delivering what it queued is its last job, and the
        5 s of ``stop`` is not enough for a backlog (a fast model, a slow uplink). The wait
        ends as soon as the outbox is empty and nothing is in flight, a connection attempt
        failed or the connection was lost (the broker down: the records wait in the outbox
        for the next start), no record was acknowledged for ``stalled_s`` seconds (a broker
        or network that stopped taking them, or a first connection still not made: a short
        run over TLS ends before its CONNACK), ``max_s`` seconds passed, or ``cancel`` is
        set (a signal).
        """
        start = since = time.monotonic()
        answered, fewest = self._answered(), len(self.outbox)
        while cancel is None or not cancel.is_set():
            if self.link.wait_drained(0.1):
                break
            if not self.link.connected and self.link.last_error is not None:
                break
            now, answered_now, left = time.monotonic(), self._answered(), len(self.outbox)
            if answered_now != answered or left < fewest:  # QoS 0 records leave with no PUBACK
                answered, fewest, since = answered_now, min(left, fewest), now
            elif now - since >= stalled_s:  # a metrics record queued meanwhile is no progress
                log.info("MQTT: no record acknowledged for %g s; %d stay queued", stalled_s, len(self.outbox))
                break
            if now - start >= max_s:
                break
        return len(self.outbox)

    def _refused_total(self) -> int | None:
        """The outbox's count of refused records since its epoch; None (one ERROR line) where it cannot be read."""
        try:
            return self.outbox.refused_total()
        except sqlite3.Error as exc:  # the storage failing: the run still ends, its summary without the count
            log.error("MQTT: could not read the refused count of the outbox %s: %s", self.outbox.path, exc)
            return None

    def _answered(self) -> int:
        """QoS 1 records the broker has answered (acknowledged or refused) since the link started."""
        state = self.link.state()
        return state.acked + state.refused

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Queue a last metrics record, deliver what can be delivered in time, publish offline, close
        (a service never started, as where the OTA agent failed to start, only closes its outbox).

        What is not delivered stays in the outbox for the next start. Every step
        runs even when an earlier one failed (a full disk refuses the last metrics
        record; the link still delivers what is queued, says offline and
        disconnects, and the outbox is still closed): each failure is one ERROR
        line, and ``stop`` itself does not raise, so a daemon's SIGTERM still ends
        with exit code 0.
        """
        if self.undelivered is not None:  # stopped already: a second stop (a try/finally) does nothing
            return
        if self._started:
            _step("queue the last metrics record", self.metrics_publisher.stop)
        _step("stop the MQTT link", lambda: self.link.stop(flush_timeout_s))
        self.undelivered = left = len(self.outbox)
        total = self._refused_total()
        if total is not None and self._refused_before is not None:
            self.refused = total - self._refused_before
        if left:  # a run whose input ended may never start again: say so where it shows
            log.warning(
                "MQTT: %d record(s) not delivered stay in the outbox %s; they are sent after the next start "
                "with this state directory",
                left,
                self.outbox.path,
            )
        _step("close the outbox", self.outbox.close)
        release_state_dir(self._state_dir)


def _step(what: str, action: Callable[[], None]) -> None:
    """Run one stop step; a failure is logged in one line (a bug's traceback at DEBUG), never raised."""
    try:
        action()
    except EdgerunError as exc:  # the outbox's disk full or failing: the reason is the message
        log.error("MQTT sync stop: could not %s: %s", what, exc)
    except Exception as exc:  # a bug: the later steps still run
        log.error("MQTT sync stop: could not %s (%s: %s)", what, type(exc).__name__, exc)
        log.debug("MQTT sync stop: %s failed", what, exc_info=exc)
