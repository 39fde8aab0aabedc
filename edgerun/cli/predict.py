"""``edgerun predict MODEL INPUT...``: run a model over image and .npy files."""

from __future__ import annotations

import argparse
import time
from typing import Any

from edgerun.cli.common import add_model_options, error_line, load_kwargs, print_json
from edgerun.errors import EdgerunError

HELP = "run a model over images, .npy arrays or directories of them"


def register(sub: Any) -> None:
    """Add the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict",
        help=HELP,
        description=HELP + ". Exit 0 when every input succeeds, "
        "1 when any failed (the others are still processed), 2 for usage errors.",
    )
    p.add_argument("model", help="an .onnx or .tflite file (its card is read from beside it)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, .npy files or directories (walked)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="classes to list (default: the card's)")
    p.add_argument("--json", action="store_true", help="one JSON object per input per line")
    add_model_options(p)
    p.set_defaults(run=run)


def _human(path: str, output: Any, latency_ms: float) -> str:
    if isinstance(output, list) and output and isinstance(output[0], dict):
        best = output[0]
        rest = ", ".join(f"{o['label']} {o['score']:.3f}" for o in output[1:])
        text = f"{best['label']:<12} {best['score']:.4f}"
        if rest:
            text += f"   (then {rest})"
    elif isinstance(output, list):
        text = " ".join(f"{v:.4g}" for v in output[:8]) + (" ..." if len(output) > 8 else "")
    else:
        text = "; ".join(f"{k}: {len(v) if isinstance(v, list) else v} value(s)" for k, v in output.items())
    return f"{path:<40} {text}   {latency_ms:.2f} ms"


def run(args: argparse.Namespace) -> int:
    """Load the model, then predict every input, reporting failures per input."""
    import edgerun
    from edgerun.card import replace
    from edgerun.inputs import expand_inputs

    if args.top_k is not None and args.top_k < 1:
        from edgerun.errors import ConfigError

        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    model = edgerun.load(args.model, **load_kwargs(args))
    if args.top_k is not None:
        model.card = replace(model.card, postprocess=replace(model.card.postprocess, top_k=args.top_k))
    failed = 0
    done = 0
    if not args.json:
        print(f"# {model.name} {model.version} ({model.format}) on {model.delegate}")
    t_start = time.perf_counter()
    with model:
        for ref in expand_inputs(args.inputs):
            message = ref.error
            if message is None:
                try:
                    result = model.predict(ref.path, name=ref.path)
                except EdgerunError as exc:
                    message = str(exc)
            if message is not None:
                failed += 1
                error_line(message)
                if args.json:
                    print_json({"input": ref.path, "error": message})
                continue
            done += 1
            if args.json:
                print_json(
                    {
                        "input": ref.path,
                        "model": model.name,
                        "version": model.version,
                        "delegate": model.delegate,
                        "output": result.output,
                        "latency_ms": round(result.latency_ms, 3),
                    }
                )
            else:
                print(_human(ref.path, result.output, result.latency_ms))
    if not args.json:
        elapsed = time.perf_counter() - t_start
        print(f"# {done} ok, {failed} failed in {elapsed:.2f} s")
    return 1 if failed else 0
