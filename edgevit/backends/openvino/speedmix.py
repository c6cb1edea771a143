"""Mixed precision by speed: an INT8 layer that runs slower than the same layer in the host precision goes back to
the host precision. This is what no peer does: NNCF's accuracy-aware PTQ reverts layers for accuracy; we also
revert them for speed.

1. Profile the INT8 IR and the FP32 export at the same threads and host precision (OpenVINO performance counters).
2. Group the quantized compute layers by role across blocks (``/blocks/blocks.*/mlp/fc2/MatMul``). A group is a
   candidate when its INT8 time, including the FakeQuantize nodes feeding it that run on their own, is not clearly
   below its time in the host precision.
3. Build each candidate as a variant of the IR without the activation quantizers of that group. No re-quantization
   is needed: a layer without quantized inputs runs in the host precision. Time every variant against the INT8 IR
   in one interleaved run.
4. The groups whose variant is faster by more than the noise are reverted together, and the result is timed once
   more against the INT8 IR. It is kept only if it is faster; then the accuracy gate checks it like any artifact.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

COMPUTE = ("MatMul", "Convolution", "GroupConvolution")
SLACK = 0.10  # a group is a candidate unless its INT8 time is more than 10% below its host-precision time
GAIN = 0.03  # a revert is kept only if it makes the whole model faster by more than 3% (the timing noise)


def _role(name: str) -> str:
    """The layer's role across blocks: block and stage indices become ``*``."""
    return re.sub(r"(?<=[._])\d+(?=[/._])", "*", name)


def _activation_fqs(op) -> list:
    """The FakeQuantize nodes on the activation inputs of compute node ``op`` (not on constant weights)."""
    fqs = []
    for inp in op.inputs():
        src = inp.get_source_output().get_node()
        if src.get_type_name() == "FakeQuantize":
            data = src.input_value(0).get_node()
            if data.get_type_name() not in ("Constant", "Convert"):
                fqs.append(src)
    return fqs


def quantized_groups(model) -> dict[str, list[str]]:
    """Role → names of the compute nodes in ``model`` whose activations are quantized."""
    groups: dict[str, list[str]] = defaultdict(list)
    for op in model.get_ordered_ops():
        if op.get_type_name() in COMPUTE and _activation_fqs(op):
            groups[_role(op.get_friendly_name())].append(op.get_friendly_name())
    return dict(groups)


def _const(node) -> np.ndarray | None:
    return node.get_data() if node.get_type_name() == "Constant" else None


def _dequantized_weights(node) -> np.ndarray | None:
    """The f32 weights of a compressed weight input, ``Constant(i8) → Convert → [Subtract zp] → Multiply scale``
    (how NNCF leaves them in an OpenVINO IR); None for any other shape of graph."""
    if node.get_type_name() != "Multiply":
        return None
    scale = _const(node.input_value(1).get_node())
    x = node.input_value(0).get_node()
    zero = None
    if x.get_type_name() == "Subtract":
        zero = _const(x.input_value(1).get_node())
        x = x.input_value(0).get_node()
    if scale is None or x.get_type_name() != "Convert":
        return None
    q = _const(x.input_value(0).get_node())
    if q is None:
        return None
    w = q.astype(np.float32) - (zero.astype(np.float32) if zero is not None else 0.0)
    return (w * scale.astype(np.float32)).astype(np.float32)


def without_activation_quantizers(model, names: set[str]) -> int:
    """Turn the compute nodes named in ``names`` back to the host precision, in place: remove the activation
    FakeQuantize nodes that feed only them, and fold their compressed INT8 weights into f32 constants (a CPU without
    VNNI has no kernel for f32 inputs with INT8 weights). Returns how many quantizers were removed."""
    import openvino as ov

    removed = 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() not in COMPUTE or op.get_friendly_name() not in names:
            continue
        fqs = _activation_fqs(op)
        free = [fq for fq in fqs if all(t.get_node().get_friendly_name() in names
                                        for t in fq.output(0).get_target_inputs())]
        if not free or len(free) < len(fqs):
            continue  # a quantizer shared with a layer that stays INT8: this layer stays INT8 too
        for fq in free:
            fq.output(0).replace(fq.input_value(0))
            removed += 1
        for inp in op.inputs():
            w = _dequantized_weights(inp.get_source_output().get_node())
            if w is not None:
                inp.replace_source_output(ov.op.Constant(w).output(0))
    return removed


