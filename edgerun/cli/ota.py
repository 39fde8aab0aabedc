"""``edgerun ota publish|status|rollback|clear``: the fleet operator's side of OTA updates."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.cli.common import (
    error_line,
    print_json,
    print_lines,
    require_not_empty,
    require_positive,
    require_within,
)

HELP = "fleet side of OTA: publish a signed model update, watch devices, roll back, clear finished updates"
TERMINAL = ("active", "rejected", "failed", "rolled_back")
#: The states of a device's OTA worker busy with an update or command (``probation`` is watched beside it):
#: a manifest that arrives meanwhile waits its turn, so its answer does too.
BUSY = ("received", "downloading", "verifying", "validating")
#: ``publish --wait``'s exit code when it followed no device: none targeted was online, or, for a group, no
#: device online answered as a member. Nothing is known to work yet (not 0, which a script takes as
#: "updated"), and nothing failed either (not 1).
NOTHING_ONLINE = 3
#: ``publish --wait --answer-within``'s default: seconds a device online has to answer a group's manifest.
#: A member's worker says ``received`` (or refuses it) as soon as the manifest is verified: well under a
#: second on a Raspberry Pi, the broker's delivery included.
ANSWER_S = 10.0
#: At most this many devices are named in the line of those that did not answer (a group in a large fleet).
NAMED_MAX = 10


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt", required=True, metavar="URL", help="the fleet broker, mqtt[s]://[user@]host[:port]")
    p.add_argument("--mqtt-ca", default=None, metavar="FILE", help="CA certificate of the broker")
    p.add_argument("--mqtt-cert", default=None, metavar="FILE", help="client certificate")
    p.add_argument("--mqtt-key", default=None, metavar="FILE", help="client key")
    p.add_argument(
        "--mqtt-prefix",
        "--prefix",
        dest="prefix",
        default="edgerun",
        metavar="P",
        help="topic prefix, as the devices' --mqtt-prefix (default edgerun)",
    )


def _targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action="append", default=[], metavar="ID", help="a target device (repeatable)")
    p.add_argument("--group", action="append", default=[], metavar="G", help="a target group (repeatable)")
    p.add_argument("--key", required=True, metavar="KEY.pem", help="the Ed25519 private key to sign with")


def register(sub: Any) -> None:
    """Add the ``ota`` sub-command and its actions."""
    p = sub.add_parser("ota", help=HELP, description=HELP + ".")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    pub = actions.add_parser("publish", help="sign and publish a model update (chunks and manifest, retained)")
    pub.add_argument("model_file", metavar="MODEL_FILE")
    pub.add_argument("--model", required=True, help="model name on the devices")
    pub.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH, newer than the installed one")
    pub.add_argument("--card", default=None, help="card file (default: the one beside MODEL_FILE)")
    pub.add_argument(
        "--via",
        default="mqtt",
        metavar="mqtt|URL",
        help="mqtt (chunks on the broker, default) or the https/http/file URL the devices fetch",
    )
    pub.add_argument(
        "--validate-with",
        nargs="+",
        default=[],
        metavar="INPUT",
        help="images or .npy inputs: their outputs here become validation samples",
    )
    order = pub.add_mutually_exclusive_group()
    order.add_argument(
        "--stream",
        dest="stream",
        action="store_true",
        default=True,
        help="the default: the manifest goes out first and devices online download while the chunks go up; "
        "if this command is cut short they time out and report failed, and a new publish resumes them",
    )
    order.add_argument(
        "--chunks-first",
        dest="stream",
        action="store_false",
        help="every chunk on the broker before the manifest goes out: no device starts an update that is not "
        "all there (upload and download then run one after the other: about 1.5x the time on loopback)",
    )
    pub.add_argument("--probation", type=float, default=None, metavar="S", help="probation seconds")
    pub.add_argument("--ab", type=float, default=None, metavar="FRACTION", help="serve only this fraction first")
    pub.add_argument("--expires-in", type=float, default=7 * 86400, metavar="S", help="validity (default 7 days)")
    pub.add_argument("--allow-downgrade", action="store_true", help="allow a version older than the installed one")
    _wait_options(
        pub,
        "update",
        "until each reports active, rejected, failed or rolled_back (exit 0: each followed ended active; 1: another "
        f"end or the timeout; {NOTHING_ONLINE}: none followed: none online, or no group member answered)",
    )
    _targets(pub)
    _connection(pub)
    pub.set_defaults(run=publish)

    st = actions.add_parser(
        "status", help="a table of devices: online, groups, models, versions, delegates, update state"
    )
    st.add_argument("--watch", action="store_true", help="keep refreshing until Ctrl-C")
    st.add_argument("--json", action="store_true", help="one JSON object per device")
    st.add_argument("--wait", type=float, default=1.0, metavar="S", help="seconds to collect retained records")
    _connection(st)
    st.set_defaults(run=status)

    rb = actions.add_parser("rollback", help="tell devices to go back to the previous version of a model")
    rb.add_argument("--model", required=True)
    _wait_options(
        rb,
        "command",
        "until each reports the rollback's end (exit 0: every target reported rolled_back; 1: one refused or failed "
        f"it, or the timeout; {NOTHING_ONLINE}: none failed, but a target was not online, or no group member answered)",
    )
    _targets(rb)
    _connection(rb)
    rb.set_defaults(run=rollback)

    cl = actions.add_parser("clear", help="remove retained chunks and manifests of finished updates")
    cl.add_argument("--force", action="store_true", help="also clear updates some device has not finished")
    cl.add_argument("--wait", type=float, default=1.0, metavar="S", help="seconds to collect retained records")
    _connection(cl)
    cl.set_defaults(run=clear)


def _wait_options(parser: Any, what: str, ends: str) -> None:
    """``--wait``, ``--timeout`` and ``--answer-within`` of a command that sends ``what`` (an update or a command)
    and can follow the devices' answers; ``ends``: when the wait ends, and its exit codes."""
    parser.add_argument("--wait", action="store_true", help=f"follow the targeted devices that are online {ends}")
    parser.add_argument("--timeout", type=float, default=600, metavar="S", help="how long --wait waits (default 600)")
    parser.add_argument(
        "--answer-within",
        type=float,
        default=ANSWER_S,
        metavar="S",
        help=f"with --wait and --group: a device online that has not answered the {what} S seconds after it was "
        "free to is no longer waited for (one whose status record names its groups, none of them given, is no "
        f"target and not waited for at all; default {ANSWER_S:g})",
    )


