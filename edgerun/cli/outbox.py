"""``edgerun outbox``: what is queued for the broker, its size and age."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgerun.cli.common import print_json, print_lines, require_not_empty
from edgerun.errors import shown

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
    folder = state_dir(args.state_dir)
    path = folder / OUTBOX_FILE
    _check_place(folder, path, "--state-dir" if args.state_dir is not None else "the state directory")
    stats = read_stats(path)
    if args.json:
        print_json(stats.__dict__)
        return 0
    age = "-" if stats.oldest_age_s is None else f"{stats.oldest_age_s:.1f} s"
    lines = [
        f"outbox {stats.path}: epoch {stats.epoch}, {stats.records} record(s), {stats.bytes} bytes, "
        f"oldest {age}, evicted so far {stats.evicted}, refused by the broker {stats.refused}"
    ]
    for stream, s in sorted(stats.streams.items()):
        lines.append(
            f"  {stream:<24} {s['records']:>7} record(s) {s['bytes']:>10} bytes  seq {s['first_seq']}..{s['last_seq']}"
        )
    print_lines(*map(shown, lines))  # whole, or one line naming stdout
    return 0


def _check_place(folder: Path, path: Path, named: str) -> None:
    """Refuse, in one line, a state directory that is a file and an outbox that is a folder (else
    "no outbox" for the one, "disk I/O error" for the other), and a path the system refuses to look at
    (a name too long, a folder that cannot be searched: else a traceback).

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    import stat

    from edgerun.errors import ConfigError

    for where in (folder, path):
        try:
            mode = where.stat().st_mode
        except FileNotFoundError:
            return  # read_stats says "no outbox at ..."
        except OSError as exc:
            raise ConfigError(f"cannot read the outbox {path}: {exc.strerror or exc}") from None
        if where == folder and not stat.S_ISDIR(mode):
            raise ConfigError(f"{named} {folder} is not a directory")
        if where == path and stat.S_ISDIR(mode):
            raise ConfigError(f"cannot read the outbox {path}: it is a directory, not a file")
