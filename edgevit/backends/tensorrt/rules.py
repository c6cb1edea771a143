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


SOFTMAX_SCALE = 1.0 / 127.0  # softmax outputs lie in [0, 1]: the fixed scale TensorRT's fused INT8 MHA expects


def attention_matmuls(graph) -> list:
    """The ``softmax(QK^T) @ V`` MatMul of every attention block: a MatMul whose first input is a Softmax output."""
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        p = producer.get(n.input[0])
        if p is not None and p.op_type == "DequantizeLinear":  # already quantized: look through Q/DQ
            q = producer.get(p.input[0])
            p = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if p is not None and p.op_type == "Softmax":
            found.append(n)
    return found


def _softmax_of(producer: dict, matmul):
    p = producer[matmul.input[0]]
    while p.op_type != "Softmax":
        p = producer[p.input[0]]
    return p


def _insert_qdq(graph, tensor: str, scale: float, user, index: int, tag: str) -> None:
    from onnx import helper, numpy_helper

    base = f"{tag}_{(user.name or user.output[0]).replace('/', '_')}_{index}"
    graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), f"{base}_scale"),
                              numpy_helper.from_array(np.asarray(0, np.int8), f"{base}_zp")])
    q = helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zp"], [f"{base}_q"], name=f"{base}_Q")
    dq = helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zp"], [f"{base}_dq"],
                          name=f"{base}_DQ")
    at = list(graph.node).index(user)
    graph.node.insert(at, dq)
    graph.node.insert(at, q)
    user.input[index] = f"{base}_dq"


MHA_SINCE_SM = (7, 5)  # TensorRT's fused INT8 multi-head attention kernels: Turing and later (not Xavier's 7.2)
MHA_HEAD_SIZES = (16, 32, 64)
MHA_MAX_SEQUENCE = 512


def mha_blocker(compute_capability: str, q_shape: tuple | None) -> str | None:
    """Why TensorRT would not fuse an attention block into its INT8 MHA kernel on this GPU, or None: SM 7.5+,
    head size 16/32/64, at most 512 tokens. Where it would not, INT8 around the softmax buys nothing and costs
    accuracy."""
    if compute_capability:
        sm = tuple(int(v) for v in compute_capability.split("."))
        if sm < MHA_SINCE_SM:
            return f"sm {compute_capability} has no fused INT8 attention (SM 7.5 and later)"
    if q_shape is None or len(q_shape) < 2:
        return "the Q @ K^T MatMul was not found"
    seq, head = int(q_shape[-2]), int(q_shape[-1])
    if head not in MHA_HEAD_SIZES:
        return f"head size {head} (the fused kernel takes {'/'.join(map(str, MHA_HEAD_SIZES))})"
    if seq > MHA_MAX_SEQUENCE:
        return f"{seq} tokens (the fused kernel takes at most {MHA_MAX_SEQUENCE})"
    return None


