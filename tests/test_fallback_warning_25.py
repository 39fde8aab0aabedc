"""A fallback from an accelerator the device has is one WARNING line; ``devices`` refuses model options without --model.

Found by a new-user walkthrough: with ``/dev/apex_0`` and no ``libedgetpu.so.1``, ``edgerun predict`` ran on
XNNPACK and said nothing on stderr; the reason was logged at INFO (seen only with ``-v``). Now, where the probe
found the accelerator and its delegate (or ONNX Runtime provider) fails, one WARNING per load names the
accelerator, the reason and what runs instead, from ``predict``, ``bench``, ``--delegate fastest`` (timed or
cached) and ``devices --model`` alike; a delegate the probe found no hardware for stays at INFO, so a CPU-only
box says nothing. And ``edgerun devices --delegate cuda`` (no --model) checked nothing and exited 0.

The Edge TPU is faked only where the hardware is: a ``/dev/apex_0`` in a probe tree, with no libedgetpu
installed (the compiled model is a copy of the plain one: the delegate fails before its custom op would
matter), or with a stand-in accelerator (a real ``Backend``, as in tests/test_select.py) in its delegate's place.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import msgspec
import pytest

import edgerun
from edgerun.accel.delegates import CATALOGUE, DelegateSpec
from edgerun.accel.probe import probe
from edgerun.accel.select import select
from edgerun.backends import Backend, open_backend
from edgerun.errors import DelegateError
from tests.conftest import DIGITS, SAMPLES, FakeTree, run_cli
from tests.test_bench_devices_audit import _loads
from tests.test_select import NoisyBackend, _with_npu

no_libedgetpu = pytest.mark.skipif(
    sys.platform != "linux" or _loads("libedgetpu.so.1"), reason="needs Linux without libedgetpu"
)

DIGIT_3 = str(SAMPLES / "digit_3.png")
MISSING = "libedgetpu.so.1 could not be loaded (libedgetpu.so.1: cannot open shared object file"
TPU_FELL_BACK = "Edge TPU pcie:/dev/apex_0 found, but delegate edgetpu failed for digits_int8_edgetpu.tflite: "
INSTEAD = "; running digits_int8.tflite on xnnpack instead"
SELECT_LOG = "edgerun.accel.select"


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    """``digits_int8.tflite`` and its card, with a copy named ``digits_int8_edgetpu.tflite`` beside them."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("digits_int8.tflite", "digits_int8.tflite.card.yaml"):
        shutil.copy(DIGITS / name, folder / name)
    shutil.copy(DIGITS / "digits_int8.tflite", folder / "digits_int8_edgetpu.tflite")
    return folder / "digits_int8.tflite"


@pytest.fixture
def tpu_root(tmp_path: Path) -> Path:
    """A probe tree with an Edge TPU's device node."""
    return FakeTree(tmp_path / "root").cpu("avx2 fma").file("dev/apex_0").root


def _select_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SELECT_LOG and r.levelno == level]


def _one_tpu_warning(stderr: str) -> str:
    """The one line of ``stderr`` that tells the Edge TPU fallback (there must be exactly one)."""
    told = [line for line in stderr.splitlines() if TPU_FELL_BACK in line]
    assert len(told) == 1, stderr
    assert MISSING in told[0] and told[0].endswith(INSTEAD), told[0]
    return told[0]


# -- the Edge TPU present, libedgetpu missing ------------------------------------------------------------------