def _settings(args: argparse.Namespace) -> Any:
    """The broker settings of the connection options, checked; nothing is dialled yet."""
    from edgerun.cli.common import require_tls_files_named
    from edgerun.sync.settings import MqttSettings
    from edgerun.sync.topics import check_prefix

    check_prefix(args.prefix)  # the rule devices' topics follow
    require_tls_files_named(args)
    settings = MqttSettings.from_url(args.mqtt, ca_file=args.mqtt_ca, cert_file=args.mqtt_cert, key_file=args.mqtt_key)
    if settings.tls:  # a key of another certificate, or one with a passphrase: one line, not ssl's traceback
        settings.check_tls_files()
    return settings


def _fleet(args: argparse.Namespace, settings: Any = None) -> Any:
    """A ``Fleet`` on the broker of ``settings`` (by default, of the connection options)."""
    from edgerun.ota.operator import Fleet

    return Fleet(_settings(args) if settings is None else settings, args.prefix)


def _check_targets(args: argparse.Namespace) -> None:
    """Refuse no target, a bad device or group name, and an empty ``--key``."""
    from edgerun.errors import ConfigError
    from edgerun.sync.topics import check_name

    require_not_empty("--key", args.key)  # else "cannot read key : Is a directory"
    if not args.device and not args.group:
        raise ConfigError("name at least one --device or --group")
    for d in args.device:
        check_name("device", d)
    for g in args.group:
        check_name("group", g)


