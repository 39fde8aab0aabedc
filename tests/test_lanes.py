"""The pipeline's hand-over between threads: bounded, ordered, a blocked producer woken once half empty."""

from __future__ import annotations

import threading
import time

from edgerun import lanes
from edgerun.lanes import END, NOTHING, Channel, Lanes


def test_a_channel_is_a_bounded_fifo() -> None:
    channel = Channel(3)
    assert [channel.put(i, 0.01) for i in range(4)] == [True, True, True, False]  # the fourth finds no room
    assert [channel.get(0.01) for _ in range(4)] == [0, 1, 2, NOTHING]
    assert channel.get(None) is NOTHING  # no wait at all


def test_a_blocked_producer_is_woken_once_the_channel_is_half_empty_not_per_item() -> None:
    channel = Channel(8)
    for i in range(8):
        channel.put(i, 1.0)
    put_at: list[int] = []  # items left in the channel when the blocked put went through

    def producer() -> None:
        channel.put(8, 30.0)  # blocks: the channel is full
        put_at.append(len(channel._items) - 1)

    thread = threading.Thread(target=producer)
    thread.start()
    taken = [channel.get(1.0) for _ in range(3)]
    thread.join(0.3)
    assert thread.is_alive()  # five left: still asleep (a queue.Queue would have woken it at the first get)
    taken.append(channel.get(1.0))
    thread.join(10)
    assert not thread.is_alive() and put_at == [4]  # woken when half of the 8 were left
    assert taken == list(range(4))
    assert [channel.get(0.01) for _ in range(6)] == [4, 5, 6, 7, 8, NOTHING]


def test_a_waiting_consumer_is_woken_by_each_item() -> None:
    channel = Channel(4)
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.extend(channel.get(30.0) for _ in range(2)))
    consumer.start()
    time.sleep(0.05)
    channel.put("a", 1.0)
    time.sleep(0.05)
    assert got == ["a"]  # taken before the second item exists
    channel.put("b", 1.0)
    consumer.join(5)
    assert got == ["a", "b"]


def test_lanes_keep_the_order_whatever_order_the_workers_finish_in() -> None:
    abort = threading.Event()
    into, out = Lanes(3, 2, abort), Lanes(3, 2, abort)

    def worker(lane: int) -> None:  # lane 1 is slow: the others finish their items first
        while (item := lanes.get(into.channels[lane], abort)) is not END:
            time.sleep(0.01 if lane == 1 else 0.0)
            lanes.put(out.channels[lane], item * 10, abort)
        lanes.put(out.channels[lane], END, abort)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in workers:
        t.start()

    def feed() -> None:
        for i in range(20):
            into.put(i)
        into.end()

    feeder = threading.Thread(target=feed)
    feeder.start()
    results = []
    while (item := out.get()) is not END:
        results.append(item)
    feeder.join(5)
    for t in workers:
        t.join(5)
    assert results == [i * 10 for i in range(20)]


def test_waiting_gives_up_when_the_run_is_aborted() -> None:
    abort = threading.Event()
    full, empty = Channel(1), Channel(1)
    full.put("x", 0.01)
    abort.set()
    assert lanes.put(full, "y", abort) is False
    assert lanes.get(empty, abort) is END
    assert Lanes(2, 1, abort).get_nowait() is NOTHING
