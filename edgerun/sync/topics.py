"""Every MQTT topic edgerun uses, built in one place (PROTOCOL.md, "P" is the prefix, "ID" the device).

The rules a topic's text must follow are here too (``topic_text_problem``), for the prefix and for
an MQTT source's subscription filter alike: what MQTT forbids (NUL, more than 65,535 bytes of
UTF-8, text that is not UTF-8) and what the broker refuses by closing the connection (Mosquitto 2:
control characters and Unicode non-characters, which MQTT says a receiver may take for a
malformed packet). Such a topic must be refused in one line before anything connects: the
broker's answer is a dropped connection, and a link or source would retry it for ever.
"""

from __future__ import annotations

import re

from edgerun.errors import ConfigError

__all__ = [
    "METRICS_INTERVAL_MAX_S",
    "METRICS_INTERVAL_MIN_S",
    "NAME_RE",
    "PREFIX_MAX",
    "TOPIC_MAX_BYTES",
    "Topics",
    "check_name",
    "check_prefix",
    "topic_text_problem",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

#: The longest topic prefix, in characters: the config's ``mqtt.topic_prefix`` and ``--mqtt-prefix`` alike.
PREFIX_MAX = 64
#: MQTT's limit on a topic name or filter: a two-byte length, in bytes of UTF-8.
TOPIC_MAX_BYTES = 65535
#: How often ``P/ID/metrics`` may be published, in seconds (``--metrics-interval``, ``mqtt.metrics_interval_s``):
#: each record is one outbox transaction and one publish, so a shorter interval is a busy loop
#: that floods the broker and wears an SD card, and a window under a second says nothing useful.
METRICS_INTERVAL_MIN_S = 1.0
METRICS_INTERVAL_MAX_S = 3600.0


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid model, device or group name, else ``ConfigError``."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):  # ``$`` alone would let a final newline in
        raise ConfigError(
            f"{kind} name {value!r} is invalid: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


def _unusable(code: int) -> bool:
    """A control character (C0, DEL, C1) or a Unicode non-character: the broker closes the connection on it."""
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def topic_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be (part of) an MQTT topic, in a few words; None when it can.

    A lone surrogate is what Python makes of bytes that are not UTF-8 on the command line.
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if "\0" in text:
        return "it holds a NUL character, which MQTT forbids in a topic"
    bad = next((c for c in text if _unusable(ord(c))), None)
    if bad is not None:
        return f"it holds the control character or non-character {bad!r}, on which the broker closes the connection"
    if size > TOPIC_MAX_BYTES:
        return f"it is {size} bytes of UTF-8, more than MQTT's {TOPIC_MAX_BYTES}"
    return None


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can begin every topic, else ``ConfigError`` saying why.

    Refused: wildcards and NUL, a leading or trailing '/', a leading '$' (topics starting with
    it are the broker's own: every publish would be refused), what ``topic_text_problem`` names,
    and more than ``PREFIX_MAX`` characters (every topic edgerun builds must stay a valid one).
    """
    shown = repr(prefix) if len(prefix) <= PREFIX_MAX else f"{prefix[:16]!r}... ({len(prefix)} characters)"
    if not prefix or any(c in prefix for c in "+#\x00") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f"topic prefix {shown} is invalid: no wildcards, no leading or trailing '/'")
    if prefix.startswith("$"):
        raise ConfigError(f"topic prefix {shown} is invalid: a leading '$' is reserved for the broker's own topics")
    if len(prefix) > PREFIX_MAX:
        raise ConfigError(f"topic prefix {shown} is invalid: it is longer than {PREFIX_MAX} characters")
    problem = topic_text_problem(prefix)
    if problem is not None:
        raise ConfigError(f"topic prefix {shown} is invalid: {problem}")
    return prefix


class Topics:
    """The topics of one device under one prefix."""

    def __init__(self, prefix: str, device: str) -> None:
        self.prefix = check_prefix(prefix)
        self.device = check_name("device", device)
        self.base = f"{prefix}/{device}"

    @property
    def status(self) -> str:
        """Retained online/offline record and last will."""
        return f"{self.base}/status"

    @property
    def metrics(self) -> str:
        """Periodic metrics records."""
        return f"{self.base}/metrics"

    def results(self, model: str) -> str:
        """Per-inference results of one model."""
        return f"{self.base}/results/{check_name('model', model)}"

    @property
    def ota_status(self) -> str:
        """Retained OTA progress records."""
        return f"{self.base}/ota/status"

    @property
    def manifest(self) -> str:
        """Model update manifests for this device."""
        return f"{self.base}/ota/manifest"

    @property
    def cmd(self) -> str:
        """Commands for this device."""
        return f"{self.base}/cmd"

    def group_manifest(self, group: str) -> str:
        """Model update manifests for a group."""
        return f"{self.prefix}/group/{check_name('group', group)}/ota/manifest"

    def group_cmd(self, group: str) -> str:
        """Commands for a group."""
        return f"{self.prefix}/group/{check_name('group', group)}/cmd"

    def heard_by(self, subscription: str) -> str | None:
        """The first topic this device publishes on (its status, metrics, any model's results, its OTA
        status) that ``subscription`` (an MQTT filter) matches; None where it matches none. A model's
        results are matched as any model's: a filter matches them only with a wildcard at that level."""
        from paho.mqtt.client import topic_matches_sub

        mine = (self.status, self.metrics, f"{self.base}/results/*", self.ota_status)  # '*': no model name has one
        heard = next((topic for topic in mine if topic_matches_sub(subscription, topic)), None)
        return None if heard is None else heard.replace("/results/*", "/results/MODEL")

    def blob(self, sha256: str) -> str:
        """Where a model blob's chunks are published."""
        return f"{self.prefix}/blobs/{sha256}"
