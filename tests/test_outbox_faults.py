"""The outbox on a full disk: a real, small filesystem filled with a real file, then freed."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgerun.errors import ConfigError, SyncError
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.publish import MetricsPublisher
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics
from tests.conftest import Broker, fill_disk
from tests.test_sync import wait_until

DISK_BYTES = 2 * 1024 * 1024


def big() -> list[tuple[str, str, dict[str, str], int]]:
    """150 KB of results: more than a full disk has room for."""
    return [("results/m", "t", {"blob": "x" * 3000}, 1) for _ in range(50)]


def _queued(box: Outbox) -> list[tuple[str, int]]:
    return [(p.stream, p.seq) for p in box.pending(limit=1000)]


def _five_queued(small_disk: Callable[[int], Path]) -> tuple[Path, Outbox, list[tuple[str, int]]]:
    """A small disk holding an outbox with five records: the disk, the outbox, what it holds."""
    disk = small_disk(DISK_BYTES)
    box = Outbox(disk / "outbox.sqlite")
    box.put_many([("metrics", "t", {"i": i}, 1) for i in range(5)])
    return disk, box, _queued(box)


def test_a_write_refused_by_a_full_disk_keeps_the_queued_records_and_the_count_exact(
    small_disk: Callable[[int], Path],
) -> None:
    disk, box, before = _five_queued(small_disk)
    filler = fill_disk(disk)
    for items in (big()[:1], big()):
        with pytest.raises(SyncError):
            box.put_many(items)
        assert len(box) == 5 and box.stats().records == 5
        assert _queued(box) == before
    filler.unlink()
    assert box.put("metrics", "t", {"after": 1}) == 6  # nothing of the refused batches took a seq
    assert len(box) == 6
    box.ack(p.id for p in box.pending(limit=1000))
    assert len(box) == 0 and box.stats().records == 0
    box.close()


def test_a_full_disk_is_one_line_that_says_so(small_disk: Callable[[int], Path]) -> None:
    disk = small_disk(DISK_BYTES)
    box = Outbox(disk / "outbox.sqlite")
    box.put("metrics", "t", {"i": 0})
    fill_disk(disk)
    with pytest.raises(SyncError, match="the disk is full") as caught:
        box.put_many(big())
    message = str(caught.value)
    assert "\n" not in message and str(disk / "outbox.sqlite") in message
    box.close()


def test_acknowledgements_on_a_full_disk_still_delete_and_keep_the_count_exact(
    small_disk: Callable[[int], Path],
) -> None:
    """A deletion frees space: the outbox checkpoints its WAL, or frees its reserve, to make it (it raised
    "the disk is full" before, and the link reconnected for ever: test_outbox_full_disk_25)."""
    disk, box, before = _five_queued(small_disk)
    ids = [p.id for p in box.pending()]
    filler = fill_disk(disk)
    box.ack(ids[:2])
    assert len(box) == 3 and _queued(box) == before[2:]
    filler.unlink()
    box.close()


def test_a_refused_write_does_not_leave_the_link_waiting_for_ever_to_drain(
    broker: Broker, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(DISK_BYTES)
    box = Outbox(disk / "outbox.sqlite")
    topics = Topics("edgerun", "full-disk-dev")
    box.put_many([("metrics", topics.metrics, {"i": i}, 1) for i in range(5)])
    filler = fill_disk(disk)
    with pytest.raises(Exception):  # noqa: B017 - which exception is another test's subject
        box.put_many(big())
    filler.unlink()
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=2), topics, box)
    link.start()
    try:
        assert link.wait_drained(20)  # every record queued was delivered, and len() says so
        assert len(box) == 0
    finally:
        link.stop(flush_timeout_s=2)
        box.close()


@pytest.mark.logs_errors
def test_the_metrics_timer_on_a_full_disk_says_so_in_one_line_and_goes_on_once_there_is_room(
    small_disk: Callable[[int], Path], caplog: pytest.LogCaptureFixture
) -> None:
    disk = small_disk(DISK_BYTES)
    box = Outbox(disk / "outbox.sqlite")
    topics = Topics("edgerun", "full-timer-dev")
    box.put("metrics", topics.metrics, {"i": 0})
    filler = fill_disk(disk)
    publisher = MetricsPublisher(Metrics(), box, None, topics, interval_s=0.02)
    publisher.start()
    try:

        def refusals() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "edgerun.sync.publish" and r.levelno >= logging.ERROR]

        wait_until(lambda: len(refusals()) > 0, 10, "the first refused metrics record")
        time.sleep(0.5)  # some 25 more ticks, each refused
        assert len(box) == 1
        errors = refusals()
        assert len(errors) == 1, [r.getMessage() for r in errors]  # one line, not one per tick
        assert "the disk is full" in errors[0].getMessage() and errors[0].exc_info is None
        filler.unlink()
        wait_until(lambda: len(box) > 1, 10, "a metrics record queued once the disk has room")
    finally:
        publisher.stop()
        box.close()
    assert any("queued again" in r.getMessage() for r in caplog.records if r.name == "edgerun.sync.publish")


@pytest.mark.parametrize("left", [0, 16 * 1024])
def test_an_outbox_that_cannot_be_created_on_a_full_disk_says_the_disk_is_full(
    small_disk: Callable[[int], Path], left: int
) -> None:
    # With some room left, SQLite creates the database and then fails on its WAL file with
    # "disk I/O error": a daemon started on a full SD card said only that.
    disk = small_disk(256 * 1024)
    filler = fill_disk(disk)
    if left:
        os.truncate(filler, filler.stat().st_size - left)
    with pytest.raises(ConfigError) as caught:
        Outbox(disk / "outbox.sqlite")
    message = str(caught.value)
    assert message.startswith(f"outbox {disk / 'outbox.sqlite'} is unusable: the disk is full ("), message
