"""The probes read fake device trees; nothing here touches real hardware."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgerun.accel.probe import probe
from edgerun.accel.runtimes import discover
from tests.conftest import FakeTree


def test_a_plain_x86_machine_has_no_accelerators_and_its_cpu_features_are_named(fake_tree: FakeTree) -> None:
    facts = probe(fake_tree.root)
    assert facts.accelerators() == []
    assert {"avx2", "avx512_vnni", "avx512f", "fma"} <= set(facts.cpu_features)
    assert facts.cpu_model == "Test CPU"
    assert facts.cpu_count == 2


def test_a_pcie_edge_tpu_is_found_from_its_apex_node(fake_tree: FakeTree) -> None:
    fake_tree.file("dev/apex_0")
    assert probe(fake_tree.root).edgetpu == ("pcie:/dev/apex_0",)


@pytest.mark.parametrize(("vendor", "product"), [("1a6e", "089a"), ("18d1", "9302")])
def test_a_usb_edge_tpu_is_found_by_its_ids_before_and_after_firmware_load(
    fake_tree: FakeTree, vendor: str, product: str
) -> None:
    fake_tree.usb("2-1", vendor, product).usb("1-1", "046d", "c52b")
    assert probe(fake_tree.root).edgetpu == (f"usb:{vendor}:{product}",)


def test_a_raspberry_pi_is_named_from_its_device_tree_and_its_arm_features_are_mapped(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "pi").cpu("fp asimd evtstrm crc32 cpuid asimddp", model="", cores=4, key="Features")
    tree.file("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    facts = probe(tree.root)
    assert facts.raspberry_pi == "Raspberry Pi 5 Model B Rev 1.0"
    assert {"neon", "dotprod"} <= set(facts.cpu_features)
    assert facts.cpu_count == 4


def test_a_jetson_is_found_from_its_tegra_release_and_counts_as_an_nvidia_gpu(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "jetson").cpu("fp asimd", key="Features")
    tree.file("etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    tree.file("proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    tree.file("dev/nvhost-gpu")
    facts = probe(tree.root)
    assert facts.jetson is not None and facts.jetson.startswith("R36")
    assert facts.nvidia_gpu == ("/dev/nvhost-gpu",)
    assert any(a.startswith("jetson:") for a in facts.accelerators())


def test_desktop_nvidia_intel_and_hailo_nodes_are_each_reported(fake_tree: FakeTree) -> None:
    fake_tree.file("dev/nvidia0").file("dev/nvidiactl").file("dev/accel/accel0").file("dev/hailo0")
    fake_tree.file("dev/dri/renderD128").file("sys/class/drm/renderD128/device/vendor", "0x8086\n")
    fake_tree.file("dev/dri/renderD129").file("sys/class/drm/renderD129/device/vendor", "0x1002\n")
    facts = probe(fake_tree.root)
    assert facts.nvidia_gpu == ("/dev/nvidia0",)
    assert facts.intel_gpu == ("/dev/dri/renderD128",)
    assert facts.intel_npu == ("/dev/accel/accel0",)
    assert facts.hailo == ("/dev/hailo0",)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_silences_only_its_own_probe(fake_tree: FakeTree) -> None:
    fake_tree.file("dev/apex_0").file("proc/device-tree/model", "Raspberry Pi 4")
    (fake_tree.root / "proc/device-tree/model").chmod(0)
    facts = probe(fake_tree.root)
    assert facts.board is None
    assert facts.edgetpu == ("pcie:/dev/apex_0",)


def test_a_directory_where_a_file_is_expected_silences_only_its_own_probe(fake_tree: FakeTree) -> None:
    (fake_tree.root / "proc/device-tree/model").mkdir(parents=True)
    fake_tree.file("dev/apex_0")
    facts = probe(fake_tree.root)
    assert facts.board is None
    assert facts.edgetpu == ("pcie:/dev/apex_0",)


def test_the_fingerprint_changes_with_the_hardware_but_not_with_the_root(tmp_path: Path) -> None:
    a = FakeTree(tmp_path / "a").cpu("avx2")
    b = FakeTree(tmp_path / "b").cpu("avx2")
    assert probe(a.root).fingerprint() == probe(b.root).fingerprint()
    b.file("dev/apex_0")
    assert probe(a.root).fingerprint() != probe(b.root).fingerprint()


def test_runtime_discovery_reports_the_installed_runtimes_and_a_missing_edgetpu_library() -> None:
    facts = discover()
    assert facts.onnxruntime and facts.onnxruntime.startswith("onnxruntime ")
    assert "CPUExecutionProvider" in facts.ort_providers
    assert facts.tflite and facts.tflite.startswith("ai-edge-litert ")
    error = facts.library_error("edgetpu")
    assert error is not None and "libedgetpu" in error
