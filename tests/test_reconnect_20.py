"""The link's reconnect rules on their own (``edgerun.sync.reconnect``): pure logic, no broker.

The waits are drawn by a real ``uniform`` that returns one bound (the top, or the bottom), so each
wait is the bound it was drawn under; times are plain numbers handed in.
"""

from __future__ import annotations

import random

from edgerun.sync.reconnect import (
    QUICK_CLOSES,
    STEADY_S,
    TAKEN_OVER,
    TOO_LARGE,
    WEDGE_STRIKES,
    WEDGE_WINDOW_S,
    ReconnectPolicy,
    TooLarge,
)


def top(low: float, high: float) -> float:
    return high


def bottom(low: float, high: float) -> float:
    return low


def quick_close(policy: ReconnectPolicy, now: float) -> tuple[bool, int]:
    """A connection accepted at ``now`` and closed a second later with no reason and nothing in flight."""
    policy.accepted(now)
    verdict = policy.closed(now + 1, reason=None, keepalive_lost=False, wire={}, records={})
    assert verdict.blame is None
    policy.next_wait(accepted=True, attempt_s=1.0)
    return verdict.takeover_suspected, verdict.quick_closes


def test_the_backoff_doubles_up_to_its_maximum_and_each_wait_is_drawn_below_it() -> None:
    policy = ReconnectPolicy(min_s=1.0, max_s=8.0, uniform=top)
    waits = [policy.next_wait(accepted=False, attempt_s=0.1) for _ in range(6)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    jittered = ReconnectPolicy(min_s=1.0, max_s=8.0, uniform=random.Random(20).uniform)
    for bound in [1.0, 2.0, 4.0, 8.0, 8.0]:
        assert 0.0 <= jittered.next_wait(accepted=False, attempt_s=0.1) <= bound


def test_a_connection_accepted_and_dropped_at_once_does_not_reset_the_backoff_or_the_log_once_state() -> None:
    policy = ReconnectPolicy(min_s=1.0, max_s=64.0, uniform=top)
    assert policy.news("connection lost") and not policy.news("connection lost")
    waits = []
    for now in [0.0, 100.0, 200.0]:
        policy.accepted(now)
        assert policy.check_steady(now + STEADY_S - 0.1) is None
        policy.closed(now + STEADY_S - 0.1, reason=None, keepalive_lost=True, wire={}, records={})
        waits.append(policy.next_wait(accepted=True, attempt_s=STEADY_S - 0.1))
    assert waits == [1.0, 2.0, 4.0]
    assert not policy.news("connection lost")  # still said once


def test_a_steady_connection_resets_the_backoff_and_the_log_once_state() -> None:
    policy = ReconnectPolicy(min_s=1.0, max_s=64.0, uniform=top)
    for _ in range(4):
        policy.next_wait(accepted=False, attempt_s=0.1)
    assert policy.news("connection lost")
    policy.accepted(1000.0)
    assert policy.check_steady(1000.0 + STEADY_S) is None  # steady, and no takeover ended
    policy.closed(1000.0 + 3600, reason=None, keepalive_lost=False, wire={}, records={})
    assert policy.next_wait(accepted=True, attempt_s=3600.0) == 1.0
    assert policy.news("connection lost")  # news again
    # the next attempt starts unsteady: a refused one does not reset the backoff again
    assert policy.next_wait(accepted=False, attempt_s=0.1) == 2.0
    # nor does only an attempt that failed after a long time (a TCP timeout)
    assert policy.next_wait(accepted=False, attempt_s=61.0) == 1.0


def test_three_quick_unexplained_closes_suspect_a_takeover_once_and_the_waits_become_long() -> None:
    policy = ReconnectPolicy(min_s=0.05, max_s=1.0, uniform=bottom)
    said = [quick_close(policy, now) for now in range(QUICK_CLOSES + 2)]
    assert said == [(False, 1), (False, 2), (True, 3), (False, 4), (False, 5)]  # one WARNING
    assert policy.taken_over
    assert policy.next_wait(accepted=True, attempt_s=1.0) == 0.5  # half the maximum, at the least
    # a connection must outlast the other client's longest wait before the usual backoff is back
    policy.accepted(100.0)
    assert policy.check_steady(100.0 + STEADY_S) is None and policy.taken_over
    assert policy.check_steady(100.0 + STEADY_S + 1.0) == STEADY_S + 1.0
    assert not policy.taken_over
    policy.closed(200.0, reason=None, keepalive_lost=False, wire={}, records={})
    assert policy.next_wait(accepted=True, attempt_s=100.0) == 0.0  # full jitter from the bottom again


def test_a_close_explained_by_the_broker_or_a_keepalive_timeout_or_after_a_steady_connection_is_not_quick() -> None:
    policy = ReconnectPolicy(min_s=0.05, max_s=1.0, uniform=top)
    quick_close(policy, 0.0)
    quick_close(policy, 10.0)
    policy.accepted(20.0)
    verdict = policy.closed(21.0, reason=0x89, keepalive_lost=False, wire={}, records={})  # Server busy
    assert (verdict.takeover_suspected, verdict.quick_closes) == (False, 0)
    assert [quick_close(policy, now) for now in (30.0, 40.0)] == [(False, 1), (False, 2)]
    policy.accepted(50.0)
    assert policy.closed(51.0, reason=None, keepalive_lost=True, wire={}, records={}).quick_closes == 0
    policy.accepted(60.0)
    policy.check_steady(60.0 + STEADY_S)
    assert policy.closed(60.0 + STEADY_S, reason=None, keepalive_lost=False, wire={}, records={}).quick_closes == 0
    assert not policy.taken_over


def test_a_disconnect_saying_session_taken_over_means_long_waits_at_once_without_a_second_line() -> None:
    policy = ReconnectPolicy(min_s=0.05, max_s=2.0, uniform=bottom)
    policy.accepted(0.0)
    verdict = policy.closed(0.5, reason=TAKEN_OVER, keepalive_lost=False, wire={7: 0.4}, records={7: 100})
    assert verdict.blame is None and not verdict.takeover_suspected  # the link says the broker's reason
    assert policy.taken_over and not policy.one_at_a_time
    assert policy.next_wait(accepted=True, attempt_s=0.5) == 1.0


def test_a_close_is_held_against_the_oldest_record_on_the_wire_and_they_go_again_one_at_a_time() -> None:
    policy = ReconnectPolicy(min_s=0.05, max_s=1.0)
    # message 5 is the status (a direct publish), older than the records 100 and 101 sent as 7 and 8
    wire = {5: 10.0, 7: 10.0, 8: 10.1}
    verdict = policy.closed(11.0, reason=None, keepalive_lost=False, wire=wire, records={7: 100, 8: 101})
    assert verdict.blame is not None
    assert (verdict.blame.mid, verdict.blame.record, verdict.blame.losses, verdict.blame.act) == (
        7,
        100,
        1,
        "take_back",
    )
    assert verdict.quick_closes == 0 and policy.one_at_a_time
    acts = []
    for at in (20.0, 30.0, 40.0):  # record 100 alone on the wire, sent again as message 9
        blame = policy.closed(at + 1, reason=None, keepalive_lost=False, wire={9: at}, records={9: 100}).blame
        assert blame is not None
        acts.append((blame.losses, blame.act))
    assert acts == [(2, "keep"), (3, "warn"), (4, "keep")]  # never refused on that guess
    assert WEDGE_STRIKES == 3
    policy.answered(101)
    assert policy.one_at_a_time  # another record's PUBACK clears nothing
    policy.answered(100)
    assert not policy.one_at_a_time


def test_a_close_long_after_the_oldest_record_went_out_blames_none_and_counts_as_quick() -> None:
    policy = ReconnectPolicy(min_s=0.05, max_s=1.0)
    policy.accepted(0.0)
    late = 10.0 + WEDGE_WINDOW_S + 0.1
    verdict = policy.closed(late, reason=None, keepalive_lost=False, wire={7: 10.0}, records={7: 100})
    assert verdict.blame is None and verdict.quick_closes == 1 and not policy.one_at_a_time
    # nor is a close the broker explains held against a record
    verdict = policy.closed(10.5, reason=0x87, keepalive_lost=False, wire={7: 10.0}, records={7: 100})
    assert verdict.blame is None and verdict.quick_closes == 0


def test_packet_too_large_refuses_the_record_alone_on_the_wire_only_when_nothing_older_is() -> None:
    policy = ReconnectPolicy(min_s=0.05, max_s=1.0)
    older_status = policy.closed(1.0, reason=TOO_LARGE, keepalive_lost=False, wire={5: 0.5, 7: 0.6}, records={7: 100})
    assert older_status.blame is not None and older_status.blame.act == "keep"  # the 0x95 may be the status's
    alone = policy.closed(2.0, reason=TOO_LARGE, keepalive_lost=False, wire={9: 1.5}, records={9: 100})
    assert alone.blame is not None
    assert (alone.blame.mid, alone.blame.record, alone.blame.act) == (9, 100, "refuse")
    assert not policy.one_at_a_time


def test_the_packet_limit_changes_only_with_a_new_positive_limit_and_each_reason_is_said_once_a_topic() -> None:
    limits = TooLarge()
    assert limits.limit is None
    assert limits.connack(380) and limits.limit == 380
    assert not limits.connack(380)
    assert limits.connack(None) and limits.limit is None
    assert not limits.connack(0) and not limits.connack("380")
    assert limits.news("t/metrics", "over 380") and not limits.news("t/metrics", "over 380")
    assert limits.news("t/results", "over 380")
    assert limits.news("t/metrics", "0x95") and limits.news("t/metrics", "over 380")  # a new reason is news
