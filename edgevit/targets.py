"""Device profiles: one TOML file per target in ``targets/`` (shipped with the package), or a path of the user's."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from edgevit._config import load_toml_dataclass, resolve_named, shipped_dir
from edgevit.errors import TargetError, UnknownNameError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
HOST_PRECISIONS = ("f32", "bf16", "f16")


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
    path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise TargetError(f"{self.path}: precisions must be a non-empty subset of {PRECISIONS}, got {bad}")
        if self.host_precision not in HOST_PRECISIONS:
            raise TargetError(f"{self.path}: host_precision must be one of {HOST_PRECISIONS}")
        if self.threads < 0 or self.batch < 1:
            raise TargetError(f"{self.path}: threads must be >= 0 and batch >= 1")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UnknownNameError(f"precision for target {self.name}", precision, self.precisions)

    def host_support(self) -> tuple[bool, str]:
        """Can this host build and run this target? (ok, reason)."""
        from edgevit.backends import get_backend

        if self.arch and platform.machine() not in self.arch:
            return False, f"needs a {'/'.join(self.arch)} host, this is {platform.machine()}"
        return get_backend(self.backend).available()

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "backend": self.backend, "device": self.device,
                "precisions": list(self.precisions), "host_precision": self.host_precision,
                "threads": self.threads, "batch": self.batch}


def list_targets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(targets_dir().glob("*.toml"))}


def load_target(name_or_path: str) -> Target:
    """A shipped profile by name, or a TOML file path."""
    path = resolve_named(targets_dir(), name_or_path, "target")
    t = load_toml_dataclass(Target, path, path=str(path))
    from edgevit.backends import BACKENDS

    if t.backend not in BACKENDS:
        raise UnknownNameError(f"backend in {path}", t.backend, BACKENDS)
    return t
