"""Per-call cost of running inference in a supervised worker process (``isolation: process``).

Candidate: ``IsolatedBackend.run`` (tensors through shared memory, a request and
a reply over a pipe). Baseline: the same model's ``Backend.run`` in process,
same delegate, same threads, same input, measured in the same run in
alternating blocks. The issue asks for the figure, not a bound: it is reported.

    python benchmarks/bench_isolation.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DIGIT_SAMPLE,
    DIGITS_DIR,
    interleave,
    machine_summary,
    make_test_jpeg,
    median_delta,
    median_ratio,
    mobilenet_models,
    parse_args,
    print_table,
    us,
)

import edgerun
from edgerun.isolation import IsolatedBackend


def measure(path: Path, image: Path, threads: int, rounds: int, block: int) -> list[object]:
    """One row: in-process and isolated p50, the difference and the ratio."""
    local = edgerun.load(path, threads=threads)
    isolated = IsolatedBackend(path, delegates=[local.delegate], threads=threads)
    try:
        x = local.prepare(image)  # the tensor the runtime takes (int8 for INT8 TFLite), the same for both
        samples = interleave(
            {"in-process": lambda: local.backend.run([x]), "worker": lambda: isolated.run([x])},
            rounds=rounds,
            block=block,
        )
        base, cand = samples["in-process"], samples["worker"]
        return [
            path.name,
            threads,
            local.delegate,
            us(base.pct(50)),
            us(cand.pct(50)),
            f"+{median_delta(cand, base) * 1e6:.1f}",
            f"{median_ratio(cand, base):.2f}x",
            us(cand.pct(99)),
        ]
    finally:
        isolated.close()
        local.close()


def main() -> int:
    args = parse_args(__doc__ or "")
    rounds, block = (4, 200) if args.quick else (20, 500)
    print(machine_summary())
    rows = [
        measure(DIGITS_DIR / name, DIGIT_SAMPLE, 1, rounds, block)
        for name in ("digits_int8.onnx", "digits_int8.tflite")
    ]
    mobile = mobilenet_models()
    if mobile is None:
        print("SKIP mobilenet: run python tools/build_mobilenet.py (needs the build extra)")
    else:
        for path in mobile:
            if "int8" in path.name:
                jpeg = make_test_jpeg(Path(tempfile.mkdtemp()) / "still.jpg")
                rows.append(measure(path, jpeg, 2, max(2, rounds // 4), max(20, block // 10)))
    print_table(
        ["model", "thr", "delegate", "in-process p50 us", "worker p50 us", "extra us", "ratio", "worker p99 us"], rows
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
