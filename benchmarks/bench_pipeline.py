"""Pipeline throughput and the cost of metrics (issue 3), each against a baseline measured in the same run.

Three parts:

1. **Video pipeline throughput.** A 1280x720 video (300 frames, mp4v, moving
   gradient plus noise, generated once into a cache dir) through
   ``Pipeline(open_source(video), model, [counting sink])`` with the default
   ``Metrics()``, against the bare runtime (configured as edgerun configures
   it, same threads) over the same frames already decoded and preprocessed
   (by ``Model.prepare``, untimed): the pipeline has to hide decoding and
   preprocessing behind inference. MobileNet INT8, TFLite and ONNX, with 1 and
   2 threads. The headline per format is 1 inference thread, the second core
   decoding: with 2 inference threads the bare runtime has both cores to itself
   and the pipeline must still find a core's worth of decoding, so its ratio sits
   well below 0.9x by arithmetic (the "2-core estimate" column: both cores' time
   per frame, inference at ``threads`` x the bare call plus decoding and
   preparing, against the bare call; an estimate, since a runtime's threads are
   not busy for the whole of a call). Target: pipeline >= 0.9x bare.
2. **Batch predict over 1,000 JPEGs** (320x240 colour, generated once).
   ``python -m edgerun predict MODEL DIR --json --batch-size N --threads T``
   as a whole process (stdout to /dev/null) against a plain script run as a
   process too (``cv2.imread`` + resize + normalise (+ quantize) + the bare
   runtime call per image, one line printed per image), same model and
   threads. Then the same work in-process: ``Pipeline(FileSource([dir]), ...)``
   with a null sink against the plain loop as a function, which separates
   steady-state throughput from process start-up. Target: edgerun >= 1.0x.
3. **Metrics on vs off.** The digits pipeline over the same JPEGs with
   ``Metrics()`` against ``NoMetrics()``: throughput and p50 per-frame latency
   within 2%; plus the cost of one ``Metrics.record`` call in microseconds.

Candidates and baselines alternate, run by run; ratios are medians of
per-pair ratios. As in the other benchmarks, PASS/FAIL is printed, never
asserted, and the exit status is 0.

    python benchmarks/bench_pipeline.py [--quick] [--mobilenet-dir DIR]

``--mobilenet-dir DIR`` takes the MobileNet files from DIR instead of
``models/mobilenet``: ``python tools/build_mobilenet.py --alpha 0.6 --out DIR``
builds a narrower model whose call is shorter: on a machine where inference is
the slower stage, it stands in for one where decoding is (a fast CPU such as
Zen 5, or an accelerator).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DIGITS_DIR,
    MOBILENET_DIR,
    REPO,
    machine_summary,
    make_images,
    parse_args,
    print_table,
    print_targets,
    spread,
    verdict,
)

PY = sys.executable
CACHE = Path(tempfile.gettempdir()) / "edgerun-bench-cache"
VIDEO_SIZE = (1280, 720)
VIDEO_FRAMES = 300
N_IMAGES = 1000
IMAGE_SIZE = (320, 240)
VIDEO_MIN_RATIO = 0.9
BATCH_MIN_RATIO = 1.0
METRICS_MAX_COST = 0.02


# -- inputs -----------------------------------------------------------------------------------------------


def make_video(path: Path, frames: int = VIDEO_FRAMES) -> Path:
    """A deterministic 720p mp4v video whose content moves (gradient, blobs, noise), written once."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    from edgerun.opencv import opencv

    cv2 = opencv()  # through edgerun, so that its image-size bound applies (and no warning)

    width, height = VIDEO_SIZE
    rng = np.random.default_rng(0)
    span = width + 4 * frames
    gx = np.linspace(0, 255, span, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    grad = np.concatenate([np.broadcast_to(gx, (height, span, 1)), np.broadcast_to(gy, (height, span, 1))], axis=2)
    grad = np.concatenate([grad, (grad[:, :, :1] + grad[:, :, 1:]) / 2], axis=2)
    coarse = rng.integers(0, 256, size=(height // 24, span // 24, 3), dtype=np.uint8)
    blobs = cv2.resize(coarse, (span, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    texture = np.clip(0.5 * grad + 0.5 * blobs, 0, 255).astype(np.uint8)
    tmp = path.with_suffix(".part.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
    if not writer.isOpened():
        raise SystemExit("cannot write an mp4v video with this OpenCV build")
    for t in range(frames):
        frame = np.ascontiguousarray(texture[:, 4 * t : 4 * t + width])
        frame = cv2.add(frame, rng.integers(0, 20, size=frame.shape, dtype=np.uint8))
        writer.write(frame)
    writer.release()
    tmp.replace(path)
    return path


# -- bare runtimes and sinks ----------------------------------------------------------------------------


def bare_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The runtime alone, configured as edgerun configures it: tensor in, first output out."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]

    def call(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(index, x)
        interp.invoke()
        return interp.get_tensor(out)  # type: ignore[no-any-return]

    return call


@dataclass
class CountSink:
    """A sink that counts results and keeps their latencies (record's, and read-to-sink).

    ``inline``, as edgerun's standard-output sinks are: it stands for the table or JSON
    lines ``edgerun run`` and ``edgerun predict`` print, published from the inference thread.
    """

    inline = True
    n: int = 0
    errors: int = 0
    latency_ms: list[float] = field(default_factory=list)
    end_to_end_ms: list[float] = field(default_factory=list)

    def publish(self, result: Any) -> None:
        """Count one result."""
        self.n += 1
        if not result.ok:
            self.errors += 1
            return
        self.latency_ms.append(result.record["latency_ms"])
        self.end_to_end_ms.append((time.time() - result.frame.ts) * 1e3)

    def close(self) -> None:
        """Nothing to flush."""


def run_pipeline(source: Any, model: Any, batch: int = 1, metrics: Any = None) -> tuple[float, CountSink, Any]:
    """(wall seconds of ``Pipeline.run()``, the sink, the summary)."""
    from edgerun.pipeline import Pipeline

    sink = CountSink()
    pipeline = Pipeline(source, model, [sink], metrics=metrics, batch_size=batch)
    t0 = time.perf_counter()
    summary = pipeline.run()
    wall = time.perf_counter() - t0
    if sink.errors or summary.errors:
        print(f"WARNING: {sink.errors} failed frames in a pipeline run over {source.uri}")
    return wall, sink, summary


def overlapped_bare(video: Path, model: Any, bare: Callable[[np.ndarray], np.ndarray]) -> float:
    """fps of a hand-written two-thread loop: decode + ``Model.prepare`` on one thread, the bare runtime on this one.

    The best a user could do on two cores without edgerun's pipeline (no post-processing, metrics or sinks).
    """
    import queue
    import threading

    from edgerun.sources.video import VideoFileSource

    q: queue.Queue[Any] = queue.Queue(8)

    def produce() -> None:
        for frame in VideoFileSource(str(video)).frames():
            q.put(model.prepare(frame.data))
        q.put(None)

    t0 = time.perf_counter()
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    n = 0
    while (x := q.get()) is not None:
        bare(x)
        n += 1
    thread.join()
    return n / (time.perf_counter() - t0)


def _missing_mobilenet(names: list[str], folder: Path) -> bool:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        out = "" if folder == MOBILENET_DIR else f" --out {folder}"
        print(
            f"SKIP mobilenet rows: {', '.join(missing)} not found in {folder}; build them with "
            f"`pip install -e .[build]` then `python tools/build_mobilenet.py{out}`"
        )
    return bool(missing)


# -- 1. video ------------------------------------------------------------------------------------------------


def video_part(video: Path, rounds: int, mobilenet_dir: Path) -> list[tuple[str, bool]]:
    """Pipeline fps over the video against the bare runtime over pre-decoded, pre-processed tensors."""
    import edgerun
    from edgerun.sources import open_source
    from edgerun.sources.video import VideoFileSource

    names = ["mobilenet_int8.tflite", "mobilenet_int8.onnx"]
    print(
        f"\n## 1. video pipeline: {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} mp4v, {VIDEO_FRAMES} frames "
        f"({video}), {rounds} alternating rounds\n"
    )
    if _missing_mobilenet(names, mobilenet_dir):
        return []
    rows, breakdown, results = [], [], []
    for name in names:
        path = mobilenet_dir / name
        per_threads = {}
        for threads in (1, 2):
            model = edgerun.load(path, threads=threads)
            # Serial, one frame at a time as the pipeline's reader does (keeping all 300 decoded
            # frames, 830 MB, would time the first touch of fresh memory instead of decoding).
            tensors, decode_s, prepare_s = [], 0.0, 0.0
            mark = time.perf_counter()
            for frame in VideoFileSource(str(video)).frames():
                decoded_at = time.perf_counter()
                tensors.append(model.prepare(frame.data))
                prepared_at = time.perf_counter()
                decode_s += decoded_at - mark
                prepare_s += prepared_at - decoded_at
                mark = prepared_at
            bare = bare_runner(path, threads)
            for x in tensors[:5]:
                bare(x)
            run_pipeline(open_source(str(video)), model)  # warm-up
            pipe_fps, bare_fps, ratios, calls, overlap = [], [], [], [], []
            summary = None
            for r in range(rounds):
                order = ("pipe", "bare", "overlap") if r % 2 == 0 else ("overlap", "bare", "pipe")
                for which in order:
                    if which == "overlap":
                        overlap.append(overlapped_bare(video, model, bare))
                    elif which == "pipe":
                        wall, sink, summary = run_pipeline(open_source(str(video)), model)
                        pipe_fps.append(sink.n / wall)
                    else:
                        times = np.empty(len(tensors))
                        t0 = time.perf_counter()
                        for i, x in enumerate(tensors):
                            t1 = time.perf_counter()
                            bare(x)
                            times[i] = time.perf_counter() - t1
                        bare_fps.append(len(tensors) / (time.perf_counter() - t0))
                        calls.append(float(np.median(times)))
                ratios.append(pipe_fps[-1] / bare_fps[-1])
            stages = summary.stages_ms if summary is not None else {}
            bare_s, feed_s = 1 / statistics.median(bare_fps), (decode_s + prepare_s) / len(tensors)
            per_threads[threads] = {
                "pipe": statistics.median(pipe_fps),
                "bare": statistics.median(bare_fps),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                # two cores' time per frame: inference (threads x the call) plus decoding and preparing
                "estimate": min(1.0, 2 / (threads * bare_s + feed_s) * bare_s, bare_s / feed_s),
            }
            breakdown.append(
                [
                    name,
                    threads,
                    f"{len(tensors) / decode_s:.0f}",
                    f"{len(tensors) / (decode_s + prepare_s):.0f}",
                    f"{prepare_s / len(tensors) * 1e3:.2f}",
                    f"{statistics.median(calls) * 1e3:.2f}",
                    f"{statistics.median(overlap):.1f}",
                    f"{statistics.median(p / o for p, o in zip(pipe_fps, overlap)):.3f}",
                    _p50(stages, "pre"),
                    _p50(stages, "infer"),
                    _p50(stages, "post"),
                    _p50(stages, "total"),
                ]
            )
            model.close()
            del tensors, bare
        for threads, fig in per_threads.items():
            headline = threads == 1
            ok = fig["ratio"] >= VIDEO_MIN_RATIO if headline else None
            if ok is not None:
                results.append((f"video pipeline {name} (threads={threads})", ok))
            rows.append(
                [
                    name,
                    threads,
                    "yes" if headline else "no",
                    f"{fig['pipe']:.1f}",
                    f"{fig['bare']:.1f}",
                    f"{fig['ratio']:.3f}",
                    spread(fig["ratios"]),
                    f"{fig['estimate']:.2f}",
                    ">= 0.9x" if headline else "(info)",
                    verdict(ok),
                ]
            )
    headers = [
        "model",
        "thr",
        "headline",
        "pipeline fps",
        "bare fps (pre-decoded)",
        "pipeline/bare",
        "per-round range",
        "2-core estimate",
        "target",
        "result",
    ]
    print_table(headers, rows)
    print(
        "\nBreakdown: serial on one thread (decode alone; decode + Model.prepare), a hand-written two-thread loop "
        "(decode + prepare thread -> bare runtime; same rounds), pipeline stage p50s (ms):\n"
    )
    headers = [
        "model",
        "thr",
        "decode fps",
        "decode+prepare fps",
        "prepare ms/frame",
        "bare call p50 ms",
        "hand-overlapped fps",
        "pipeline/overlapped",
        "pipe pre p50",
        "pipe infer p50",
        "pipe post p50",
        "pipe total p50",
    ]
    print_table(headers, breakdown)
    return results


def _p50(stages: dict[str, Any], stage: str) -> str:
    s = stages.get(stage)
    return f"{s['p50']:.2f}" if s else "-"


# -- 2. batch predict ----------------------------------------------------------------------------------------

PLAIN = '''\
"""Plain batch loop over a folder: cv2 + numpy + the runtime, no edgerun (written by bench_pipeline.py)."""
import os
import sys

import cv2
import numpy as np
{runtime}

MUL = np.array({mul}, dtype=np.float32)
ADD = np.array({add}, dtype=np.float32)


def main(folder, out):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    for name in names:
        path = os.path.join(folder, name)
        image = cv2.imread(path, {imread_flag})
        {color_line}
        image = cv2.resize(image, ({width}, {height}), interpolation=cv2.{interp})
        x = image.reshape(1, {height}, {width}, {channels}).astype(np.float32)
        x *= MUL
        x += ADD
        y = infer(x)
        best = int(np.argmax(y[0]))
        out.write(f"{{path}} {{best}} {{float(y[0][best]):.4f}}\\n")
    return len(names)


if __name__ == "__main__":
    main(sys.argv[1], sys.stdout)
'''

PLAIN_ORT = """import onnxruntime as ort

_opts = ort.SessionOptions()
_opts.intra_op_num_threads = {threads}
_opts.inter_op_num_threads = 1
_opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
_session = ort.InferenceSession({model!r}, sess_options=_opts, providers=["CPUExecutionProvider"])
_name = _session.get_inputs()[0].name


def infer(x):
    return _session.run(None, {{_name: x}})[0]"""

PLAIN_LITERT = """from ai_edge_litert.interpreter import Interpreter

_interp = Interpreter(model_path={model!r}, num_threads={threads})
_interp.allocate_tensors()
_inp = _interp.get_input_details()[0]
_out = _interp.get_output_details()[0]["index"]
_quant = _inp["dtype"] != np.float32
if _quant:
    _scale, _zero = _inp["quantization"]
    _info = np.iinfo(_inp["dtype"])


def infer(x):
    if _quant:
        x = np.clip(np.rint(x / _scale + _zero), _info.min, _info.max).astype(_inp["dtype"])
    _interp.set_tensor(_inp["index"], x)
    _interp.invoke()
    return _interp.get_tensor(_out)"""


def write_plain(model: Path, threads: int, out: Path) -> Path:
    """The plain loop for ``model``, with the card's preprocessing written out as constants."""
    from edgerun.card import find_card, load_card

    card_path = find_card(model)
    if card_path is None:
        raise SystemExit(f"no card beside {model}")
    pre = load_card(card_path).preprocess
    if pre is None or pre.resize != "stretch" or pre.layout not in (None, "NHWC") or pre.size is None:
        raise SystemExit(f"{model.name}: the plain loop handles only stretch-resized NHWC cards")
    channels = 1 if pre.color == "gray" else 3
    std = np.asarray(pre.std, dtype=np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    runtime = PLAIN_ORT if model.suffix == ".onnx" else PLAIN_LITERT
    out.write_text(
        PLAIN.format(
            runtime=runtime.format(model=str(model), threads=threads),
            mul=[float(v) for v in (np.float32(pre.scale) / std)],
            add=[float(v) for v in (-mean / std)],
            imread_flag="cv2.IMREAD_GRAYSCALE" if channels == 1 else "cv2.IMREAD_COLOR",
            color_line="image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)" if pre.color == "rgb" else "pass",
            width=pre.size[1],
            height=pre.size[0],
            channels=channels,
            interp={"nearest": "INTER_NEAREST", "linear": "INTER_LINEAR", "area": "INTER_AREA", "cubic": "INTER_CUBIC"}[
                pre.interpolation
            ],
        )
    )
    return out


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return wall


class _Null:
    def write(self, text: str) -> int:
        return len(text)


def batch_part(images: Path, tmp: Path, runs: int, inproc_runs: int, mobilenet_dir: Path) -> list[tuple[str, bool]]:
    """``edgerun predict DIR`` against a plain loop, as processes and in-process."""
    import importlib.util

    import edgerun
    from edgerun.sources.files import FileSource

    cases = [(DIGITS_DIR / "digits_int8.onnx", 1), (DIGITS_DIR / "digits_int8.onnx", 8)]
    if not _missing_mobilenet(["mobilenet_int8.tflite"], mobilenet_dir):
        cases += [(mobilenet_dir / "mobilenet_int8.tflite", 1)]
    print(f"\n## 2. batch predict over {N_IMAGES} JPEGs ({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {images})\n")
    n = len([p for p in images.iterdir() if p.suffix == ".jpg"])
    proc_rows, inproc_rows, results = [], [], []
    plains: dict[Path, tuple[Path, Any]] = {}
    for model_path, batch in cases:
        from edgerun.model import default_threads

        threads = default_threads(model_path)
        if model_path not in plains:
            script = write_plain(model_path, threads, tmp / f"plain_{model_path.stem}_{model_path.suffix[1:]}.py")
            spec = importlib.util.spec_from_file_location(f"plain_{model_path.stem}", script)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            plains[model_path] = (script, module)
        script, module = plains[model_path]
        label = f"{model_path.name} bs={batch}"

        # (a) whole processes, what users run
        ours_cmd = [PY, "-m", "edgerun", "predict", str(model_path), str(images), "--json"]
        ours_cmd += ["--batch-size", str(batch), "--threads", str(threads)]
        plain_cmd = [PY, str(script), str(images)]
        _wall(ours_cmd), _wall(plain_cmd)
        ours, plain = [], []
        for i in range(runs):
            order = [(ours_cmd, ours), (plain_cmd, plain)]
            for cmd, into in order if i % 2 == 0 else order[::-1]:
                into.append(n / _wall(cmd))
        ratios = [a / b for a, b in zip(ours, plain)]
        ratio = statistics.median(ratios)
        ok = ratio >= BATCH_MIN_RATIO
        results.append((f"batch predict CLI {label}", ok))
        proc_rows.append(
            [
                label,
                threads,
                f"{statistics.median(ours):.0f}",
                f"{statistics.median(plain):.0f}",
                f"{n / statistics.median(ours) - n / statistics.median(plain):+.3f}",
                f"{ratio:.3f}",
                spread(ratios),
                ">= 1.0x",
                verdict(ok),
            ]
        )

        # (b) in-process: Pipeline with a null sink against the plain loop as a function
        model = edgerun.load(model_path, threads=threads)
        run_pipeline(FileSource([str(images)]), model, batch)
        module.main(str(images), _Null())
        ours_in, plain_in, stages = [], [], {}
        for i in range(inproc_runs):
            for which in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
                if which == "ours":
                    wall, sink, summary = run_pipeline(FileSource([str(images)]), model, batch)
                    ours_in.append(sink.n / wall)
                    stages = summary.stages_ms
                else:
                    t0 = time.perf_counter()
                    count = module.main(str(images), _Null())
                    plain_in.append(count / (time.perf_counter() - t0))
        model.close()
        ratios_in = [a / b for a, b in zip(ours_in, plain_in)]
        inproc_rows.append(
            [
                label,
                threads,
                f"{statistics.median(ours_in):.0f}",
                f"{statistics.median(plain_in):.0f}",
                f"{statistics.median(ratios_in):.3f}",
                spread(ratios_in),
                _p50(stages, "pre"),
                _p50(stages, "infer"),
                _p50(stages, "post"),
            ]
        )
    print(
        f"(a) whole processes, {runs} alternating runs each: `edgerun predict MODEL DIR --json` vs the plain script\n"
    )
    headers = [
        "model",
        "thr",
        "edgerun img/s",
        "plain img/s",
        "diff s",
        "edgerun/plain",
        "per-pair range",
        "target",
        "result",
    ]
    print_table(headers, proc_rows)
    print(f"\n(b) in-process, {inproc_runs} alternating runs: Pipeline + null sink vs the plain loop (info)\n")
    headers = [
        "model",
        "thr",
        "pipeline img/s",
        "plain loop img/s",
        "pipeline/plain",
        "per-pair range",
        "pipe pre p50 ms",
        "pipe infer p50 ms",
        "pipe post p50 ms",
    ]
    print_table(headers, inproc_rows)
    return results


# -- 3. metrics ----------------------------------------------------------------------------------------------


def metrics_part(images: Path, rounds: int, calls: int) -> list[tuple[str, bool]]:
    """The digits pipeline with Metrics() against NoMetrics(); Metrics.record per call."""
    import edgerun
    from edgerun.sources.files import FileSource
    from edgerun.telemetry.metrics import Metrics, NoMetrics

    model_path = DIGITS_DIR / "digits_int8.tflite"
    print(f"\n## 3. metrics on vs off: {model_path.name} (threads=1) over the {N_IMAGES} JPEGs, {rounds} rounds\n")
    model = edgerun.load(model_path, threads=1)
    run_pipeline(FileSource([str(images)]), model, metrics=Metrics())
    fig: dict[str, dict[str, list[float]]] = {k: {"fps": [], "p50": [], "e2e": []} for k in ("on", "off")}
    for r in range(rounds):
        for which in ("on", "off") if r % 2 == 0 else ("off", "on"):
            metrics = Metrics() if which == "on" else NoMetrics()
            wall, sink, _ = run_pipeline(FileSource([str(images)]), model, metrics=metrics)
            fig[which]["fps"].append(sink.n / wall)
            fig[which]["p50"].append(float(np.median(sink.latency_ms)))
            fig[which]["e2e"].append(float(np.median(sink.end_to_end_ms)))
    model.close()
    rows, results = [], []
    for key, title, higher_better in (
        ("fps", "throughput, frames/s", True),
        ("p50", "p50 per-frame latency (record's pre+infer+post), ms", False),
        ("e2e", "p50 read-to-sink latency (queueing included), ms (info)", False),
    ):
        on, off = fig["on"][key], fig["off"][key]
        ratios = [a / b for a, b in zip(on, off)]
        ratio = statistics.median(ratios)
        cost = (1 - ratio) if higher_better else (ratio - 1)
        ok = None if key == "e2e" else cost <= METRICS_MAX_COST
        if ok is not None:
            results.append((f"metrics cost: {key}", ok))
        rows.append(
            [
                title,
                f"{statistics.median(on):.3f}",
                f"{statistics.median(off):.3f}",
                f"{ratio:.3f}",
                spread(ratios),
                "within 2%" if ok is not None else "(info)",
                verdict(ok),
            ]
        )
    print_table(["figure", "Metrics()", "NoMetrics()", "on/off", "per-round range", "target", "result"], rows)

    stages = {"pre": 0.31, "infer": 0.012, "post": 0.02, "total": 1.7}
    per_call = {}
    for name, m in (("Metrics.record", Metrics()), ("NoMetrics.record (call overhead only)", NoMetrics())):
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                m.record("digits", "1.0.0", "xnnpack", stages)
            samples.append((time.perf_counter() - t0) / calls)
        per_call[name] = statistics.median(samples)
    print(f"\nMicro-benchmark: {calls} calls x 5, median, one thread, 4 stages per call:\n")
    print_table(["call", "us per call"], [[k, f"{v * 1e6:.2f}"] for k, v in per_call.items()])
    return results


def main() -> int:
    """Generate the inputs once, run the three parts, print tables and PASS/FAIL."""
    args = parse_args(__doc__.splitlines()[0], mobilenet_dir=True)
    other = f" --mobilenet-dir {args.mobilenet_dir}" if args.mobilenet_dir != MOBILENET_DIR else ""
    print(f"# bench_pipeline{' --quick' if args.quick else ''}{other}: {machine_summary()}")
    print("running `python -m compileall -q edgerun` (PYTHONDONTWRITEBYTECODE is set here; see bench_startup.py)")
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "edgerun")], check=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    video = make_video(CACHE / f"video_{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}_{VIDEO_FRAMES}.mp4")
    images = make_images(CACHE / f"jpeg_{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}_{N_IMAGES}", N_IMAGES, IMAGE_SIZE, 1000)
    print(f"inputs in {CACHE} ({time.perf_counter() - t0:.1f} s to check or generate)")
    results: list[tuple[str, bool]] = []
    results += video_part(video, rounds=2 if args.quick else 8, mobilenet_dir=args.mobilenet_dir)
    with tempfile.TemporaryDirectory() as tmp:
        results += batch_part(
            images,
            Path(tmp),
            runs=2 if args.quick else 12,
            inproc_runs=2 if args.quick else 4,
            mobilenet_dir=args.mobilenet_dir,
        )
    results += metrics_part(images, rounds=2 if args.quick else 40, calls=20_000 if args.quick else 100_000)
    print_targets(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
