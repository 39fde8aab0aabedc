"""``edgerun mqtt check``: connect with the given settings and report precisely what fails."""

from __future__ import annotations

import argparse
from typing import Any

from edgerun.cli.common import (
    add_mqtt_options,
    error_line,
    mqtt_settings,
    print_json,
    print_lines,
    require_positive,
    require_within,
)
from edgerun.errors import shown

HELP = "MQTT tools: 'check' connects step by step (DNS, TCP, TLS, auth, publish ACL) and says what fails"


def register(sub: Any) -> None:
    """Add the ``mqtt`` sub-command."""
    p = sub.add_parser("mqtt", help=HELP, description=HELP + ".")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    c = actions.add_parser("check", help="check the broker settings", description="Exit 0 when every step passes.")
    add_mqtt_options(c, results=False)
    c.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds per step (default 5)")
    c.add_argument("--json", action="store_true", help="one JSON object per step")
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Walk the steps; print each; exit 1 at the first failure."""
    from edgerun.device import default_device_id
    from edgerun.errors import ConfigError
    from edgerun.sync.check import check
    from edgerun.sync.topics import Topics, check_name

    if not args.mqtt:
        raise ConfigError("mqtt check needs --mqtt URL")
    require_positive(args, "timeout")
    require_within(args, timeout=(0, 3600))  # a socket's timeout has a ceiling
    settings = mqtt_settings(args)
    if settings.tls:  # a key with a passphrase would prompt on the terminal; another certificate's key, ssl's words
        settings.check_tls_files()
    # "" is refused as the name it is not (as run does), not quietly taken for the default id
    device = check_name("device", args.device_id) if args.device_id is not None else default_device_id()
    for group in args.group:  # the names run would refuse, refused here too
        check_name("group", group)
    failed = False
    for step in check(settings, Topics(settings.topic_prefix, device), timeout_s=args.timeout):
        if args.json:
            print_json({"step": step.name, "ok": step.ok, "detail": step.detail})
        elif step.ok:
            print_lines(f"ok    {step.name:<8} {shown(step.detail)}")  # a refusing stdout: one line naming it
        if not step.ok:
            failed = True
            error_line(step.detail)
    return 1 if failed else 0
