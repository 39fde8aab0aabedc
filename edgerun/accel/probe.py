"""What accelerators this device has, read from the filesystem.

Invariant: every probe here only *reads files* under a configurable root
(``/`` on a real device, a temporary tree in tests); none imports a vendor
library, opens a device or runs a program. Each probe is independent: an
unreadable file makes that one probe report nothing (logged at DEBUG), never
breaks the others. What the installed runtimes can do is a separate question,
answered by ``edgerun.accel.runtimes``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

__all__ = ["DeviceFacts", "probe", "EDGETPU_USB_IDS"]

#: Coral USB Accelerator: before firmware load (Global Unichip) and after (Google).
EDGETPU_USB_IDS = (("1a6e", "089a"), ("18d1", "9302"))

#: CPU flags that matter for inference kernels, as /proc/cpuinfo spells them -> our name.
_CPU_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_int8": "amx_int8",
    "neon": "neon",  # 32-bit Arm
    "asimd": "neon",  # 64-bit Arm: Advanced SIMD is NEON
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "sve": "sve",
    "fphp": "fp16",
}


class DeviceFacts(msgspec.Struct, frozen=True):
    """What the device is and which accelerators it exposes (all from files)."""

    machine: str
    system: str
    cpu_model: str | None
    cpu_count: int
    cpu_features: tuple[str, ...]
    board: str | None = None
    raspberry_pi: str | None = None
    jetson: str | None = None
    edgetpu: tuple[str, ...] = ()
    nvidia_gpu: tuple[str, ...] = ()
    intel_gpu: tuple[str, ...] = ()
    intel_npu: tuple[str, ...] = ()
    hailo: tuple[str, ...] = ()
    root: str = "/"
    notes: tuple[str, ...] = ()

    def accelerators(self) -> list[str]:
        """Human names of the accelerators found, e.g. ``["edgetpu:usb", "nvidia:/dev/nvidia0"]``."""
        found = [f"edgetpu:{d}" for d in self.edgetpu]
        found += [f"nvidia:{d}" for d in self.nvidia_gpu]
        if self.jetson:
            found.append(f"jetson:{self.jetson}")
        found += [f"intel-gpu:{d}" for d in self.intel_gpu]
        found += [f"intel-npu:{d}" for d in self.intel_npu]
        found += [f"hailo:{d}" for d in self.hailo]
        return found

    def fingerprint(self) -> str:
        """A stable short id of the hardware, for caches keyed by device."""
        import hashlib

        data = msgspec.structs.asdict(self)
        data.pop("notes")
        data.pop("root")
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        data = msgspec.structs.asdict(self)
        data["accelerators"] = self.accelerators()
        return data


#: The most a probe reads of one file: /proc/cpuinfo of a 256-core server is about 400 KiB; a probe root
#: whose file is /dev/zero (or a FIFO's endless writer) must not grow the process until it is killed.
_READ_MAX = 4 * 1024 * 1024


def _read(path: Path) -> str | None:
    try:
        if not path.is_file():  # a FIFO would block the probe for good, a device node give endless bytes
            return None
        with open(path, "rb") as fh:
            data = fh.read(_READ_MAX)
        return data.decode(errors="replace").replace("\x00", "").strip()
    except OSError as exc:
        log.debug("probe: cannot read %s: %s", path, exc)
        return None


def _glob(root: Path, pattern: str) -> tuple[str, ...]:
    """Device nodes matching ``pattern`` under root, named as they would be on the device."""
    try:
        return tuple(sorted("/" + str(p.relative_to(root)) for p in root.glob(pattern)))
    except OSError as exc:
        log.debug("probe: cannot list %s: %s", pattern, exc)
        return ()


def _cpu(root: Path) -> tuple[str | None, tuple[str, ...]]:
    text = _read(root / "proc/cpuinfo") or ""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, tuple(sorted({_CPU_FLAGS[f] for f in flags if f in _CPU_FLAGS}))


def _usb_edgetpu(root: Path) -> tuple[str, ...]:
    found = []
    base = root / "sys/bus/usb/devices"
    try:
        entries = sorted(base.iterdir()) if base.is_dir() else []
    except OSError:
        entries = []
    for dev in entries:
        ids = (_read(dev / "idVendor"), _read(dev / "idProduct"))
        if ids in EDGETPU_USB_IDS:
            found.append(f"usb:{ids[0]}:{ids[1]}")
    return tuple(found)


def _drm_vendor(root: Path, node: str, vendor: str) -> bool:
    name = node.rsplit("/", 1)[-1]
    return (_read(root / "sys/class/drm" / name / "device/vendor") or "").lower() == vendor


def probe(root: str | os.PathLike[str] = "/") -> DeviceFacts:
    """Read the device's facts from the filesystem under ``root``.

    Args:
        root: the filesystem root to read; tests point it at a fake tree.
    """
    base = Path(root)
    cpu_model, features = _cpu(base)
    board = _read(base / "proc/device-tree/model")
    tegra = _read(base / "etc/nv_tegra_release")
    jetson = None
    if tegra:
        jetson = tegra.splitlines()[0].lstrip("# ").strip()
    elif board and "jetson" in board.lower():
        jetson = board
    pi = board if board and board.startswith("Raspberry Pi") else None
    edgetpu = tuple(f"pcie:{d}" for d in _glob(base, "dev/apex_*")) + _usb_edgetpu(base)
    dri = _glob(base, "dev/dri/renderD*")
    intel_gpu = tuple(d for d in dri if _drm_vendor(base, d, "0x8086"))
    nvidia = tuple(d for d in _glob(base, "dev/nvidia[0-9]*"))
    if jetson and not nvidia:
        nvidia = _glob(base, "dev/nvhost-gpu") or _glob(base, "dev/nvgpu/igpu0/*")[:1]
    cpu_count = os.cpu_count() or 1
    if str(base) != "/":
        # A fake tree describes another machine: count its CPUs from its cpuinfo.
        lines = (_read(base / "proc/cpuinfo") or "").splitlines()
        processors = sum(1 for line in lines if line.partition(":")[0].strip() == "processor")
        cpu_count = processors or cpu_count
    return DeviceFacts(
        machine=platform.machine(),
        system=platform.system(),
        cpu_model=cpu_model,
        cpu_count=cpu_count,
        cpu_features=features,
        board=board,
        raspberry_pi=pi,
        jetson=jetson,
        edgetpu=edgetpu,
        nvidia_gpu=nvidia,
        intel_gpu=intel_gpu,
        intel_npu=_glob(base, "dev/accel/accel*"),
        hailo=_glob(base, "dev/hailo*"),
        root=str(base),
    )
