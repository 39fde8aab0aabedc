"""Turning connection failures and refusals into one line that says which layer failed and why.

Shared by the link (which logs the reason and retries), ``edgerun mqtt check``
(which walks the layers one by one: DNS, TCP, TLS, MQTT CONNECT, publish) and the
MQTT source (a refused subscription).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from edgerun.sync.settings import MqttSettings

__all__ = ["closed_before_connack", "connack_reason", "describe_connect_error", "reason_text", "subscribe_refusal"]

_TLS_HINTS = {
    "CERTIFICATE_EXPIRED": "the broker rejected our client certificate: it has expired",
    "CERTIFICATE_REQUIRED": "the broker requires a client certificate (set the cert and key)",
    "UNKNOWN_CA": "the broker does not trust the CA that signed our client certificate",
    "BAD_CERTIFICATE": "the broker rejected our client certificate",
    "WRONG_VERSION_NUMBER": "the port does not speak TLS (is it a plain MQTT port?)",
}


def describe_connect_error(exc: BaseException, settings: MqttSettings) -> str:
    """One line naming the layer (DNS, TCP, TLS) and the cause of a failed connect."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror):
        return f"DNS: cannot resolve {settings.host}: {exc.strerror or exc}"
    if isinstance(exc, UnicodeError):  # the IDNA encoding of the name: a part empty or over 63 characters
        return (
            f"DNS: cannot look up {settings.host}: not a valid host name ({exc.__cause__ or exc}; "
            "each dot-separated part is 1 to 63 characters)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        hint = " (is the CA file right?)" if "issuer" in message or "self-signed" in message else ""
        return f"TLS: the broker's certificate at {where} was rejected: {message}{hint}"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        for key, text in _TLS_HINTS.items():
            if key in reason.upper():
                return f"TLS handshake with {where} failed: {text} ({reason})"
        return f"TLS handshake with {where} failed: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"TCP: connection to {where} refused (is the broker running and listening there?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"TCP: connection to {where} timed out"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return f"TCP: connection to {where} was reset during the handshake ({exc})"
    if isinstance(exc, OSError):
        return f"network: cannot reach {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


def connack_reason(reason_code: Any) -> str:
    """One line for a refused CONNECT, with what to check."""
    text = str(reason_code)
    lower = text.lower()
    if "user name or password" in lower or "bad username" in lower:
        return f"authentication: the broker refused the user name or password ({text})"
    if "not authori" in lower:
        # Mosquitto 2 answers a wrong password, and a missing one, with "Not authorized".
        return (
            f"authentication: the broker says this client is not authorized ({text}): check the user name and password"
        )
    if "identifier" in lower:
        return f"the broker rejected the client id ({text})"
    return f"the broker refused the connection: {text}"


def closed_before_connack(settings: MqttSettings, socket_error: str | None) -> str:
    """One line for a connection the broker closed before answering CONNECT.

    With TLS 1.3 the broker checks our client certificate after the handshake
    and answers a bad one with an alert on the first read, so this is where an
    expired or missing client certificate shows up.
    """
    where = f"{settings.host}:{settings.port}"
    text = socket_error or ""
    for key, hint in _TLS_HINTS.items():
        if key in text.upper():
            return f"TLS handshake with {where} failed: {hint} ({text})"
    detail = f" ({text})" if text else ""
    hint = "; is our client certificate valid for it?" if settings.tls else ""
    return f"the broker at {where} closed the connection before answering CONNECT{detail}{hint}"


def reason_text(reason_code: Any) -> str:
    """paho's name of an MQTT reason code with its number, ``Not authorized [code:135]``."""
    value = getattr(reason_code, "value", None)
    return f"{reason_code} [code:{value}]" if isinstance(value, int) else str(reason_code)


def subscribe_refusal(topic: str, reason_code: Any, *, who: str = "the broker") -> str:
    """One line for a subscription the broker refused in its SUBACK.

    MQTT 5 brokers give a reason (0x87 ``Not authorized`` from an ACL). MQTT 3.1.1 has a
    single failure code, 0x80, which paho names "Unspecified error"; brokers send it for an
    ACL that denies the topic (Mosquitto's dynamic security, AWS IoT policies), so the line
    says what it most likely means.
    """
    text = reason_text(reason_code)
    if getattr(reason_code, "value", None) == 0x80:
        return (
            f"{who} refused the subscription to {topic} ({text}: no reason given, "
            "most likely this client is not authorized to read it)"
        )
    return f"{who} refused the subscription to {topic}: {text}"
