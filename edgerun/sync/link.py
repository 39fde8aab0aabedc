"""The MQTT link: one connection per process, offline-first, never blocking inference.

One thread owns the paho client (callback API version 2) and does everything
with it: connecting with exponential backoff and full jitter, running paho's
network loop, re-subscribing after every connect (also when the broker lost the
session), publishing the retained ``status`` record, and draining the outbox in
order with a bounded number of QoS 1 messages in flight. Other threads only hand
work over (``submit`` through the outbox, ``publish`` and ``subscribe`` through a
queue) and return at once.

Delivery: at least once to the broker. A record leaves the outbox only when the
broker acknowledged it (PUBACK). After a reconnect, sending restarts at the
oldest unacknowledged record, so a receiver may see duplicates, which it drops
by ``(device, epoch, seq)``; after de-duplication the order is the order of
``seq``.

The link never dies of an error of its own: an unexpected exception in a serve
pass (the outbox failing, a bug) is logged, the connection is closed, and the
link reconnects after the backoff; acknowledgements not yet written to the outbox
are kept and written on a later pass. A full disk is not such an error: the outbox
makes room to delete acknowledged records, and where it cannot it holds them (not
counted, not sent again) without raising, so the link goes on (``Outbox.ack``).

Refusals: a subscription the broker refuses in its SUBACK (an ACL) is said in one
WARNING line naming the topic, kept in ``last_error``, and asked for again only
after the next connect (said again only when the reason changes, or after the
broker granted it meanwhile). A record the broker refuses in its PUBACK (MQTT 5
only; 3.1.1 has no way to say so) leaves the outbox, since it would be refused
again, and is counted in ``refused``; the first refusal per topic is one WARNING
line, the rest are counted, until that topic is accepted again. A direct publish
(status, OTA status) refused is said the same way.

Packet size: a broker closes the connection on a packet over its maximum size, and
paho sends the same message again after every reconnect, so one such record would
hold the link forever. The link never sends a packet over the Maximum Packet Size of
the MQTT 5 CONNACK: the record is refused (dropped and counted as above, one WARNING
line per topic and limit), a direct publish is dropped with the same line; so is a
record the broker closes the connection on with a DISCONNECT 0x95 ``Packet too large``.
A close right after a record went out, with no reason given (MQTT 3.1.1 cannot give
one), never deletes it: a network or a broker that drops connections looks the same,
and records are kept until delivered. After such a close with several in flight,
records are sent one at a time, and a record alone on the wire that the broker closes
the connection on ``WEDGE_STRIKES`` times in a row (within ``WEDGE_WINDOW_S`` of it
going out) is named in one WARNING line that points to MQTT 5. A loss the broker
explains otherwise, or a keepalive timeout, counts against no record.

Reconnecting: the backoff and the log-once state are reset only by a connection that
stayed up ``STEADY_S`` seconds, not by every CONNACK, so a broker that accepts the
client and drops it at once sees the backoff grow and the log gets one line. A
DISCONNECT 0x8E ``Session taken over`` (another client connected with this client
id), or ``QUICK_CLOSES`` consecutive connections closed soon after CONNACK with no
reason and no record to blame (the same, from a broker that does not say it), is
one WARNING line, and the link then waits between half the maximum backoff and the
maximum before each reconnect, until a connection outlasts that maximum.

Those rules (backoff, log-once, blame, takeover) are ``edgerun.sync.reconnect``, pure logic
the link consults; the link does the I/O and says what they decide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgerun import __version__
from edgerun.native import native_calls
from edgerun.sync.diagnose import (
    closed_before_connack,
    connack_reason,
    describe_connect_error,
    reason_text,
    subscribe_refusal,
)
from edgerun.sync.outbox import Outbox
from edgerun.sync.reconnect import TAKEN_OVER, ReconnectPolicy, TooLarge
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics

log = logging.getLogger(__name__)

__all__ = ["LinkState", "Message", "MqttLink", "publish_packet_size"]

_KEEPALIVE = 0x8D  # Keep alive timeout (paho's reason for a ping that went unanswered)


def publish_packet_size(topic: str, payload: bytes, qos: int, *, v5: bool) -> int:
    """Bytes of the PUBLISH packet paho sends for this message with no properties, fixed
    header included: what MQTT 5's Maximum Packet Size bounds (Mosquitto 2.0 bounds the
    remaining length, 2 to 5 bytes less, so this errs on the safe side)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0) + len(payload)
    length_bytes = 1
    while remaining >= 128**length_bytes and length_bytes < 4:
        length_bytes += 1
    return 1 + length_bytes + remaining


@dataclass(frozen=True)
class Message:
    """An incoming message. ``retained`` is True when the broker replayed a retained
    message because we subscribed, False for a message published live."""

    topic: str
    payload: bytes
    retained: bool


