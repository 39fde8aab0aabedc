"""MQTT connection settings, from a URL plus options (or, later, the daemon's config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import unquote, urlsplit

from edgerun.errors import ConfigError

__all__ = ["MqttSettings", "host_name_ok", "zone_unquoted"]


def host_name_ok(host: str) -> bool:
    """Whether ``host`` (a name, an international one included, or an address) can reach a resolver:
    no space, control character or character a URL's host cannot hold. A NUL there once passed
    ``config check`` and the command line."""
    return bool(host) and not any(c.isspace() or not c.isprintable() or c in '<>"\\^`{|}[]@/?#' for c in host)


def zone_unquoted(host: str) -> str:
    """An IPv6 address's zone as the resolver takes it: a URL spells ``fe80::1%eth0`` as
    ``[fe80::1%25eth0]`` (RFC 6874), which ``urlsplit`` leaves encoded."""
    return host.replace("%25", "%", 1) if ":" in host else host


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker and behave on it.

    Attributes:
        host, port: the broker (``mqtts://`` defaults to 8883, ``mqtt://`` to 1883).
        tls: use TLS; ``ca_file`` verifies the broker (system CAs when None);
            ``cert_file``/``key_file`` give a client certificate for mutual TLS.
        username, password: MQTT authentication.
        client_id: default ``edgerun-<device id>``.
        protocol: ``"5"`` or ``"3.1.1"``.
        keepalive_s: MQTT keepalive; the broker publishes the last will after 1.5x this.
        session_expiry_s: MQTT 5 session expiry, so QoS 1 messages queued for the device
            survive its reconnects (``clean_start=False`` alone lets the broker drop them).
        topic_prefix: ``P`` in PROTOCOL.md.
        reconnect_min_s, reconnect_max_s: exponential backoff bounds (full jitter).
        max_inflight: QoS 1 records sent and not yet acknowledged.
        max_message_bytes: incoming messages larger than this are dropped unread.
    """

    host: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    topic_prefix: str = "edgerun"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    max_inflight: int = 100
    max_message_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("MQTT broker host is empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"MQTT port {self.port} is out of range")
        if self.keepalive_s < 1:
            raise ConfigError(f"MQTT keepalive must be at least 1 s, got {self.keepalive_s}")
        if self.protocol not in ("5", "3.1.1"):
            raise ConfigError(f"MQTT protocol must be 5 or 3.1.1, got {self.protocol!r}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("mutual TLS needs both a client certificate and its key")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("reconnect backoff needs 0 < min <= max")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                what = "is a directory, not a file" if os.path.isdir(path) else "not found"
                raise ConfigError(f"MQTT {name.replace('_', ' ')} {what}: {path}")

    @classmethod
    def from_url(cls, url: str, **options: object) -> MqttSettings:
        """``mqtt[s]://[user[:password]@]host[:port]``; options override (``ca_file=...``).

        The password may also come from ``$EDGERUN_MQTT_PASSWORD``, which keeps it
        out of the process list.
        """
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket: 'mqtt://[::1'
            raise ConfigError(f"MQTT URL is malformed: {url!r} ({exc})") from None
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"MQTT URL has a bad port: {url!r}") from None
        if port == 0:
            raise ConfigError(f"MQTT URL has a bad port: {url!r} (port 0)")
        if not parts.hostname:
            raise ConfigError(f"MQTT URL has no host: {url!r}")
        if not host_name_ok(parts.hostname):
            raise ConfigError(f"MQTT URL has a bad host name: {url!r}")
        if parts.path not in ("", "/"):
            raise ConfigError(f"MQTT broker URL takes no path (the topics come from the protocol): {url!r}")
        tls = parts.scheme == "mqtts"
        password = unquote(parts.password) if parts.password else os.environ.get("EDGERUN_MQTT_PASSWORD")
        settings = cls(
            host=zone_unquoted(parts.hostname),
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=password,
        )
        given = {k: v for k, v in options.items() if v is not None}
        if given.get("ca_file") or given.get("cert_file"):
            given.setdefault("tls", True)
        return replace(settings, **given)  # type: ignore[arg-type]

    def check_tls_files(self, names: tuple[str, str, str] = ("--mqtt-ca", "--mqtt-cert", "--mqtt-key")) -> None:
        """Refuse, in one line naming the option (or config key: ``names`` for the CA, the
        certificate and the key), TLS files that cannot work, before anything is loaded.

        paho reads them only when the link is built, and its ``ssl.SSLError`` ("PEM lib") names
        neither the option nor the file. An encrypted client key is refused too: OpenSSL would
        ask for its passphrase on the terminal, which an unattended device does not have.

        Raises:
            ConfigError: a file that cannot be read, holds no PEM certificate or key, a key
                that is not the certificate's, or a key with a passphrase.
        """
        import ssl

        ca_name, cert_name, key_name = names
        ca_file, cert_file, key_file = self.ca_file, self.cert_file, self.key_file

        def no_passphrase() -> bytes:
            raise ConfigError(
                f"{key_name} {key_file} is encrypted with a passphrase, which edgerun cannot ask for: "
                "store it decrypted, readable by this user only (openssl pkey -in KEY -out PLAIN.key)"
            )

        def unreadable(option: str, path: str, exc: OSError) -> ConfigError:
            return ConfigError(f"{option} {path} cannot be read: {exc.strerror or exc}")

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for option, path in ((ca_name, ca_file), (cert_name, cert_file)):
            if path is None:
                continue
            try:
                ctx.load_verify_locations(cafile=path)  # any PEM certificate loads here, a CA's or a client's
            except ssl.SSLError as exc:
                why = f" ({exc.reason})" if exc.reason else ""
                raise ConfigError(f"{option} {path} holds no PEM certificate{why}") from None
            except OSError as exc:
                raise unreadable(option, path, exc) from None
        if cert_file is None or key_file is None:
            return
        try:
            ctx.load_cert_chain(cert_file, key_file, password=no_passphrase)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(f"{key_name} {key_file} is not the key of {cert_name} {cert_file}") from None
            why = f" ({exc.reason})" if exc.reason else ""  # OpenSSL's "PEM lib" says nothing more
            raise ConfigError(f"{key_name} {key_file} holds no PEM private key{why}") from None
        except OSError as exc:
            raise unreadable(key_name, key_file, exc) from None

    def describe(self) -> str:
        """``mqtts://user@host:port`` without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"
