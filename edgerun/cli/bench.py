"""``edgerun bench MODEL...``: load time, latency percentiles, throughput and peak RSS per model and delegate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgerun.accel.delegates import check_delegate
from edgerun.cli.common import add_model_options, error_line, load_kwargs, print_json
from edgerun.errors import ConfigError, EdgerunError

#: The most timed inferences --runs takes.
MAX_RUNS = 1_000_000
HELP = "benchmark models: load time, latency p50/p95/p99, throughput, peak RSS; INT8-vs-FP32 ratios"


def register(sub: Any) -> None:
    """Add the ``bench`` sub-command."""
    p = sub.add_parser("bench", help=HELP, description=HELP + ". Each model and delegate runs in its own process.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model files")
    p.add_argument("--runs", type=int, default=200, metavar="N", help="timed inferences per model (default 200)")
    p.add_argument("--json", action="store_true", help="one JSON object per result, then one per ratio")
    add_model_options(p, delegate_help="auto (default), fastest, all (every usable delegate), or a name")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Benchmark each model (on each delegate with ``all``)."""
    from edgerun.bench import MIN_RUNS, bench_isolated, speed_ratios, usable_delegates

    if not 1 <= args.runs <= MAX_RUNS:  # the child keeps every timing: 8 bytes a run
        raise ConfigError(f"--runs must be between 1 and {MAX_RUNS}, got {args.runs}")
    kwargs = load_kwargs(args)
    delegate = check_delegate(kwargs.pop("delegate"), also=("all",))
    threads = kwargs.pop("threads")
    results = []
    failed = 0
    for path in args.models:
        try:
            names = usable_delegates(Path(path), args.probe_root) if delegate == "all" else [delegate]
        except EdgerunError as exc:
            error_line(str(exc))
            failed += 1
            continue
        for name in names:
            try:
                r = bench_isolated(path, name, args.runs, threads, **kwargs)
            except EdgerunError as exc:
                error_line(f"{path} on {name}: {exc}")
                failed += 1
                continue
            results.append(r)
            if args.json:
                print_json({"type": "result", **r.to_dict()})
            else:
                if len(results) == 1:  # the header over the first row: a run whose models all fail prints none
                    print(
                        f"{'model':<28} {'fmt':<6} {'prec':<5} {'delegate':<9} {'load ms':>8} {'p50 ms':>9} "
                        f"{'p95 ms':>9} {'p99 ms':>9} {'inf/s':>9} {'RSS MB':>7}"
                    )
                p95, p99 = (_tail(value, name in r.sparse) for name, value in (("p95", r.p95_ms), ("p99", r.p99_ms)))
                print(
                    f"{Path(r.path).name:<28} {r.format:<6} {r.precision or '?':<5} {r.delegate:<9} "
                    f"{r.load_ms:>8.1f} {r.p50_ms:>9.4f} {p95} {p99} "
                    f"{r.throughput_per_s:>9.0f} {r.peak_rss_mb:>7.1f}",
                    flush=True,
                )
    if not args.json and (sparse := sorted({name for r in results for name in r.sparse})):
        needs = ", ".join(f"{name} {MIN_RUNS[name]}" for name in sparse)
        print(
            f"* from {args.runs} runs, too few for a tail percentile (runs needed: {needs}): "
            f"it is close to the slowest run; use --runs {max(MIN_RUNS[name] for name in sparse)} or more"
        )
    for ratio in speed_ratios(results):
        if args.json:
            print_json({"type": "ratio", **ratio})
        else:
            print(
                f"{ratio['model']} {ratio['format']} on {ratio['delegate']}: INT8 is "
                f"{ratio['int8_speedup']:.2f}x FP32 (p50 {ratio['int8_p50_ms']:.4f} vs {ratio['fp32_p50_ms']:.4f} ms)"
            )
    return 1 if failed else 0


def _tail(value: float, sparse: bool) -> str:
    """A p95/p99 cell, 9 wide: marked ``*`` when too few runs lie above it (see the footnote)."""
    return f"{value:>8.4f}*" if sparse else f"{value:>9.4f}"
