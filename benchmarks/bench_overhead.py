"""Per-call overhead of edgerun's predict path over the bare runtime call.

For each model, the candidates run on the same model file with the same
threads and, for the headline figure, on the *identical array*:

* ``bare``: the runtime alone, set up as edgerun sets it up (ONNX Runtime
  ``InferenceSession`` with ``intra_op_num_threads``, ``inter_op_num_threads=1``
  and ``session.intra_op.allow_spinning=0``, then ``session.run``; LiteRT
  ``Interpreter(num_threads=...)`` then ``set_tensor`` + ``invoke`` +
  ``get_tensor``), fed ``x = Model.prepare(sample)``. For a full-integer INT8
  TFLite model that is already the int8 tensor (edgerun's image preprocessor
  emits int8 directly), which is also what a bare user's pipeline holds;
* ``run``: ``Model.run(x)`` on that same ``x`` (an int8 array of the input's
  dtype is passed through edgerun's ``Quantizer`` untouched; the output is
  still dequantized to float);
* ``run float-in`` (INT8 TFLite only, a second, labelled figure): ``Model.run``
  on the float tensor that dequantizes exactly to ``x`` (edgerun's float API),
  so it includes quantizing the input; no target;
* ``predict``: ``Model.predict(x)`` on the same prepared tensor, which adds
  the shape check and classification post-processing (softmax, top-k).

Digits models run on 1 thread, MobileNet models on 2. All candidates of one
model family are timed in alternating blocks (see ``_common.interleave``).

Targets (on the headline ``run``, same array as bare): at most +3% over bare
at p50 on the MobileNet INT8 models, at most +10 us on the digits models, and
INT8 at least 2x faster than FP32 on MobileNet through edgerun, per format.

    python benchmarks/bench_overhead.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DIGIT_SAMPLE,
    Samples,
    digits_models,
    interleave,
    machine_summary,
    make_test_jpeg,
    median_delta,
    median_ratio,
    mobilenet_models,
    ms,
    parse_args,
    print_table,
    print_targets,
    spread,
    us,
    verdict,
)

DIGITS_MAX_DELTA_S = 10e-6
MOBILENET_INT8_MAX_RATIO = 1.03
INT8_MIN_SPEEDUP = 2.0


@dataclass
class Row:
    """One model's candidates and how to label it."""

    label: str
    path: Path
    threads: int
    precision: str
    fmt: str


def bare_onnx(path: Path, threads: int, x: np.ndarray) -> Callable[[], list[np.ndarray]]:
    """``session.run`` on a session configured as edgerun configures its own."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feed)


def bare_litert(path: Path, threads: int, x: np.ndarray) -> Callable[[], np.ndarray]:
    """``set_tensor`` + ``invoke`` + ``get_tensor``, fed int8 data for an int8 input."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out_index = interp.get_output_details()[0]["index"]
    data = x
    if np.dtype(inp["dtype"]) != np.float32 and x.dtype != inp["dtype"]:  # float given: quantize once, untimed
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        data = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    index = inp["index"]

    def call() -> np.ndarray:
        interp.set_tensor(index, data)
        interp.invoke()
        return interp.get_tensor(out_index)

    return call


def build(rows: list[Row], sample: Path) -> tuple[dict[str, Callable[[], object]], list[object]]:
    """Load every model twice (edgerun, bare) and return the named candidates and what to keep alive."""
    import edgerun

    candidates: dict[str, Callable[[], object]] = {}
    keep: list[object] = []
    for row in rows:
        model = edgerun.load(row.path, threads=row.threads)
        x = model.prepare(sample)
        bare = (bare_onnx if row.fmt == "onnx" else bare_litert)(row.path, row.threads, x)
        _check_agreement(row, model, x, bare)
        candidates[f"{row.label}/bare"] = bare
        candidates[f"{row.label}/run"] = lambda m=model, t=x: m.run(t)
        candidates[f"{row.label}/predict"] = lambda m=model, t=x: m.predict(t)
        candidates.update(_float_in(row, model, x))
        keep.append(model)
    return candidates, keep


def float_input(model: object, x: np.ndarray) -> np.ndarray | None:
    """The float tensor that edgerun's quantizer maps back exactly to int8 ``x``; None for float inputs."""
    spec = model.inputs[0]  # type: ignore[attr-defined]
    if spec.quant is None or x.dtype != spec.dtype:
        return None
    xf = (x.astype(np.float32) - np.float32(spec.quant.zero_point)) * np.float32(spec.quant.scale)
    quantizer = model.backend._in_prep[0]  # type: ignore[attr-defined]  # the backend's own Quantizer
    if not np.array_equal(quantizer(xf), x):
        print(f"WARNING {model}: the float input does not quantize back to the int8 tensor")
    return xf