def group_costs(groups: dict[str, list[str]], int8_ms: dict[str, float], host_ms: dict[str, float],
                fq_feeding: dict[str, list[str]]) -> dict[str, dict]:
    """Per group: INT8 time (its layers plus the quantizers that feed them and run on their own) and host time."""
    out = {}
    for role, names in groups.items():
        i8 = sum(int8_ms.get(n, 0.0) + sum(int8_ms.get(f, 0.0) for f in fq_feeding.get(n, [])) for n in names)
        host = sum(host_ms.get(n, 0.0) for n in names)
        out[role] = {"layers": len(names), "int8_ms": round(i8, 4), "host_ms": round(host, 4),
                     "candidate": host > 0 and i8 >= host * (1 - SLACK)}
    return out


def fq_feeding(model) -> dict[str, list[str]]:
    """Compute node name → names of the activation quantizers feeding it."""
    return {op.get_friendly_name(): [fq.get_friendly_name() for fq in _activation_fqs(op)]
            for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE}


def search(xml: Path, fp32_onnx: Path, runner, x: np.ndarray, work: Path, log=print) -> dict:
    """The speed search for the INT8 IR ``xml`` (see the module docstring); ``runner(path)`` loads an IR or ONNX
    model with the backend's runtime configuration (threads, host precision) and profiles it (``layer_times``).
    Returns its record; ``record["xml"]`` is the faster IR when one was found (else absent)."""
    import openvino as ov

    from edgevit.runtime.measure import compare_latency

    core = ov.Core()
    model = core.read_model(str(xml))
    groups = quantized_groups(model)
    base = runner(xml)
    host = runner(fp32_onnx)
    costs = group_costs(groups, base.layer_times(x), host.layer_times(x), fq_feeding(model))
    cands = [r for r, c in costs.items() if c["candidate"]]
    record = {"groups": costs, "rule": f"a group is tried when its INT8 time is not {SLACK:.0%} below its "
                                       f"host-precision time; kept when the model gets > {GAIN:.0%} faster"}
    if not cands:
        record["result"] = "every quantized group is clearly faster in INT8"
        return record
    log(f"speed search: {len(cands)} of {len(groups)} quantized layer groups are not faster in INT8 here; timing "
        "each kept in the host precision")
    variants = {}
    for i, role in enumerate(cands):
        m = core.read_model(str(xml))
        if without_activation_quantizers(m, set(groups[role])):
            path = work / f"speed_{i}.xml"
            ov.save_model(m, str(path), compress_to_fp16=False)
            variants[role] = path
    timed = compare_latency({"int8": base, **{r: runner(p) for r, p in variants.items()}}, x,
                            desc=f"speed search: timing {len(variants) + 1} variants")
    p0 = timed["int8"]["p50"]
    record["variants_p50_ms"] = {"int8": p0, **{r: timed[r]["p50"] for r in variants}}
    keep = [r for r in variants if timed[r]["p50"] < p0 * (1 - GAIN)]
    if not keep:
        record["result"] = "no revert made the model faster"
        return record
    m = core.read_model(str(xml))
    without_activation_quantizers(m, {n for r in keep for n in groups[r]})
    path = work / "speed_kept.xml"
    ov.save_model(m, str(path), compress_to_fp16=False)
    final = compare_latency({"int8": base, "mixed": runner(path)}, x)
    record.update(tried_together=keep, int8_p50_ms=final["int8"]["p50"], mixed_p50_ms=final["mixed"]["p50"])
    if final["mixed"]["p50"] < final["int8"]["p50"] * (1 - GAIN):
        record.update(result=f"{len(keep)} group(s) kept in the host precision", kept=keep, xml=str(path))
    else:
        record["result"] = "the reverts together were not faster"
    return record