Handler = Callable[[Message], None]


def _offline() -> str:
    """The retained status record of a device that is going offline (PROTOCOL.md, status)."""
    return json.dumps({"schema": 1, "state": "offline", "ts": int(time.time())})


@dataclass(frozen=True)
class LinkState:
    """What the link is doing, for status pages and ``edgerun mqtt check``."""

    connected: bool
    broker: str
    last_error: str | None
    connects: int
    sent: int
    acked: int
    refused: int


class MqttLink:
    """The device's connection to its broker.

    Args:
        settings: broker, TLS, auth, protocol, backoff.
        topics: the device's topics.
        outbox: records to deliver (None: status and direct publishes only).
        status: initial fields of the retained status record (``models``, ``accelerators``, ``groups``).
    """

    def __init__(
        self, settings: MqttSettings, topics: Topics, outbox: Outbox | None, *, status: dict[str, Any] | None = None
    ) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self._status: dict[str, Any] = {"models": {}, "accelerators": [], **(status or {})}
        v5 = settings.protocol == "5"
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or f"edgerun-{topics.device}",
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,  # we reconnect ourselves, with jitter
        )
        c = self._client
        c.suppress_exceptions = True  # a bug in a callback is logged (on_log), never stops the loop
        c.on_log = self._on_paho_log
        c.max_inflight_messages_set(settings.max_inflight)
        c.max_queued_messages_set(0)
        if settings.username is not None:
            c.username_pw_set(settings.username, settings.password)
        if settings.tls:
            import ssl

            c.tls_set(
                ca_certs=settings.ca_file,
                certfile=settings.cert_file,
                keyfile=settings.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        c.will_set(topics.status, json.dumps({"schema": 1, "state": "offline"}), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._direct: queue.Queue[tuple[str, bytes, int, bool]] = queue.Queue()
        self._unsubscribe: queue.Queue[str] = queue.Queue()
        self._direct_mids: dict[int, str] = {}  # mid -> topic of a direct publish awaiting its PUBACK
        self._inflight: dict[int, int] = {}  # mid -> outbox id
        self._inflight_topics: dict[int, str] = {}  # mid -> topic of that record, to name a refusal
        self._inflight_qos0: set[int] = set()  # those mids of QoS 0 records: paho drops them unsent on a reconnect
        self._early: set[int] = set()  # acks that arrived inside the publish() call in progress
        self._acked: list[int] = []
        self._acked_refused = 0  # how many of ``_acked`` the broker refused (counted in the outbox)
        self._last_sent = 0  # outbox id of the newest record handed to paho
        self._subscribed: set[str] = set()  # asked for on this connection (granted or not): not asked again
        self._sub_mids: dict[int, str] = {}  # SUBSCRIBE mid -> topic, until its SUBACK
        self._sub_refused: dict[str, str] = {}  # topic -> the refusal said for it (once)
        self._pub_refused: dict[str, str] = {}  # topic -> the publish refusal said for it (once)
        self._connected = threading.Event()
        self._connack = False  # the current connection was accepted (CONNACK), until the next attempt
        self._refused: str | None = None
        self._socket_error: str | None = None  # paho's last receive failure, for the next reason
        self._stop = threading.Event()
        self._stopping = threading.Event()  # stop() began: no ``online`` is published from now on
        self._attempting = False  # a connection is being made or is up (not the wait between two)
        self._attempts_ended = 0  # connections (made or not) that ended: a stop waits for one attempt only
        self._dialing = False  # inside paho's blocking connect (DNS, TCP, TLS handshake), before CONNACK
        self._offline_wait_s = 2.0  # how long the link thread waits for the final ``offline``'s PUBACK
        self._offline_mid: int | None = None  # the final ``offline``'s message id, while it is awaited
        self._offline_acked = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._status_dirty = False
        self.last_error: str | None = None
        self._logged_failure: str | None = None  # the last serve-pass failure logged at ERROR
        self._counts = {"connects": 0, "sent": 0, "acked": 0, "refused": 0}
        self._too_large = TooLarge()  # the broker's packet size limit, and the records said too large
        self._wire: dict[int, float] = {}  # QoS 1 mid -> when it last went on the wire, oldest first, until PUBACK
        # the backoff, the log-once state, the blame of records, the takeover detection
        self._policy = ReconnectPolicy(min_s=settings.reconnect_min_s, max_s=settings.reconnect_max_s)
        self._broker_reason: Any = None  # the reason of a DISCONNECT the broker sent on this connection
        self._keepalive_lost = False  # this connection ended with a ping left unanswered

    # -- for other threads -----------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    def state(self) -> LinkState:
        """A snapshot of the link's state."""
        return LinkState(self.connected, self.settings.describe(), self.last_error, **self._counts)

    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        """Call ``handler(message)`` for messages on ``topic`` (wildcards allowed); kept across reconnects."""
        self._subs[topic] = (qos, handler)
        self._poke()

    def refusal(self, topic: str) -> str | None:
        """Why the broker refused the subscription to ``topic`` (one line), or None while it has not.

        For a subscriber that waits for messages on ``topic`` (a chunk download) and should
        stop waiting at once: nothing on a refused topic will arrive before the next connect.
        """
        return self._sub_refused.get(topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""
        if self._subs.pop(topic, None) is not None:
            self._unsubscribe.put(topic)
            self._poke()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Send now if connected, else when connected; not durable (use the outbox for that)."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._direct.put((topic, data, qos, retain))
        self._poke()

    def set_status(self, **fields: Any) -> None:
        """Change fields of the retained status record (``models``, ``accelerators``, ``groups``); republished
        if changed."""
        changed = any(self._status.get(k) != v for k, v in fields.items())
        self._status.update(fields)
        if changed:
            self._status_dirty = True
            self._poke()

    def notify(self) -> None:
        """New records are in the outbox."""
        self._poke()

    def _poke(self) -> None:
        """Hand work to the link thread, waking it if it sleeps in paho's ``select``.

        paho's ``loop`` also watches a socket pair of its own, which its ``publish``
        writes to when called from another thread; paho has no public call for that,
        so the link writes the byte itself (``_sockpairW``; where a paho lacks it, the
        link still looks every 50 ms). One byte per batch of work: only the first poke
        after the link took the last batch sends one.
        """
        if self._wake.is_set():
            return
        self._wake.set()
        pair = self._wakeup_socket()
        if pair is not None:
            with contextlib.suppress(OSError):  # full (the link is awake anyway) or closed
                pair.send(b"\0")

    def _wakeup_socket(self) -> Any:
        """paho's own wake-up socket (private to paho; None where a paho lacks it)."""
        return getattr(self._client, "_sockpairW", None)

    def start(self) -> None:
        """Start the link thread (connecting in the background)."""
        if self._thread is None:
            self._attempting = True  # the first attempt begins now: a stop right after start waits for it
            self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
            self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """Wait for a connection; False on timeout."""
        return self._connected.wait(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox is empty and nothing is in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.outbox is None or len(self.outbox) == 0) and not self._inflight and self._direct.empty():
                return True
            self._poke()
            time.sleep(0.02)
        return False

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Deliver what is queued (up to the timeout), then leave the retained status ``offline``.

        A connection attempt under way (the TCP or TLS handshake, the CONNACK on its way: a
        short run over TLS stops before its first CONNACK) is waited for within the timeout,
        then what is queued is delivered as on a link that was up; an attempt that fails (the
        broker refused, unknown or unreachable) ends the wait at once, and so does a link
        waiting between two attempts. A link still in paho's blocking connect when the time is
        up (a TLS handshake nobody answers: paho's connect timeout, 5 s) has no connection to
        close: its thread is left to end on its own, which touches nothing once stopped.

        From the first line on, no ``online`` is published (not after a CONNACK that was on
        its way, nor after a ``set_status``). The link thread ends the connection itself
        (``_close``): a retained ``offline`` acknowledged within ``min(2 s, flush_timeout_s)``,
        then a clean DISCONNECT; without that acknowledgement, the socket is closed without a
        DISCONNECT so the broker publishes the last will, which says ``offline`` too.
        """
        if self._thread is None:
            return
        deadline = time.monotonic() + flush_timeout_s
        self._stopping.set()
        ended = self._attempts_ended
        while not self.connected and self._attempting and self._attempts_ended == ended:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if self.connected:
            self.wait_drained(deadline - time.monotonic())
        self._offline_wait_s = max(0.0, min(2.0, flush_timeout_s))
        self._stop.set()
        self._poke()
        until = time.monotonic() + 10
        while self._thread.is_alive() and not self._dialing and time.monotonic() < until:
            self._thread.join(timeout=0.02)
        self._thread = None

    # -- the link thread ---------------------------------------------------------
    def _run(self) -> None:
        native_calls.watch()  # the link takes turns with inference calls (edgerun.native)
        try:
            self._connect_and_serve()
        except Exception:  # a bug outside a serve pass: say so, and never report a dead link as connected
            self._connected.clear()
            log.exception("MQTT link stopped")
        finally:
            native_calls.unwatch()

    def _connect_and_serve(self) -> None:
        s = self.settings
        while not self._stop.is_set():
            started = time.monotonic()
            self._refused = None
            self._socket_error = None
            self._connack = False  # this connection's CONNACK; _connected is cleared by paho's on_disconnect
            self._broker_reason = None
            self._keepalive_lost = False
            self._attempting = True
            failed = False
            try:
                self._dialing = True
                try:
                    self._connect()
                finally:
                    self._dialing = False
            except Exception as exc:  # DNS, TCP, TLS: described, retried
                if not self._stop.is_set():  # a dial a stop left behind says nothing after the stop
                    self._note_error(describe_connect_error(exc, s))
            else:
                try:
                    self._serve()
                except Exception as exc:  # the outbox failing (I/O, a lock held elsewhere), a bug: reconnect
                    failed = True
                    self._serve_failed(exc, lasted=time.monotonic() - started > 60)
            self._attempting = False
            self._attempts_ended += 1
            if self._stop.is_set():
                break
            if self._connack and not failed:
                self._connection_lost(time.monotonic())
            delay = self._policy.next_wait(accepted=self._connack, attempt_s=time.monotonic() - started)
            self._connected.clear()
            log.debug("reconnecting to %s in %.2f s", s.describe(), delay)
            self._stop.wait(delay)
        try:
            self._close(self._offline_wait_s)
        except Exception as exc:  # already gone
            log.debug("disconnect: %s", exc)

    def _serve_failed(self, exc: Exception, *, lasted: bool) -> None:
        """A serve pass raised: log it, close the connection, and let the loop reconnect after the backoff.

        One ERROR line per distinct reason (again after a connection that lasted
        60 s), the traceback at DEBUG. Nothing is lost: a record leaves the outbox
        only when ``Outbox.ack`` succeeds, the acknowledgements not yet written stay
        in ``_acked`` for a later pass, and paho resends what is in flight.
        """
        reason = f"{type(exc).__name__}: {exc}"
        self.last_error = f"link failed ({reason})"
        if reason != self._logged_failure or lasted:
            log.error("MQTT: the link failed (%s); closing the connection and reconnecting with backoff", reason)
            log.debug("MQTT: the link's failure", exc_info=exc)
            self._logged_failure = reason
        self._connected.clear()
        try:
            # The retained status says offline through the backoff (online again after CONNACK).
            self._close(2.0)
        except Exception as close_exc:  # already gone
            log.debug("disconnect: %s", close_exc)

    def _close(self, offline_wait_s: float) -> None:
        """End the connection so that the retained status says ``offline``.

        A clean DISCONNECT makes the broker discard the last will, so it is sent only once
        the broker acknowledged a retained ``offline`` published on this connection (after
        anything the link published on it before, ``online`` included), waiting up to
        ``offline_wait_s`` for that PUBACK. Without it (no CONNACK yet, the connection lost,
        the acknowledgement late or refused), the socket is closed without a DISCONNECT and
        the broker publishes the last will, the same retained ``offline``.
        """
        mqtt = self._mqtt
        client = self._client
        self._offline_acked = False
        if client.is_connected() and client.socket() is not None:
            info = client.publish(self.topics.status, _offline(), qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self._offline_mid = info.mid
                deadline = time.monotonic() + offline_wait_s
                while not self._offline_acked and (left := deadline - time.monotonic()) > 0:
                    if client.loop(timeout=min(left, 0.05)) != mqtt.MQTT_ERR_SUCCESS:
                        break
                self._offline_mid = None
        self._connected.clear()
        if self._offline_acked:
            client.disconnect()
            return
        sock = client.socket()
        if sock is not None:  # paho has no call that closes without a DISCONNECT; its next connect replaces it
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _connect(self) -> None:
        s = self.settings
        if s.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            self._client.connect(s.host, s.port, s.keepalive_s, clean_start=False, properties=props)
        else:
            self._client.connect(s.host, s.port, s.keepalive_s)

    def _serve(self) -> None:
        """Run paho's loop and our work until the connection ends or we stop.

        paho's ``loop`` reads one packet per call, so while the socket has more to
        read (chunks of a model, a burst of PUBACKs) it is called again at once.
        When nothing is in flight the link sleeps in ``select`` for up to a second
        (0.02 s while waiting for acknowledgements); work handed over by another
        thread wakes it at once (``_poke``), or within 50 ms with a paho that has no
        wake-up socket. Once connected, reading, publishing and acknowledging happen
        in turns with inference calls (``edgerun.native``): while a call runs, not as
        it returns; each pass waits for a turn at most once (``edgerun.native.MAX_WAIT_S``).
        """
        import select

        mqtt = self._mqtt
        idle = 1.0 if self._wakeup_socket() is not None else 0.05
        pair = getattr(self._client, "_sockpairR", None)  # paho's wake-up socket (private; may be absent)
        while not self._stop.is_set():
            sock = self._client.socket()
            handed = self._wake.is_set() or not self._direct.empty()
            busy = handed or bool(self._inflight)
            if busy and sock is not None and self._connected.is_set():
                if not handed:  # acknowledgements due: wait for them (or a poke) first
                    select.select([sock] if pair is None else [sock, pair], [], [], 0.02)
                native_calls.wait_turn()  # this pass's one wait for a turn
                rc = self._client.loop(timeout=0)
            else:
                rc = self._client.loop(timeout=0.02 if busy else idle)  # a message, a poke, the keepalive
            for _ in range(64):
                sock = self._client.socket()  # paho closes it on a DISCONNECT from the broker
                if rc != mqtt.MQTT_ERR_SUCCESS or sock is None or native_calls.time_left() <= 0:
                    break
                if not select.select([sock], [], [], 0)[0]:
                    break
                rc = self._client.loop(timeout=0)
            if self._refused is not None:
                self._note_error(self._refused)
                self._client.disconnect()
                return
            if self._broker_reason is not None:  # a DISCONNECT from the broker: paho has closed the socket
                self._note_error(self._disconnect_reason(self._broker_reason))
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                if self._connack:  # not _connected: paho's on_disconnect has cleared it inside loop()
                    if rc == mqtt.MQTT_ERR_NO_CONN:  # paho closed it in an earlier call: one reason, one line
                        rc = mqtt.MQTT_ERR_CONN_LOST
                    self._note_error(f"connection to {self.settings.describe()} lost ({mqtt.error_string(rc)})")
                else:
                    self._note_error(self._closed_early_reason())
                return
            if self._connected.is_set():
                self._check_steady()
                if native_calls.time_left() > 0:
                    self._work()
                else:
                    self._wake.set()  # this turn is spent: the work goes to the next one

    def _work(self) -> None:
        """One batch of handed-over work: unsubscribes, subscribes, the status record, direct publishes, records.

        The SUBSCRIBEs of a connection go out before its ``online`` status record: the broker handles
        one client's packets in order, so an operator who sends a command on seeing ``online`` finds
        the device subscribed (on a first connection the broker keeps nothing sent before it for the device).
        """
        self._wake.clear()  # first: a poke while this batch is taken wakes the next look
        while True:
            try:
                gone = self._unsubscribe.get_nowait()
            except queue.Empty:
                break
            if gone in self._subscribed and gone not in self._subs:
                self._client.unsubscribe(gone)
                self._subscribed.discard(gone)
                self._forget_refusal(gone)
        for topic, (qos, _) in list(self._subs.items()):
            if topic not in self._subscribed:
                rc, mid = self._client.subscribe(topic, qos)
                if rc == self._mqtt.MQTT_ERR_SUCCESS:
                    self._sub_mids[mid] = topic
                self._subscribed.add(topic)  # refused or not: asked again only after the next connect
        if self._status_dirty and not self._stopping.is_set():  # stopping: the last status is offline
            self._publish_status()
        while True:
            try:
                topic, payload, qos, retain = self._direct.get_nowait()
            except queue.Empty:
                break
            self._publish_direct(topic, payload, qos, retain)
        self._drain()

    def _publish_direct(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Hand a direct publish (status, OTA status) to paho, unless it is over the broker's packet size."""
        if self._over_limit(topic, payload, qos):
            return
        info, done = self._send(topic, payload, qos, retain)
        if qos > 0 and not done and self._kept(info, qos):  # a QoS 0 id is not kept: paho may drop
            self._direct_mids[info.mid] = topic  # the message unsent, and its id would linger until reused
            self._wire[info.mid] = time.monotonic()

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> tuple[Any, bool]:
        """Hand one message to paho; returns its ``MQTTMessageInfo`` and whether paho already reported it sent.

        paho calls ``on_publish`` for a QoS 0 message inside ``publish`` when it
        writes the packet at once, before the link knows the message id; such an id
        lands in ``_early``. ``_early`` holds only the acknowledgements of the call in
        progress: a stale one (an id the link never tracked) would otherwise mark a
        later message acknowledged at once when paho's 16-bit ids wrap.
        """
        self._early.clear()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        done = info.mid in self._early
        self._early.clear()
        return info, done

    def _kept(self, info: Any, qos: int) -> bool:
        """Whether paho holds the message and will send it (or send it again after the reconnect).

        Without a connection (``NO_CONN``) or when the write fails (``CONN_LOST``)
        paho keeps a QoS 1 or 2 message and resends it, with the same id, after the
        next CONNACK; a QoS 0 message is dropped.
        """
        mqtt = self._mqtt
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            return True
        return qos > 0 and info.rc in (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST)

    def _drain(self) -> None:
        if self.outbox is None:
            return
        if self._acked:
            self.outbox.ack(self._acked, refused=self._acked_refused)
            self._acked, self._acked_refused = [], 0
        most = 1 if self._policy.one_at_a_time else self.settings.max_inflight  # one at a time: whose fault is sure
        room = most - len(self._inflight)
        if room <= 0:
            return
        for i, record in enumerate(self.outbox.pending(after_id=self._last_sent, limit=room)):
            if i and native_calls.time_left() <= 0:
                self._wake.set()  # the rest in the next turn
                return
            if self._over_limit(record.topic, record.payload, record.qos):
                self._refuse_record(record.id)
                self._last_sent = record.id
                self._wake.set()  # its removal is written, and the records after it sent, in the next pass
                continue
            info, done = self._send(record.topic, record.payload, record.qos)
            if not self._kept(info, record.qos):
                return  # not taken (QoS 0 without a connection): sent again after the reconnect
            self._last_sent = record.id
            self._counts["sent"] += 1
            if done:
                self._acked.append(record.id)
            else:
                self._inflight[info.mid] = record.id  # also when paho resends it after the reconnect
                self._inflight_topics[info.mid] = record.topic
                if record.qos == 0:
                    self._inflight_qos0.add(info.mid)
                else:
                    self._wire[info.mid] = time.monotonic()
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                return  # connection gone

    def _publish_status(self) -> None:
        self._status_dirty = False  # first: a ``set_status`` while the record is built publishes again
        record = {"schema": 1, "state": "online", "ts": int(time.time()), "runtime": __version__, **self._status}
        self._publish_direct(self.topics.status, json.dumps(record).encode(), 1, True)

    def _over_limit(self, topic: str, payload: bytes, qos: int) -> bool:
        """Whether this message's packet is over the broker's Maximum Packet Size (said once per topic and limit).

        The broker would close the connection on it, and paho would send it again after every reconnect.
        """
        limit = self._too_large.limit
        if limit is None:
            return False
        size = publish_packet_size(topic, payload, qos, v5=self.settings.protocol == "5")
        if size <= limit:
            return False
        if self._too_large.news(topic, f"over {limit}"):
            log.warning(
                "MQTT: a %d-byte message on %s is over the broker's maximum packet size (%d bytes); dropped, "
                "since it would be refused again (a record is counted in 'refused'; further ones over this limit "
                "on this topic are not logged)",
                size,
                topic,
                limit,
            )
        return True

    def _refuse_record(self, rid: int) -> None:
        """Count the record ``rid`` refused; it leaves the outbox with the next acknowledgements written."""
        self._acked.append(rid)
        self._acked_refused += 1
        self._counts["refused"] += 1

    def _check_steady(self) -> None:
        """Once a connection has stayed up long enough, a later loss is news again and the backoff starts over
        (``ReconnectPolicy.check_steady``); the end of a takeover is one INFO line."""
        wanted = self._policy.check_steady(time.monotonic())
        if wanted is not None:
            log.info("MQTT: connected for %g s without being taken over; the usual backoff again", wanted)

    def _disconnect_reason(self, reason: Any) -> str:
        """One line for a DISCONNECT the broker sent (MQTT 5), with its reason code."""
        where = self.settings.describe()
        if getattr(reason, "value", None) == TAKEN_OVER:
            return (
                f"the broker at {where} closed the connection because another client connected with this "
                f"device's client id {self._client_id()} ({reason_text(reason)}): two edgerun processes with "
                f"one device id? Reconnecting after {self.settings.reconnect_max_s / 2:g}-"
                f"{self.settings.reconnect_max_s:g} s"
            )
        return f"the broker at {where} closed the connection: {reason_text(reason)}"

    def _client_id(self) -> str:
        return self.settings.client_id or f"edgerun-{self.topics.device}"

    def _connection_lost(self, now: float) -> None:
        """After an accepted connection ended: ask the policy whom the loss is held against (a record, or
        the client id: another client taking it over, which decides how the link waits), and act on it.

        A record blamed is refused (a DISCONNECT 0x95 with nothing older on the wire), named in one
        WARNING (``WEDGE_STRIKES`` closes in a row alone on the wire), or taken back with the others in
        flight so that they are sent again one at a time (``_drain``).
        """
        verdict = self._policy.closed(
            now,
            reason=getattr(self._broker_reason, "value", None),
            keepalive_lost=self._keepalive_lost,
            wire=self._wire,
            records=self._inflight,
        )
        blame = verdict.blame
        if blame is not None:
            if blame.act == "refuse":
                self._refuse_wedged(blame.mid)
            elif blame.act == "warn":
                self._say_suspected(blame.mid, blame.losses)
            elif blame.act == "take_back":
                self._take_back()  # sent again one at a time
        if verdict.takeover_suspected:
            log.warning(
                "MQTT: the broker at %s closed the connection %d times in a row soon after accepting it, giving "
                "no reason; most likely another client connects with this device's client id %s (two edgerun "
                "processes with one device id?); reconnecting after %g-%g s",
                self.settings.describe(),
                verdict.quick_closes,
                self._client_id(),
                self.settings.reconnect_max_s / 2,
                self.settings.reconnect_max_s,
            )

    def _say_suspected(self, mid: int, losses: int) -> None:
        """One WARNING a topic: the broker keeps closing the connection right after this record, giving
        no reason. It is kept and sent again: a network or a broker that drops connections looks the
        same, and a record deleted on a guess would be lost (only MQTT 5 can say a packet is too large)."""
        topic = self._inflight_topics.get(mid, "?")
        if not self._too_large.news(topic, "suspected"):
            return
        log.warning(
            "MQTT: the broker at %s closed the connection %d times in a row right after a message on %s went out, "
            "giving no reason; it is kept and sent again (a network that drops connections looks the same). If the "
            "broker limits the packet size, connect with MQTT 5 so that the limit is known and such records are "
            "refused (further ones on this topic are not logged)",
            self.settings.describe(),
            losses,
            topic,
        )

    def _take_back(self, drop: int | None = None) -> Any:
        """Take every unacknowledged message back from paho, which has no call that drops one message
        (``drop_out_messages`` drops all) and would send them all again after the next CONNACK; returns
        the message ``drop`` (None when paho had none with that id).

        The outbox records are sent again from the outbox, oldest first, at the pace of ``_drain``;
        the direct publishes but ``drop`` are handed back to paho at once, in their order.
        """
        messages = {m.mid: m for m in self._client.drop_out_messages()}
        self._wire.clear()
        again = [r for m, r in self._inflight.items() if m != drop]
        self._inflight.clear()
        self._inflight_topics.clear()
        self._inflight_qos0.clear()
        if again:
            self._last_sent = min(self._last_sent, min(again) - 1)
        direct = [m for m in messages.values() if m.mid in self._direct_mids and m.mid != drop]
        self._direct_mids.clear()
        for m in direct:  # paho sends them after the next CONNACK, before anything newer
            self._publish_direct(m.topic, m.payload, m.qos, m.retain)
        return messages.get(drop) if drop is not None else None

    def _refuse_wedged(self, mid: int) -> None:
        """Drop the record sent as ``mid``, which the broker closed the connection on as too large (0x95)."""
        rid = self._inflight.get(mid)
        topic = self._inflight_topics.get(mid, "?")
        culprit = self._take_back(drop=mid)
        size = 0
        if culprit is not None:
            size = publish_packet_size(topic, culprit.payload, culprit.qos, v5=self.settings.protocol == "5")
        if self._too_large.news(topic, "0x95"):
            log.warning(
                "MQTT: the broker at %s closed the connection on a %d-byte message on %s as too large (%s); dropped, "
                "since it would be refused again (a record is counted in 'refused'; further ones on this topic are "
                "not logged)",
                self.settings.describe(),
                size,
                topic,
                reason_text(self._broker_reason),
            )
        if rid is not None:
            self._refuse_record(rid)

    def _closed_early_reason(self) -> str:
        """Why the broker hung up before CONNACK; over TLS, a handshake of our own hears its alert."""
        if self.settings.tls:
            from edgerun.sync.check import tls_reason

            reason = tls_reason(self.settings)
            if reason is not None:
                return reason
        return closed_before_connack(self.settings, self._socket_error)

    def _note_error(self, message: str) -> None:
        self.last_error = message
        if self._policy.news(message):  # one line per distinct reason, not one per retry
            log.warning("MQTT: %s; retrying with backoff", message)

    # -- paho callbacks (run in the link thread, inside loop()) ----------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = connack_reason(reason_code)
            return
        self._counts["connects"] += 1
        self._connack = True
        now = time.monotonic()
        self._policy.accepted(now)
        self.last_error = None  # the log-once state stays until the connection is steady (_check_steady)
        limit = getattr(properties, "MaximumPacketSize", None)  # MQTT 5 only; paho does not enforce it
        if self._too_large.connack(limit) and self._wire:  # a new limit: what paho would resend is checked first
            self._take_back()
        # What was in flight stays mapped: paho re-sends its unacknowledged QoS 1
        # messages (same mids) on every reconnect, right after this callback, so we must not send them again.
        for mid in self._wire:
            self._wire[mid] = now
        self._resend_lost_qos0()
        self._subscribed.clear()  # subscribe again: the broker may have lost the session
        self._sub_mids.clear()  # SUBACKs of the last connection never come
        self._status_dirty = True
        self._connected.set()
        log.info(
            "MQTT connected to %s (session present: %s)",
            self.settings.describe(),
            getattr(flags, "session_present", "?"),
        )

    def _resend_lost_qos0(self) -> None:
        """Send again the QoS 0 records paho had not written when the connection went: it drops
        them on reconnecting and never reports them sent, so they would wait in ``_inflight`` (and
        in the outbox) until a restart. Sending restarts at the oldest of them; a record after it
        that is sent twice is dropped by receivers by ``(device, epoch, seq)``."""
        lost = [self._inflight.pop(mid) for mid in self._inflight_qos0 if mid in self._inflight]
        for mid in self._inflight_qos0:
            self._inflight_topics.pop(mid, None)
        self._inflight_qos0.clear()
        if lost:
            self._last_sent = min(self._last_sent, min(lost) - 1)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if getattr(flags, "is_disconnect_packet_from_server", False):
            self._broker_reason = reason_code  # MQTT 5: the broker says why (0x8E taken over, 0x95 too large)
        elif getattr(reason_code, "value", None) == _KEEPALIVE:
            self._keepalive_lost = True

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if mid == self._offline_mid:
            self._offline_acked = not getattr(reason_code, "is_failure", False)
            return
        refused = reason_code is not None and getattr(reason_code, "is_failure", False)
        self._wire.pop(mid, None)
        if mid in self._direct_mids:
            topic = self._direct_mids.pop(mid)
            what = "a publish to {topic} ({reason}); further refusals on this topic are not logged"
            self._publish_answered(topic, reason_code if refused else None, what)
            return
        rid = self._inflight.pop(mid, None)
        topic = self._inflight_topics.pop(mid, "?")
        self._inflight_qos0.discard(mid)
        if rid is None:
            self._early.add(mid)
            return
        self._policy.answered(rid)  # the losses were not its doing; all records may go again
        if refused:
            self._counts["refused"] += 1
            self._acked_refused += 1
        else:
            self._counts["acked"] += 1
        what = (
            "a record on {topic} ({reason}); dropped, since it would be refused again "
            "(counted in 'refused'; further refusals on this topic are not logged)"
        )
        self._publish_answered(topic, reason_code if refused else None, what)
        self._acked.append(rid)

    def _publish_answered(self, topic: str, refusal: Any, what: str) -> None:
        """Say a refused publish once per topic and reason (``what`` names it); forget it once one is accepted."""
        if refusal is None:
            if self._pub_refused.pop(topic, None) is not None:
                log.info("MQTT: the broker accepts publishes to %s again", topic)
            return
        reason = reason_text(refusal)
        if self._pub_refused.get(topic) != reason:
            self._pub_refused[topic] = reason
            line = what.format(topic=topic, reason=reason)
            log.warning("MQTT: the broker refused %s", line)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        """A SUBACK: a refusal is said once per topic and reason, and asked again only after the next connect."""
        topic = self._sub_mids.pop(mid, None)
        if topic is None or topic not in self._subs:  # not ours, or unsubscribed meanwhile
            return
        failed = [code for code in reason_codes if getattr(code, "is_failure", False)]
        if not failed:
            if self._forget_refusal(topic):
                log.info("MQTT: the broker now grants the subscription to %s", topic)
            return
        message = subscribe_refusal(topic, failed[0])
        self.last_error = message
        if self._sub_refused.get(topic) != message:
            self._sub_refused[topic] = message
            log.warning("MQTT: %s; nothing on it will arrive (asked again after the next reconnect)", message)

    def _forget_refusal(self, topic: str) -> bool:
        """Forget a refused subscription (granted, or unsubscribed); whether there was one."""
        message = self._sub_refused.pop(topic, None)
        if message is not None and self.last_error == message:
            self.last_error = None
        return message is not None

    def _on_paho_log(self, client: Any, userdata: Any, level: int, text: str) -> None:
        # paho reports a dropped connection at ERROR; the link says that itself, once,
        # at WARNING. What stays an error is an exception in one of our callbacks.
        if text.startswith("Caught exception in"):
            log.error("MQTT callback failed: %s", text)
            return
        if text.startswith("failed to receive on socket"):
            self._socket_error = text.partition(": ")[2] or text
        log.debug("paho: %s", text)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        size = len(message.payload)
        if size > self.settings.max_message_bytes:
            log.warning(
                "MQTT: dropped a %d-byte message on %s (limit %d bytes)",
                size,
                message.topic,
                self.settings.max_message_bytes,
            )
            return
        for pattern, (_, handler) in list(self._subs.items()):
            if self._mqtt.topic_matches_sub(pattern, message.topic):
                try:
                    handler(Message(message.topic, message.payload, bool(message.retain)))
                except Exception:  # a handler's bug must not stop the network loop
                    log.exception("MQTT: handler for %s failed on a message from %s", pattern, message.topic)
