"""An MQTT topic as a live source: ``mqtt://host:port/topic`` (wildcards allowed).

Each message is one input: a JSON array of numbers, a ``.npy`` as it is or base64-encoded (line
breaks allowed, as the ``base64`` command writes them; loaded without pickle), or raw image bytes
(JPEG, PNG, BMP). An empty message is no input: it is how MQTT deletes a retained message (the
subscribers get it as a new message), so it is skipped, with one INFO line per subscription.
Anything else (a JSON array holding strings, booleans or nulls, or numbers beyond float32's range),
or a message over the size limit, becomes an error frame that the pipeline counts; the run goes on.
No message ever raises out of paho's callbacks: an exception there would end paho's network thread,
and the source would go on receiving nothing, silently. A retained message, which the broker sends
at every subscription (each start, each reconnect), is skipped with one INFO line per subscription:
it was published before the source subscribed, and running it again at every restart would give a
stale reading a new result. The
subscription filter is checked before anything connects (``check_filter``). A broker that cannot be
reached at the start is tried a bounded number of times, then the run stops with the reason (as a
stream does); a broker that answers but refuses the connection (bad credentials, not authorised) or
the subscription (its SUBACK, at the start or after a reconnect) stops the run at once, since
retrying cannot help; the subscription is logged only once the broker granted it. (Mosquitto's
``acl_file`` grants a subscription it denies and withholds the messages: no subscriber can tell.) A
connection lost later (or refused while the broker restarts) is logged and re-established by paho.
Credentials may be given in the URL (``mqtt://user:password@host/topic``, percent-encoded); the
source's ``uri`` shows the user, never the password. A user without a password in the URL takes it
from ``$EDGERUN_MQTT_PASSWORD``, as the device's link does, which keeps it out of the process list.
This is a minimal subscriber of its own, separate from the device's MQTT link (``edgerun.sync``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from edgerun.errors import ConfigError, SourceError
from edgerun.inputs import NPY_ERRORS, NPY_MAGIC, json_array, load_npy, npy_reason
from edgerun.sources.base import Frame, LatestBuffer, LiveSource, connect_with_retries
from edgerun.sync.diagnose import subscribe_refusal
from edgerun.sync.settings import host_name_ok, zone_unquoted
from edgerun.sync.topics import topic_text_problem

log = logging.getLogger(__name__)

__all__ = [
    "MqttSource",
    "check_filter",
    "check_not_own_records",
    "decode_message",
    "parse_mqtt_url",
    "split_credentials",
]

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")


def parse_mqtt_url(url: str) -> tuple[str, int, str]:
    """``mqtt://host[:port]/topic`` -> (host, port, topic); ``#`` is part of the topic here.

    An IPv6 address goes in brackets (``mqtt://[::1]:1883/t``), as in any URL.
    """
    shown = _shown_url(url)
    if url.startswith("mqtts://"):
        raise ConfigError(f"MQTT sources over TLS are not supported: {shown} (use mqtt://)")
    if not url.startswith("mqtt://"):
        raise ConfigError(f"not an MQTT source URL: {shown} (expected mqtt://host:port/topic)")
    rest = url[len("mqtt://") :]
    hostport, slash, topic = rest.partition("/")
    if not slash or not topic:
        raise ConfigError(f"MQTT source URL has no topic: {shown}")
    if hostport.startswith("["):  # [IPv6]:port
        close = hostport.find("]")
        host, after = (zone_unquoted(hostport[1:close]), hostport[close + 1 :]) if close > 0 else ("", "")
        port_text = after[1:] if after.startswith(":") else ("1883" if after == "" else "")
    else:
        host, colon, port_text = hostport.partition(":")
        port_text = port_text if colon else "1883"
    if not host_name_ok(host) or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"MQTT source URL has a bad host or port: {shown}")
    return host, int(port_text), check_filter(topic)


def check_not_own_records(source: str, broker: tuple[str, int], topics: Any) -> None:
    """Refuse an MQTT ``source`` that would hear the records this device publishes (``topics``, an
    ``edgerun.sync.topics.Topics``) on its own ``broker`` (host, port): each of them would be taken for
    an input (an error frame, counted in the metrics, whose next record would come back as one more).
    Another source string, or another broker, passes.

    Raises:
        ConfigError: naming the filter and the first of the device's topics it matches.
    """
    if not source.startswith("mqtt://"):
        return
    host, port, subscription = parse_mqtt_url(split_credentials(source)[0])
    if port != broker[1] or not _same_host(host, broker[0]):
        return
    heard = topics.heard_by(subscription)
    if heard is not None:
        raise ConfigError(
            f"the MQTT source's filter {subscription!r} matches {heard}, where this device publishes its own "
            f"records on the same broker: each would come back as an input; subscribe outside {topics.base}/"
        )


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def _same_host(a: str, b: str) -> bool:
    """Whether two host names as written name one broker (loopback spelled either way); no lookup is made."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or (a in _LOOPBACK and b in _LOOPBACK)


def _shown_url(url: str) -> str:
    """``url`` quoted for a message, without a password ``split_credentials`` could not take off it.

    Credentials reach ``parse_mqtt_url`` only where a ``/`` in them ends the host part before their
    ``@`` (``mqtt://bob:pa/ss@host/t``, host ``bob``, port ``pa``): the message then shows the user,
    hides the rest up to the last ``@``, and says how to write a ``/``. A ``host:1883/topic@x``, whose
    "password" is a port, is shown as it is.
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    if not sep or not at or not colon or user.startswith("[") or secret.partition("/")[0].isdigit():
        return repr(url)
    return f"{scheme}{sep}{user}:***@{after}"[:200] + " (a '/' in a password is written %2F)"


def check_filter(topic: str) -> str:
    """``topic`` if it is a subscription filter MQTT allows, else ``ConfigError`` saying which rule it breaks.

    ``#`` only as the whole last level, ``+`` only as a whole level, and the text rules of every
    topic (``topic_text_problem``). Checked before anything connects: paho refuses such a filter
    only once connected (a traceback), and the broker closes the connection on the rest.
    """
    levels = topic.split("/")
    if any("#" in level and (level != "#" or i < len(levels) - 1) for i, level in enumerate(levels)):
        problem: str | None = "'#' may only be a whole level, the last one (in/#)"
    elif any("+" in level and level != "+" for level in levels):
        problem = "'+' may only be a whole level (in/+/temp)"
    else:
        problem = topic_text_problem(topic)
    if problem is not None:
        shown = repr(topic) if len(topic) <= 200 else f"{topic[:32]!r}... ({len(topic)} characters)"
        raise ConfigError(f"MQTT source topic {shown} is not a valid subscription filter: {problem}")
    return topic


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``mqtt://user:pass@host/t`` -> (``mqtt://host/t``, user, password); (url, None, None) without any.

    Both parts are percent-decoded, so a password may hold ``@`` or ``:`` as ``%40`` and ``%3A``.
    """
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not sep or not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    bare = f"{scheme}://{hostport}{slash}{path}"
    return bare, urllib.parse.unquote(user), urllib.parse.unquote(password) if colon else None


def decode_message(payload: bytes, max_bytes: int) -> Any:
    """A message payload -> an array or image bytes; raises ValueError with a plain reason."""
    if len(payload) > max_bytes:
        raise ValueError(f"message of {len(payload)} bytes is over the {max_bytes}-byte limit")
    if not payload:
        raise ValueError("empty message")
    if payload.startswith(_IMAGE_MAGIC):
        return payload
    text = payload.removeprefix(b"\xef\xbb\xbf").strip()  # a UTF-8 BOM, as some JSON writers put (HTTP takes it too)
    if text[:1] == b"[":
        return json_array(text)
    if payload.startswith(NPY_MAGIC):  # a .npy as it is (`mosquitto_pub -f x.npy`), as the HTTP API takes one
        raw = payload
    else:
        try:  # without its line breaks: GNU `base64 x.npy` breaks its output every 76 characters
            raw = base64.b64decode(b"".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
    if raw.startswith(NPY_MAGIC):
        try:  # its header checked against its length first: np.load would allocate what it declares
            return load_npy(io.BytesIO(raw), len(raw))
        except NPY_ERRORS as exc:
            raise ValueError(f"base64 .npy that does not load: {npy_reason(exc)}") from exc
    raise ValueError("neither a JSON array, a base64 .npy nor an image")


class MqttSource(LiveSource):
    """Subscribes to one topic and buffers the newest messages."""

    decoded = False  # a message may be JPEG bytes, decoded when prepared

    def __init__(
        self,
        url: str,
        *,
        queue: int = 8,
        max_bytes: int = 16 * 1024 * 1024,
        client_id: str = "",
        retries: int = 3,
        retry_delay_s: float = 1.0,
    ) -> None:
        bare, self._username, self._password = split_credentials(url)
        if self._username is not None and self._password is None:  # as for the device's link: out of `ps`
            self._password = os.environ.get("EDGERUN_MQTT_PASSWORD")
        self.host, self.port, self.topic = parse_mqtt_url(bare)
        self._where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"  # IPv6
        shown = bare if self._username is None else bare.replace("://", f"://{self._username}@", 1)
        super().__init__(shown, queue)  # the uri is logged and shown: never with the password
        self._max_bytes = max_bytes
        self._client_id = client_id
        self._retries, self._delay = retries, retry_delay_s
        self.bad_messages = 0
        self.retained_skipped = 0  # retained messages the broker sent at a subscription, never run
        self.empty_skipped = 0  # empty messages (a retained message deleted), never run

    def _capture(self, buffer: LatestBuffer, stop: threading.Event) -> None:
        import paho.mqtt.client as mqtt

        counter = iter(range(1 << 62))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        what = f"MQTT broker {self._where}"
        fatal: list[SourceError] = []

        def fail(message: str) -> None:
            """End the source with ``message``: ``stop`` wakes the capture below, which disconnects and raises it."""
            if not fatal:
                fatal.append(SourceError(message))
            stop.set()

        def guarded(callback: Callable[..., None]) -> Callable[..., None]:
            """``callback``, its unexpected exception a fatal error rather than the end of paho's thread."""

            @functools.wraps(callback)
            def call(*args: Any) -> None:
                try:
                    callback(*args)
                except Exception as exc:
                    log.warning("MQTT source %s: %s failed", self.uri, callback.__name__, exc_info=True)
                    fail(f"MQTT source {self.uri}: {callback.__name__} failed: {exc}")

            return call

        connected = threading.Event()  # a first CONNACK accepted: later refusals are paho's to retry
        retained_said = threading.Event()  # the INFO line on skipping retained messages, once per subscription
        empty_said = threading.Event()  # the INFO line on skipping empty messages, once per subscription

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                if not connected.is_set():  # bad credentials, not authorised: asking again would be refused again
                    fail(f"{what} refused the connection: {reason}")
                else:  # a broker restarting ("server unavailable") mid-run: paho retries, as after a drop
                    log.warning("MQTT source %s: reconnection refused (%s); retrying", self.uri, reason)
                return
            connected.set()
            retained_said.clear()  # a new subscription: the broker sends its retained messages again
            empty_said.clear()
            client.subscribe(self.topic, qos=1)  # said in on_subscribe, once the broker answered

        def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
            refused = [reason for reason in reasons if reason.is_failure]
            if refused:  # an ACL that denies the topic: nothing would ever arrive
                fail(subscribe_refusal(self.topic, refused[0], who=what))
                return
            log.info("MQTT source subscribed to %s on %s", self.topic, self._where)

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            if not message.payload:  # how MQTT deletes a retained message (`mosquitto_pub -r -n`): no input
                self.empty_skipped += 1
                if not empty_said.is_set():
                    empty_said.set()
                    log.info(
                        "MQTT source %s: skipping empty messages (first on %s): an empty message is how MQTT "
                        "deletes a retained message, not an input",
                        self.uri,
                        message.topic,
                    )
                return
            if message.retain:  # kept by the broker from before this subscription, not a new input
                self.retained_skipped += 1
                if not retained_said.is_set():
                    retained_said.set()
                    log.info(
                        "MQTT source %s: skipping retained messages (first on %s): each was published before "
                        "this subscription, and only messages published from now on are run",
                        self.uri,
                        message.topic,
                    )
                return
            index = next(counter)
            source_id = f"{message.topic}#{index}"
            try:
                data = decode_message(message.payload, self._max_bytes)
            except Exception as exc:  # whatever the message: an error frame, never an exception into paho
                if isinstance(exc, ValueError):
                    reason = str(exc)
                else:  # a bug in decoding, not in the message: its traceback, once per message
                    log.warning("MQTT source %s: decoding %s failed", self.uri, source_id, exc_info=True)
                    reason = f"cannot be decoded ({type(exc).__name__}: {exc})"
                self.bad_messages += 1
                buffer.put(Frame(None, time.time(), source_id, index, error=f"{source_id}: {reason}"))
                return
            buffer.put(Frame(data, time.time(), source_id, index))

        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if not stop.is_set():  # paho reconnects by itself (1 s, doubling up to 30 s)
                log.warning("MQTT source %s: connection lost (%s); reconnecting", self.uri, reason)

        client.on_connect = guarded(on_connect)
        client.on_subscribe = guarded(on_subscribe)
        client.on_message = guarded(on_message)
        client.on_disconnect = guarded(on_disconnect)
        connect = functools.partial(client.connect, self.host, self.port, keepalive=30)
        if connect_with_retries(what, connect, retries=self._retries, delay_s=self._delay, stop=stop) is None:
            return
        client.loop_start()
        try:
            stop.wait()  # closed, or a fatal error above
        finally:
            client.disconnect()
            client.loop_stop()
        if fatal:
            raise fatal[0]
