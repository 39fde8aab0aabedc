"""Start-up cost of ``edgerun predict MODEL IMAGE`` as a whole process, against a plain script.

The plain script (written to a temp dir) is what a user without edgerun would
write: import the runtime, cv2 and numpy, read the image and preprocess it as
the model's card says, create the interpreter/session with the same threads
edgerun uses, run the model once and print the top class. Both processes run
alternately with the same environment, stdout to /dev/null; the figure is the
median wall time and the ratio of per-pair medians (target <= 1.3x).

Trap: this environment sets ``PYTHONDONTWRITEBYTECODE=1``, so without care
edgerun's modules would be recompiled from source in every process, which a
real install never does (pip compiles at install time; the third-party
packages here were compiled that way). The benchmark therefore runs
``python -m compileall -q edgerun`` first.

A second part attributes the difference: ``python -X importtime`` for the
modules only edgerun's process imports, and timestamps around the phases
(imports, load, warm-up, predict) in both processes.

    python benchmarks/bench_startup.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DIGIT_SAMPLE,
    MOBILENET_DIR,
    REPO,
    machine_summary,
    make_test_jpeg,
    median_ratio,
    parse_args,
    print_table,
    print_targets,
    spread,
    verdict,
)

MAX_RATIO = 1.3
PY = sys.executable

PLAIN = '''\
"""Plain inference script: runtime + cv2 + numpy, no edgerun (written by bench_startup.py)."""
import os
import sys
import time

STAMPS = [("start", time.perf_counter())]
import cv2
import numpy as np
{runtime_import}
STAMPS.append(("imports", time.perf_counter()))
{runtime_load}
STAMPS.append(("load", time.perf_counter()))
image = cv2.imread({image!r}, {imread_flag})
{color_line}
image = cv2.resize(image, ({width}, {height}), interpolation=cv2.{interp})
x = image.reshape(1, {height}, {width}, {channels}).astype(np.float32)
x *= np.array({mul}, dtype=np.float32)
x += np.array({add}, dtype=np.float32)
STAMPS.append(("preprocess", time.perf_counter()))
{runtime_run}
best = int(np.argmax(y[0]))
STAMPS.append(("inference", time.perf_counter()))
labels = {labels!r}
print(labels[best] if labels else best)
if os.environ.get("STARTUP_STAMPS"):
    sys.stderr.write("".join(f"STAMP {{n}} {{t!r}}\\n" for n, t in STAMPS))
'''

ORT_IMPORT = "import onnxruntime as ort"
ORT_LOAD = """\
opts = ort.SessionOptions()
opts.intra_op_num_threads = {threads}
opts.inter_op_num_threads = 1
session = ort.InferenceSession({model!r}, sess_options=opts, providers=["CPUExecutionProvider"])"""
ORT_RUN = "y = session.run(None, {{session.get_inputs()[0].name: x}})[0]"

LITERT_IMPORT = "from ai_edge_litert.interpreter import Interpreter"
LITERT_LOAD = """\
interp = Interpreter(model_path={model!r}, num_threads={threads})
interp.allocate_tensors()
inp = interp.get_input_details()[0]
out = interp.get_output_details()[0]"""
LITERT_RUN = """\
if inp["dtype"] != np.float32:
    scale, zero = inp["quantization"]
    info = np.iinfo(inp["dtype"])
    x = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(inp["dtype"])
interp.set_tensor(inp["index"], x)
interp.invoke()
y = interp.get_tensor(out["index"])"""

# The same phases inside edgerun, driven through its API (the CLI adds argparse and logging set-up).
EDGERUN_PHASES = """\
import sys
import time

