"""``edgevit compile``: the on-device stage of a TensorRT bundle. A build on a workstation writes the checked Q/DQ ONNX
and the engine plan; on the Jetson or GPU this stage builds the engine with the device's own TensorRT, checks it
against the ONNX and times it, and finishes the bundle in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgevit.errors import BackendUnavailableError, BundleError


def compile_bundle(bundle: str | Path, log=print) -> dict:
    """Finish a TensorRT bundle on the device: build the engine from its checked ONNX with the plan re-derived for
    this TensorRT, check the engine against the ONNX on ONNX Runtime, time it, and update the bundle atomically."""
    from edgevit.backends.tensorrt import onnx_proxy
    from edgevit.backends.tensorrt_engine import TRTRunner, build_engine, device_info, engine_support
    from edgevit.backends.tensorrt_plan import ENGINE_FILE, ONNX_FILE, SCRIPT_FILE, engine_plan, write_plan
    from edgevit.bundle import read_manifest, write_manifest
    from edgevit.measure import compare_latency, host_info, without_samples
    from edgevit.outputs import output_dir
    from edgevit.targets import Target

    bundle = Path(bundle)
    m = read_manifest(bundle)
    if m["backend"]["name"] != "tensorrt":
        raise BundleError(f"{bundle} is a {m['backend']['name']} bundle; only TensorRT bundles are compiled")
    ok, why = engine_support()
    if not ok:
        raise BackendUnavailableError(f"cannot compile here: {why}")
    target = Target(**{k: v for k, v in m["target"].items() if k in Target.__dataclass_fields__})
    with output_dir(bundle, "bundle") as stage:
        shutil.rmtree(stage)
        shutil.copytree(bundle, stage)
        plan = engine_plan(target, m["precision"], device_info()["tensorrt"], tuple(m["model"]["input_size"]),
                           fp32_layers=m["backend"].get("plan", {}).get("fp32_layers", []))
        write_plan(stage, plan)
        record = build_engine(stage / ONNX_FILE, plan, stage, log)
        runner = TRTRunner(stage / ENGINE_FILE, record, plan)
        proxy = onnx_proxy(stage / ONNX_FILE, None)
        x = np.random.default_rng(0).standard_normal((8, *m["model"]["input_size"])).astype(np.float32)
        got, want = np.concatenate([runner(x[i:i + 1]) for i in range(8)]), proxy(x)
        record["check_vs_onnxruntime"] = {"inputs": "8 random normal images",
                                          "argmax_agreement": float((got.argmax(1) == want.argmax(1)).mean() * 100),
                                          "max_abs_logit_diff": round(float(np.abs(got - want).max()), 5)}
        lat = compare_latency({"engine": runner}, x[:1])
        lat["engine"] = without_samples(lat["engine"])
        m["backend"].update(version=record["tensorrt"], plan=plan,
                            engine={k: v for k, v in record.items() if k not in ("plan", "files")},
                            runtime=runner.info)
        m["latency_ms"] = {"host": {**host_info(), "gpu": record["device_name"]}, "batch": 1, "artifact":
                           lat["engine"], "p50": lat["engine"]["p50"], "p90": lat["engine"]["p90"],
                           "method": "TensorRT engine on the device, wall clock per call incl. copies"}
        m["_files"] = sorted(set(m["files"]) | set(record["files"]) | {SCRIPT_FILE})
        write_manifest(stage, m)
    return read_manifest(bundle)
