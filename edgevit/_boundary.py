"""Where the device runtime ends and the build side begins.

A board (a Jetson on JetPack 5 or 6, or a CPU box) installs ``edgevit`` with numpy and Pillow only, and runs the
runtime commands below on Python 3.8 or later; TensorRT and cuda-python come from JetPack (``edgevit[jetson]``),
OpenVINO or ONNX Runtime from ``edgevit[cpu]``. The workstation installs ``edgevit[build]`` (Python 3.10+) for the
rest. The runtime modules never import a build-side module; tests/test_device_runtime.py runs every runtime command
with those blocked, checks that only the modules below were imported, and checks them with vermin against
:data:`RUNTIME_PYTHON`; .ci/run also runs them under a real Python older than 3.11.
"""

from __future__ import annotations

RUNTIME_PYTHON = (3, 8)  # JetPack 5 (Ubuntu 20.04); JetPack 6 has 3.10
BUILD_PYTHON = (3, 10)  # torch 2.4+, NNCF 3, onnxscript

# What a board runs: verify, compile (TensorRT), predict, time, demo, env, and bench --remote's device side
# (which is `edgevit env --json`, `compile` and `time --json` over ssh).
RUNTIME_COMMANDS = ("verify", "compile", "predict", "time", "demo", "env")

# Imported only on the workstation (the [build] extra); a runtime command that needs one is a defect.
BUILD_SIDE = ("torch", "torchvision", "timm", "nncf", "onnx", "onnxscript", "torchao", "safetensors",
              "huggingface_hub", "scipy", "matplotlib")
# The CPU runtimes: imported by a runtime command only to run a bundle of their own backend.
CPU_RUNTIMES = ("openvino", "onnxruntime")

# The edgevit modules the runtime commands import (each also checked against RUNTIME_PYTHON): the runtime package,
# the backends' runtime side and the shared ground below both sides.
RUNTIME_MODULES = (
    # edgevit/runtime/: bundles, their manifest, predict, time, demo, the device check and what they need
    "edgevit.runtime", "edgevit.runtime._malloc", "edgevit.runtime._onnx_wire", "edgevit.runtime._opencv",
    "edgevit.runtime.bundle", "edgevit.runtime.demo", "edgevit.runtime.device_check", "edgevit.runtime.images",
    "edgevit.runtime.manifest", "edgevit.runtime.measure", "edgevit.runtime.predict", "edgevit.runtime.profile",
    "edgevit.runtime.runner", "edgevit.runtime.sinks", "edgevit.runtime.timing",
    # edgevit/backends/: the interface and each backend's runtime (its build side imports onnx/NNCF lazily)
    "edgevit.backends", "edgevit.backends.onnxruntime", "edgevit.backends.openvino",
    "edgevit.backends.openvino.backend", "edgevit.backends.tensorrt", "edgevit.backends.tensorrt.backend",
    "edgevit.backends.tensorrt.compile", "edgevit.backends.tensorrt.engine", "edgevit.backends.tensorrt.plan",
    # the shared ground: the CLI, errors, outputs, targets, configuration
    "edgevit", "edgevit._boundary", "edgevit._config", "edgevit._progress", "edgevit._registry", "edgevit.child",
    "edgevit.cli", "edgevit.cli_args", "edgevit.errors", "edgevit.failure", "edgevit.outputs", "edgevit.schema",
    "edgevit.targets",
    # imported for one constant (cli_args: --max-drop's default) and for a guarded probe of torch's GPUs (env)
    "edgevit.validate", "edgevit.parallel",
)


# Commands that run only where the [build] extra is installed, and the packages they cannot start without.
BUILD_COMMANDS = ("train", "build", "bench", "report", "inspect", "samples")
BUILD_ANCHORS = ("torch", "timm", "nncf", "onnx", "openvino", "matplotlib")


def missing_build_side() -> str | None:
    """The first [build] package that is not installed here, or None."""
    import importlib.util

    for name in BUILD_ANCHORS:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def needs_build_side(command: str, missing: str | None = None) -> str:
    """The one line for a build-side command run where the build side cannot run: Python too old, or a
    [build] package missing (``missing``)."""
    import sys

    have = ".".join(map(str, sys.version_info[:2]))
    floor = ".".join(map(str, BUILD_PYTHON))
    runtime = ", ".join(RUNTIME_COMMANDS)
    if sys.version_info[:2] < BUILD_PYTHON:
        return (f"edgevit {command} needs Python {floor} or later (torch, NNCF); this is Python {have}, where the "
                f"device runtime runs ({runtime}): build on a workstation")
    return (f"edgevit {command} needs the build side ({missing} is not installed): pip install 'edgevit[build]' "
            f"(on a board, only the device runtime is installed: {runtime})")
