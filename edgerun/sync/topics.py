"""Every MQTT topic edgerun uses, built in one place (PROTOCOL.md, "P" is the prefix, "ID" the device)."""

from __future__ import annotations

import re

from edgerun.errors import ConfigError

__all__ = ["NAME_RE", "Topics", "check_name", "check_prefix"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid model, device or group name, else ``ConfigError``."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(
            f"{kind} name {value!r} is invalid: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can begin every topic (no wildcards, no leading or trailing '/'), else ``ConfigError``."""
    if not prefix or any(c in prefix for c in "+#\x00") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f"topic prefix {prefix!r} is invalid: no wildcards, no leading or trailing '/'")
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

    def blob(self, sha256: str) -> str:
        """Where a model blob's chunks are published."""
        return f"{self.prefix}/blobs/{sha256}"