@no_libedgetpu
def test_predict_on_a_device_with_an_edge_tpu_that_fails_says_so_in_one_warning_without_v(
    pair: Path, tpu_root: Path
) -> None:
    done = run_cli("predict", "--probe-root", str(tpu_root), str(pair), DIGIT_3, DIGIT_3, DIGIT_3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# digits 1.0.0 (tflite) on xnnpack\n")
    # was: nothing at all on stderr; the reason at INFO, with -v only
    assert done.stderr.splitlines() == [_one_tpu_warning(done.stderr)]
    assert done.stderr.startswith(f"WARNING edgerun.accel.select: {TPU_FELL_BACK}{MISSING}")


@no_libedgetpu
def test_bench_devices_and_fastest_tell_the_edge_tpu_fallback_too(pair: Path, tpu_root: Path, tmp_path: Path) -> None:
    root, state = str(tpu_root), str(tmp_path / "state")
    bench = run_cli("bench", "--runs", "3", "--no-progress", "--probe-root", root, str(pair))
    assert bench.returncode == 0, bench.stderr
    _one_tpu_warning(bench.stderr)  # from the benchmark's own process
    devices = run_cli("devices", "--model", str(pair), "--probe-root", root, "--json")
    assert devices.returncode == 0, devices.stderr
    _one_tpu_warning(devices.stderr)
    fastest = ["predict", "--delegate", "fastest", "--state-dir", state, "--probe-root", root, str(pair), DIGIT_3]
    timed = run_cli(*fastest)
    assert timed.returncode == 0, timed.stderr
    assert "(cached)" not in _one_tpu_warning(timed.stderr)
    cached = run_cli(*fastest)  # the winner from the cache: the Edge TPU is not tried again, and still told
    assert cached.returncode == 0, cached.stderr
    assert f"(cached){INSTEAD}" in _one_tpu_warning(cached.stderr)


@no_libedgetpu
def test_a_model_loaded_once_tells_its_fallback_once_however_many_calls(
    pair: Path, tpu_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with edgerun.load(pair, probe_root=tpu_root, state_dir=pair.parent / "state") as model:
        for _ in range(5):
            model.predict(DIGIT_3)
    (warning,) = _select_lines(caplog, logging.WARNING)
    assert warning.startswith(TPU_FELL_BACK) and warning.endswith(INSTEAD)
    # the decision line stays at INFO, with -v
    assert "delegate for digits_int8.tflite: xnnpack (fell back from edgetpu)" in _select_lines(caplog, logging.INFO)


@no_libedgetpu
def test_strict_refuses_in_one_error_line_and_warns_of_nothing(pair: Path, tpu_root: Path) -> None:
    done = run_cli("predict", "--strict-accelerator", "--probe-root", str(tpu_root), str(pair), DIGIT_3)
    assert done.returncode != 0
    assert done.stderr.startswith("edgerun: error: --strict-accelerator: digits_int8.tflite would fall back (edgetpu: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr


@no_libedgetpu
def test_a_cpu_only_box_with_the_same_pair_says_nothing(pair: Path, fake_tree: FakeTree) -> None:
    done = run_cli("predict", "--probe-root", str(fake_tree.root), str(pair), DIGIT_3)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_an_edge_tpu_that_loads_and_computes_wrong_numbers_is_one_warning_naming_it_and_what_runs_instead(
    pair: Path, tpu_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def noisy(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        return NoisyBackend(path, 0.5)  # the Edge TPU's model on reference kernels, with an error added

    catalogue = tuple(msgspec.structs.replace(s, opener=noisy) if s.name == "edgetpu" else s for s in CATALOGUE)
    sel = select(pair, device=probe(tpu_root), catalogue=catalogue)
    sel.backend.close()
    assert sel.delegate == "xnnpack" and sel.fallbacks[0].status == "wrong-output"
    (line,) = _select_lines(caplog, logging.WARNING)
    # was: "delegate edgetpu dropped for ...: <difference>", not naming the device nor saying what ran instead
    assert line.startswith(
        "Edge TPU pcie:/dev/apex_0 found, but delegate edgetpu gave wrong output for digits_int8_edgetpu.tflite: "
        "output "
    )
    assert "differs from the CPU reference" in line and line.endswith(INSTEAD), line


# -- ONNX Runtime providers ----------------------------------------------------------------------------------


def _tried(name: str) -> tuple[DelegateSpec, ...]:
    """The real catalogue, with ``name`` taken as usable here, so its real opener is tried: as a build with its
    provider would be (this onnxruntime has no CUDA, so the provider fails to load, for real)."""
    return tuple(msgspec.structs.replace(s, needs=lambda d, r: None) if s.name == name else s for s in CATALOGUE)


def test_cuda_failing_on_a_device_with_an_nvidia_gpu_is_one_warning_naming_the_gpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = FakeTree(tmp_path / "root").cpu("avx2").file("dev/nvidia0").root
    sel = select(DIGITS / "digits_fp32.onnx", device=probe(root), catalogue=_tried("cuda"))
    sel.backend.close()
    assert sel.delegate == "cpu" and [a.delegate for a in sel.fallbacks] == ["cuda"]
    (warning,) = _select_lines(caplog, logging.WARNING)
    assert warning.startswith(
        "NVIDIA GPU /dev/nvidia0 found, but delegate cuda failed for digits_fp32.onnx: "
        "CUDAExecutionProvider is not in this onnxruntime build"
    )
    assert warning.endswith("; running digits_fp32.onnx on cpu instead")


def test_a_provider_failing_where_the_probe_found_no_hardware_stays_at_info(
    fake_tree: FakeTree, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("cuda", "openvino", "dnnl"):  # cuda: no /dev/nvidia*; openvino: no Intel GPU/NPU; dnnl: none
        caplog.clear()
        sel = select(DIGITS / "digits_fp32.onnx", device=probe(fake_tree.root), catalogue=_tried(name))
        sel.backend.close()
        assert [a.delegate for a in sel.fallbacks] == [name]
        assert _select_lines(caplog, logging.WARNING) == []
        told = [m for m in _select_lines(caplog, logging.INFO) if m.startswith(f"delegate {name} failed")]
        assert len(told) == 1 and told[0].endswith("; running digits_fp32.onnx on cpu instead"), told


def test_openvino_failing_on_a_device_with_an_intel_gpu_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = FakeTree(tmp_path / "root").cpu("avx2").file("dev/dri/renderD128")
    tree.file("sys/class/drm/renderD128/device/vendor", "0x8086\n")
    sel = select(DIGITS / "digits_fp32.onnx", device=probe(tree.root), catalogue=_tried("openvino"))
    sel.backend.close()
    (warning,) = _select_lines(caplog, logging.WARNING)
    assert warning.startswith("Intel GPU /dev/dri/renderD128 found, but delegate openvino failed for digits_fp32.onnx")


# -- a delegate that loads and then fails is a WARNING wherever the probe stands -------------------------------


def test_a_stand_in_accelerator_with_wrong_numbers_or_failing_while_timed_is_one_warning_each(
    fake_tree: FakeTree, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = probe(fake_tree.root)
    sel = select(DIGITS / "digits_int8.tflite", device=device, catalogue=_with_npu(0.5))
    sel.backend.close()
    (wrong,) = _select_lines(caplog, logging.WARNING)
    assert wrong.startswith("delegate npu gave wrong output for digits_int8.tflite: output ")
    assert wrong.endswith("; running digits_int8.tflite on xnnpack instead")
    caplog.clear()
    sel = select(
        DIGITS / "digits_int8.tflite",
        delegate="fastest",
        device=device,
        state_dir=state_dir,
        catalogue=_with_npu(0.0, fails_after=2),
    )
    sel.backend.close()
    (timed,) = _select_lines(caplog, logging.WARNING)
    assert timed.startswith("delegate npu failed for digits_int8.tflite: failed while timed: ")


def test_no_delegate_working_is_the_error_alone(fake_tree: FakeTree, caplog: pytest.LogCaptureFixture) -> None:
    def fails(path: Path, fmt: str, name: str, threads: int | None, cache_dir: Path | None) -> Backend:
        return open_backend(path, format=fmt, delegate="cuda")  # no CUDA in this build: a real DelegateError

    only = (DelegateSpec("cuda", "onnx", "NVIDIA CUDA", lambda d, r: None, opener=fails),)
    with pytest.raises(DelegateError, match=r"no delegate can run digits_fp32\.onnx: cuda: "):
        select(DIGITS / "digits_fp32.onnx", device=probe(fake_tree.root), catalogue=only)
    assert _select_lines(caplog, logging.WARNING) == []


# -- devices without --model ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "flag"),
    [
        (["--delegate", "cuda"], "--delegate"),
        (["--strict-accelerator"], "--strict-accelerator"),
        (["--threads", "3"], "--threads"),
        (["--no-verify"], "--no-verify"),
        (["--state-dir", "."], "--state-dir"),
    ],
)
def test_devices_refuses_a_model_option_without_model_in_one_line(
    given: list[str], flag: str, fake_tree: FakeTree
) -> None:
    done = run_cli("devices", "--probe-root", str(fake_tree.root), *given)
    assert done.returncode == 2  # was 0, the option ignored
    assert done.stdout == ""
    assert done.stderr == f"edgerun: error: {flag} applies to a model's selection: it needs --model\n"


def test_devices_takes_the_same_options_with_a_model(fake_tree: FakeTree, tmp_path: Path) -> None:
    done = run_cli(
        "devices", "--probe-root", str(fake_tree.root), "--model", str(DIGITS / "digits_int8.tflite"),
        "--delegate", "cpu", "--threads", "3", "--strict-accelerator", "--no-verify", "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chosen cpu (forced)" in done.stdout
    plain = run_cli("devices", "--probe-root", str(fake_tree.root), "--delegate", "auto")  # the default, named
    assert plain.returncode == 0, plain.stderr


def test_accelerator_found_names_the_hardware_a_delegate_runs_on_where_the_probe_finds_it(
    tpu_root: Path, tmp_path: Path
) -> None:
    """What the daemon's own preference order (``models.X.delegate: [edgetpu, xnnpack, cpu]``) and the isolated
    worker ask before they say a delegate was not used: a WARNING where the device has the hardware."""
    from edgerun.accel.delegates import accelerator_found

    assert accelerator_found("edgetpu", probe(tpu_root)) == "Edge TPU pcie:/dev/apex_0"
    assert accelerator_found("edgetpu", probe(FakeTree(tmp_path / "plain").cpu("avx2").root)) is None
    assert accelerator_found("xnnpack", probe(tpu_root)) is None  # no hardware of its own
    assert accelerator_found("no-such-delegate", probe(tpu_root)) is None
