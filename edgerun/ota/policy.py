"""The checks on a verified manifest or command that need the device's state.

Clock policy (a Raspberry Pi has no real-time clock and may boot in 1970): the
device's clock is *plainly unsynced* when it reads earlier than the newest
``issued`` time it has already verified, or than the edgerun release. Then
"now" is taken as the latest of those two instead, which is a lower bound of
the real time, so an update that expired before a moment the device already
knows has passed is still refused, and one that cannot be judged is accepted.
The replay and version checks never depend on the clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgerun.errors import UpdateRejected
from edgerun.ota.manifest import Manifest, Targets, version_tuple

__all__ = ["RELEASE_TIME", "Clock", "check_manifest", "check_targets", "check_times"]

#: When this edgerun release was made (unix seconds): no real "now" can be earlier.
RELEASE_TIME = 1_795_000_000  # 2026-11-17


@dataclass(frozen=True)
class Clock:
    """The device's idea of the time, with what it has verified before."""

    now: float
    newest_issued: float
    skew_s: float

    @property
    def unsynced(self) -> bool:
        """True when the clock reads earlier than a time the device knows has passed."""
        return self.now + self.skew_s < max(RELEASE_TIME, self.newest_issued)

    @property
    def effective_now(self) -> float:
        """The clock, or its best lower bound when it is plainly unsynced."""
        return max(self.now, RELEASE_TIME, self.newest_issued) if self.unsynced else self.now

    @classmethod
    def current(cls, newest_issued: float, skew_s: float) -> Clock:
        """The device clock now."""
        return cls(time.time(), newest_issued, skew_s)


def check_times(issued: float, expires: float, clock: Clock) -> None:
    """Expired (beyond the allowed skew) or issued in the future: ``UpdateRejected``."""
    if expires <= issued:
        raise UpdateRejected(f"expires ({expires:.0f}) is not after issued ({issued:.0f})")
    now = clock.effective_now
    if expires + clock.skew_s < now:
        clock_note = (
            " (the device clock is unsynced; judged against the newest time it has verified)" if clock.unsynced else ""
        )
        raise UpdateRejected(f"expired {now - expires:.0f} s ago{clock_note}")
    if not clock.unsynced and issued > clock.now + clock.skew_s:
        raise UpdateRejected(f"issued {issued - clock.now:.0f} s in the future (more than the allowed clock skew)")


def check_targets(targets: Targets, device: str, groups: tuple[str, ...]) -> None:
    """The device must be named directly or through one of its groups."""
    if device in targets.devices or any(g in targets.groups for g in groups):
        return
    raise UpdateRejected(f"this device ({device}) is not among the targets")


def check_manifest(
    manifest: Manifest,
    *,
    device: str,
    groups: tuple[str, ...],
    clock: Clock,
    active_version: str | None,
    max_bytes: int,
    blob_prefix: str,
) -> None:
    """Every device-dependent check of PROTOCOL.md, in the order a reader would expect."""
    check_targets(manifest.targets, device, groups)
    check_times(manifest.issued, manifest.expires, clock)
    newer = active_version is None or version_tuple(manifest.version) > version_tuple(active_version)
    if not newer and not manifest.allow_downgrade:
        raise UpdateRejected(
            f"version {manifest.version} is not newer than the installed {active_version} (allow_downgrade is not set)"
        )
    if manifest.size > max_bytes:
        raise UpdateRejected(f"size {manifest.size} bytes is above this device's limit of {max_bytes} bytes")
    if manifest.source.mqtt is not None:
        expected = f"{blob_prefix}/{manifest.sha256}"
        if manifest.source.mqtt.topic != expected:
            raise UpdateRejected(f"chunk topic must be {expected}, not {manifest.source.mqtt.topic!r}")
