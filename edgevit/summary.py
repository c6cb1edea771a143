"""The report card printed after a build: accuracy and latency, with what each was measured on."""

from __future__ import annotations

from edgevit.runtime.manifest import BACKEND_DEFAULT, NNCF_DEFAULT, TORCH_EAGER
from edgevit.validate import tried_text


def summary(result) -> str:
    """The report card printed after a build: accuracy and latency, with what they were measured on."""
    m = result.manifest
    v, lat, backend = m.validation, m.latency, m.backend
    prec = m.precision.upper()
    lines = [f"bundle    {result.bundle}  ({m.model.alias} → {m.target_name} {m.precision}, "
             f"{backend.name} {backend.version})"]
    rt = backend.runtime
    ran = rt.get("backend", backend.name) + (f" on the CPU, proxy for {rt['proxy_for']}"
                                             if rt.get("proxy_for") else "")
    if "top1" in v:
        lines.append(f"accuracy  {v['split']} of {v['dataset']}, {v['samples']} images: FP32 (torch) "
                     f"{v['reference_top1']:.2f}%  {prec} ({ran}) {v['top1']:.2f}%  "
                     f"drop {v['top1_drop']:+.2f} pts" + ("  [random weights: meaningless]" if v.get("note") else ""))
    else:
        lines.append(f"accuracy  {v['skipped']}")
    g = m.section("accuracy_gate")
    if g:
        verdict = "passed" if g["passed"] else "FAILED (bundle kept by --keep-failed)"
        lines.append(f"gate      max drop {g['max_drop']:.2f} pts: {verdict}; {g.get('skipped') or tried_text(g)}"
                     + (f"; {len(g['kept_in_higher_precision'])} layers kept in higher precision"
                        if g.get("kept_in_higher_precision") else ""))
    if "artifact" in lat:
        b = lat["baselines"]
        parts = [f"{prec} {lat['artifact']['p50']:.3f} ms"] + [
            f"{_baseline_label(k, val)} {val['p50']:.3f} ms ({val['p50'] / lat['artifact']['p50']:.2f}x)"
            for k, val in b.items()]
        isa = ",".join(lat["host"].get("isa", [])) or "no SIMD flags read"
        lines.append(f"latency   p50 at batch {lat['batch']}, {lat['host']['cpu']} ({isa}), "
                     f"{_threads(lat['threads'])}: " + " | ".join(parts))
        default = b.get(BACKEND_DEFAULT)
        if default and default["p50"] < lat["artifact"]["p50"]:
            lines.append(f"note      {prec} is slower than the backend's defaults on the FP32 export "
                         f"(which executed {default.get('executed_precision')}) on this host: "
                         f"{default['p50']:.3f} vs {lat['artifact']['p50']:.3f} ms p50")
    stages = m.section("stage_seconds")
    if stages:
        lines.append("stages    " + " | ".join(f"{k} {v:.1f} s" for k, v in stages.items())
                     + f" (build {m.build_seconds or 0:.0f} s in all)")
    sel = m.section("selection")
    if sel:
        lines.append("selection --precision best → " + sel["chosen"] + ": " + " | ".join(
            f"{c['precision']} rejected ({c['rejected'][:60]}…)" if "rejected" in c else
            f"{c['precision']} " + (f"{c['latency_ms_p50']:.3f} ms" if c["latency_ms_p50"] is not None else
                                    "not timed here") + f" (ran {c['executed']}), top-1 {c['top1']}"
            for c in sel["candidates"]))
    rules = backend.trt_rules
    if rules:
        lines.append(f"tensorrt  Q/DQ ONNX: {rules['qdq_pairs']} Q/DQ pairs, TensorRT rules "
                     + ("passed" if rules["passed"] else f"BROKEN ({len(rules['violations'])}, --ignore-trt-rules)"))
    engine = backend.engine
    if engine:
        plan = backend.plan
        dla = "" if plan.get("dla_core") is None else f" core {plan['dla_core']}"
        how = (f"{plan.get('device')}{dla}, flags {', '.join(plan.get('builder_flags') or []) or 'none'}, "
               + ("strongly typed" if plan.get("strongly_typed") else "weakly typed"))
        pending = engine.get("status") == "pending"
        lines.append(f"engine    pending: {engine['why']}; on the {engine['compile_on']}: edgevit compile "
                     f"{result.bundle} ({how})" if pending
                     else f"engine    built with TensorRT {engine['tensorrt']} on {engine['device_name']} ({how})")
    if "skipped" in lat:
        lines.append(f"latency   {lat['skipped']}")
    if "compute_layers_by_precision" in rt:
        by = ", ".join(f"{n} in {p}" for p, n in rt["compute_layers_by_precision"].items())
        lines.append(f"executed  inference precision {rt['inference_precision']}; compute layers: {by}")
    return "\n".join(lines)


def _threads(n) -> str:
    return f"{n} thread{'' if n == 1 else 's'}" if n else "default threads"


def _baseline_label(key: str, val: dict) -> str:
    """A baseline named by what it executed: 'torch eager fp32 (1 thread)', 'openvino defaults (ran bf16)'."""
    if key == TORCH_EAGER:
        return f"torch eager fp32 ({_threads(val.get('threads'))})" if val.get("threads") else "torch eager fp32"
    if key == NNCF_DEFAULT:
        return f"NNCF default int8 ({_threads(val.get('threads'))})"
    ran = val.get("executed_precision")
    return f"{val.get('backend', 'backend')} defaults on the fp32 export" + (f" (ran {ran})" if ran else "")