def publish(args: argparse.Namespace) -> int:
    """Build, sign, publish chunks then the manifest; with --wait follow the devices."""
    from edgerun.backends import detect_format
    from edgerun.card import find_card, load_card
    from edgerun.errors import ConfigError
    from edgerun.ota.envelope import load_private_key
    from edgerun.ota.manifest import PROBATION_MAX_S, parse_manifest
    from edgerun.ota.operator import build_manifest, validation_samples
    from edgerun.sync.topics import check_name

    _check_targets(args)
    check_name("model", args.model)
    _check_version(args.version)  # the manifest's rule, named by the option typed rather than by $.version
    require_not_empty("MODEL_FILE", args.model_file)  # "" would be the current directory
    _check_not_compiled(Path(args.model_file))
    require_not_empty("--card", args.card)  # "" would quietly mean the card beside MODEL_FILE
    require_not_empty("--validate-with", *args.validate_with)
    _check_via(args.via)
    require_positive(args, "expires_in", "timeout", "answer_within")  # an expiry in the past: every device refuses it
    require_within(args, expires_in=(1, 10 * 365 * 86400))  # whole seconds go in the manifest
    require_within(args, answer_within=(0, 3600))
    require_within(args, probation=(0, PROBATION_MAX_S))  # the manifest's rollout.probation_s, named as typed
    if args.ab is not None and not 0 < args.ab < 1:  # the manifest's rollout.ab_fraction: both ends excluded
        raise ConfigError(f"--ab must be a fraction between 0 and 1 (both excluded), got {args.ab:g}")
    settings = _settings(args)  # a missing TLS file: one line now, before the model runs for --validate-with
    key = load_private_key(args.key)
    path = Path(args.model_file)
    fmt = detect_format(path)
    card_path = Path(args.card) if args.card else find_card(path)
    if card_path is None:
        raise ConfigError(f"no card beside {path}: give one with --card (devices need its task and preprocessing)")
    card = load_card(card_path).to_dict()
    card.pop("inferred", None)
    named = {**card, "name": args.model, "version": args.version}
    samples = validation_samples(path, named, args.validate_with) if args.validate_with else None
    if samples is None:
        _check_loads(path, named)  # a truncated file or another model's card: refused here, not by every device
    url = None if args.via == "mqtt" else args.via
    manifest = build_manifest(
        path,
        model=args.model,
        version=args.version,
        fmt=fmt,
        card=card,
        devices=args.device,
        groups=args.group,
        prefix=args.prefix,
        url=url,
        samples=samples,
        probation_s=args.probation,
        ab_fraction=args.ab,
        expires_in_s=args.expires_in,
        allow_downgrade=args.allow_downgrade,
    )
    parse_manifest(manifest)  # what devices will check, checked here first
    fleet = _fleet(args, settings)
    try:
        if args.wait:
            fleet.watch_devices()
        topics = [f"{args.prefix}/{d}/ota/manifest" for d in args.device]
        topics += [f"{args.prefix}/group/{g}/ota/manifest" for g in args.group]
        # Streamed (the default): the manifest first, and devices take the chunks as they arrive.
        # Chunks first: no device acts before every chunk is on the broker.
        if args.stream:
            _publish_manifests(fleet, topics, manifest, key)
        if url is None:
            _publish_chunks(fleet, manifest["source"]["mqtt"], path.read_bytes())
        if not args.stream:
            _publish_manifests(fleet, topics, manifest, key)
        print_lines(
            f"update {manifest['update_id']}: {args.model} {args.version} ({manifest['size']} bytes, "
            f"sha256 {manifest['sha256'][:12]}...) published to {', '.join(topics)}"
        )
        if not args.wait:
            return 0
        awaited = _Awaited("update", manifest["update_id"], "active")
        return _follow(fleet, awaited, args.device, args.group, args.timeout, args.answer_within)
    finally:
        fleet.close()


def _check_not_compiled(path: Path) -> None:
    """Refuse an Edge TPU-compiled ``X_edgetpu.tflite``: an update carries one model file, which every device
    installs as its store's ``model.tflite``. There it has no ``_edgetpu`` name, so no device tries it on an Edge
    TPU, and the CPU cannot run its ``edgetpu-custom-op``: no device could run it (PROTOCOL.md has no pair).

    Raises:
        ConfigError: naming the CPU twin ``X.tflite`` to publish instead.
    """
    from edgerun.card import cpu_twin
    from edgerun.errors import ConfigError

    twin = cpu_twin(path)
    if twin is not None:
        raise ConfigError(
            f"{path} is compiled for the Edge TPU: an update carries one model file, which every device must run: "
            f"publish {twin} (PROTOCOL.md has no Edge TPU pair)"
        )


