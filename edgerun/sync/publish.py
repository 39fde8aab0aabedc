"""What the device publishes: periodic metrics records and per-inference results.

Both go through the outbox (durable, ordered, numbered) and never block the
caller: metrics are built on their own timer thread; results are buffered by
the sink and committed in batches on the pipeline's sink thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from edgerun.errors import SyncError
from edgerun.native import native_calls
from edgerun.sinks.base import Result
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics, MetricsWindow
from edgerun.telemetry.system import SystemSampler

log = logging.getLogger(__name__)

__all__ = ["MetricsPublisher", "ResultsSink"]


class MetricsPublisher:
    """Every ``interval_s``, one ``metrics`` record (PROTOCOL.md) into the outbox; one more at ``stop``.

    Records carry an ``outbox`` object (an extension of the protocol record,
    see docs/protocol-notes.md): ``evicted`` is the number of records the
    outbox's size bound has removed since the epoch began, and ``refused`` the
    number the broker refused (an ACL, MQTT 5), so a gap in ``seq`` is never silent.
    """

    def __init__(
        self,
        metrics: Metrics,
        outbox: Outbox,
        link: MqttLink | None,
        topics: Topics,
        *,
        interval_s: float = 10.0,
        system: SystemSampler | None = None,
    ) -> None:
        if not 0 < interval_s < math.inf:  # NaN too: a timer that never or always fires
            raise ValueError(f"metrics interval must be a positive number of seconds, not {interval_s!r}")
        self._window = MetricsWindow(metrics)
        self._outbox, self._link, self._topics = outbox, link, topics
        self._interval = interval_s
        self._system = system or SystemSampler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failing: str | None = None  # why the last tick could not queue its record

    def publish_now(self) -> int:
        """Build and queue one record now; returns its ``seq``.

        Raises:
            SyncError: the outbox refused the record (disk full, I/O error); the
                window it covered is not reported.
        """
        with self._lock:
            snap = self._window.take()
            record: dict[str, Any] = {
                "schema": 1,
                "device": self._topics.device,
                "ts": round(time.time(), 3),
                "window_s": snap["window_s"],
                "models": snap["models"],
                "system": self._system.sample(),
            }

            def fill(rec: dict[str, Any]) -> None:
                rec["outbox"] = {"evicted": self._outbox.evicted_total(), "refused": self._outbox.refused_total()}

            (seq,) = self._outbox.put_many([("metrics", self._topics.metrics, record, 1)], fill=fill)
        if self._link is not None:
            self._link.notify()
        return seq

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            native_calls.wait_turn()  # its ~0.6 ms of Python runs while inference is native
            try:
                self.publish_now()
            except SyncError as exc:  # a full disk must not kill the timer; the next tick tries again
                if str(exc) != self._failing:  # one line per distinct reason, not one per tick
                    log.error("could not queue a metrics record: %s; trying again every %g s", exc, self._interval)
                    self._failing = str(exc)
            except Exception:  # a bug: the timer goes on
                log.exception("could not queue a metrics record")
            else:
                if self._failing is not None:
                    log.info("metrics records are queued again")
                    self._failing = None

    def start(self) -> None:
        """Start the timer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the timer and queue a last record covering the time since the previous one.

        The timer is stopped first, so it is stopped even when the last record cannot be queued.

        Raises:
            SyncError: the outbox refused the last record (disk full, I/O error).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.publish_now()