def quantize_attention(model, images: np.ndarray, input_name: str, compute_capability: str = "") -> dict:
    """Quantize every attention block TensorRT fuses into its INT8 multi-head attention kernel: both inputs of both
    batched MatMuls (``Q @ K^T`` and ``softmax @ V``) and the output of the second, the pattern the fusion matches.
    NNCF's ONNX PTQ leaves ``softmax @ V`` in float, and a QAT export (timm's fused attention) leaves both. The
    softmax output gets the fixed scale 1/127 (it lies in [0, 1]); Q, K, V and the output get symmetric per-tensor
    scales from their largest magnitude on ``images`` (run through ONNX Runtime). A block TensorRT would not fuse
    on this GPU (:func:`mha_blocker`) is left as PTQ made it. Returns ``{"quantized": [MatMul names],
    "not_fused": {block: why}}``."""
    import onnx
    import onnxruntime as ort

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    blocks = _attention_blocks(g, producer)
    probe_names = sorted({t for qk, sv in blocks for t in ([*qk.input, *sv.input, sv.output[0]] if qk is not None
                                                           else [*sv.input, sv.output[0]])})
    amax = dict.fromkeys(probe_names, 0.0)
    shapes: dict = {}
    if probe_names:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        probe.graph.output.extend([onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                                   for t in probe_names])
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        for s in range(0, len(images), 16):
            outs = sess.run(None, {input_name: np.ascontiguousarray(images[s:s + 16], np.float32)})
            for t, o in zip(probe_names, outs):
                amax[t] = max(amax[t], float(np.abs(o).max()))
                shapes[t] = o.shape
    todo: list[tuple] = []  # (matmul, input index, fixed scale or None)
    outputs: list = []  # the second MatMuls whose output gets Q/DQ
    not_fused: dict[str, str] = {}
    for qk, sv in blocks:
        q_shape = shapes.get(qk.input[0]) if qk is not None else None
        why = mha_blocker(compute_capability, q_shape)
        if why:
            not_fused[sv.name or sv.output[0]] = why
            continue
        for mm in (qk, sv):
            for i in (0, 1):
                if not _fed_by_dq(producer, mm.input[i]):
                    todo.append((mm, i, SOFTMAX_SCALE if mm is sv and i == 0 else None))
        if not any(n.op_type == "QuantizeLinear" for n in g.node if sv.output[0] in n.input):
            outputs.append(sv)
    for mm, i, fixed in todo:
        scale = fixed if fixed is not None else max(amax[mm.input[i]], 1e-8) / 127.0
        _insert_qdq(g, mm.input[i], scale, mm, i, "attn_softmax" if fixed is not None else "attn_in")
    for sv in outputs:
        scale = max(amax[sv.output[0]], 1e-8) / 127.0
        for user in [n for n in g.node if sv.output[0] in n.input]:
            for i, name in enumerate(user.input):
                if name == sv.output[0]:
                    _insert_qdq(g, name, scale, user, i, "attn_out")
    changed = {mm.name or mm.output[0] for mm, _, _ in todo} | {sv.name or sv.output[0] for sv in outputs}
    return {"quantized": sorted(changed), "not_fused": not_fused}