def _check_loads(path: Path, card: dict[str, Any]) -> None:
    """Load ``path`` with ``card`` on this machine's CPU, as each device will before it runs it, so a file the
    runtime cannot read (truncated, another format) or a card that does not fit it (another model's labels or
    input size) is refused before anything is published. A model whose runtime this machine lacks is published
    with a warning (each device still checks it).

    Raises:
        EdgerunError: the runtime's or the card's one line (``ModelLoadError``, ``CardError``).
    """
    import edgerun
    from edgerun.card import parse_card
    from edgerun.errors import BackendUnavailableError

    try:
        with edgerun.load(path, card=parse_card(card, "card"), delegate="cpu", verify=False):
            pass
    except BackendUnavailableError as exc:  # no runtime for it here (an operator's laptop): each device checks it
        print(f"edgerun: warning: {path} not loaded here ({exc}); each device checks it as it installs it",
              file=sys.stderr, flush=True)  # fmt: skip


#: What ``--version`` is told to look like when it looks like no version at all.
_VERSION_FORM = "MAJOR.MINOR.PATCH, three whole numbers of up to 9 digits (1.0.0)"


def _check_version(version: str) -> None:
    """Refuse a ``--version`` devices would refuse, in one line naming the option.

    The rule is the manifest's (``edgerun.ota.manifest.VERSION``): checked here, it is
    "--version 1.1 is not a version: use MAJOR.MINOR.PATCH (1.1.0)", not the schema's regular
    expression at ``$.version`` once the model file has been hashed.

    Raises:
        ConfigError: with the version it was likely meant to be, where there is one.
    """
    from edgerun.errors import ConfigError, quoted

    require_not_empty("--version", version)
    if _is_version(version):
        return
    meant = _meant_version(version)
    form = f"MAJOR.MINOR.PATCH ({meant})" if meant is not None else _VERSION_FORM
    raise ConfigError(f"--version {quoted(version)} is not a version: use {form}")


def _is_version(text: str) -> bool:
    import msgspec

    from edgerun.ota.manifest import VERSION

    try:
        msgspec.convert(text, VERSION)
    except msgspec.ValidationError:
        return False
    return True


def _meant_version(text: str) -> str | None:
    """``text`` made MAJOR.MINOR.PATCH where it is one to three numbers (``1.1``, ``v1.2.3``, ``01.2.3``)."""
    parts = text.strip().removeprefix("v").removeprefix("V").split(".")
    if len(parts) > 3 or not all(p.isascii() and p.isdigit() and len(p.lstrip("0")) <= 9 for p in parts):
        return None
    meant = ".".join(str(int(p.lstrip("0") or "0")) for p in parts + ["0"] * (3 - len(parts)))
    return meant if _is_version(meant) else None


def _check_via(via: str) -> None:
    """Refuse a ``--via`` the manifest's ``source`` would refuse (empty, another scheme, a control character)."""
    from edgerun.errors import ConfigError, quoted

    require_not_empty("--via", via)
    if via == "mqtt":
        return
    if not via.startswith(("https://", "http://", "file://")):
        raise ConfigError(f"--via {quoted(via)} is neither mqtt nor an https://, http:// or file:// URL")
    if not via.isprintable():  # a line break would split a log line on the devices
        raise ConfigError(f"--via {quoted(via)} holds a control character: percent-encode it")


def _bar(total: int, unit: str) -> Any:
    if not sys.stderr.isatty() or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False)


@dataclass(frozen=True)
class _Awaited:
    """What a ``--wait`` follows on the devices' ``P/ID/ota/status``: an update (``publish``) or a command
    (``rollback``), by the id its records carry, and the state that ends it well.

    An update's manifest is retained, so a target not online acts on it when it connects. A command is not
    retained: the broker keeps it only in the session of a device that connected before (the devices'
    ``clean_start=False``), and the device refuses it once ``expires_s`` have passed since it was issued.
    """

    kind: str  # "update" or "command"
    ident: str  # its update_id or command_id
    success: str  # "active" for an update, "rolled_back" for a rollback
    expires_s: float = 0.0  # a command's validity in seconds; unused for an update

    @property
    def command(self) -> bool:
        return self.kind == "command"

    def fate(self, one: bool, *, when: str = "connect", subject: str = "", unseen: bool = False) -> str:
        """What targets not online will do with it, for the line that names them (``one``: a single device):
        ``it will act on the retained update when it reconnects``; for a command, ``it will act on the
        command if it reconnects within 1 h (it then expires)``, and for a device never seen under the
        prefix (``unseen``), ``it gets the command only if it was connected before (a command is not
        retained)``."""
        it, s = ("it", "s") if one else ("they", "")
        subject = subject or it
        if not self.command:
            return f"{subject} will act on the retained update when {it} {when}{s}"
        if unseen:
            was = "was" if one else "were"
            return f"{subject} get{s} the command only if {it} {was} connected before (a command is not retained)"
        within = f"{self.expires_s / 3600:g} h" if self.expires_s >= 3600 else f"{self.expires_s:g} s"
        return f"{subject} will act on the command if {it} reconnect{s} within {within} (it then expires)"


