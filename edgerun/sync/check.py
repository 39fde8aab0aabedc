"""``edgerun mqtt check``: connect step by step and say precisely which step fails and why.

Steps: DNS lookup, TCP connect, TLS handshake (when TLS is on), MQTT CONNECT
(authentication), then a QoS 1 publish to the device's own status-check topic
to see whether the broker's ACL lets the device publish (MQTT 5 brokers answer
"not authorized" in the PUBACK; for MQTT 3.1.1, which has no such answer, the
check subscribes to the topic and waits for its own message to come back).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgerun.sync.diagnose import connack_reason, describe_connect_error
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics

__all__ = ["Step", "check", "tls_reason"]


@dataclass(frozen=True)
class Step:
    """One step's outcome: its name, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


def _tls_context(s: MqttSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=s.ca_file)
    if s.cert_file and s.key_file:
        ctx.load_cert_chain(s.cert_file, s.key_file)
    return ctx


def _handshake(sock: socket.socket, s: MqttSettings) -> str:
    """TLS handshake on ``sock``; returns the TLS version, raises what the broker objected to."""
    with _tls_context(s).wrap_socket(sock, server_hostname=s.host) as tls:
        # TLS 1.3 brokers check the client certificate after the handshake: read once to hear them.
        tls.settimeout(0.5)
        with contextlib.suppress(socket.timeout, TimeoutError):
            tls.recv(1)
        return tls.version() or "TLS"


def tls_reason(settings: MqttSettings, timeout_s: float = 5.0) -> str | None:
    """Why a TLS connection to the broker fails, from a handshake of its own; None when it succeeds."""
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=timeout_s)
        _handshake(sock, settings)
    except (ssl.SSLError, OSError) as exc:
        return describe_connect_error(exc, settings)
    return None


def check(settings: MqttSettings, topics: Topics, timeout_s: float = 5.0) -> Iterator[Step]:
    """Run the steps in order, stopping at the first that fails."""
    s = settings
    try:
        infos = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode (a part over 63)
        yield Step("dns", False, describe_connect_error(exc, s))
        return
    yield Step("dns", True, f"{s.host} is {infos[0][4][0]}")
    try:
        sock = socket.create_connection((s.host, s.port), timeout=timeout_s)
    except OSError as exc:
        yield Step("tcp", False, describe_connect_error(exc, s))
        return
    yield Step("tcp", True, f"connected to {s.host}:{s.port}")
    if s.tls:
        try:
            version = _handshake(sock, s)
        except (ssl.SSLError, OSError) as exc:
            yield Step("tls", False, _tls_failure(exc, s, timeout_s))
            return
        yield Step("tls", True, f"{version}, broker certificate verified for {s.host}")
    else:
        sock.close()
    yield from _mqtt_steps(s, topics, timeout_s)


def _tls_failure(exc: BaseException, s: MqttSettings, timeout_s: float) -> str:
    """One line for a TLS step that failed: the TCP connection was made, so a timeout or a reset here
    is the handshake's (a plain MQTT port resets a TLS hello; a port that does not answer it, times out)."""
    where = f"{s.host}:{s.port}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"TLS: no answer to the TLS handshake from {where} in {timeout_s:g} s (does that port speak TLS?)"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return (
            f"TLS handshake with {where} failed: the connection was closed during it ({exc.strerror or exc}); "
            "does that port speak TLS? (a plain MQTT port closes on a TLS hello)"
        )
    return describe_connect_error(exc, s)


def _mqtt_steps(s: MqttSettings, topics: Topics, timeout_s: float) -> Iterator[Step]:
    import paho.mqtt.client as mqtt

    v5 = s.protocol == "5"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{s.client_id or 'edgerun-' + topics.device}-check",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        reconnect_on_failure=False,  # a dropped connection is an answer here, not something to retry
    )
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls:
        client.tls_set_context(_tls_context(s))
    done: dict[str, Any] = {}
    event = threading.Event()
    topic = f"{topics.base}/check"

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        done["connack"] = rc
        event.set()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        done["puback"] = rc
        event.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        done["echo"] = msg.payload
        event.set()

    def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        done["closed"] = rc
        event.set()

    client.on_connect, client.on_publish, client.on_message = on_connect, on_publish, on_message
    client.on_disconnect = on_disconnect
    where = f"{s.host}:{s.port}"
    try:
        client.connect(s.host, s.port, s.keepalive_s)
    except Exception as exc:
        yield Step("connect", False, describe_connect_error(exc, s))
        return
    client.loop_start()
    try:
        if not event.wait(timeout_s):
            yield Step("connect", False, f"no CONNACK from {where} in {timeout_s:g} s (is it an MQTT broker?)")
            return
        if "connack" not in done:
            hint = " (a broker that refuses our client certificate does this after the TLS handshake)" if s.tls else ""
            yield Step("connect", False, f"the broker at {where} closed the connection before answering CONNECT{hint}")
            return
        rc = done["connack"]
        if rc.is_failure:
            yield Step("connect", False, connack_reason(rc))
            return
        yield Step(
            "connect",
            True,
            f"MQTT {'5' if v5 else '3.1.1'} session accepted" + (f" for user {s.username}" if s.username else ""),
        )
        event.clear()
        if not v5:
            client.subscribe(topic, qos=1)
            time.sleep(0.2)
        payload = f"edgerun mqtt check {time.time():.3f}".encode()
        client.publish(topic, payload, qos=1)
        if not event.wait(timeout_s):
            yield Step("publish", False, f"no PUBACK for {topic} in time")
            return
        if "puback" not in done and "closed" in done:
            yield Step(
                "publish",
                False,
                f"ACL: the broker closed the connection instead of acknowledging a publish to {topic}: "
                "its ACL most likely refused it",
            )
            return
        rc = done.get("puback")
        if rc is not None and getattr(rc, "is_failure", False):
            yield Step("publish", False, f"ACL: the broker refused a publish to {topic} ({rc})")
            return
        if not v5:
            deadline = time.monotonic() + timeout_s
            while "echo" not in done and "closed" not in done and time.monotonic() < deadline:
                time.sleep(0.05)
            if "echo" not in done and "closed" in done:
                # Mosquitto 2.0 with max_queued_messages 0 acknowledges a refused QoS 1 publish, then hangs up.
                yield Step(
                    "publish",
                    False,
                    f"ACL: the broker acknowledged a publish to {topic}, then closed the connection: "
                    "its ACL refused the publish (MQTT 3.1.1 cannot say so)",
                )
                return
            if "echo" not in done:
                yield Step(
                    "publish",
                    False,
                    f"ACL: a publish to {topic} was acknowledged but never delivered: "
                    "the broker's ACL dropped it (MQTT 3.1.1 cannot say so), or the device may not read it",
                )
                return
        yield Step("publish", True, f"the broker accepted a QoS 1 publish to {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