class ResultsSink:
    """A pipeline sink that queues one ``results`` record per inference (PROTOCOL.md).

    Records are committed to the outbox in batches (``batch`` records or
    ``max_delay_s``, whichever first) to keep the per-record cost down; a rate
    limit (records per second, token bucket; below 1 per second, one result every
    ``1 / rate`` seconds) skips and counts what is over it.
    The bucket starts full, so the first result of a run is queued whatever the rate.
    A batch is committed when a result comes, or, when none comes (a quiet
    camera, an MQTT source between messages), by a small thread at twice
    ``max_delay_s``: a result never waits for the next one to reach the disk.
    A batch the outbox refuses (a full disk) stays here: ``publish`` raises for the
    result that found it refused and keeps none of that one (the pipeline gives it
    again, as it gives a refused result to any sink), and a retried pipeline's
    next sink takes the rest over with ``carry_on`` and queues them first.
    ``queued`` counts the results stored in the outbox and ``skipped`` those over
    the rate limit, for the run's summary. With ``label`` (the daemon's
    ``"pipeline NAME"``, where no summary is printed) the skipped results are also
    logged: one INFO line at the first, then at most one per ``say_every_s`` with the
    count since the line before, and the rest at ``close``.
    """

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink | None,
        topics: Topics,
        *,
        qos: int = 1,
        max_per_s: float | None = None,
        batch: int = 64,
        max_delay_s: float = 0.1,
        label: str | None = None,
        say_every_s: float = 60.0,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError("results QoS must be 0 or 1")
        # as the CLI and config refuse them: 0, a negative rate or NaN skipped every result (a bucket that never
        # fills) without a word but the count; to publish none, leave the sink out
        if max_per_s is not None and not 0 < max_per_s < math.inf:
            raise ValueError(f"results rate must be a positive number of results per second, not {max_per_s!r}")
        self._outbox, self._link, self._topics = outbox, link, topics
        self._qos = qos
        self._rate = max_per_s
        # full, as ``_allow`` caps it: the first result passes at any rate (a bucket started at a rate below 1 held
        # every result back for the first 1 / rate seconds: ``predict`` of two inputs at 0.5 queued none)
        self._tokens = 0.0 if max_per_s is None else max(max_per_s, 1.0)
        self._last = time.monotonic()
        self._pending: list[tuple[str, str, dict[str, Any], int]] = []
        self._oldest = 0.0
        self._batch, self._max_delay = batch, max_delay_s
        self._cond = threading.Condition()  # guards the batch; the flusher waits on it
        self._flusher: threading.Thread | None = None
        self._closed = False
        self._failure = ""  # the flusher's last failure, said once
        self.skipped = 0  # results over the rate limit, never queued
        self.queued = 0  # results stored in the outbox
        self._label, self._say_every = label, say_every_s
        self._unsaid = 0  # skipped results not logged yet
        self._said = float("-inf")  # when the last such line was logged (time.monotonic())

    def carry_on(self, previous: ResultsSink) -> None:
        """Go on from ``previous``, a retried pipeline's sink before this one; call it before this one takes a result.

        This sink takes over the records ``previous`` holds and could not queue (the outbox refused its batch,
        a full disk): they are queued first, in their order, within ``2 * max_delay_s`` or with this sink's
        first batch. The pipeline counted their inputs as given to this sink and a retry leaves them out
        (``edgerun.sinks.once_per_input``), so left behind they would be lost without a word. It also counts
        on from ``previous``'s skipped results and when it last said so (a source that fails and reopens does
        not say it more often), and from its rate limit's bucket (a retry lets no new burst through).
        """
        with previous._cond:
            held, previous._pending = previous._pending, []
        self.skipped, self._said = previous.skipped, previous._said
        self._tokens, self._last = previous._tokens, previous._last
        if held:
            with self._cond:
                self._pending[:0] = held
                self._oldest = time.monotonic()
                self._wake_flusher()

    @property
    def unqueued(self) -> int:
        """Results this sink holds and has not queued in the outbox yet (a batch still filling, or refused)."""
        with self._cond:
            return len(self._pending)

    def _allow(self) -> bool:
        """One token per result; the bucket fills at the rate and holds ``max(rate, 1)`` tokens: a rate
        below 1 per second (0.5: one result every 2 s) still lets a whole result through, where a
        bucket capped at the rate itself never reached the token one result costs."""
        if self._rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(max(self._rate, 1.0), self._tokens + (now - self._last) * self._rate)
        self._last = now
        allowed = self._tokens >= 1.0
        if allowed:
            self._tokens -= 1.0
        else:
            self.skipped += 1
            self._unsaid += 1
        if self._unsaid and self._label is not None and now - self._said >= self._say_every:
            self._say_skipped(now)
        return allowed

    def _say_skipped(self, now: float) -> None:
        """One line for the results skipped since the last one (the sink thread, or ``close``)."""
        log.info(
            "%s: %d result(s) skipped over the results rate limit (%g per second) since the last such line, %d in all",
            self._label,
            self._unsaid,
            self._rate,
            self.skipped,
        )
        self._unsaid, self._said = 0, now

    def publish(self, result: Result) -> None:
        """Queue the result of one inference (failed frames are not results)."""
        if not result.ok or not self._allow():
            return
        r = result.record
        record = {
            "ts": round(result.frame.ts, 3),
            "source": r["input"],
            "model": r["model"],
            "version": r["version"],
            "output": r["output"],
        }
        with self._cond:
            if not self._pending:
                self._oldest = time.monotonic()
                self._wake_flusher()  # once per batch, not per record
            item = (f"results/{r['model']}", self._topics.results(r["model"]), record, self._qos)
            self._pending.append(item)
            if len(self._pending) >= self._batch or time.monotonic() - self._oldest >= self._max_delay:
                try:
                    self._flush()
                except BaseException:
                    # this result is refused, as by any sink that raises: the pipeline gives it again (a daemon's
                    # retry), so it is not kept too; the batch before it stays, taken (``carry_on``)
                    if self._pending and self._pending[-1] is item:
                        self._pending.pop()
                    raise

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_when_quiet, name="results-flush", daemon=True)
            self._flusher.start()
        else:
            self._cond.notify()

    def _flush_when_quiet(self) -> None:
        """Commit a batch that no later result came to commit, ``2 * max_delay_s`` after it began."""
        with self._cond:
            while not self._closed:
                left = self._oldest + 2 * self._max_delay - time.monotonic()
                if not self._pending or left > 0:
                    self._cond.wait(left if self._pending else None)
                    continue
                try:
                    self._flush()
                except Exception as exc:  # a full disk: the batch is kept and tried again in 5 s
                    if str(exc) != self._failure:
                        log.warning("results: %d record(s) not queued yet: %s", len(self._pending), exc)
                    self._failure = str(exc)
                    self._oldest = time.monotonic() + 5.0
                else:
                    self._failure = ""

    def flush(self) -> None:
        """Commit what is buffered."""
        with self._cond:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._outbox.put_many(self._pending)
            self.queued += len(self._pending)
            self._pending = []
            if self._link is not None:
                self._link.notify()

    def close(self) -> None:
        """Commit the rest (and, with a ``label``, log the skipped results not said yet)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._flusher is not None:
            self._flusher.join()
        if self._unsaid and self._label is not None:
            self._say_skipped(time.monotonic())
        self.flush()
