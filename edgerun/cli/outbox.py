"""``edgerun outbox``: what is queued for the broker, its size and age."""

from __future__ import annotations

import argparse
from typing import Any

from edgerun.cli.common import print_json, require_not_empty

HELP = "show the records waiting in the outbox: count, bytes and age per stream"


def register(sub: Any) -> None:
    """Add the ``outbox`` sub-command."""
    p = sub.add_parser("outbox", help=HELP, description=HELP + ".")
    p.add_argument("--state-dir", default=None, metavar="DIR", help="state directory (default as for run)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read the outbox's stats, writing and creating nothing (a full or read-only disk, a running
    daemon), and print them."""
    from edgerun.state import state_dir
    from edgerun.sync.outbox import read_stats
    from edgerun.sync.service import OUTBOX_FILE

    require_not_empty("--state-dir", args.state_dir)
    stats = read_stats(state_dir(args.state_dir) / OUTBOX_FILE)
    if args.json:
        print_json(stats.__dict__)
        return 0
    age = "-" if stats.oldest_age_s is None else f"{stats.oldest_age_s:.1f} s"
    print(
        f"outbox {stats.path}: epoch {stats.epoch}, {stats.records} record(s), {stats.bytes} bytes, "
        f"oldest {age}, evicted so far {stats.evicted}, refused by the broker {stats.refused}"
    )
    for stream, s in sorted(stats.streams.items()):
        print(
            f"  {stream:<24} {s['records']:>7} record(s) {s['bytes']:>10} bytes  seq {s['first_seq']}..{s['last_seq']}"
        )
    return 0
