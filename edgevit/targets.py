"""Device profiles: one TOML file per target in ``targets/`` (shipped with the package), or a path of the user's."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from edgevit._config import load_toml_dataclass, resolve_named, shipped_dir
from edgevit._registry import BACKENDS
from edgevit.errors import TargetError, UnknownNameError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
Precision = Literal["fp32", "fp16", "bf16", "int8", "best"]  # best: the fastest the target allows that passes
HOST_PRECISIONS = ("auto", "f32", "bf16", "f16")  # auto: measured, f32 or the CPU's native bf16/f16


def targets_dir() -> Path:
    return shipped_dir("targets")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    device: str
    precisions: tuple = ()
    arch: tuple = ()
    host_precision: str = "f32"
    threads: int = 0
    batch: int = 1
    # TensorRT targets (Jetson boards, NVIDIA GPUs)
    compute_capability: str = ""  # the GPU's, e.g. "8.7" for Orin; "" for any GPU
    tensorrt: str = ""  # the TensorRT its software stack ships (JetPack), for information
    dla_cores: int = 0  # Deep Learning Accelerator engines on the board
    dla_core: int = -1  # build for this DLA core (-1: the GPU)
    gpu_fallback: bool = True  # layers DLA cannot run go to the GPU
    workspace_mb: int = 0  # builder workspace limit (0: TensorRT's default)
    batch_range: tuple = ()  # (min, opt, max) batch of the engine's optimization profile; () = (batch,)*3
    path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        import re

        from edgevit.schema import TENSORRT_VERSION, bad_char

        texts = [("name", self.name), ("description", self.description), ("device", self.device),
                 *(("arch", a) for a in self.arch)]
        for key, v in texts:  # printed, written into bundles and scripts: one plain line
            if not isinstance(v, str) or bad_char(v) is not None or (key != "description" and not v.strip()):
                raise TargetError(f"{self.path}: {key} must be one line of printable text, got {v!r}"[:200])
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.name):
            raise TargetError(f"{self.path}: name may only use letters, digits, '.', '_' and '-', got {self.name!r}")
        if self.tensorrt and not TENSORRT_VERSION.fullmatch(self.tensorrt):
            raise TargetError(f"{self.path}: tensorrt must be a TensorRT version like \"10.3\", got {self.tensorrt!r}")
        if self.compute_capability and not re.fullmatch(r"\d{1,2}\.\d{1,2}", self.compute_capability):
            raise TargetError(f"{self.path}: compute_capability must look like \"8.7\", got "
                              f"{self.compute_capability!r}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise TargetError(f"{self.path}: precisions must be a non-empty subset of {PRECISIONS}, got {bad}")
        if self.host_precision not in HOST_PRECISIONS:
            raise TargetError(f"{self.path}: host_precision must be one of {HOST_PRECISIONS}")
        if not 0 <= self.threads <= 4096 or not 1 <= self.batch <= 65536:
            raise TargetError(f"{self.path}: threads must be 0..4096 and batch 1..65536")
        if not 0 <= self.dla_cores <= 16 or not 0 <= self.workspace_mb <= 1 << 20:
            raise TargetError(f"{self.path}: dla_cores must be 0..16 and workspace_mb 0..{1 << 20}")
        if self.dla_core >= self.dla_cores and self.dla_core != -1:
            raise TargetError(f"{self.path}: dla_core {self.dla_core} but the board has {self.dla_cores} DLA cores"
                              + (" (none: use dla_core = -1)" if not self.dla_cores else ""))
        b = self.batch_range
        if b and (len(b) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in b)
                  or not 1 <= b[0] <= b[1] <= b[2] <= 65536):
            raise TargetError(f"{self.path}: batch_range must be [min, opt, max] with 1 <= min <= opt <= max, got "
                              f"{list(b)}")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UnknownNameError(f"precision for target {self.name}", precision, self.precisions)

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        """The target a manifest records (:meth:`to_dict`), checked as a profile is."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        """What a manifest records: the fields every target has, and any other the profile sets (the TensorRT
        fields of a Jetson's, the arch of a board's), whatever its backend."""
        always = ("name", "description", "backend", "device", "precisions", "host_precision", "threads", "batch")
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "path" and (f.name in always or v != f.default):
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def list_targets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(targets_dir().glob("*.toml"))}


def load_target(name_or_path: str) -> Target:
    """A shipped profile by name, or a TOML file path."""
    path = resolve_named(targets_dir(), name_or_path, "target")
    t = load_toml_dataclass(Target, path, path=str(path))
    if t.backend not in BACKENDS:
        raise UnknownNameError(f"backend in {path}", t.backend, BACKENDS)
    return t