def fold_weight_transposes(model) -> int:
    """``W → Q → DQ → Transpose → MatMul`` (how a PyTorch ``Linear`` leaves a QAT export) becomes
    ``Wᵀ → Q → DQ → MatMul`` with the per-channel axis moved along, the form PTQ gives and TensorRT's weight
    quantization and our per-channel check read. Returns how many weights were folded; changes ``model``."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    folded = 0
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        dq = producer.get(t.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[q.input[0]])
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), list(range(w.ndim))[::-1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % max(w.ndim, 1)
        base = f"{(t.name or t.output[0]).replace('/', '_')}_folded"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(perm)), f"{base}_w"))
        new_axis = perm.index(axis)
        nq = helper.make_node("QuantizeLinear", [f"{base}_w", *q.input[1:]], [f"{base}_q"], name=f"{base}_Q",
                              axis=new_axis)
        ndq = helper.make_node("DequantizeLinear", [f"{base}_q", *dq.input[1:]], [t.output[0]], name=f"{base}_DQ",
                               axis=new_axis)
        at = list(g.node).index(t)
        g.node.remove(t)
        g.node.insert(at, ndq)
        g.node.insert(at, nq)
        folded += 1
    _drop_dead(g)
    return folded


def _drop_dead(g) -> None:
    """Remove nodes whose outputs nothing reads (after a rewrite), and initializers nothing reads."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def gemm_coverage(model) -> tuple[int, int]:
    """(quantized, all) inputs of the graph's Conv/Gemm/MatMul nodes: every unquantized one runs in FP16 or FP32."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inputs = [i for n in model.graph.node if n.op_type in COMPUTE_OPS for i in n.input[:2]]
    return sum(_fed_by_dq(producer, i) for i in inputs), len(inputs)


def _fed_by_dq(producer: dict, tensor: str) -> bool:
    return producer.get(tensor) is not None and producer[tensor].op_type == "DequantizeLinear"


def _attention_blocks(graph, producer: dict) -> list[tuple]:
    """(``Q @ K^T`` MatMul or None, ``softmax @ V`` MatMul) of every attention block."""
    blocks = []
    for sv in attention_matmuls(graph):
        qk = producer.get(_first_matmul_input(producer, _softmax_of(producer, sv)))
        blocks.append((qk if qk is not None and qk.op_type == "MatMul" else None, sv))
    return blocks


def version_tuple(version: str) -> tuple[int, int]:
    parts = (str(version).split(".") + ["0"])[:2]
    return int(parts[0]), int(parts[1]) if parts[1].isdigit() else 0


LAYERNORM_SINCE = (8, 6)  # TensorRT's ONNX parser imports LayerNormalization from 8.6 on


def decompose_layernorm(model) -> list[str]:
    """Rewrite every ``LayerNormalization`` as the primitives TensorRT < 8.6 parses (ReduceMean, Sub, Mul, Add, Sqrt,
    Div), with the same epsilon, scale and bias. Returns the new nodes' names: the engine plan keeps them in FP32
    (in FP16 the squared deviations of a ViT's residual stream overflow). Changes ``model`` in place."""
    from onnx import helper, numpy_helper

    g = model.graph
    new_names: list[str] = []
    nodes = []
    for n in g.node:
        if n.op_type != "LayerNormalization":
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        if axis >= 0:
            raise ValueError(f"{n.name}: LayerNormalization over a positive axis ({axis}) is not decomposed")
        axes = list(range(axis, 0))
        base = (n.name or n.output[0]).replace("/", "_")
        t = {k: f"{base}_{k}" for k in ("mean", "dev", "sq", "var", "vare", "std", "norm", "scaled")}
        g.initializer.append(numpy_helper.from_array(np.asarray(eps, np.float32), f"{base}_eps"))
        x, scale = n.input[0], n.input[1]
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        parts = [
            helper.make_node("ReduceMean", [x], [t["mean"]], axes=axes, keepdims=1),
            helper.make_node("Sub", [x, t["mean"]], [t["dev"]]),
            helper.make_node("Mul", [t["dev"], t["dev"]], [t["sq"]]),
            helper.make_node("ReduceMean", [t["sq"]], [t["var"]], axes=axes, keepdims=1),
            helper.make_node("Add", [t["var"], f"{base}_eps"], [t["vare"]]),
            helper.make_node("Sqrt", [t["vare"]], [t["std"]]),
            helper.make_node("Div", [t["dev"], t["std"]], [t["norm"]]),
            helper.make_node("Mul", [t["norm"], scale], [t["scaled"] if bias else n.output[0]]),
        ]
        if bias:
            parts.append(helper.make_node("Add", [t["scaled"], bias], [n.output[0]]))
        for i, p in enumerate(parts):
            p.name = f"{base}/ln_{i}_{p.op_type}"
            new_names.append(p.name)
        nodes += parts
    del g.node[:]
    g.node.extend(nodes)
    return new_names


def check(model_or_path, tensorrt: str | None = None, compute_capability: str = "",
          not_fused: frozenset | set = frozenset()) -> list[Violation]:
    """Every way ``model`` breaks TensorRT's explicit-quantization rules (empty: the graph is legal); with
    ``tensorrt`` also the ops that TensorRT version cannot import. Attention blocks TensorRT would not fuse on a GPU
    of ``compute_capability`` (or named in ``not_fused``, see :func:`quantize_attention`) need no INT8 attention."""
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
        if n.op_type == "LayerNormalization" and tensorrt and version_tuple(tensorrt) < LAYERNORM_SINCE:
            out.append(Violation("unsupported-op", name, f"TensorRT {tensorrt} cannot import LayerNormalization "
                                                         "(8.6 can); decompose it (edgevit does for such targets)"))
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
    quantized = any(n.op_type == "QuantizeLinear" for n in g.node)  # an FP32/FP16 graph has nothing to fuse
    no_mha = mha_blocker(compute_capability, (1, MHA_HEAD_SIZES[0])) is not None
    for qk, mm in _attention_blocks(g, producer) if quantized and not no_mha else []:
        if (mm.name or mm.output[0]) in not_fused:
            continue
        unquantized = [i for m in (mm, qk) if m is not None for i in m.input[:2] if not _fed_by_dq(producer, i)]
        if unquantized:
            out.append(Violation("unfused-attention", mm.name or mm.output[0],
                                 f"{len(unquantized)} batched-MatMul input(s) of this attention block are not "
                                 "quantized (" + ", ".join(unquantized[:2]) + "): TensorRT cannot use its fused "
                                 "INT8 attention; quantize softmax output and V (edgevit does this for PTQ and QAT)"))
    return out


def _first_matmul_input(producer: dict, softmax) -> str:
    """The tensor that feeds a Softmax through elementwise scaling/bias ops: the output of the ``Q @ K^T`` MatMul."""
    t = softmax.input[0]
    for _ in range(4):
        p = producer.get(t)
        if p is None or p.op_type == "MatMul":
            return t
        if p.op_type not in ("Mul", "Div", "Add", "Cast", "Where"):
            return t
        t = p.input[0]
    return t


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