def _follow(
    fleet: Any, awaited: _Awaited, devices: list[str], groups: list[str], timeout_s: float, answer_s: float
) -> int:
    """Print each device's state changes until every targeted device that is online has finished ``awaited``
    (``publish --wait``: the update; ``rollback --wait``: the command).

    A device that is offline (its retained status says so) or has no status on the broker is not waited
    for: one line names it at the end (what it will do with the update or command, ``_Awaited.fate``), and
    where no targeted device is online at all, that end comes at once (``NOTHING_ONLINE``). One that comes
    online during the wait is followed. For a group: a device online whose status record names its groups,
    none of them in ``groups``, is no target and not waited for; any other device online that answers is
    followed, one that has not answered ``answer_s`` after it was free to is not waited for
    (``_Unanswered``) and is named at the end. The exit code is ``_ended``'s; 1 where ``timeout_s`` ran out.
    """
    deadline = time.monotonic() + timeout_s
    unanswered = _Unanswered(awaited.ident, set(devices), set(groups), answer_s)
    last: dict[str, str] = {}
    pending: list[str] = []
    time.sleep(0.5)  # retained device records arrive first
    while time.monotonic() < deadline:
        view = fleet.snapshot()
        # each device's latest record of this update or command, though a record of another came after it
        involved = {d: v.answers[awaited.ident] for d, v in view.items() if awaited.ident in v.answers}
        for device, record in sorted(involved.items()):
            state, reason = _field(record.get("state", "?")), _field(record.get("reason", ""))
            progress = "" if awaited.command else f" {_percent(record.get('progress', 0))}"  # a command has no steps
            line = f"{state}{progress} {reason}".strip()
            if last.get(device) != line:
                last[device] = line
                print_lines(f"{_field(device):<24} {line}")
        ended = {d for d, record in involved.items() if record.get("state") in TERMINAL}
        unfinished = [d for d in sorted(set(devices) | set(involved)) if d not in ended]
        pending = [d for d in unfinished if d in view and view[d].online is True]
        waiting, silent, outside = unanswered.update(view, time.monotonic()) if groups else ([], [], [])
        if not pending and not waiting:
            return _ended(fleet.prefix, awaited, view, involved, unfinished, groups, silent, bool(outside), answer_s)
        fleet.changed.wait(0.5)
        fleet.changed.clear()
    late = ""
    if pending:
        late = f": {_named(pending)} {'has' if len(pending) == 1 else 'have'} not reported its end"
    error_line(
        f"timed out after {timeout_s:g} s waiting for the devices to finish {awaited.kind} {awaited.ident}{late}"
    )
    return 1


class _Unanswered:
    """The devices online, not named with ``--device``, that have not answered an update or command sent to
    groups.

    A device whose status record names its groups (docs/protocol-notes.md) and none of ``groups`` is no
    target: it is set apart at once. Any other may be a member: a record with no ``groups`` (an older
    edgerun) tells nothing, and a member that names a group may still take no updates (no OTA key). Such a
    device shows itself only by answering on ``P/ID/ota/status`` (a manifest: ``received``, or a refusal; a
    command: its outcome). Its OTA worker handles manifests and commands one at a time, in order, so it
    answers as soon as it is free to: each device has ``answer_s`` seconds counted from the latest of the
    start of the wait, the moment it came online, and the last moment its record showed another update or
    command in progress (``BUSY``). One that lets them pass is not in the group, or takes no updates: it is
    no longer waited for (an answer that comes later is still followed).
    """

    def __init__(self, ident: str, named: set[str], groups: set[str], answer_s: float) -> None:
        self.ident, self.named, self.groups, self.answer_s = ident, named, groups, answer_s
        self._since: dict[str, float] = {}  # device online -> when it was last free to answer (monotonic s)

    def update(self, view: dict[str, Any], now: float) -> tuple[list[str], list[str], list[str]]:
        """Those still given time to answer, those whose time has passed, and those whose status records name
        other groups only, in ``view`` at ``now``."""
        waiting: list[str] = []
        silent: list[str] = []
        outside: list[str] = []
        for device, v in sorted(view.items()):
            if v.online is not True or device in self.named or self.ident in v.answers:
                self._since.pop(device, None)  # offline: its time starts again when it comes back
                continue
            if v.groups is not None and self.groups.isdisjoint(v.groups):  # no member, by its own record
                self._since.pop(device, None)  # restarted with another group: its time starts then
                outside.append(device)
                continue
            since = self._since.setdefault(device, now)
            if v.ota.get("state") in BUSY:  # another update first: this one waits behind it
                since = self._since[device] = now
            (waiting if now - since < self.answer_s else silent).append(device)
        return waiting, silent, outside


