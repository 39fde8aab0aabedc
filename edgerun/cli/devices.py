"""``edgerun devices``: what the device has, what can run, and for a model what would be chosen and why."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgerun.cli.common import add_model_options, load_kwargs, print_json, require_not_empty

HELP = "show accelerators, runtimes and usable delegates (and, with --model, the choice and why)"


def register(sub: Any) -> None:
    """Add the ``devices`` sub-command."""
    p = sub.add_parser(
        "devices",
        help=HELP,
        description=HELP + "; --delegate, --threads, --strict-accelerator, --no-verify and --state-dir need --model.",
    )
    p.add_argument(
        "--model", default=None, help="a model file: show which delegate it would get, and every fallback reason"
    )
    p.add_argument("--json", action="store_true", help="one JSON document")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Probe, discover, and (with a model) select for real."""
    from edgerun.accel.delegates import CATALOGUE, check_delegate, why_unusable
    from edgerun.accel.probe import probe
    from edgerun.accel.runtimes import discover

    require_not_empty("--model", args.model)
    kwargs = load_kwargs(args)  # the options are checked with or without --model: none is taken and ignored
    check_delegate(args.delegate)
    if not args.model:
        _refuse_model_options(args)
    device = probe(args.probe_root or "/")
    runtime = discover()
    delegates = []
    for spec in CATALOGUE:
        # a library that does not load: selection still tries it (a fallback with its reason), but here
        # "yes" would claim that a model can run on it, and none can
        reason = why_unusable(spec, device, runtime)
        delegates.append(
            {
                "name": spec.name,
                "format": spec.format,
                "summary": spec.summary,
                "usable": reason is None,
                "reason": reason or "",
            }
        )
    report: dict[str, Any] = {"device": device.to_dict(), "runtimes": runtime.to_dict(), "delegates": delegates}
    if args.model:
        import edgerun

        model = edgerun.load(Path(args.model), warmup=False, **kwargs)
        with model:
            report["model"] = {
                "name": model.name,
                "version": model.version,
                "format": model.format,
                "selection": model.selection.to_dict(),
            }
    if args.json:
        print_json(report)
        return 0
    _print_human(report)
    return 0


#: The options that only a model's selection takes, with the value each has when not given.
_MODEL_ONLY = (
    ("--delegate", "delegate", "auto"),
    ("--threads", "threads", None),
    ("--strict-accelerator", "strict_accelerator", False),
    ("--no-verify", "no_verify", False),
    ("--state-dir", "state_dir", None),
)


def _refuse_model_options(args: argparse.Namespace) -> None:
    """Refuse, in one line, an option that only selecting a model takes, given without ``--model``: it
    would be ignored, and ``devices --delegate cuda`` read as if CUDA had been checked."""
    from edgerun.errors import ConfigError

    for flag, name, unset in _MODEL_ONLY:
        if getattr(args, name) != unset:
            raise ConfigError(f"{flag} applies to a model's selection: it needs --model")


def _print_human(report: dict[str, Any]) -> None:
    """The report as lines, written at once: each one line on a terminal whatever a probed file held (a board
    name with a line break), and a stdout that refuses them is one error line naming stdout."""
    from edgerun.cli.common import print_lines
    from edgerun.errors import shown

    lines: list[str] = []

    def add(text: str) -> None:
        lines.append(shown(text))

    dev = report["device"]
    add(f"device:      {dev['board'] or dev['cpu_model'] or 'unknown'} ({dev['machine']}, {dev['cpu_count']} CPUs)")
    add(f"cpu:         {dev['cpu_model'] or '?'}; features: {', '.join(dev['cpu_features']) or 'none of note'}")
    add(f"accelerators: {', '.join(dev['accelerators']) or 'none found'}")
    rt = report["runtimes"]
    unusable = rt["unusable"]  # installed, and the import fails: say so, not "missing"
    onnx = rt["onnxruntime"] or ("onnxruntime unusable" if "onnxruntime" in unusable else "onnxruntime missing")
    tflite = rt["tflite"] or ("TFLite interpreter unusable" if "tflite" in unusable else "no TFLite interpreter")
    add(f"runtimes:    {onnx}; {tflite}")
    for why in unusable.values():
        add(f"  unusable:  {why}")
    add(f"ORT providers: {', '.join(rt['ort_providers']) or 'none'}")
    add("delegates (rank order per format):")
    for d in report["delegates"]:
        mark = "yes" if d["usable"] else "no "
        why = "" if d["usable"] else f"  - {d['reason']}"
        add(f"  {mark} {d['format']:<6} {d['name']:<9} {d['summary']}{why}")
    if "model" in report:
        m = report["model"]
        sel = m["selection"]
        add(
            f"model {m['name']} {m['version']} ({m['format']}): chosen {sel['delegate']} ({sel['mode']}"
            f"{', from cache' if sel['cached'] else ''})"
        )
        for a in sel["attempts"]:
            ms = f" {a['latency_ms']:.3f} ms" if a["latency_ms"] is not None else ""
            add(f"  {a['status']:<12} {a['delegate']:<9}{ms} {a['reason']}")
    print_lines(*lines)