def _float_in(row: Row, model: object, x: np.ndarray) -> dict[str, Callable[[], object]]:
    """``run`` on float input (includes quantization) and edgerun's own steps, each timed alone."""
    from edgerun.backends.base import dequantize

    backend = model.backend  # type: ignore[attr-defined]
    xf = float_input(model, x) if row.fmt == "tflite" else None
    if xf is None:
        return {}
    quantizer = backend._in_prep[0]
    out_quant = backend.outputs[0].quant
    y = backend._interp.get_tensor(backend._out_index[0])
    return {
        f"{row.label}/run float-in": lambda m=model, t=xf: m.run(t),
        f"{row.label}/quantize input": lambda: quantizer(xf),
        f"{row.label}/pass-through (int8 in)": lambda: quantizer(x),
        f"{row.label}/dequantize output": lambda: dequantize(y, out_quant),
    }


def _check_agreement(row: Row, model: object, x: np.ndarray, bare: Callable[[], object]) -> None:
    """Warn (do not fail) when edgerun and the bare call disagree on the top class."""
    out = bare()
    raw = np.asarray(out[0] if isinstance(out, list) else out)
    ours = np.asarray(model.run(x)[0])  # type: ignore[attr-defined]
    if int(np.argmax(raw)) != int(np.argmax(ours)):
        print(f"WARNING {row.label}: bare and edgerun disagree on the top class")


def rows_for(paths: list[Path], threads: int) -> list[Row]:
    """Rows for model files named ``<model>_<precision>.<format>``."""
    rows = []
    for p in paths:
        precision = p.stem.rsplit("_", 1)[1]
        rows.append(Row(label=p.name, path=p, threads=threads, precision=precision, fmt=p.suffix[1:]))
    return rows


def overhead_table(rows: list[Row], res: dict[str, Samples], family: str) -> list[tuple[str, bool]]:
    """Print one family's table; return (label, passed) for rows with a target."""
    out: list[tuple[str, bool]] = []
    table = []
    for row in rows:
        bare, run, pred = (res[f"{row.label}/{k}"] for k in ("bare", "run", "predict"))
        ratio = median_ratio(run, bare)
        delta = median_delta(run, bare)
        per_round = list(run.round_medians() / bare.round_medians())
        if family == "digits":
            ok: bool | None = delta <= DIGITS_MAX_DELTA_S
            target = "<= +10 us"
        elif row.precision == "int8":
            ok = ratio <= MOBILENET_INT8_MAX_RATIO
            target = "<= +3%"
        else:
            ok, target = None, "(none)"
        if ok is not None:
            out.append((row.label, ok))
        table.append(
            [
                row.label,
                row.threads,
                ms(bare.pct(50)),
                ms(bare.pct(99)),
                ms(run.pct(50)),
                ms(run.pct(99)),
                f"{ratio:.3f}",
                spread(per_round),
                f"{delta * 1e6:+.1f}",
                ms(pred.pct(50)),
                f"{median_ratio(pred, bare):.3f}",
                f"{median_delta(pred, bare) * 1e6:+.1f}",
                target,
                verdict(ok),
            ]
        )
        if f"{row.label}/run float-in" in res:  # second figure: edgerun's float API, quantization included
            fin = res[f"{row.label}/run float-in"]
            table.append(
                [
                    f"{row.label} (float in: includes quantization)",
                    row.threads,
                    ms(bare.pct(50)),
                    ms(bare.pct(99)),
                    ms(fin.pct(50)),
                    ms(fin.pct(99)),
                    f"{median_ratio(fin, bare):.3f}",
                    spread(list(fin.round_medians() / bare.round_medians())),
                    f"{median_delta(fin, bare) * 1e6:+.1f}",
                    "-",
                    "-",
                    "-",
                    "(none; info)",
                    "-",
                ]
            )
    headers = [
        "model",
        "thr",
        "bare p50 ms",
        "bare p99 ms",
        "run p50 ms",
        "run p99 ms",
        "run/bare p50",
        "per-round range",
        "run-bare us",
        "predict p50 ms",
        "predict/bare",
        "predict-bare us",
        "target (run)",
        "result",
    ]
    print_table(headers, table)
    return out


