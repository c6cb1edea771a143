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


def detect_target(root: Path = Path("/")) -> tuple[str, str]:
    """(profile name, the reason in words) for this host; ``root`` lets tests stand in a board's file system."""
    model = _read(root / "proc/device-tree/model")
    tegra = _read(root / "etc/nv_tegra_release").splitlines()
    if "jetson" in model.lower() or tegra:
        where = f"{root / 'proc/device-tree/model'} says {model!r}" if model else f"L4T: {tegra[0][:80]!r}"
        for key, name in JETSON_BOARDS:
            if key in model.lower():
                return name, where
        raise TargetError(f"this is a Jetson ({where}) that edgevit has no profile for; pass --target with one of "
                          f"{', '.join(n for _, n in JETSON_BOARDS)} that matches it, or a profile .toml of your own")
    from edgevit.backends.tensorrt_engine import engine_support

    ok, why = engine_support()
    if ok:
        return "nvidia-gpu", f"no Jetson board; an NVIDIA GPU with TensorRT: {why}"
    machine = platform.machine()
    short = why.split(":")[0].split(" (")[0]  # "TensorRT/cuda-python not importable", "no usable CUDA device"
    if machine in ("x86_64", "AMD64"):
        return "cpu-x86", f"no Jetson board, no TensorRT GPU ({short}); an {machine} CPU, so OpenVINO"
    return "cpu-onnxruntime", f"no Jetson board, no TensorRT GPU ({short}); a {machine} CPU, so ONNX Runtime"
