"""The MQTT link's rules for a closed connection: how long to wait, whom to blame, what to say once.

Pure logic, no socket and no paho client: the link (``edgerun.sync.link``) does the I/O and the
logging, and consults a ``ReconnectPolicy`` at four moments: a CONNACK (``accepted``), every pass
of a live connection (``check_steady``), the end of an accepted connection (``closed``), and the
end of every attempt (``next_wait``). Times are ``time.monotonic()`` seconds, passed in.

Reconnecting: exponential backoff with full jitter. The backoff and the log-once state are reset
only by a connection that stayed up ``STEADY_S`` seconds, not by every CONNACK, so a broker that
accepts the client and drops it at once sees the backoff grow and the log gets one line.

Blame: the broker handles packets in order, so a connection closed right after records went out
(within ``WEDGE_WINDOW_S``), with no reason or with a DISCONNECT 0x95 ``Packet too large``, is held
against the oldest record on the wire. With several in flight they are sent again one at a time
(``one_at_a_time``) so that whose fault it is becomes sure; a record alone on the wire that the
broker closes the connection on ``WEDGE_STRIKES`` times in a row is named in a WARNING (never
deleted on that guess), and one the broker closes it on with 0x95, nothing older on the wire, is
refused. A loss the broker explains otherwise, or a keepalive timeout, counts against no record.

Takeover: a DISCONNECT 0x8E ``Session taken over`` (another client connected with this client id),
or ``QUICK_CLOSES`` consecutive connections closed soon after CONNACK with no reason and no record
to blame (the same, from a broker that does not say it), means the link then waits between half the
maximum backoff and the maximum before each reconnect, until a connection outlasts that maximum
(by ``STEADY_S``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "QUICK_CLOSES",
    "STEADY_S",
    "TAKEN_OVER",
    "TOO_LARGE",
    "WEDGE_STRIKES",
    "WEDGE_WINDOW_S",
    "Blame",
    "Close",
    "ReconnectPolicy",
    "TooLarge",
]

STEADY_S = 10.0  # a connection up this long resets the backoff and the log-once state
WEDGE_STRIKES = 3  # consecutive losses with one record alone in flight before it is named in a WARNING
WEDGE_WINDOW_S = 5.0  # a loss counts against that record only this soon after it went on the wire
QUICK_CLOSES = 3  # consecutive unexplained closes soon after CONNACK before a client id clash is suspected
LONG_ATTEMPT_S = 60.0  # an attempt that failed before CONNACK after this long resets the backoff
TAKEN_OVER = 0x8E  # DISCONNECT reason: another client connected with this client id
TOO_LARGE = 0x95  # DISCONNECT reason: Packet too large


@dataclass(frozen=True)
class Blame:
    """A close held against the record sent as message ``mid`` (outbox id ``record``), the oldest on the wire.

    ``act`` is what the link does about it: ``refuse`` (drop the record: the broker said 0x95 and nothing
    older was on the wire), ``warn`` (name it in one WARNING: ``losses`` closes in a row while it was
    alone on the wire), ``take_back`` (several were in flight: send them again one at a time), ``keep``
    (nothing yet: it stays the suspect and goes again alone).
    """

    mid: int
    record: int
    losses: int
    act: Literal["refuse", "warn", "take_back", "keep"]


@dataclass(frozen=True)
class Close:
    """The verdict on a closed connection: the record blamed (None: none), and whether a client id
    takeover is suspected now for the first time (after ``quick_closes`` unexplained quick closes: one
    WARNING)."""

    blame: Blame | None
    takeover_suspected: bool
    quick_closes: int


class ReconnectPolicy:
    """The backoff, the log-once state, the blame of records and the takeover detection of one link.

    Args:
        min_s: the first backoff bound, seconds.
        max_s: the largest backoff bound, seconds; while taken over, the wait is between half of it and it.
        uniform: draws a wait between two bounds (``random.uniform``; a seeded one in tests).
    """

    def __init__(
        self, *, min_s: float, max_s: float, uniform: Callable[[float, float], float] = random.uniform
    ) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._uniform = uniform
        self.backoff = min_s  # the bound of the next wait, seconds
        self.taken_over = False  # another client connects with this client id: reconnect late
        self._said: str | None = None  # the last reason said, until a steady connection
        self._connack_at = 0.0  # this connection's CONNACK
        self._steady = False  # this connection stayed up long enough to reset the backoff and the log-once state
        self._quick_closes = 0  # unexplained closes soon after CONNACK, in a row
        # (outbox id, losses in a row it was the oldest in flight at); while set, one record is sent at a time
        self._suspect: tuple[int, int] | None = None

    @property
    def one_at_a_time(self) -> bool:
        """Whether records are sent one at a time, so that the record a close is due to is sure."""
        return self._suspect is not None

    def news(self, message: str) -> bool:
        """Whether ``message`` (a reason the connection failed) is to be logged: one line per distinct
        reason, not one per retry, and again only after a steady connection."""
        if message == self._said:
            return False
        self._said = message
        return True

    def accepted(self, now: float) -> None:
        """A CONNACK accepted the connection at ``now``."""
        self._connack_at = now

    def check_steady(self, now: float) -> float | None:
        """Once a connection has stayed up long enough, a later loss is news again and the backoff starts over.

        While another client takes this client id over, that takes longer than the other's longest wait.
        Returns how long the connection had to last when this call ended a takeover (for one INFO line),
        else None.
        """
        wanted = STEADY_S + (self.max_s if self.taken_over else 0.0)
        if self._steady or now - self._connack_at < wanted:
            return None
        self._steady = True
        self._said = None
        self._suspect = None
        self._quick_closes = 0
        if self.taken_over:
            self.taken_over = False
            return wanted
        return None

    def answered(self, record: int) -> None:
        """The broker acknowledged the record ``record``: the losses were not its doing; all may go again."""
        if self._suspect is not None and self._suspect[0] == record:
            self._suspect = None

    def closed(
        self,
        now: float,
        *,
        reason: int | None,
        keepalive_lost: bool,
        wire: Mapping[int, float],
        records: Mapping[int, int],
    ) -> Close:
        """An accepted connection ended at ``now``: count the loss against the record it may be due to, or
        against the client id (another client taking it over), which decides how the link waits.

        Args:
            now: when it ended.
            reason: the reason code of a DISCONNECT the broker sent (MQTT 5), None without one.
            keepalive_lost: the connection ended with a ping left unanswered.
            wire: QoS 1 message id -> when it last went on the wire, oldest first, until its PUBACK
                (direct publishes included).
            records: message id -> outbox id of the records in flight.
        """
        if reason == TAKEN_OVER:
            self.taken_over = True  # said by the link, once per distinct reason
            self._suspect = None
            return Close(None, False, self._quick_closes)
        explained = keepalive_lost or reason not in (None, TOO_LARGE)
        blame = None if explained else self._strike(now, wire, records, decisive=reason == TOO_LARGE)
        if blame is not None or explained or self._steady:
            self._quick_closes = 0
            return Close(blame, False, 0)
        self._quick_closes += 1
        suspected = self._quick_closes >= QUICK_CLOSES and not self.taken_over
        if suspected:
            self.taken_over = True
        return Close(None, suspected, self._quick_closes)

    def _strike(
        self, now: float, wire: Mapping[int, float], records: Mapping[int, int], *, decisive: bool
    ) -> Blame | None:
        """Count a loss against the oldest record in flight, when it came right after that record went on
        the wire; None when the loss is not taken as the doing of a message.

        The broker handles packets in order, so it closed the connection on the oldest message it had
        not acknowledged, unless the close cut off acknowledgements on their way: the records are then
        sent one at a time, and a record alone on the wire that the broker closes the connection on
        ``WEDGE_STRIKES`` times in a row is named (or once with a DISCONNECT 0x95: refused).
        """
        # the oldest record on the wire: a direct publish (the status sent at each CONNACK) may be older
        # and unacknowledged when the close cut its PUBACK off; with no record in flight, whose doing the
        # close was is not known (maybe a client id clash: the caller counts it so)
        oldest = next(((mid, at) for mid, at in wire.items() if mid in records), None)
        if oldest is None or now - oldest[1] > WEDGE_WINDOW_S:
            self._suspect = None
            return None
        mid = oldest[0]
        rid = records[mid]
        alone = sum(m in records for m in wire) == 1
        losses = self._suspect[1] + 1 if self._suspect is not None and self._suspect[0] == rid else 1
        self._suspect = (rid, losses)
        if alone and decisive and next(iter(wire)) == mid:  # nothing older: the 0x95 was for it
            self._suspect = None
            return Blame(mid, rid, losses, "refuse")
        if alone and losses == WEDGE_STRIKES:
            return Blame(mid, rid, losses, "warn")
        if not alone:
            return Blame(mid, rid, losses, "take_back")  # sent again one at a time
        return Blame(mid, rid, losses, "keep")

    def next_wait(self, *, accepted: bool, attempt_s: float) -> float:
        """The wait before the next attempt, seconds, after one that ended (``accepted``: it got a CONNACK;
        ``attempt_s``: how long it took); the next attempt starts as a new, unsteady connection.

        Full jitter (a random wait up to a bound that doubles up to ``max_s``), so a fleet does not
        reconnect in step; the bound starts over after a steady connection, or an attempt that failed
        after ``LONG_ATTEMPT_S``. While taken over, between half ``max_s`` and ``max_s``: the other
        client's wait is drawn the same way, so the two rarely meet.
        """
        if self._steady or (not accepted and attempt_s > LONG_ATTEMPT_S):
            self.backoff = self.min_s  # a connection that lasted, or an attempt that lasted, resets it
        if self.taken_over:
            self.backoff = self.max_s
            delay = self._uniform(self.backoff / 2, self.backoff)
        else:
            delay = self._uniform(0, self.backoff)
        self.backoff = min(self.backoff * 2, self.max_s)
        self._steady = False
        return delay


class TooLarge:
    """The broker's packet size limit for this connection, and what was said about records too large.

    One WARNING per topic and reason: ``over N`` (over the MQTT 5 CONNACK's Maximum Packet Size N),
    ``0x95`` (the broker closed the connection on it as too large), ``suspected`` (it kept closing the
    connection right after it, giving no reason).
    """

    def __init__(self) -> None:
        self.limit: int | None = None  # the broker's Maximum Packet Size (MQTT 5 CONNACK), this connection
        self._said: dict[str, str] = {}  # topic -> why a message on it was too large, said once per reason

    def connack(self, limit: object) -> bool:
        """Take the Maximum Packet Size of a new CONNACK (None, or not a positive int: no limit); whether
        the limit changed."""
        previous, self.limit = self.limit, limit if isinstance(limit, int) and limit > 0 else None
        return self.limit != previous

    def news(self, topic: str, why: str) -> bool:
        """Whether a message on ``topic`` too large for ``why`` is to be said (not said for that reason yet)."""
        if self._said.get(topic) == why:
            return False
        self._said[topic] = why
        return True