def components_table(rows: list[Row], res: dict[str, Samples]) -> None:
    """Where ``run``'s extra time goes on quantized TFLite models, int8 in and float in."""
    table = []
    for row in rows:
        if f"{row.label}/quantize input" not in res:
            continue
        bare = res[f"{row.label}/bare"]
        extra = median_delta(res[f"{row.label}/run"], bare)
        extra_f = median_delta(res[f"{row.label}/run float-in"], bare)
        quant = res[f"{row.label}/quantize input"].pct(50)
        passthrough = res[f"{row.label}/pass-through (int8 in)"].pct(50)
        deq = res[f"{row.label}/dequantize output"].pct(50)
        table.append([f"{row.label} (int8 in)", us(extra), us(passthrough), us(deq), us(extra - passthrough - deq)])
        table.append([f"{row.label} (float in)", us(extra_f), us(quant), us(deq), us(extra_f - quant - deq)])
    if table:
        print("\nWhere run's extra time goes (quantized TFLite; each step timed alone, p50, us):\n")
        headers = ["model (input)", "run - bare", "Quantizer call", "dequantize output", "rest (Python glue)"]
        print_table(headers, table)


def speedup_table(rows: list[Row], res: dict[str, Samples]) -> list[tuple[str, bool]]:
    """INT8-over-FP32 p50 speed ratio per format, through edgerun and bare."""
    out = []
    table = []
    for fmt in ("onnx", "tflite"):
        by = {r.precision: r for r in rows if r.fmt == fmt}
        if not {"fp32", "int8"} <= set(by):
            continue
        fp, q = by["fp32"].label, by["int8"].label
        ours = median_ratio(res[f"{fp}/run"], res[f"{q}/run"])
        bare = median_ratio(res[f"{fp}/bare"], res[f"{q}/bare"])
        ok = ours >= INT8_MIN_SPEEDUP
        out.append((f"mobilenet {fmt} int8 speedup", ok))
        fin = res.get(f"{q}/run float-in")
        float_in = f"{median_ratio(res[f'{fp}/run'], fin):.2f}x" if fin is not None else "-"
        table.append(
            [
                fmt,
                ms(res[f"{fp}/run"].pct(50)),
                ms(res[f"{q}/run"].pct(50)),
                f"{ours:.2f}x",
                float_in,
                ms(res[f"{fp}/bare"].pct(50)),
                ms(res[f"{q}/bare"].pct(50)),
                f"{bare:.2f}x",
                ">= 2x",
                verdict(ok),
            ]
        )
    headers = [
        "format",
        "edgerun FP32 p50 ms",
        "edgerun INT8 p50 ms",
        "edgerun INT8 speedup",
        "same, float in (info)",
        "bare FP32 p50 ms",
        "bare INT8 p50 ms",
        "bare INT8 speedup",
        "target",
        "result",
    ]
    print_table(headers, table)
    return out


def main() -> int:
    """Measure both model families, print the tables and PASS/FAIL per target."""
    args = parse_args(__doc__.splitlines()[0])
    print(f"# bench_overhead{' --quick' if args.quick else ''}: {machine_summary()}")
    results: list[tuple[str, bool]] = []

    digits = rows_for(digits_models(), threads=1)
    rounds, block = (6, 300) if args.quick else (40, 1000)
    print(f"\n## digits (threads=1, {rounds} rounds x {block} calls per candidate, sample {DIGIT_SAMPLE.name})\n")
    candidates, keep = build(digits, DIGIT_SAMPLE)
    res = interleave(candidates, rounds, block, warmup=20)
    results += overhead_table(digits, res, "digits")
    components_table(digits, res)
    del keep, candidates

    paths = mobilenet_models()
    if paths is not None:
        mobilenet = rows_for(paths, threads=2)
        rounds, block = (4, 15) if args.quick else (60, 15)
        with tempfile.TemporaryDirectory() as tmp:
            jpeg = make_test_jpeg(Path(tmp) / "still.jpg")
            print(
                f"\n## mobilenet (threads=2, {rounds} rounds x {block} calls per candidate, "
                "input: a 640x480 JPEG prepared per the card)\n"
            )
            candidates, keep = build(mobilenet, jpeg)
        res = interleave(candidates, rounds, block, warmup=3)
        results += overhead_table(mobilenet, res, "mobilenet")
        components_table(mobilenet, res)
        print("\n## INT8 over FP32 (MobileNet, threads=2, p50 ratio)\n")
        results += speedup_table(mobilenet, res)
        del keep, candidates

    print_targets(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
