"""``edgevit compile``: the on-device stage of a TensorRT bundle. A build on a workstation writes the checked Q/DQ
ONNX, the engine plan and the check images with their FP32 logits; on the Jetson or GPU this stage builds the engine
with the device's own TensorRT, checks it on those images (:mod:`edgevit.runtime.device_check`; refused outside the
bounds the build stated), times it, and finishes the bundle in place. Device runtime: no torch, ONNX Runtime or onnx."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevit.errors import BackendUnavailableError, BundleError

if TYPE_CHECKING:
    from edgevit.runtime.manifest import Manifest


def compile_bundle(bundle: str | Path, log=print) -> Manifest:
    """Finish a TensorRT bundle on the device: build the engine from its checked ONNX with the plan re-derived for
    this TensorRT, check the engine against the ONNX on ONNX Runtime, time it, and update the bundle atomically."""
    from edgevit.backends.tensorrt.engine import TRTRunner, build_engine, device_info, engine_support
    from edgevit.backends.tensorrt.plan import ENGINE_FILE, ONNX_FILE, SCRIPT_FILE, engine_plan, write_plan
    from edgevit.runtime.bundle import bundle_dir, read_manifest, write_manifest
    from edgevit.runtime.device_check import check_engine, load
    from edgevit.runtime.measure import compare_latency, host_info, without_samples

    bundle = Path(bundle)
    m = read_manifest(bundle)
    if m.backend.name != "tensorrt":
        raise BundleError(f"{bundle} is a {m.backend.name} bundle; only TensorRT bundles are compiled")
    ok, why = engine_support()
    if not ok:
        raise BackendUnavailableError(f"cannot compile here: {why}")
    load(bundle, m)  # a bundle without its check images is refused before any build
    with bundle_dir(bundle) as stage:
        shutil.copytree(bundle, stage, dirs_exist_ok=True)  # beside the stage's owner record
        plan = engine_plan(m.target, m.precision, device_info()["tensorrt"], m.model.input_size,
                           fp32_layers=m.backend.plan.get("fp32_layers", []))
        write_plan(stage, plan)
        record = build_engine(stage / ONNX_FILE, plan, stage, log)
        runner = TRTRunner(stage / ENGINE_FILE, record, plan)
        record["check"] = check_engine(stage, m, runner)
        record["status"] = "validated"
        x = np.zeros((1, *m.model.input_size), np.float32)
        lat = compare_latency({"engine": runner}, x)
        lat["engine"] = without_samples(lat["engine"])
        backend = {**m.backend.details, "version": record["tensorrt"], "plan": plan, "runtime": runner.info,
                   "engine": {k: v for k, v in record.items() if k not in ("plan", "files")}}
        latency = {"host": {**host_info(), "gpu": record["device_name"]}, "batch": 1, "artifact": lat["engine"],
                   "p50": lat["engine"]["p50"], "p90": lat["engine"]["p90"],
                   "method": "TensorRT engine on the device, wall clock per call incl. copies"}
        write_manifest(stage, set(m.files) | set(record["files"]) | {SCRIPT_FILE},
                       **m.updated(backend=backend, latency_ms=latency))
    return read_manifest(bundle)