def _ended(
    prefix: str,
    awaited: _Awaited,
    view: dict[str, Any],
    involved: dict[str, Any],
    away: list[str],
    groups: list[str],
    silent: list[str],
    outside: bool,
    answer_s: float,
) -> int:
    """The end of a ``--wait``, once no device it follows is online and unfinished: a line for the targets
    not online (``away``), one for the devices online that did not answer what was sent to a group
    (``silent``: those whose status records name no groups, then the members), one per device that ended
    otherwise than ``awaited.success``, and the exit code: 1 where any ended otherwise; else
    ``NOTHING_ONLINE`` where none finished, and also, for a command, where a target was not online (a
    command is not retained: that target has not done it, and may never); else 0. ``outside``: some device
    online is in none of ``groups`` by its status record (never waited for, not named)."""
    finished = {d: record.get("state") for d, record in involved.items() if d not in away}
    offline = [d for d in away if d in view and view[d].online is False]
    unknown = [d for d in away if d not in offline]
    lines = []
    if offline:
        lines.append(
            _away_line(offline, ("is offline", "are offline"), awaited.fate(len(offline) == 1, when="reconnect"))
        )
    if unknown:
        what = f"no status record under prefix {_field(prefix)}"
        fate = awaited.fate(len(unknown) == 1, unseen=True)
        lines.append(_away_line(unknown, (f"has {what}", f"have {what}"), fate))
    names = ", ".join(_field(g) for g in groups)
    unknown_groups = [d for d in silent if view[d].groups is None]
    if unknown_groups:
        lines.append(_silent_line(unknown_groups, groups, answer_s, awaited.kind))
    members = [d for d in silent if view[d].groups is not None]
    if members:
        lines.append(_silent_member_line(members, groups, answer_s, awaited.kind))
    if groups and not involved and silent:
        lines.append(f"no member of group {names} answered: {awaited.fate(False, subject='those offline')}")
    elif groups and not involved and outside:  # devices online, each in other groups by its own record
        lines.append(f"no device online is in group {names}: {awaited.fate(False, subject='the members')}")
    elif groups and not involved:  # no device online at all
        lines.append(f"no device is online: {awaited.fate(False, subject=f'the members of group {names}')}")
    if lines:
        print_lines(*lines)
    bad = [d for d, state in sorted(finished.items()) if state != awaited.success]
    for device in bad:
        error_line(f"{device}: {finished[device]}: {involved[device].get('reason')}")
    if bad:
        return 1
    if awaited.command and away:  # not done there, and not retained for it: not the success 0 says
        return NOTHING_ONLINE
    return 0 if finished else NOTHING_ONLINE


def _silent_line(devices: list[str], groups: list[str], answer_s: float, kind: str) -> str:
    """``devb is online but did not answer the update in 10 s: it is not in group lab, or it takes no updates
    (no OTA key)``, for one device or several (the first ``NAMED_MAX`` named, the others counted): devices
    whose status records name no groups. ``kind``: ``update`` or ``command``."""
    names = _named(devices)
    they, are, take = ("it", "is", "takes") if len(devices) == 1 else ("they", "are", "take")
    if len(groups) == 1:
        member = f"not in group {_field(groups[0])}"
    else:
        member = "in none of groups " + ", ".join(_field(g) for g in groups)
    return (
        f"{names} {are} online but did not answer the {kind} in {answer_s:g} s: {they} {are} {member}, "
        f"or {they} {take} no {kind}s (no OTA key)"
    )


