"""Audit of the figures a user sees: system sampling, the device id, the state directory, bench."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgerun.bench import bench_in_process, bench_isolated
from edgerun.device import default_device_id
from edgerun.telemetry import SystemSampler
from tests.conftest import FakeTree, run_cli

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits" / "digits_fp32.onnx"

# A worker that stands for an isolated model's runtime: it holds memory, burns CPU, then waits.
_BUSY_CHILD = textwrap.dedent(
    """
    import sys, time
    block = bytearray(160 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    start = time.process_time()
    while time.process_time() - start < 0.4:
        pass
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def test_cpu_and_rss_count_the_worker_processes_of_the_daemon() -> None:
    t0 = time.monotonic()
    sampler = SystemSampler()
    child = subprocess.Popen(
        [sys.executable, "-c", _BUSY_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        own_rss_mb = psutil.Process().memory_info().rss / 2**20
        sample = sampler.sample()
        wall = time.monotonic() - t0
    finally:
        child.communicate("\n", timeout=30)
    # The child burnt 0.4 s of CPU within the sampled interval, which is no longer than ``wall``.
    assert sample["cpu_pct"] >= 0.95 * 100 * 0.4 / wall
    assert sample["rss_mb"] >= own_rss_mb + 150  # the child's 160 MiB, touched


def test_the_jetson_pmic_placeholder_zone_is_not_taken_for_the_board_temperature(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "jetson")
    zones = {"AO-therm": 41500, "CPU-therm": 44000, "GPU-therm": 42500, "PMIC-Die": 100000, "thermal-fan-est": 43000}
    for i, (kind, millideg) in enumerate(zones.items()):
        tree.file(f"sys/class/thermal/thermal_zone{i}/type", kind + "\n")
        tree.file(f"sys/class/thermal/thermal_zone{i}/temp", f"{millideg}\n")
    assert SystemSampler(tree.root).temperature_c() == 44.0


def test_a_throttle_value_wider_than_the_firmwares_32_bits_is_not_reported(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "pi").file("sys/devices/platform/soc/soc:firmware/get_throttled", "1ffffffff\n")
    assert SystemSampler(tree.root).throttled() is None
    tree.file("sys/devices/platform/soc/soc:firmware/get_throttled", "-5\n")
    assert SystemSampler(tree.root).throttled() is None
    tree.file("sys/devices/platform/soc/soc:firmware/get_throttled", "80008\n")
    assert SystemSampler(tree.root).throttled() == 0x80008


def test_a_real_machine_id_gives_the_same_device_id_as_before(tmp_path: Path) -> None:
    machine_id = "3d1219c7c4c5404aaa1f6d2a48adfda4"
    tree = FakeTree(tmp_path / "a").file("etc/machine-id", machine_id + "\n")
    assert default_device_id(str(tree.root)) == "edge-" + hashlib.sha256(machine_id.encode()).hexdigest()[:12]


def test_boards_flashed_from_one_first_boot_image_get_different_ids(tmp_path: Path) -> None:
    pi = FakeTree(tmp_path / "pi").file("etc/machine-id", "uninitialized\n")
    pi.file("sys/firmware/devicetree/base/serial-number", "10000000a1b2c3d4\x00")
    jetson = FakeTree(tmp_path / "jetson").file("etc/machine-id", "uninitialized\n")
    jetson.file("sys/firmware/devicetree/base/serial-number", "1421019045678\x00")
    other_pi = FakeTree(tmp_path / "pi3").file("etc/machine-id", "00000000000000000000000000000000\n")
    other_pi.file("proc/cpuinfo", "processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 00000000deadbeef\nModel\t: Pi 3\n")
    ids = {default_device_id(str(board.root)) for board in (pi, jetson, other_pi)}
    assert len(ids) == 3
    assert default_device_id(str(pi.root)) == default_device_id(str(pi.root))  # stable


def test_a_machine_id_file_holding_binary_garbage_gives_an_id_not_a_traceback(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "r")
    (tree.root / "etc").mkdir()
    (tree.root / "etc" / "machine-id").write_bytes(b"\xff\xfe\x00\x9c garbage\n")
    tree.file("sys/firmware/devicetree/base/serial-number", "10000000a1b2c3d4\x00")
    device_id = default_device_id(str(tree.root))
    assert device_id.startswith("edge-") and len(device_id) == 17


_CHECK_LOCKED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edgerun.errors import ConfigError
    from edgerun.state import check_state_dir
    for create in (False, True):
        try:
            check_state_dir(Path(sys.argv[1]), create=create)
        except ConfigError as exc:
            print(exc)
    """
)


def test_a_state_dir_under_a_folder_this_user_cannot_search_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    target = locked / "inner" / "edgerun"
    command = [sys.executable, "-c", _CHECK_LOCKED, str(target)]
    if os.geteuid() == 0:  # root searches every folder: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        os.chown(locked, 54321, 54321)
        command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *command]
    locked.chmod(0o700 if os.geteuid() == 0 else 0o000)
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        locked.chmod(0o700)
        if os.geteuid() == 0:
            os.chown(locked, 0, 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"state_dir {target}: cannot reach it: Permission denied"] * 2


def test_bench_peak_rss_is_the_childs_own_not_the_spawning_processs() -> None:
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB touched in the spawning process
    try:
        result = bench_isolated(str(DIGITS), "cpu", 20, 1)
    finally:
        del ballast
    assert result.peak_rss_mb < 300  # the digits model in a fresh interpreter needs ~70 MiB


def test_bench_names_the_percentiles_too_few_runs_cannot_estimate() -> None:
    assert bench_in_process(str(DIGITS), "cpu", 5, 1).sparse == ("p95", "p99")
    assert bench_in_process(str(DIGITS), "cpu", 50, 1).sparse == ("p99",)
    assert bench_in_process(str(DIGITS), "cpu", 100, 1).sparse == ()


def test_the_bench_table_marks_a_p99_from_too_few_runs_and_says_so() -> None:
    result = run_cli("bench", str(DIGITS), "--runs", "30", "--delegate", "cpu")
    assert result.returncode == 0, result.stderr
    _header, row, note = result.stdout.splitlines()
    assert row.split()[7].endswith("*") and not row.split()[6].endswith("*")  # p99 marked, p95 not
    assert note.startswith("* from 30 runs, too few") and "--runs 100" in note
    full = run_cli("bench", str(DIGITS), "--runs", "100", "--delegate", "cpu")
    assert full.returncode == 0 and "*" not in full.stdout
