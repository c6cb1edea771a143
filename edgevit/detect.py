"""``--target auto``: which shipped profile fits this host, and why.

A Jetson is known by its device tree (``/proc/device-tree/model``, e.g. "NVIDIA Jetson AGX Orin Developer Kit") or
by L4T's ``/etc/nv_tegra_release``; every Orin reports compute capability 8.7, so only the board name tells AGX, NX
and Nano apart. Elsewhere an NVIDIA GPU with TensorRT gets ``nvidia-gpu``, and any other host its CPU target."""

from __future__ import annotations

import platform
from pathlib import Path

from edgevit.errors import TargetError

# (what the device-tree model contains, lower case) → profile; the first match wins, so AGX Orin before "orin"
JETSON_BOARDS = (
    ("agx orin", "jetson-orin"),
    ("orin nx", "jetson-orin-nx"),
    ("orin nano", "jetson-orin-nano"),
    ("xavier nx", "jetson-xavier-nx"),
)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return ""


def board_from_gpu(capability: str, sm_count: int, memory_gib: float) -> str | None:
    """The Jetson profile a board's integrated GPU implies where no device tree is readable (in Docker): Xavier is
    sm 7.2; of the Orins (sm 8.7), AGX has 14-16 SMs, Orin NX 16 GB 8 SMs and 16 GB, Orin NX 8 GB 6 SMs, Orin Nano 8
    or 4 SMs and at most 8 GB."""
    if capability == "7.2":
        return "jetson-xavier-nx"
    if capability != "8.7":
        return None
    if sm_count >= 14:
        return "jetson-orin"
    if sm_count == 6 or memory_gib > 12:
        return "jetson-orin-nx"
    return "jetson-orin-nano"


def detect_target(root: Path = Path("/")) -> tuple[str, str]:
    """(profile name, the reason in words) for this host; ``root`` lets tests stand in a board's file system.
    ``EDGEVIT_BOARD`` names the board where the device tree is hidden (Docker masks it)."""
    from edgevit.backends.tensorrt.engine import board_source

    model, source = board_source(root) or ("", "")
    tegra = _read(root / "etc/nv_tegra_release").splitlines()
    if "jetson" in model.lower() or tegra:
        where = f"{source} says {model!r}" if model else f"L4T: {tegra[0][:80]!r}"
        for key, name in JETSON_BOARDS:
            if key in model.lower():
                return name, where
        if not model:  # in a container: the GPU still tells the boards apart
            from edgevit.backends.tensorrt.engine import cuda_devices

            try:
                gpu = cuda_devices()[0]
            except Exception:
                gpu = None
            name = board_from_gpu(gpu["capability"], gpu["sm_count"], gpu["memory_gib"]) if gpu else None
            if name:
                return name, (f"{where}, no readable device tree; its GPU (sm {gpu['capability']}, "
                              f"{gpu['sm_count']} SMs, {gpu['memory_gib']} GiB) is a {name} (set EDGEVIT_BOARD to "
                              "be sure)")
        raise TargetError(f"this is a Jetson ({where}) that edgevit has no profile for; pass --target with one of "
                          f"{', '.join(n for _, n in JETSON_BOARDS)} that matches it, or a profile .toml of your own")
    from edgevit.backends.tensorrt.engine import engine_support

    ok, why = engine_support()
    if ok:
        return "nvidia-gpu", f"no Jetson board; an NVIDIA GPU with TensorRT: {why}"
    machine = platform.machine()
    short = why.split(":")[0].split(" (")[0]  # "TensorRT/cuda-python not importable", "no usable CUDA device"
    if machine in ("x86_64", "AMD64"):
        return "cpu-x86", f"no Jetson board, no TensorRT GPU ({short}); an {machine} CPU, so OpenVINO"
    return "cpu-onnxruntime", f"no Jetson board, no TensorRT GPU ({short}); a {machine} CPU, so ONNX Runtime"