def _silent_member_line(devices: list[str], groups: list[str], answer_s: float, kind: str) -> str:
    """``deva is in group lab but did not answer the update in 10 s: it takes no updates (no OTA key)``, for
    one device or several: devices whose status records name one of ``groups``."""
    they, are, take = ("it", "is", "takes") if len(devices) == 1 else ("they", "are", "take")
    which = "group" if len(groups) == 1 else "one of groups"
    return (
        f"{_named(devices)} {are} in {which} {', '.join(_field(g) for g in groups)} but did not answer the "
        f"{kind} in {answer_s:g} s: {they} {take} no {kind}s (no OTA key)"
    )


def _named(devices: list[str]) -> str:
    """The first ``NAMED_MAX`` of ``devices``, the others counted (a group in a large fleet)."""
    names = ", ".join(_field(d) for d in devices[:NAMED_MAX])
    if len(devices) > NAMED_MAX:
        names += f" and {len(devices) - NAMED_MAX} more"
    return names


def _away_line(devices: list[str], verb: tuple[str, str], fate: str) -> str:
    """``devu is offline: it will act on the retained update when it reconnects``, for one device or several."""
    names = ", ".join(_field(d) for d in devices)
    return f"{names} {verb[0] if len(devices) == 1 else verb[1]}: {fate}"


def status(args: argparse.Namespace) -> int:
    """Collect retained records, print a table (and keep it live with --watch)."""
    require_within(args, wait=(0, 3600))
    fleet = _fleet(args)
    try:
        fleet.watch_devices()
        time.sleep(args.wait)
        while True:
            _print_table(fleet.snapshot(), args.json)
            if not args.watch:
                return 0
            fleet.changed.wait(5)
            fleet.changed.clear()
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.close()


