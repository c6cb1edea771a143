"""TensorRT's rules for an explicitly quantized (Q/DQ) ONNX graph, checked on the CPU before any engine is built.

TensorRT takes INT8 from QuantizeLinear/DequantizeLinear pairs. It needs symmetric INT8 (zero-point 0, int8 type),
constant float scales, per-channel scales on weights, and it loses accuracy when LayerNorm, Softmax inputs or residual
Adds are quantized. It has no importer for custom-domain ops (``org.openvinotoolkit:FakeQuantize``), and LayerNorm is
one node only from opset 17. Every violation names the node, so the fix can be found in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
HIGH_PRECISION_OPS = ("LayerNormalization", "Softmax")  # their inputs must not be quantized


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def constants_to_initializers(model):
    """Move ``Constant`` nodes into initializers (the form TensorRT's parser and our checks read), then infer shapes.
    Returns the same model object, changed."""
    import onnx

    g = model.graph
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return onnx.shape_inference.infer_shapes(model)


def unsigned_to_signed(model) -> int:
    """Rewrite uint8 Q/DQ pairs with zero-point 0 (NNCF's choice after a ReLU, which TensorRT cannot take) as int8
    with zero-point 0 and the scale widened by 255/127, so the same [0, max] range still fits. Returns how many
    zero-points were rewritten. NNCF has no setting that forces signed activations for ONNX models."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    rewritten = []
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) == 3 and n.input[2] in inits \
                and n.input[1] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype == np.uint8 and not np.any(zp):
                # new constants for this node: optimizers share equal constants between nodes, and a scale shared
                # with an int8 pair must not be widened with it
                scale = numpy_helper.to_array(inits[n.input[1]]) * (255.0 / 127.0)
                base = (n.name or n.output[0]).replace("/", "_")
                g.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), f"{base}_int8_scale"),
                                      numpy_helper.from_array(np.zeros_like(zp, dtype=np.int8), f"{base}_int8_zp")])
                n.input[1], n.input[2] = f"{base}_int8_scale", f"{base}_int8_zp"
                rewritten.append(n)
    stale = {n.output[0] for n in rewritten if n.op_type == "QuantizeLinear"}  # their inferred type was uint8
    kept = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(kept)
    return len(rewritten)


def check(model_or_path) -> list[Violation]:
    """Every way ``model`` breaks TensorRT's explicit-quantization rules (empty: the graph is legal)."""
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    g = model.graph
    out: list[Violation] = []
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    if opset < MIN_OPSET:
        out.append(Violation("opset", "<model>", f"opset {opset} < {MIN_OPSET}: LayerNorm is decomposed into "
                                                 "primitives that overflow in FP16; export with opset 17+"))
    consts = _constants(g)
    transformer = any(n.op_type == "LayerNormalization" for n in g.node)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    for n in g.node:
        name = n.name or f"{n.op_type}:{n.output[0]}"
        if n.domain not in STANDARD_DOMAINS:
            out.append(Violation("custom-op", name, f"op {n.domain}::{n.op_type} has no TensorRT importer; export "
                                                    "standard ONNX (QuantizeLinear/DequantizeLinear)"))
            continue
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) < 2 or n.input[1] not in consts:
                out.append(Violation("scale-constant", name, "scale is computed by a subgraph, not a constant; fold "
                                                             "constants before export"))
            else:
                scale = consts[n.input[1]]
                if scale.dtype != np.float32 or not np.all(scale > 0):
                    out.append(Violation("scale", name, f"scale must be positive float32, got {scale.dtype} "
                                                        f"(min {scale.min():.3g})"))
            if len(n.input) < 3 or not n.input[2]:
                out.append(Violation("zero-point", name, "no zero-point: the default type is uint8; TensorRT needs "
                                                         "an int8 zero-point of 0"))
            elif n.input[2] not in consts:
                out.append(Violation("zero-point", name, "zero-point is computed by a subgraph, not a constant; "
                                                         "fold constants before export"))
            else:
                zp = consts[n.input[2]]
                if zp.dtype != np.int8:
                    out.append(Violation("dtype", name, f"zero-point type {zp.dtype}: TensorRT needs int8 (symmetric "
                                                        "signed quantization)"))
                if np.any(zp != 0):
                    out.append(Violation("zero-point", name, f"non-zero zero-point (max |zp| {int(np.abs(zp).max())}"
                                                             "): asymmetric quantization; use symmetric activations"))
        if n.op_type == "DequantizeLinear":
            for user in consumers.get(n.output[0], []):
                uname = user.name or user.op_type
                if user.op_type in HIGH_PRECISION_OPS:
                    out.append(Violation("quantized-" + user.op_type, uname, f"input is quantized by {name}; keep "
                                         f"{user.op_type} inputs in higher precision"))
                elif user.op_type == "Add" and transformer and _is_residual_add(user, producer, consts):
                    # (CNN residual Adds are quantized on purpose: TensorRT fuses them into the convolution)
                    out.append(Violation("quantized-residual-add", uname, f"input is quantized by {name}; keep "
                                                                          "residual Adds in higher precision"))
                elif user.op_type in COMPUTE_OPS and len(user.input) > 1 and user.input[1] == n.output[0]:
                    if user.op_type in ("Conv", "ConvTranspose", "Gemm") or n.input[0] in consts:
                        _check_per_channel(n, user, consts, out, name)
    return out


def _is_residual_add(add, producer: dict, consts: dict) -> bool:
    """An Add of two computed tensors (not a bias or a position table): a residual connection."""
    return all(i not in consts and (producer.get(i) is None or producer[i].op_type != "Constant") for i in add.input)


def _check_per_channel(dq, user, consts: dict, out: list, name: str) -> None:
    """Weights feeding Conv/Gemm/MatMul must have one scale per output channel."""
    weight = consts.get(dq.input[0])
    scale = consts.get(dq.input[1]) if len(dq.input) > 1 else None
    if weight is None or scale is None:
        return
    channels = weight.shape[0] if user.op_type in ("Conv", "ConvTranspose") else weight.shape[-1]
    if user.op_type == "Gemm" and any(a.name == "transB" and a.i for a in user.attribute):
        channels = weight.shape[0]
    if channels > 1 and scale.size == 1:
        out.append(Violation("per-channel", user.name or user.op_type,
                             f"weight {dq.input[0]} is quantized per-tensor by {name}; use per-channel scales"))


def report(violations: list[Violation], limit: int = 10) -> str:
    lines = [str(v) for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"... and {len(violations) - limit} more")
    return "\n".join(lines)