STAMPS = [("start", time.perf_counter())]
import cv2
import numpy as np
{runtime_import}
STAMPS.append(("runtime+cv2+numpy imports", time.perf_counter()))
import edgerun
import edgerun.card
import edgerun.cli.main
import edgerun.cli.predict
import edgerun.inputs
import edgerun.model
import edgerun.processing.classify
import edgerun.processing.image
import {backend_module}
STAMPS.append(("edgerun imports", time.perf_counter()))
model = edgerun.load({model!r}, warmup=False)
STAMPS.append(("load (probe, select, session, card)", time.perf_counter()))
model.warmup()
STAMPS.append(("warm-up (2 runs + preprocessor)", time.perf_counter()))
result = model.predict({image!r})
STAMPS.append(("predict (read, preprocess, run, post)", time.perf_counter()))
print(result.output[0]["label"])
sys.stderr.write("".join(f"STAMP {{n}} {{t!r}}\\n" for n, t in STAMPS))
"""


@dataclass
class Case:
    """One row: a model, an image, and the two commands."""

    label: str
    model: Path
    image: Path
    threads: int
    edgerun_cmd: list[str]
    plain_cmd: list[str]
    phases_script: Path


def _write_plain(model: Path, image: Path, threads: int, out: Path) -> Path:
    """The plain script for ``model``, with the card's preprocessing written out as constants."""
    import numpy as np

    from edgerun.card import find_card, load_card

    card_path = find_card(model)
    if card_path is None:
        raise SystemExit(f"no card beside {model}")
    card = load_card(card_path)
    pre = card.preprocess
    if pre is None or pre.resize != "stretch" or pre.layout not in (None, "NHWC") or pre.size is None:
        raise SystemExit(f"{model.name}: the plain script handles only stretch-resized NHWC cards")
    channels = 1 if pre.color == "gray" else 3
    std = np.asarray(pre.std, dtype=np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    mul = (np.float32(pre.scale) / std).astype(np.float32)
    add = (-mean / std).astype(np.float32)
    onnx = model.suffix == ".onnx"
    fields = {"model": str(model), "threads": threads}
    text = PLAIN.format(
        runtime_import=ORT_IMPORT if onnx else LITERT_IMPORT,
        runtime_load=(ORT_LOAD if onnx else LITERT_LOAD).format(**fields),
        runtime_run=(ORT_RUN if onnx else LITERT_RUN).format(**fields),
        image=str(image),
        imread_flag="cv2.IMREAD_GRAYSCALE" if channels == 1 else "cv2.IMREAD_COLOR",
        color_line="image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)" if pre.color == "rgb" else "",
        width=pre.size[1],
        height=pre.size[0],
        channels=channels,
        interp={"nearest": "INTER_NEAREST", "linear": "INTER_LINEAR", "area": "INTER_AREA", "cubic": "INTER_CUBIC"}[
            pre.interpolation
        ],
        mul=[float(v) for v in mul],
        add=[float(v) for v in add],
        labels=list(card.labels) if card.labels else None,
    )
    out.write_text(text)
    return out


def _write_phases(model: Path, image: Path, out: Path) -> Path:
    onnx = model.suffix == ".onnx"
    out.write_text(
        EDGERUN_PHASES.format(
            runtime_import=ORT_IMPORT if onnx else LITERT_IMPORT,
            backend_module="edgerun.backends.onnx" if onnx else "edgerun.backends.tflite",
            model=str(model),
            image=str(image),
        )
    )
    return out


def make_cases(tmp: Path) -> list[Case]:
    """The rows whose models exist (MobileNet rows are skipped with a note when missing)."""
    from edgerun.model import default_threads

    pairs = [("digits_int8.tflite", REPO / "models" / "digits" / "digits_int8.tflite", DIGIT_SAMPLE)]
    mob = [MOBILENET_DIR / "mobilenet_int8.onnx", MOBILENET_DIR / "mobilenet_int8.tflite"]
    missing = [p.name for p in mob if not p.is_file()]
    if missing:
        print(
            f"SKIP mobilenet rows: {', '.join(missing)} not found; build them with "
            "`pip install -e .[build]` then `python tools/build_mobilenet.py`"
        )
    else:
        jpeg = make_test_jpeg(tmp / "still_640x480.jpg")
        pairs += [(p.name, p, jpeg) for p in mob]
    cases = []
    for label, model, image in pairs:
        threads = default_threads(model)  # what `edgerun predict` uses without --threads
        plain = _write_plain(model, image, threads, tmp / f"plain_{model.stem}_{model.suffix[1:]}.py")
        cases.append(
            Case(
                label=label,
                model=model,
                image=image,
                threads=threads,
                edgerun_cmd=[PY, "-m", "edgerun", "predict", str(model), str(image)],
                plain_cmd=[PY, str(plain)],
                phases_script=_write_phases(model, image, tmp / f"phases_{model.stem}_{model.suffix[1:]}.py"),
            )
        )
    return cases


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one process, stdout to /dev/null; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return wall


def _top_class(cmd: list[str], env: dict[str, str], edgerun_cli: bool) -> str:
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    if edgerun_cli:  # "# header", "<path>  <label> <score> ...", "# n ok"
        lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
        return lines[0].split()[1] if lines else "?"
    return out.strip()


def _stamps(cmd: list[str], env: dict[str, str]) -> list[tuple[str, float]]:
    """(phase, ms) from a process's STAMP lines; the first phase is interpreter start-up."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    end = time.perf_counter()
    marks = [ln[len("STAMP ") :].rsplit(" ", 1) for ln in proc.stderr.splitlines() if ln.startswith("STAMP ")]
    names = [name for name, _ in marks]
    times = [t0] + [float(t) for _, t in marks] + [end]
    labels = ["interpreter start-up", *names[1:], "print + exit"]
    return [(label, (times[i + 1] - times[i]) * 1e3) for i, label in enumerate(labels)]


def _median_phases(runs: list[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    return [(runs[0][i][0], statistics.median(r[i][1] for r in runs)) for i in range(len(runs[0]))]


def _importtime(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Module -> self import time (ms) from ``-X importtime``."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    mods: dict[str, float] = {}
    for ln in proc.stderr.splitlines():
        if ln.startswith("import time:") and "|" in ln and "self [us]" not in ln:
            self_us, _, name = ln[len("import time:") :].split("|")
            mods[name.strip()] = mods.get(name.strip(), 0.0) + int(self_us) / 1e3
    return mods


def breakdown(case: Case, env: dict[str, str], runs: int) -> None:
    """Attribute edgerun's extra milliseconds: extra imports, and phase timestamps in both processes."""
    ours = _importtime(case.edgerun_cmd, env)
    plain = _importtime(case.plain_cmd, env)
    extra: dict[str, float] = {}
    for name, t in ours.items():
        if name not in plain:
            top = name.split(".")[0]
            extra[top] = extra.get(top, 0.0) + t
    total_ours, total_plain = sum(ours.values()), sum(plain.values())
    print(
        f"\n### {case.label}: imports (-X importtime, one run, self times summed): "
        f"edgerun process {total_ours:.1f} ms in {len(ours)} modules, plain {total_plain:.1f} ms in "
        f"{len(plain)} modules; modules only edgerun imports: {sum(extra.values()):.1f} ms\n"
    )
    rows = sorted(extra.items(), key=lambda kv: -kv[1])[:8]
    print_table(["package (modules only edgerun's process imports)", "self ms"], [[k, f"{v:.1f}"] for k, v in rows])

    stamped = {**env, "STARTUP_STAMPS": "1"}
    phases = _median_phases([_stamps([PY, str(case.phases_script)], stamped) for _ in range(runs)])
    base = _median_phases([_stamps(case.plain_cmd, stamped) for _ in range(runs)])
    print(f"\nPhases, median of {runs} runs each (ms; edgerun through its API, same order of work):\n")
    for title, phase_list in (("edgerun phase", phases), ("plain phase", base)):
        total = sum(v for _, v in phase_list)
        print_table([title, "ms"], [[n, f"{v:.1f}"] for n, v in phase_list] + [["total", f"{total:.1f}"]])
        print()


def main() -> int:
    """Compile edgerun, time both processes alternately per row, print ratios, PASS/FAIL and the breakdown."""
    args = parse_args(__doc__.splitlines()[0])
    runs = 5 if args.quick else 15
    print(f"# bench_startup{' --quick' if args.quick else ''}: {machine_summary()}")
    env = dict(os.environ)
    print(
        f"PYTHONDONTWRITEBYTECODE={env.get('PYTHONDONTWRITEBYTECODE', '(unset)')}; "
        "running `python -m compileall -q edgerun` so edgerun's modules load from bytecode as after pip install"
    )
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "edgerun")], check=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        cases = make_cases(Path(tmp_name))
        table = []
        for case in cases:
            for _ in range(2):  # page cache, lazy loaders
                _wall(case.edgerun_cmd, env)
                _wall(case.plain_cmd, env)
            ours: list[float] = []
            plain: list[float] = []
            for i in range(runs):
                order = [(case.edgerun_cmd, ours), (case.plain_cmd, plain)]
                for cmd, into in order if i % 2 == 0 else order[::-1]:
                    into.append(_wall(cmd, env))
            ratio = median_ratio(ours, plain)
            ok = ratio <= MAX_RATIO
            results.append((case.label, ok))
            top = f"{_top_class(case.edgerun_cmd, env, True)} / {_top_class(case.plain_cmd, env, False)}"
            table.append(
                [
                    case.label,
                    case.image.name,
                    case.threads,
                    f"{statistics.median(ours) * 1e3:.1f}",
                    f"{statistics.median(plain) * 1e3:.1f}",
                    f"{(statistics.median(ours) - statistics.median(plain)) * 1e3:+.1f}",
                    f"{ratio:.2f}x",
                    spread([a / b for a, b in zip(ours, plain)]),
                    top,
                    "<= 1.3x",
                    verdict(ok),
                ]
            )
        print(f"\n## whole process, {runs} alternating runs each, median wall time\n")
        headers = [
            "model",
            "image",
            "thr",
            "edgerun ms",
            "plain ms",
            "diff ms",
            "ratio",
            "per-pair range",
            "top class (edgerun / plain)",
            "target",
            "result",
        ]
        print_table(headers, table)
        print("\n## where the time goes")
        for case in cases:
            breakdown(case, env, 3 if args.quick else 7)
    print_targets(results, "startup ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
