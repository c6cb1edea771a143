"""Backends plug in through one small interface. Heavy libraries are imported inside methods, so edgevit imports
(and ``edgevit --help`` works) without any backend installed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgevit._registry import BACKENDS, get_backend, require
from edgevit.runtime.runner import LoadSpec, Runner

if TYPE_CHECKING:
    from edgevit.runtime.manifest import Manifest
    from edgevit.targets import Target

__all__ = ["BACKENDS", "Backend", "BuildJob", "Built", "Capabilities", "LoadSpec", "Runner", "RuntimeDecides",
           "get_backend", "host_support", "require"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once: the pipeline reads these instead of trying and catching."""

    int8_signed_symmetric: bool = False  # INT8 must be signed and symmetric (zero-point 0): TensorRT
    accuracy_control: bool = False  # NNCF's accuracy-aware PTQ works on this backend's model format
    engine_on_device: bool = False  # the artifact is finished on the device (`edgevit compile`), not on this host
    speed_search: bool = False  # INT8 layers slower than the host precision can go back to it (mix_for_speed)


@dataclass
class BuildJob:
    """What a backend needs to compile one artifact. The pipeline has already quantized ``model`` (see
    :func:`edgevit.quantize.quantize_for`); a backend only turns it into its artifact."""

    model: object  # what the backend's :meth:`Backend.read` returned, quantized for int8
    onnx_path: Path  # the FP32 ONNX export (opset 17, dynamic batch) it was read from
    precision: str
    target: Target
    out_dir: Path  # the bundle's temporary directory; write files here
    quantizer: str | None = None  # how ``model`` was quantized, for the manifest (None: not quantized)
    qat: bool = False  # ``model`` came from quantization-aware training (a Q/DQ ONNX), not from PTQ here
    calibration: np.ndarray | None = None  # float32 NCHW calibration images (int8 only)
    allow_rule_violations: bool = False  # TensorRT: write a Q/DQ graph that breaks TensorRT's rules anyway
    metadata: dict = field(default_factory=dict)  # ONNX metadata_props for every ONNX the backend ships


@dataclass
class Built:
    files: list[str]  # paths relative to out_dir that make up the artifact
    details: dict = field(default_factory=dict)  # recorded in the manifest under "backend"


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def available(self) -> tuple[bool, str]: ...
    def version(self) -> str: ...
    def read(self, onnx_path: Path):
        """The ONNX file as the model this backend quantizes and compiles (``openvino.Model``, ``onnx.ModelProto``)."""
        ...
    def build(self, job: BuildJob) -> Built: ...
    def load(self, bundle_dir: Path, spec: LoadSpec, threads: int | None = None) -> Runner: ...
    def device_support(self, target) -> tuple[bool, str]:
        """Can this host run ``target``'s artifacts (for TensorRT: build and run its engines)? (ok, reason)."""
        ...
    def required_files(self, bundle_dir: Path, manifest: Manifest) -> set[str]:
        """Every file :meth:`load` reads from a bundle (relative paths): the verifier requires each to be listed and
        checksummed in the manifest, so nothing unverified is ever loaded."""
        ...
    def host_precisions(self, precision: str, target) -> list[str | None]:
        """What an artifact at ``precision`` may run its unquantized ops in on this host, to be timed against each
        other by the build (the first is what it was validated at); [None] where the backend has no such choice.
        The manifest's ``backend.host_precision`` records the one chosen, and :meth:`load` honours it."""
        ...
    def mix_for_speed(self, bundle_dir: Path, spec: LoadSpec, fp32_onnx: Path, x: np.ndarray, work_dir: Path,
                      log=print) -> dict | None:
        """Mixed precision by speed (where ``capabilities.speed_search``): put the INT8 layers that run slower than
        in the host precision back in it, in the artifact in ``bundle_dir``, when that makes the model faster on this
        host; the search's record (``kept``: what was reverted). None where the backend has no such choice."""
        ...
    def load_default(self, onnx_path: Path, threads: int | None = None) -> Runner:
        """The backend with its own defaults on the FP32 export: the plain recipe edgevit is measured against."""
        ...
    def peer_int8(self, onnx_path: Path, calibration, work_dir: Path) -> Path | None:
        """The field's one-line INT8 recipe for this backend on the same FP32 export and calibration images (for
        OpenVINO: ``nncf.quantize(model, dataset)`` with every default), as a model :meth:`load_default` runs; None
        where the backend has no such recipe. A peer column in benchmarks, never shipped."""
        ...


class RuntimeDecides:
    """What a backend inherits when its runtime makes the choices edgevit measures elsewhere: no one-line INT8 recipe
    of its own to set beside ours, no host precision to pick for unquantized ops, no per-layer speed search."""

    def peer_int8(self, onnx_path: Path, calibration, work_dir: Path) -> None:
        return None

    def host_precisions(self, precision: str, target) -> list[str | None]:
        return [None]

    def mix_for_speed(self, bundle_dir: Path, manifest: dict, fp32_onnx: Path, x, work_dir: Path, log=print) -> None:
        return None


def host_support(target) -> tuple[bool, str]:
    """Can this host build and run ``target``? (ok, reason). For TensorRT targets that means the engine; see
    :func:`prepare_support` for the part every host can do."""
    import platform

    if target.arch and platform.machine() not in target.arch:
        arch = "/".join(target.arch)
        return False, f"needs {'an' if arch[:1] in 'aeiou' else 'a'} {arch} host, this is {platform.machine()}"
    return get_backend(target.backend).device_support(target)


def prepare_support(target) -> tuple[bool, str]:
    """Can this host write ``target``'s bundle (everything but a TensorRT engine)? (ok, reason)."""
    if not get_backend(target.backend).capabilities.engine_on_device:
        return host_support(target)
    return get_backend(target.backend).available()


def onnx_external_files(bundle_dir: Path, listed, name: str) -> set[str]:
    """The external-data files the bundle's ONNX model ``name`` makes its runtime load (relative to the bundle), if
    ``name`` is among the manifest's ``listed`` files; read only once the verifier has proven ``name`` a listed
    regular file inside the bundle. Read from the protobuf itself: a board verifies bundles without onnx."""
    from edgevit.errors import BundleError
    from edgevit.runtime._onnx_wire import WireError, external_data_files

    if name not in listed:
        return set()
    try:
        return external_data_files(Path(bundle_dir) / name)
    except WireError as e:
        raise BundleError(f"damaged bundle: {name} is not a readable ONNX model ({e}); rebuild the bundle") from None
