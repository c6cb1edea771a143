"""Per-layer time and executed precision, from the runtime's own profiler (OpenVINO performance counters, ONNX
Runtime's node profiler, TensorRT's IProfiler on a device): so "INT8 is slower than FP32 here" comes with the
layers that make it so (reorders, FakeQuantize left in f32, unfused attention)."""

from __future__ import annotations

import re
from collections import defaultdict

TOP_LAYERS = 15
_PRECISION = {"i8": "int8", "u8": "int8", "int8": "int8", "uint8": "int8", "f32": "fp32", "fp32": "fp32",
              "float": "fp32", "bf16": "bf16", "f16": "fp16", "fp16": "fp16", "half": "fp16", "i32": "int32",
              "i64": "int64"}


def precision_of(exec_type: str) -> str:
    """``brgemm_avx512_I8`` → int8, ``jit_avx2_FP32`` → fp32, ``ref_any_bf16`` → bf16; else the raw text."""
    for token in reversed(re.split(r"[_\s/]+", exec_type.lower())):
        if token in _PRECISION:
            return _PRECISION[token]
    return exec_type or "unknown"


def summarize(per_layer: dict[str, dict], runs: int, how: str) -> dict:
    """``per_layer``: name → {type, exec, precision, ms (summed over ``runs``)} and, where the runtime gives every
    run's time, ``samples``: then a layer's figure is its median (one slow run does not inflate it, and the medians
    add up to a typical inference); the profile a manifest keeps."""
    import statistics

    for v in per_layer.values():
        if v.get("samples"):
            v["ms"] = statistics.median(v["samples"]) * max(runs, 1)
    total = sum(v["ms"] for v in per_layer.values()) / max(runs, 1)
    by_type: dict[str, float] = defaultdict(float)
    by_precision: dict[str, float] = defaultdict(float)
    layers = []
    for name, v in per_layer.items():
        ms = v["ms"] / max(runs, 1)
        by_type[v["type"]] += ms
        by_precision[v["precision"]] += ms
        layers.append({"name": name, "type": v["type"], "exec": v["exec"], "precision": v["precision"],
                       "ms": round(ms, 4), "share": round(ms / total, 4) if total else 0.0})
    layers.sort(key=lambda r: -r["ms"])

    def ranked(d):
        return {k: round(v, 4) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    statistic = "median" if any(v.get("samples") for v in per_layer.values()) else "mean"
    return {"measured_with": how, "statistic": statistic, "runs": runs, "total_ms": round(total, 4),
            "layers_timed": len(layers),
            "top_layers": layers[:TOP_LAYERS], "ms_by_type": ranked(by_type), "ms_by_precision": ranked(by_precision)}
