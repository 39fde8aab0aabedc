"""``edgerun bench MODEL...``: load time, latency percentiles, throughput and peak RSS per model and delegate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.accel.delegates import check_delegate
from edgerun.cli.common import add_model_options, error_line, load_kwargs, print_json, print_lines, require_not_empty
from edgerun.errors import ConfigError, EdgerunError, shown

if TYPE_CHECKING:
    from edgerun.bench import BenchResult

#: The most timed inferences --runs takes.
MAX_RUNS = 1_000_000
HELP = "benchmark models: load time, latency p50/p95/p99, throughput, peak RSS; INT8-vs-FP32 ratios"


def register(sub: Any) -> None:
    """Add the ``bench`` sub-command."""
    p = sub.add_parser("bench", help=HELP, description=HELP + ". Each model and delegate runs in its own process.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model files")
    p.add_argument("--runs", type=int, default=200, metavar="N", help="timed inferences per model (default 200)")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per result, then one per ratio or missing ratio"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line even on a terminal")
    add_model_options(
        p,
        delegate_help="auto (default), fastest, all (every usable delegate; one present and unusable is skipped "
        "with a note), or a name",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Benchmark each model (on each delegate with ``all``); Ctrl-C or SIGTERM keeps the figures of the runs made."""
    from edgerun.bench import BenchInterrupted, UnsizedInputError, bench_isolated, delegates_for_all
    from edgerun.signals import sigterm_as_interrupt

    require_not_empty("MODEL", *args.models)  # "" would be the current directory
    if not 1 <= args.runs <= MAX_RUNS:  # the child keeps every timing: 8 bytes a run
        raise ConfigError(f"--runs must be between 1 and {MAX_RUNS}, got {args.runs}")
    kwargs = load_kwargs(args)
    delegate = check_delegate(kwargs.pop("delegate"), also=("all",))
    threads = kwargs.pop("threads")
    progress = not args.json and not args.no_progress and sys.stderr.isatty()
    results: list[BenchResult] = []
    failed = 0
    stopped: BenchInterrupted | None = None
    # SIGTERM (a service manager's stop, `kill`, `timeout`) stops it as Ctrl-C does, the figures of the
    # runs made kept: by default it ended the process with no word and no row (exit 143)
    with sigterm_as_interrupt():
        for path in args.models:
            names: list[str] = [delegate]
            skipped: list[tuple[str, str]] = []
            try:
                if delegate == "all":
                    names, skipped = delegates_for_all(Path(path), args.probe_root)
            except EdgerunError as exc:
                error_line(str(exc))
                failed += 1
                continue
            for name, why in skipped:  # present, and unusable: as `edgerun devices` says "no"
                sys.stderr.write(f"edgerun: note: {shown(f'{path}: {name} skipped: {why}')}\n")
            for name in names:
                try:
                    r = bench_isolated(path, name, args.runs, threads, progress=progress, **kwargs)
                except BenchInterrupted as exc:
                    stopped = exc
                    break
                except UnsizedInputError as exc:  # the model's own: no other delegate would time it
                    error_line(f"{path}: {exc}")
                    failed += 1
                    break
                except EdgerunError as exc:
                    error_line(f"{path} on {name}: {exc}")
                    failed += 1
                    continue
                results.append(r)
                _show(r, args.json, first=len(results) == 1)
            if stopped is not None:
                break
    if stopped is not None and stopped.partial is not None:
        results.append(stopped.partial)
        _show(stopped.partial, args.json, first=len(results) == 1)
    _footer(results, args.json)
    if stopped is not None:
        p = stopped.partial
        made = f": {p.path} on {p.delegate} stopped after {p.runs:,} of {args.runs:,} runs" if p else ""
        error_line(f"interrupted{made}{' (its figures are from those)' if p else ''}")
        return 130
    return 1 if failed else 0


def _show(r: BenchResult, as_json: bool, *, first: bool) -> None:
    """One result: a JSON record, or a table row (under the header, before the first)."""
    if as_json:
        print_json({"type": "result", **r.to_dict()})
        return
    lines = []
    if first:  # the header over the first row: a run whose models all fail prints none
        lines.append(
            f"{'model':<28} {'fmt':<6} {'prec':<5} {'delegate':<9} {'load ms':>8} {'p50 ms':>9} "
            f"{'p95 ms':>9} {'p99 ms':>9} {'inf/s':>9} {'input':>14} {'RSS MiB':>7}"
        )
    p95, p99 = (_tail(value, name in r.sparse) for name, value in (("p95", r.p95_ms), ("p99", r.p99_ms)))
    lines.append(
        f"{shown(Path(r.path).name):<28} {r.format:<6} {r.precision or '?':<5} {r.delegate:<9} "
        f"{r.load_ms:>8.1f} {r.p50_ms:>9.4f} {p95} {p99} "
        f"{r.throughput_per_s:>9.0f} {_shapes(r.input_shapes):>14} {r.peak_rss_mb:>7.1f}"
    )
    print_lines(*lines)


def _footer(results: list[BenchResult], as_json: bool) -> None:
    """The note on sparse percentiles, the INT8/FP32 ratios, and why a pair got none."""
    from edgerun.bench import MIN_RUNS, missing_ratios, speed_ratios

    if not as_json and (sparse := sorted({name for r in results for name in r.sparse})):
        needs = ", ".join(f"{name} {MIN_RUNS[name]}" for name in sparse)
        counts = " or ".join(f"{n:,}" for n in sorted({r.runs for r in results if r.sparse}))
        print_lines(
            f"* from {counts} runs, too few for a tail percentile (runs needed: {needs}): "
            f"it is close to the slowest run; use --runs {max(MIN_RUNS[name] for name in sparse)} or more"
        )
    for ratio in speed_ratios(results):
        if as_json:
            print_json({"type": "ratio", **ratio})
        else:
            threads = ratio["threads"]
            print_lines(
                f"{ratio['model']} {ratio['format']} on {ratio['delegate']} with {threads} "
                f"thread{'s' if threads != 1 else ''}: INT8 is {ratio['int8_speedup']:.2f}x as fast as FP32 "
                f"(p50 {ratio['int8_p50_ms']:.4f} vs {ratio['fp32_p50_ms']:.4f} ms)"
            )
    for gap in missing_ratios(results):
        if as_json:
            print_json({"type": "no_ratio", **gap})
        else:
            print_lines(gap["reason"])


def _shapes(shapes: tuple[tuple[int, ...], ...]) -> str:
    """The input cell: each input's timed shape as ``1x3x224x224``, several joined by commas."""
    return ",".join("x".join(str(d) for d in shape) for shape in shapes) or "?"


def _tail(value: float, sparse: bool) -> str:
    """A p95/p99 cell, 9 wide: marked ``*`` when too few runs lie above it (see the footnote)."""
    return f"{value:>8.4f}*" if sparse else f"{value:>9.4f}"
