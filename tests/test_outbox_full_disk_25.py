"""An outbox that filled its disk while the broker was down drains once the broker is back.

A walkthrough put the state directory on a 256 KiB tmpfs with the broker down: the outbox's WAL
filled the disk (217 KB of WAL for a 34 KB queue: no checkpoint ran), and once the broker came back
it acknowledged 100 records and the link failed deleting them (*could not delete acknowledged
records from the outbox ...: the disk is full*), flapped online and offline on every reconnect,
never sent the rest, counted the 100 acknowledged records as undelivered at the stop (to be sent
again: duplicates), and the next start was refused (*state_dir ...: cannot write in it: No space
left on device*). Real tmpfs mounts filled by the outbox itself, a real Mosquitto stopped and
started, the real link and outbox.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgerun.errors import SyncError
from edgerun.state import check_state_dir
from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox, read_stats
from edgerun.sync.service import OUTBOX_FILE, SyncService
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from edgerun.telemetry.metrics import Metrics
from tests.conftest import Broker, fill_disk
from tests.test_sync import Collector, wait_until

DISK_BYTES = 256 * 1024  # the walkthrough's tmpfs
MAX_PUTS = 2000  # a bound on the filling loop: the disk is full long before


def settings(broker: Broker) -> MqttSettings:
    """Fast reconnects, so the link finds the broker within a second of its start."""
    return MqttSettings(host="127.0.0.1", port=broker.port, keepalive_s=5, reconnect_min_s=0.1, reconnect_max_s=0.5)


def fill(box: Outbox, topics: Topics, batch: int) -> list[tuple[str, int]]:
    """Queue results in batches of ``batch`` (as the results sink commits them), and a metrics record
    after each, until the disk refuses one; the ``(topic, seq)`` of every record queued."""
    queued: list[tuple[str, int]] = []
    results = topics.results("m")
    for i in range(MAX_PUTS):
        items = [("results/m", results, {"i": i, "label": "x" * 200}, 1) for _ in range(batch)]
        try:
            seqs = box.put_many(items)
            queued += [(results, seq) for seq in seqs]
            queued.append((topics.metrics, box.put("metrics", topics.metrics, {"i": i})))
        except SyncError as exc:
            assert "the disk is full" in str(exc)
            return queued
    raise AssertionError(f"{MAX_PUTS} batches and the disk is still not full")


def received(collector: Collector, topics: Topics) -> list[tuple[str, int]]:
    return [(t, s) for t in (topics.metrics, topics.results("m")) for s in collector.seqs(t)]


@pytest.fixture
def down(own_broker: Broker) -> Iterator[tuple[Broker, Collector]]:
    """A stopped broker holding the persistent session of a subscriber to ``edgerun/#``, which
    gets what the device publishes once the broker is started again."""
    collector = Collector(own_broker.port, client_id=f"fleet{time.monotonic_ns()}")
    own_broker.stop()
    yield own_broker, collector
    collector.close()


@pytest.mark.parametrize("batch", [1, 16], ids=["one-a-commit", "batches"])
def test_an_outbox_that_filled_its_disk_delivers_every_record_exactly_once_when_the_broker_is_back(
    small_disk: Callable[[int], Path], down: tuple[Broker, Collector], batch: int
) -> None:
    broker, collector = down
    disk = small_disk(DISK_BYTES)
    topics = Topics("edgerun", f"full25-{time.monotonic_ns()}")
    box = Outbox(disk / OUTBOX_FILE)
    queued = fill(box, topics, batch)
    assert len(queued) > 100  # more than the link has in flight at once: it has to delete to go on
    link = MqttLink(settings(broker), topics, box)
    link.start()
    try:
        broker.start()
        assert link.wait_connected(10)
        assert link.wait_drained(30), f"{len(box)} records left"
        wait_until(lambda: len(received(collector, topics)) >= len(queued), 10, "every record at the subscriber")
        assert link.state().connects == 1 and link.last_error is None  # no flapping
    finally:
        link.stop(flush_timeout_s=2)
    assert sorted(received(collector, topics)) == sorted(queued)  # each once
    assert len(box) == 0 and box.stats().records == 0
    box.close()


def each_once(collector: Collector, topics: Topics, queued: list[tuple[str, int]]) -> None:
    """Every record of ``queued`` reached the subscriber exactly once (later records may follow them)."""
    wait_until(lambda: set(queued) <= set(received(collector, topics)), 10, "every record at the subscriber")
    got = received(collector, topics)
    assert sorted(r for r in got if r in set(queued)) == sorted(queued)


def test_a_restart_on_the_disk_the_outbox_filled_starts_and_delivers_it(
    small_disk: Callable[[int], Path], down: tuple[Broker, Collector], caplog: pytest.LogCaptureFixture
) -> None:
    broker, collector = down
    disk = small_disk(DISK_BYTES)
    state = disk / "state"
    device = f"full25-{time.monotonic_ns()}"
    first = SyncService(settings(broker), device_id=device, state_dir=state, metrics=Metrics(), interval_s=3600)
    topics = first.topics
    queued = fill(first.outbox, topics, 16)
    first.stop()  # the broker still down: all of it stays queued
    assert first.undelivered == len(queued)
    fill_disk(disk)  # and whatever the closing freed is taken too: not a page left

    # Refused before: "state_dir ...: cannot write in it: No space left on device" (the daemon's check,
    # then every claim), and the outbox could not have deleted a record (nor made its -shm index).
    check_state_dir(state, create=True)
    second = SyncService(settings(broker), device_id=device, state_dir=state, metrics=Metrics(), interval_s=3600)
    second.start()
    try:
        broker.start()
        assert second.link.wait_connected(10)
        assert second.link.wait_drained(30), f"{len(second.outbox)} records left"
        each_once(collector, topics, queued)
        assert second.link.state().connects == 1
    finally:
        second.stop(flush_timeout_s=2)
    assert second.undelivered == 0
    assert read_stats(state / OUTBOX_FILE).records == 0
    said = [r.getMessage() for r in caplog.records if r.name == "edgerun.state"]
    assert len(said) == 1 and said[0].startswith(f"state_dir {state}: cannot write in it (No space left on device)")


def test_a_full_disk_under_an_outbox_delivered_to_the_end_is_refused_as_any_full_disk(
    small_disk: Callable[[int], Path],
) -> None:
    """Only an outbox that holds records is a reason to start on a full disk (docs/daemon.md): one whose every
    record was delivered has nothing to drain, and its file is no smaller than 0 bytes for that."""
    from edgerun.errors import ConfigError
    from edgerun.sync.outbox import Outbox

    disk = small_disk(DISK_BYTES)
    state = disk / "state"
    state.mkdir()
    box = Outbox(state / OUTBOX_FILE)
    box.put("metrics", "edgerun/dev/metrics", {"i": 1})
    box.ack([p.id for p in box.pending()])
    box.close()
    assert read_stats(state / OUTBOX_FILE).records == 0
    fill_disk(disk)
    with pytest.raises(ConfigError, match="cannot write in it: No space left on device"):
        check_state_dir(state, create=True)


@pytest.mark.logs_errors
def test_records_acknowledged_but_not_deleted_are_not_counted_as_undelivered_nor_sent_again_by_the_process(
    small_disk: Callable[[int], Path], down: tuple[Broker, Collector], caplog: pytest.LogCaptureFixture
) -> None:
    # An outbox with no reserve (as one an older edgerun made) on a disk it filled: no deletion fits.
    broker, collector = down
    disk = small_disk(DISK_BYTES)
    state = disk / "state"
    device = f"held25-{time.monotonic_ns()}"
    service = SyncService(settings(broker), device_id=device, state_dir=state, metrics=Metrics(), interval_s=3600)
    topics = service.topics
    queued = fill(service.outbox, topics, 16)
    Path(f"{state / OUTBOX_FILE}-reserve").unlink(missing_ok=True)
    filler = fill_disk(disk)
    service.start()
    try:
        broker.start()
        assert service.link.wait_connected(10)
        assert service.link.wait_drained(30)  # every record acknowledged, none deleted: none left to send
        each_once(collector, topics, queued)
        assert service.link.state().connects == 1 and service.link.last_error is None  # no flapping
    finally:
        service.stop(flush_timeout_s=2)
    assert service.undelivered == 0  # the broker has them all
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("edgerun")]
    assert not [m for _, m in lines if "not delivered" in m]
    (held,) = [m for _, m in lines if "the broker acknowledged stay in it" in m]
    said = re.match(rf"outbox {re.escape(str(state / OUTBOX_FILE))}: (\d+) record\(s\) the broker acknowledged", held)
    assert said is not None, held
    assert 0 < int(said[1]) == read_stats(state / OUTBOX_FILE).records  # all of them but what fitted in a deletion
    warned = [m for _, m in lines if "acknowledged are held: not sent again" in m]  # once, not once per PUBACK
    assert len(warned) == 1 and "could not delete acknowledged records" in warned[0] and "disk is full" in warned[0]
    errors = [m for lvl, m in lines if lvl >= logging.ERROR]  # the last metrics record, where it did not fit
    assert all("could not queue the last metrics record" in m and "the disk is full" in m for m in errors), errors

    # They are still in the file: once there is room, the next start sends them again (at least once).
    filler.unlink()
    again = SyncService(settings(broker), device_id=device, state_dir=state, metrics=Metrics(), interval_s=3600)
    again.start()
    try:
        assert again.link.wait_drained(30)
        total = len(queued) + int(said[1])
        wait_until(lambda: len(received(collector, topics)) >= total, 10, "the records sent again")
    finally:
        again.stop(flush_timeout_s=2)
    assert read_stats(state / OUTBOX_FILE).records == 0
