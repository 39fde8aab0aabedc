"""Options shared by the commands that load models, and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_model_options", "error_line", "load_kwargs", "print_json", "report_failure"]


def add_model_options(parser: argparse.ArgumentParser, *, delegate_help: str | None = None) -> None:
    """--delegate, --threads, --strict-accelerator, --no-verify, --state-dir, --probe-root."""
    parser.add_argument(
        "--delegate",
        default="auto",
        metavar="D",
        help=delegate_help
        or "auto (default: best that works), fastest (time them all, cache the winner), "
        "or a name: cpu, xnnpack, edgetpu, gpu, cuda, tensorrt, openvino, ...",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads (default: 1 for tiny models, else up to 4)"
    )
    parser.add_argument(
        "--strict-accelerator",
        action="store_true",
        help="fail instead of falling back from an accelerator that is present",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip checking an accelerated delegate's outputs against the CPU"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where caches live (default: $EDGERUN_STATE_DIR or ~/.local/state/edgerun)",
    )
    parser.add_argument(
        "--probe-root",
        default=None,
        metavar="DIR",
        help="filesystem root to probe for accelerators (default: /; for containers and tests)",
    )


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``edgerun.load`` from the shared options."""
    if args.threads is not None and not 1 <= args.threads <= 256:
        from edgerun.errors import ConfigError

        raise ConfigError(f"--threads must be between 1 and 256, got {args.threads}")
    return {
        "delegate": args.delegate,
        "threads": args.threads,
        "strict": args.strict_accelerator,
        "verify": not args.no_verify,
        "state_dir": args.state_dir,
        "probe_root": args.probe_root,
    }


def print_json(record: Any) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(record, separators=(", ", ": ")) + "\n")


def error_line(message: str) -> None:
    """One line on stderr, the form every user error takes."""
    sys.stderr.write(f"edgerun: error: {message}\n")


def report_failure(result: Any) -> None:
    """Pipeline callback: one stderr line for each input that failed."""
    if not result.ok:
        error_line(result.record["error"])