def _print_table(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        for device, v in sorted(view.items()):
            print_json({"device": device, "online": v.online, "groups": v.groups, "models": v.models, "ota": v.ota})
        return
    lines = [f"{'device':<24} {'online':<7} {'groups':<16} {'models':<40} {'last update'}"]
    for device, v in sorted(view.items()):
        models = ", ".join(_model(name, m) for name, m in v.models.items()) or "-"
        ota = v.ota
        update = " ".join(
            (_field(ota.get("update_id") or ota.get("command_id") or "-"), _field(ota.get("state", "")),
             _field(ota.get("reason", "")))
        )  # fmt: skip
        online = {True: "yes", False: "no", None: "?"}[v.online]
        lines.append(f"{_field(device):<24} {online:<7} {_groups(v.groups):<16} {models:<40} {update.strip()}")
    print_lines(*lines)


def _field(value: Any) -> str:
    """A value from a device's status record (unsigned, any JSON) as a short piece of one line: its text
    with line breaks and terminal escapes written out; another JSON value as JSON; nothing as ``?``."""
    from edgerun.errors import quoted

    if value is None:
        return "?"
    return quoted(value if isinstance(value, str) else json.dumps(value))


def _groups(groups: list[str] | None) -> str:
    """A device's groups as its status record names them: ``lab,prod``; ``-`` for none; ``?`` where the record
    names no groups (an older edgerun, or a device not seen online)."""
    if groups is None:
        return "?"
    return ",".join(_field(g) for g in groups) or "-"


def _model(name: str, record: Any) -> str:
    """``NAME VERSION (DELEGATE)`` from a device's record of one model, whatever it holds."""
    record = record if isinstance(record, dict) else {}
    return f"{_field(name)} {_field(record.get('version'))} ({_field(record.get('delegate'))})"


def _percent(value: Any) -> str:
    """A device's reported progress (0 to 1) as a percentage, ``?`` where it is no number."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "?"
    return f"{value:.0%}"


def rollback(args: argparse.Namespace) -> int:
    """Sign and publish a rollback command; with --wait follow the devices' answers for up to --timeout seconds."""
    from edgerun.ota.envelope import load_private_key
    from edgerun.ota.manifest import parse_command
    from edgerun.ota.operator import build_command
    from edgerun.sync.topics import check_name

    _check_targets(args)
    check_name("model", args.model)
    require_positive(args, "timeout", "answer_within")
    require_within(args, answer_within=(0, 3600))
    settings = _settings(args)
    key = load_private_key(args.key)
    command = build_command("rollback", model=args.model, devices=args.device, groups=args.group)
    parse_command(command)  # what devices will check, checked here first
    fleet = _fleet(args, settings)
    try:
        if args.wait:
            fleet.watch_devices()  # before the command goes out: no answer is missed
        topics = [f"{args.prefix}/{d}/cmd" for d in args.device] + [f"{args.prefix}/group/{g}/cmd" for g in args.group]
        for topic in topics:
            fleet.sign_and_publish(topic, command, key, retain=False)
        print_lines(f"command {command['command_id']}: rollback of {args.model} sent to {', '.join(topics)}")
        if not args.wait:
            return 0
        awaited = _Awaited("command", command["command_id"], "rolled_back", command["expires"] - command["issued"])
        return _follow(fleet, awaited, args.device, args.group, args.timeout, args.answer_within)
    finally:
        fleet.close()


def _publish_manifests(fleet: Any, topics: list[str], manifest: dict[str, Any], key: Any) -> None:
    for topic in topics:
        fleet.sign_and_publish(topic, manifest, key, retain=True)


def _publish_chunks(fleet: Any, blob: dict[str, Any], data: bytes) -> None:
    size = blob["chunk_size"]
    chunks = [(f"{blob['topic']}/{i}", data[i * size : (i + 1) * size]) for i in range(blob["chunks"])]
    bar = _bar(len(chunks), "chunks")
    fleet.publish_many(chunks, retain=True, progress=(bar.update if bar else lambda n: None))
    if bar:
        bar.close()


def clear(args: argparse.Namespace) -> int:
    """Clear retained manifests (and their chunks) whose update every device involved has finished."""
    require_within(args, wait=(0, 3600))
    fleet = _fleet(args)
    try:
        fleet.watch(
            f"{args.prefix}/+/ota/manifest", f"{args.prefix}/group/+/ota/manifest", f"{args.prefix}/+/ota/status"
        )
        time.sleep(args.wait)
        view = fleet.snapshot()
        cleared = 0
        for topic, raw in sorted(fleet.retained.items()):
            if not topic.endswith("/ota/manifest") or not raw:
                continue
            manifest = _retained_manifest(raw)
            if manifest is None:
                continue
            uid = manifest.get("update_id")
            states = [v.ota.get("state") for v in view.values() if v.ota.get("update_id") == uid]
            targets = manifest.get("targets")
            targeted = targets.get("devices") if isinstance(targets, dict) else None
            targeted = [d for d in targeted if isinstance(d, str)] if isinstance(targeted, list) else []
            silent = [d for d in targeted if d not in view or not view[d].ota]
            # Finished: nobody is still working on it, and every device named has reported since.
            if not args.force and (silent or any(s not in TERMINAL for s in states)):
                seen = ", ".join(map(str, states)) or "no reports"
                print_lines(
                    f"keeping {_field(topic)}: update {_field(uid)} is not finished everywhere ({_field(seen)})"
                )
                continue
            fleet.publish(topic, b"", retain=True)
            chunk_topics = _chunk_topics(manifest, args.prefix)
            for chunk_topic in chunk_topics:
                fleet.publish(chunk_topic, b"", retain=True)
            cleared += 1
            print_lines(f"cleared {_field(topic)} (update {_field(uid)}) and its {len(chunk_topics)} chunk(s)")
        print_lines(f"{cleared} finished update(s) cleared")
        return 0
    finally:
        fleet.close()


def _retained_manifest(raw: bytes) -> dict[str, Any] | None:
    """The payload document of a retained envelope (its signature unchecked: it only names what to clear)."""
    import base64

    try:
        document = json.loads(base64.b64decode(json.loads(raw)["payload"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _chunk_topics(manifest: dict[str, Any], prefix: str) -> list[str]:
    """The chunk topics of a retained manifest, only where they are what a device would accept.

    The manifest read back from the broker is unverified: a topic outside ``P/blobs/<sha256>`` or
    a count outside the schema's bounds would make ``clear`` empty other retained topics, or
    publish for ever; such a manifest has its own topic cleared and no chunks.
    """
    from edgerun.ota.manifest import CHUNKS_MAX, SHA256_PATTERN

    source = manifest.get("source")
    blob = source.get("mqtt") if isinstance(source, dict) else None
    if not isinstance(blob, dict):
        return []
    sha = manifest.get("sha256")
    chunks = blob.get("chunks")
    if (
        not isinstance(sha, str)
        or not re.fullmatch(SHA256_PATTERN, sha)
        or blob.get("topic") != f"{prefix}/blobs/{sha}"
        or not isinstance(chunks, int)
        or isinstance(chunks, bool)
        or not 1 <= chunks <= CHUNKS_MAX
    ):
        return []
    return [f"{prefix}/blobs/{sha}/{i}" for i in range(chunks)]
