"""``edgerun daemon [--config FILE]`` and ``edgerun config check FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "run as a device daemon: models, pipelines, MQTT sync, OTA updates and the HTTP API"


def register(sub: Any) -> None:
    """Add the ``daemon`` and ``config`` sub-commands."""
    p = sub.add_parser(
        "daemon",
        help=HELP,
        description=HELP + ". Without --config: the sample digits model, "
        "the API on 127.0.0.1, no broker. SIGTERM stops, SIGHUP reloads the config.",
    )
    p.add_argument("--config", default=None, metavar="FILE", help="a YAML config (see device-configs/)")
    p.set_defaults(run=run)
    c = sub.add_parser("config", help="config tools: 'check FILE' validates and prints the effective config")
    actions = c.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    check = actions.add_parser("check", help="validate a config and print it with every default filled in")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=check_config)


def check_config(args: argparse.Namespace) -> int:
    """Validate, check the model files and the state directory; print the effective config as YAML."""
    import yaml

    from edgerun.cli.common import print_lines, require_not_empty
    from edgerun.config import check_runnable, load_config
    from edgerun.errors import ConfigError
    from edgerun.state import check_state_dir, state_dir

    require_not_empty("config FILE", args.file)  # else "cannot read config .: Is a directory"
    config = load_config(args.file)
    for note in check_runnable(config, args.file):
        print(f"edgerun: warning: {args.file}: {note}", file=sys.stderr)
    try:
        check_state_dir(state_dir(config.state_dir), create=False)  # writable, or can be made; nothing left behind
    except ConfigError as exc:
        raise ConfigError(f"{args.file}: {exc}") from None
    effective = yaml.safe_dump(json.loads(json.dumps(config.effective())), sort_keys=False)
    # at once: a full stdout is one line naming it, unbuffered too
    print_lines(f"# {args.file}: valid; the effective config, defaults filled in:", effective.rstrip("\n"))
    return 0


def run(args: argparse.Namespace) -> int:
    """Load the config (exit 2 if broken), set up logging, run until stopped."""
    from edgerun.cli.common import require_not_empty
    from edgerun.config import default_config, load_config
    from edgerun.daemon import Daemon
    from edgerun.logs import setup_logging

    require_not_empty("--config", args.config)  # "" would quietly run the sample daemon, with no config
    config = load_config(args.config) if args.config else default_config()
    setup_logging(config.logging.level, config.logging.format)
    return Daemon(config, Path(args.config) if args.config else None).run()
