"""TensorRT targets: the rules check on hand-made graphs, plans from every profile, the cross-host flow and the engine
validity logic. Engine building needs TensorRT and a GPU; those tests skip themselves here."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgevit.backends.tensorrt import rules as trt_rules
from edgevit.backends.tensorrt.plan import engine_mismatch, engine_plan
from edgevit.errors import TargetError
from edgevit.targets import list_targets, load_target
from tests.conftest import TINY_VIT

TRT_TARGETS = ["jetson-orin", "jetson-orin-dla", "jetson-orin-nx", "jetson-orin-nano", "jetson-xavier-nx",
               "nvidia-gpu"]


# ----------------------------------------------------------------------------------------------- hand-made graphs
ZERO_INT8 = np.int8(0)


def _qdq_graph(zp=ZERO_INT8, scale=0.1, weight_scale=None, consumer="MatMul", opset=17,
               residual=False, with_layernorm=False, domain=""):
    """x → Q → DQ → <consumer> (with a per-channel-quantized 4x4 weight for MatMul/Gemm)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zp), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x", domain=domain),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x")]
    out = "y"
    if consumer == "MatMul":
        w = np.ones((4, 4), np.int8)
        ws = np.full(4, 0.01, np.float32) if weight_scale is None else weight_scale
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(ws, "ws"),
                  numpy_helper.from_array(np.zeros(ws.shape, np.int8), "wzp")]
        nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], name="dq_w", axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="matmul")]
        last = "mm"
    elif consumer == "LayerNormalization":
        inits += [numpy_helper.from_array(np.ones(4, np.float32), "g"),
                  numpy_helper.from_array(np.zeros(4, np.float32), "b")]
        nodes.append(helper.make_node("LayerNormalization", ["xd", "g", "b"], ["ln"], name="layernorm", axis=-1))
        last = "ln"
    elif consumer == "Softmax":
        nodes.append(helper.make_node("Softmax", ["xd"], ["sm"], name="softmax", axis=-1))
        last = "sm"
    if residual:
        nodes.append(helper.make_node("Add", ["xd", "x"], ["res"], name="residual_add"))
        last = "res"
    if with_layernorm:
        inits += [numpy_helper.from_array(np.ones(4, np.float32), "g2"),
                  numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
        nodes.append(helper.make_node("LayerNormalization", [last, "g2", "b2"], ["ln2"], name="ln2", axis=-1))
        last = "ln2"
    nodes.append(helper.make_node("Identity", [last], [out], name="out"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])], inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=imports)


def _rules(model) -> set[tuple[str, str]]:
    return {(v.rule, v.node) for v in trt_rules.check(model)}


def test_a_legal_qdq_graph_passes():
    assert trt_rules.check(_qdq_graph()) == []


@pytest.mark.parametrize("kwargs, rule, node", [
    (dict(zp=np.int8(3)), "zero-point", "q_x"),
    (dict(zp=np.uint8(0)), "dtype", "dq_x"),
    (dict(opset=13), "opset", "<model>"),
    (dict(domain="org.openvinotoolkit"), "custom-op", "q_x"),
    (dict(weight_scale=np.float32(0.01)), "per-channel", "matmul"),
    (dict(consumer="LayerNormalization"), "quantized-LayerNormalization", "layernorm"),
    (dict(consumer="Softmax"), "quantized-Softmax", "softmax"),
    (dict(consumer=None, residual=True, with_layernorm=True), "quantized-residual-add", "residual_add"),
])
def test_each_rule_is_caught_and_names_the_node(kwargs, rule, node):
    found = _rules(_qdq_graph(**kwargs))
    assert (rule, node) in found, found


def test_computed_scale_is_caught():
    from onnx import helper

    m = _qdq_graph()
    m.graph.node.insert(0, helper.make_node("Identity", ["s"], ["s2"], name="scale_subgraph"))
    m.graph.node[1].input[1] = "s2"
    assert ("scale-constant", "q_x") in _rules(m)


def test_cnn_residual_adds_may_be_quantized():
    """TensorRT fuses a quantized residual Add into the convolution; only transformer graphs forbid it."""
    assert not any(r == "quantized-residual-add" for r, _ in _rules(_qdq_graph(consumer=None, residual=True)))


def test_unsigned_activations_are_rewritten_to_int8_with_the_same_range():
    import onnxruntime as ort

    m = _qdq_graph(zp=np.uint8(0), scale=0.02)
    x = np.linspace(0, 5, 4, dtype=np.float32)[None]

    def run(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]

    before = run(m)
    assert trt_rules.unsigned_to_signed(m) == 2  # the Q and the DQ of the pair
    assert trt_rules.check(m) == []
    # the uint8 grid had steps of 0.02 up to 5.1; the int8 grid has steps of 0.02*255/127 over the same range
    np.testing.assert_allclose(run(m), before, atol=4 * 0.02 * 255 / 127 * 4 * 0.01 * 4)


# ------------------------------------------------------------------------------------------------------ plans
def test_every_tensorrt_profile_loads_and_plans_int8():
    assert set(TRT_TARGETS) <= set(list_targets())
    for name in TRT_TARGETS:
        t = load_target(name)
        plan = engine_plan(t, "int8", t.tensorrt or "10.3", (3, 32, 32))
        assert plan["optimization_profile"]["input"]["min"][1:] == [3, 32, 32]
        lo, opt, hi = (plan["optimization_profile"]["input"][k][0] for k in ("min", "opt", "max"))
        assert [lo, opt, hi] == list(t.batch_range)
        assert plan["device"] == ("DLA" if t.dla_core >= 0 else "GPU")
        if t.workspace_mb:
            assert plan["workspace_bytes"] == t.workspace_mb << 20


def test_plan_flags_follow_the_tensorrt_version():
    orin, dla = load_target("jetson-orin"), load_target("jetson-orin-dla")
    p10 = engine_plan(orin, "int8", "10.3", (3, 32, 32))
    assert p10["builder_flags"] == ["INT8", "FP16"] and not p10["strongly_typed"]
    p11 = engine_plan(orin, "int8", "11.4.1", (3, 32, 32))
    assert p11["builder_flags"] == [] and p11["strongly_typed"]  # flags were removed in TensorRT 11
    pd = engine_plan(dla, "int8", "10.3", (3, 32, 32))
    assert pd["dla_core"] == 0 and "GPU_FALLBACK" in pd["builder_flags"] and pd["gpu_fallback"]
    assert engine_plan(load_target("jetson-xavier-nx"), "fp16", "8.5", (3, 32, 32))["builder_flags"] == ["FP16"]
    with pytest.raises(TargetError, match="DLA core 0, which runs only fp16 and int8"):
        engine_plan(dla, "fp32", "10.3", (3, 32, 32))
    p16 = engine_plan(orin, "fp16", "11.0", (3, 32, 32))  # strongly typed: the FP16-typed ONNX decides
    assert p16["strongly_typed"] and p16["builder_flags"] == []


def test_orin_nano_has_no_dla_and_a_dla_core_it_lacks_is_refused(tmp_path):
    assert load_target("jetson-orin-nano").dla_cores == 0
    bad = tmp_path / "nano-dla.toml"
    bad.write_text(Path(load_target("jetson-orin-nano").path).read_text().replace("dla_core = -1", "dla_core = 0"))
    with pytest.raises(TargetError, match="dla_core 0 but the board has 0 DLA cores"):
        load_target(str(bad))


def test_engine_from_another_tensorrt_or_gpu_is_refused():
    built = {"tensorrt": "10.3.0", "device_name": "Orin", "compute_capability": "8.7"}
    assert engine_mismatch(built, dict(built)) is None
    why = engine_mismatch(built, {**built, "tensorrt": "10.7.0"})
    assert "built with TensorRT 10.3.0, this is TensorRT 10.7.0" in why
    why = engine_mismatch(built, {"tensorrt": "10.3.0", "device_name": "NVIDIA H100", "compute_capability": "9.0"})
    assert "built on Orin (sm 8.7), this is NVIDIA H100 (sm 9.0)" in why


# ---------------------------------------------------------------------------------------------- cross-host flow
@pytest.fixture(scope="module")
def orin_bundle(fmnist_dir, tiny_checkpoint, tmp_path_factory):
    from edgevit.build import build

    out = tmp_path_factory.mktemp("orin")
    return build("vit-tiny-fmnist", target="jetson-orin", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
                 weights=str(tiny_checkpoint), out=str(out), calibration="fast")


def test_cross_host_build_writes_checked_qdq_onnx_accuracy_and_plan(orin_bundle):
    import onnx

    m = orin_bundle.manifest.data
    b = orin_bundle.bundle
    assert set(m["files"]) == {"model.onnx", "engine_plan.json", "build_engine.sh", "labels.txt", "check_inputs.npy",
                               "check_reference.npy"}
    check = m["device_check"]  # what the device judges its engine by: real held-out images, FP32 logits, bounds
    assert check["samples"] == 16 and "held-out" in check["source"] and check["proxy"]["finite"]
    assert 0 <= check["bounds"]["min_top1_agreement"] <= check["proxy"]["top1_agreement"]
    assert m["backend"]["plan"]["tensorrt"] == "10.3"  # the target's TensorRT (JetPack 6), not this host's
    assert os.access(b / "build_engine.sh", os.X_OK)
    assert subprocess.run(["bash", "-n", str(b / "build_engine.sh")]).returncode == 0
    assert m["backend"]["trt_rules"]["passed"] and m["backend"]["trt_rules"]["qdq_pairs"] > 0
    assert trt_rules.check(onnx.load(str(b / "model.onnx"))) == []  # what was shipped is what was checked
    assert m["backend"]["engine"]["status"] == "pending" and m["backend"]["engine"]["compile_on"] == "Jetson AGX Orin"
    from edgevit.summary import summary

    # the bundle's real path, no placeholder
    assert f"on the Jetson AGX Orin: edgevit compile {b}" in summary(orin_bundle)
    assert json.loads((b / "engine_plan.json").read_text()) == m["backend"]["plan"]
    v = m["validation"]
    assert "onnxruntime" in v["measured_with"] and "proxy" in v["measured_with"]
    assert abs(v["reference_top1"] - v["top1"]) == pytest.approx(abs(v["top1_drop"]))
    assert "skipped" in m["latency_ms"] and "on the device" in m["latency_ms"]["skipped"]


def test_cross_host_bundle_predicts_through_onnxruntime(orin_bundle, png):
    from edgevit.runtime.predict import Predictor

    p = Predictor(orin_bundle.bundle)
    assert p.runner.info["proxy_for"] == "tensorrt"
    (pred,) = p.predict_files([png], k=2)
    assert len(pred.top) == 2 and pred.top[0][1] >= pred.top[1][1]


def test_compile_without_tensorrt_says_what_is_missing(orin_bundle, capsys):
    from edgevit.backends.tensorrt.engine import engine_support
    from edgevit.cli import main

    if engine_support()[0]:
        pytest.skip("TensorRT and a GPU are present: test_engine_on_gpu covers compile")
    assert main(["compile", str(orin_bundle.bundle)]) == 1
    assert "cannot compile here" in capsys.readouterr().err


def test_rule_violations_fail_the_build_unless_overridden(fmnist_dir, tmp_path, monkeypatch):
    from edgevit.backends.tensorrt import rules
    from edgevit.build import build
    from edgevit.errors import ValidationFailedError

    fake = [rules.Violation("zero-point", "some_q", "non-zero zero-point")]
    monkeypatch.setattr(rules, "check", lambda model, **kw: fake)
    kw = dict(target="jetson-orin", precision="int8", data=f"fashion-mnist:{fmnist_dir}", calibration="fast",
              out=str(tmp_path), overrides=TINY_VIT)
    with pytest.raises(ValidationFailedError, match=r"(?s)\[zero-point\] some_q.*--ignore-trt-rules"):
        build("vit-tiny-fmnist", **kw)
    assert not any(tmp_path.iterdir())
    r = build("vit-tiny-fmnist", ignore_trt_rules=True, **kw)
    rules = r.manifest.data["backend"]["trt_rules"]
    assert rules["overridden"] and not rules["passed"]


@pytest.mark.parametrize("model", ["vit-tiny-fmnist", "mobilenetv3-fmnist",
                                   pytest.param("resnet18-fmnist", marks=pytest.mark.slow),
                                   pytest.param("hybrid-tiny-fmnist", marks=pytest.mark.slow),
                                   pytest.param("maxvit-pico-fmnist", marks=pytest.mark.slow)])
def test_every_family_gives_a_legal_qdq_onnx_for_jetson(model, fmnist_dir, tmp_path):
    from edgevit.build import build

    # each family's every block kind, small: MaxViT one block (MBConv, window and grid attention) per stage at 32 px
    small = {"hybrid-tiny-fmnist": dict(depth=1, embed_dim=32, num_heads=2),
             "maxvit-pico-fmnist": dict(depths=(1, 1, 1, 1))}
    r = build(model, target="jetson-orin", precision="int8", data=f"fashion-mnist:{fmnist_dir}", calibration="fast",
              out=str(tmp_path), val_samples=20, overrides=small.get(model, {}),
              input_size=32 if model == "maxvit-pico-fmnist" else None)
    assert r.manifest.data["backend"]["trt_rules"]["passed"], r.manifest.data["backend"]["trt_rules"]["violations"]


def test_engine_on_gpu(orin_bundle, tmp_path):
    """Builds and runs a real engine; needs TensorRT, cuda-python and an NVIDIA GPU."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs an NVIDIA GPU)")
    pytest.importorskip("cuda", reason="cuda-python is not installed (pip install 'edgevit[tensorrt]')")
    import shutil

    from edgevit.backends.tensorrt.compile import compile_bundle
    from edgevit.backends.tensorrt.engine import engine_support
    from edgevit.build import build

    ok, why = engine_support()
    if not ok:
        pytest.skip(why)
    b = build("vit-tiny-fmnist", target="nvidia-gpu", precision="int8", data="synthetic", out=str(tmp_path),
              calibration="fast", overrides=TINY_VIT).bundle
    if not (b / "model.engine").is_file():  # prepared only: finish it as a user on the device would
        compile_bundle(b)
    shutil.copytree(b, tmp_path / "copy")
    from edgevit.runtime.predict import Predictor

    p = Predictor(tmp_path / "copy")
    assert p.runner.info["backend"] == "tensorrt"


def test_best_for_a_remote_target_follows_the_documented_rule(fmnist_dir, tiny_checkpoint, tmp_path):
    from edgevit.build import build

    r = build("vit-tiny-fmnist", target="jetson-orin-dla", precision="best", data=f"fashion-mnist:{fmnist_dir}",
              weights=str(tiny_checkpoint), out=str(tmp_path), calibration="fast", val_samples=50)
    sel = r.manifest.data["selection"]
    assert sel["chosen"] == "int8" and "cannot be measured on this host" in sel["rule"]
    assert {c["precision"] for c in sel["candidates"]} == {"int8", "fp16"}  # what the DLA profile allows
    assert all(c["latency_ms_p50"] is None for c in sel["candidates"])  # nothing was timed that could not be


def test_layer_summary_reads_the_inspector_json():
    from edgevit.backends.tensorrt.engine import layer_summary

    layers = {"Layers": [{"Name": "conv", "LayerType": "CaskConvolution",
                          "Outputs": [{"Format/Datatype": "Channel major INT8 format where channel % 32 == 0"}]},
                         {"Name": "ln", "LayerType": "Normalization", "Outputs": [{"Format/Datatype":
                                                                                  "Row major linear FP16 format"}]},
                         {"Name": "head", "LayerType": "Gemm",
                          "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
                         {"Name": "mha", "LayerType": "MHA",  # format and type in separate fields (TensorRT 11)
                          "Outputs": [{"Format": "Row major linear", "Datatype": "Half"}]},
                         "a layer printed as a string at lower verbosity"]}
    s = layer_summary(layers)
    assert s["by_precision"] == {"INT8": 1, "FP16": 2, "FP32": 1} and s["by_device"] == {"GPU": 4}


def test_rewrite_leaves_a_scale_shared_with_an_int8_pair_alone():
    """Optimizers share equal constants between nodes (measured: MobileNetV3 lost 32 points when a shared scale was
    widened for its uint8 user and its int8 user alike)."""
    from onnx import helper, numpy_helper

    m = _qdq_graph(zp=np.uint8(0), scale=0.02)
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.zeros((), np.int8), "zp8"))
    g.node.extend([helper.make_node("QuantizeLinear", ["x", "s", "zp8"], ["x8q"], name="q8"),
                   helper.make_node("DequantizeLinear", ["x8q", "s", "zp8"], ["x8"], name="dq8")])
    trt_rules.unsigned_to_signed(m)
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    assert inits["s"] == np.float32(0.02)  # the int8 pair's scale is untouched
    assert {n.input[1] for n in g.node if n.name in ("q8", "dq8")} == {"s"}
    assert all(np.isclose(inits[n.input[1]], 0.02 * 255 / 127) for n in g.node if n.name in ("q_x", "dq_x"))


# --------------------------------------------------------------------------------- trtexec-ready bundles
def _trtexec_flags(script: str) -> dict:
    """The ``--flag[=value]`` arguments of the trtexec call in a build_engine.sh."""
    body = script[script.index('exec "$TRTEXEC"'):]
    flags = {}
    for tok in shlex.split(body.replace("\\\n", " "))[2:]:
        if tok.startswith("--"):
            k, _, v = tok[2:].partition("=")
            flags[k] = v
    return flags


@pytest.mark.parametrize("name", sorted(list_targets()))
def test_build_engine_sh_matches_the_plan_for_every_profile(name):
    from edgevit.backends.tensorrt.plan import build_script

    t = load_target(name)
    if t.backend != "tensorrt":
        pytest.skip(f"{name} is not a TensorRT target")
    checked = 0
    for precision in t.precisions:
        for version in {t.tensorrt or "10.3", "8.5", "10.3", "11.1"}:
            try:
                plan = engine_plan(t, precision, version, (3, 224, 224))
            except TargetError:
                continue  # a combination the plan refuses (fp16 strongly typed, fp32 on DLA)
            f = _trtexec_flags(build_script(plan))
            assert f["onnx"] == "model.onnx" and f["saveEngine"].endswith("/model.engine")
            assert ("stronglyTyped" in f) == plan["strongly_typed"]
            assert ("int8" in f) == ("INT8" in plan["builder_flags"])
            assert ("fp16" in f) == ("FP16" in plan["builder_flags"])
            if plan["device"] == "DLA":
                assert f["useDLACore"] == str(plan["dla_core"])
                assert ("allowGPUFallback" in f) == plan["gpu_fallback"]
            else:
                assert "useDLACore" not in f and "allowGPUFallback" not in f
            prof = plan["optimization_profile"]["input"]
            for key, flag in (("min", "minShapes"), ("opt", "optShapes"), ("max", "maxShapes")):
                assert f[flag] == "input:" + "x".join(map(str, prof[key]))
            assert f["maxShapes"].split(":")[1].split("x")[0] == str((t.batch_range or (t.batch,) * 3)[2])
            if plan["workspace_bytes"]:
                assert f["memPoolSize"] == f"workspace:{t.workspace_mb}"
            else:
                assert "memPoolSize" not in f
            assert f["timingCacheFile"].endswith("/timing.cache") and f["profilingVerbosity"] == "detailed"
            assert f["exportLayerInfo"].endswith("engine_layers.json") and "exportProfile" in f
            checked += 1
    assert checked >= len(t.precisions)  # every precision the profile offers has a plan for some TensorRT version


# ----------------------------------------------------------------- the engine runner and builder, stand-ins
class _ProfileContext:
    """Stands in for IExecutionContext: like TensorRT, refuses shapes outside the profile (returns False)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi, self.shapes = lo, hi, []

    def set_input_shape(self, name, shape) -> bool:
        ok = self.lo <= shape[0] <= self.hi
        if ok:
            self.shapes.append(tuple(shape))
        return ok


def test_runner_splits_batches_to_the_engine_profile_and_checks_the_shape():
    from edgevit.backends.tensorrt.engine import TRTRunner
    from edgevit.errors import ValidationFailedError

    r = object.__new__(TRTRunner)
    r._context, r._input, r.min_batch, r.max_batch = _ProfileContext(1, 8), "input", 1, 8
    r._execute = lambda x: x.reshape(len(x), -1)[:, :2] * 2  # what the engine would return, per image
    x = np.random.default_rng(0).standard_normal((100, 3, 4, 4)).astype(np.float32)  # validation's batches of 100
    got = r(x)
    assert np.allclose(got, x.reshape(100, -1)[:, :2] * 2)
    assert max(s[0] for s in r._context.shapes) == 8 and sum(s[0] for s in r._context.shapes) == 100
    r.max_batch = 16  # a profile that lies about its range: the refused shape is an error, not garbage
    with pytest.raises(ValidationFailedError, match="allows batch 1..16"):
        r(x)


class _Cache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob


class _RefusingConfig:
    """Stands in for IBuilderConfig: refuses a timing cache from another device, like set_timing_cache does."""

    def __init__(self) -> None:
        self.used = None

    def create_timing_cache(self, blob: bytes):
        return _Cache(blob)

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # never trust a foreign cache
        if cache.blob == b"from another device":
            return False
        self.used = cache
        return True


def test_timing_cache_from_another_device_is_replaced_not_trusted(tmp_path):
    from edgevit.backends.tensorrt.engine import apply_timing_cache

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another device")
    said = []
    cfg = _RefusingConfig()
    assert apply_timing_cache(cfg, cache, said.append) is False
    assert cfg.used.blob == b"" and "another device" in said[0]
    cache.write_bytes(b"good")
    cfg = _RefusingConfig()
    assert apply_timing_cache(cfg, cache, said.append) is True and cfg.used.blob == b"good"


def test_engine_from_another_board_with_the_same_gpu_is_refused():
    rec = {"tensorrt": "10.3", "device_name": "Orin", "compute_capability": "8.7",
           "board": "NVIDIA Jetson AGX Orin Developer Kit"}
    nano = {**rec, "board": "NVIDIA Jetson Orin Nano Developer Kit"}
    assert "Orin Nano" in engine_mismatch(rec, nano)
    assert engine_mismatch(rec, dict(rec)) is None


# ------------------------------------------------------------------------------------ fused INT8 attention
def test_every_attention_block_is_quantized_for_tensorrts_fused_mha(orin_bundle):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(orin_bundle.bundle / "model.onnx"))
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    blocks = trt_rules.attention_matmuls(g)
    assert len(blocks) == TINY_VIT["depth"] and orin_bundle.manifest.data["backend"]["attention_qdq"]["matmuls"] == 1
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for mm in blocks:
        softmax_dq, v_dq = (producer[i] for i in mm.input)
        assert softmax_dq.op_type == v_dq.op_type == "DequantizeLinear"
        assert inits[softmax_dq.input[1]] == pytest.approx(1 / 127)  # the fixed scale the fusion expects
        assert inits[v_dq.input[1]] > 0 and inits[v_dq.input[2]] == 0
    # undo it: the rules check names the block that would not fuse
    for mm in blocks:
        mm.input[0] = producer[producer[mm.input[0]].input[0]].input[0]
    bad = [v for v in trt_rules.check(model) if v.rule == "unfused-attention"]
    assert [v.node for v in bad] == [mm.name for mm in blocks]


# -------------------------------------------------------------------- TensorRT 8.5 (Jetson Xavier NX, JetPack 5)
def test_layernorm_is_decomposed_exactly_for_tensorrt_before_8_6(tmp_path):
    import onnx
    import onnxruntime as ort

    from edgevit.export import INPUT_NAME, export_onnx
    from edgevit.models import create_model, resolve_spec

    net = create_model(resolve_spec("vit-tiny-fmnist"), num_classes=10, **TINY_VIT).eval()
    path = export_onnx(net, (32, 32), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert any(v.rule == "unsupported-op" for v in trt_rules.check(model, tensorrt="8.5"))
    assert not any(v.rule == "unsupported-op" for v in trt_rules.check(model, tensorrt="8.6"))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]
    names = trt_rules.decompose_layernorm(model)
    assert names and not any(n.op_type == "LayerNormalization" for n in model.graph.node)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: x})[0]
    assert np.abs(got - want).max() < 1e-4
    assert trt_rules.check(model, tensorrt="8.5", compute_capability="7.2") == []  # no fused MHA on Xavier


def test_xavier_bundle_parses_on_tensorrt_8_5_and_pins_the_decomposed_layernorm(fmnist_dir, tmp_path):
    import onnx

    from edgevit.backends.tensorrt.plan import build_script
    from edgevit.build import build

    r = build("vit-tiny-fmnist", target="jetson-xavier-nx", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
              out=str(tmp_path), calibration="fast", val_samples=40, overrides=TINY_VIT)
    model = onnx.load(str(r.bundle / "model.onnx"))
    plan = r.manifest.data["backend"]["plan"]
    assert plan["tensorrt"] == "8.5" and not any(n.op_type == "LayerNormalization" for n in model.graph.node)
    assert trt_rules.check(model, tensorrt="8.5", compute_capability="7.2") == []  # no fused MHA on Xavier
    names = {n.name for n in model.graph.node}
    assert plan["fp32_layers"] and set(plan["fp32_layers"]) <= names
    flags = _trtexec_flags(build_script(plan))
    assert flags["precisionConstraints"] == "obey"
    assert flags["layerPrecisions"] == ",".join(f"{n}:fp32" for n in plan["fp32_layers"])


def test_fp16_bundle_ships_an_fp16_typed_onnx_and_measures_it(fmnist_dir, tiny_checkpoint, tmp_path):
    import onnx

    from edgevit.build import build

    r = build("vit-tiny-fmnist", target="jetson-orin", precision="fp16", data=f"fashion-mnist:{fmnist_dir}",
              weights=str(tiny_checkpoint), out=str(tmp_path))
    model = onnx.load(str(r.bundle / "model.onnx"))
    types = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    ops_fp32 = {n.op_type for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")}
    assert ops_fp32  # still there, and fed through casts to FP32
    v = r.manifest.data["validation"]
    assert "onnxruntime" in v["measured_with"] and abs(v["top1_drop"]) <= 1.0


def test_folding_a_quantized_weight_transpose_keeps_the_outputs():
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)  # a Linear's [out, in] weight, quantized per output channel
    scale = (np.abs(w).max(1) / 127).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wdq"], axis=0),
             helper.make_node("Transpose", ["wdq"], ["wt"], perm=[1, 0], name="T"),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"),
                           numpy_helper.from_array(np.zeros(6, np.int8), "z")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 4)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    want = run(model)
    assert trt_rules.gemm_coverage(model) == (0, 2)
    assert trt_rules.fold_weight_transposes(model) == 1
    assert not any(n.op_type == "Transpose" for n in model.graph.node)
    assert np.allclose(run(model), want, atol=1e-6)
    assert trt_rules.gemm_coverage(model) == (1, 2)


def test_jetson_extra_brings_no_pypi_tensorrt_or_pycuda_and_x86_extras_name_the_cuda_major():
    from packaging.requirements import Requirement

    from edgevit._config import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]

    def wanted(extra: str, machine: str, py: str = "3.10") -> set[str]:
        env = {"platform_machine": machine, "sys_platform": "linux", "extra": extra, "python_version": py}
        return {r.name for r in map(Requirement, extras[extra]) if r.marker is None or r.marker.evaluate(env)}

    assert wanted("jetson", "aarch64") == {"cuda-python", "numpy"}  # JetPack provides TensorRT's bindings
    assert wanted("tensorrt-cu12", "x86_64") == {"cuda-python", "tensorrt-cu12"}
    assert wanted("tensorrt-cu13", "x86_64") == {"cuda-python", "tensorrt-cu13"}
    assert "tensorrt" not in extras  # the bare metapackage now means CUDA 13: never unbounded
    assert not any(Requirement(r).name == "pycuda" for reqs in extras.values() for r in reqs)


# The flags each trtexec accepts, as its samples/common/sampleOptions.cpp parses them (TensorRT 8.5.2 = JetPack 5,
# 10.3 = JetPack 6, 11.1). A flag a version does not know makes trtexec stop with "Unknown option".
TRTEXEC_FLAGS = {
    "8.5": set("""allowGPUFallback avgRuns avgTiming batch best buildOnly calib consistency deploy device directIO
        dumpLayerInfo dumpOutput dumpProfile dumpRefit duration explicitBatch explicitPrecision exportLayerInfo
        exportOutput exportProfile exportTimes exposeDMA fp16 help heuristic idleTime inputIOFormats int8 iterations
        layerOutputTypes layerPrecisions loadEngine loadInputs maxBatch maxShapes maxShapesCalib memPoolSize
        minShapes minShapesCalib minTiming model noBuilderCache noDataTransfers noTF32 nvtxMode onnx optShapes
        optShapesCalib output outputIOFormats percentile persistentCacheRatio plugins precisionConstraints preview
        profilingVerbosity refit restricted safe saveEngine separateProfileRun serialized shapes sleepTime sparsity
        std streams tacticSources threads timeDeserialize timeRefit timingCacheFile uff uffInput uffNHWC
        useCudaGraph useDLACore useManagedMemory useSpinWait verbose warmUp workspace""".split()),
    "10.3": set("""allocationStrategy allowGPUFallback allowWeightStreaming avgRuns avgTiming best bf16
        buildDLAStandalone builderOptimizationLevel calib calibProfile consistency device directIO dumpLayerInfo
        dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile dumpRefit duration dynamicPlugins
        errorOnTimingCacheMiss excludeLeanRuntime exportLayerInfo exportOutput exportProfile exportTimes exposeDMA
        fp16 fp8 getPlanVersionOnly hardwareCompatibilityLevel help idleTime ignoreParsedPluginLibs infStreams
        inputIOFormats int4 int8 iterations layerDeviceTypes layerOutputTypes layerPrecisions leanDLLPath loadEngine
        loadInputs markDebug maxAuxStreams maxShapes maxShapesCalib memPoolSize minShapes minShapesCalib
        noBuilderCache noCompilationCache noDataTransfers noTF32 onnx optShapes optShapesCalib outputIOFormats
        percentile persistentCacheRatio pi pluginInstanceNorm plugins precisionConstraints preview profile
        profilingVerbosity refit restricted runtimePlatform safe saveDebugTensors saveEngine separateProfileRun
        serialized setPluginsToSerialize shapes skipInference sleepTime sparsity staticPlugins std streams
        stripAllWeights stripWeights stronglyTyped tacticSources tempdir tempfileControls threads timeDeserialize
        timeRefit timingCacheFile useCudaGraph useDLACore useManagedMemory useProfile useRuntime useSpinWait vc
        verbose versionCompatible warmUp weightStreamingBudget weightless""".split()),
    "11.1": set("""accuracyAlgorithm accuracyThreshold adjustForDLA allocationStrategy allowGPUFallback
        allowWeightStreaming asyncFileReader atol avgRuns avgTiming buildDLAStandalone builderOptimizationLevel
        consistency continue cpuOnly decomposableAttentions device directIO distributiveIndependence dryRun
        dumpKernelText dumpLayerInfo dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile dumpRefit
        duration dynamicPlugins enablePluginOverride errorOnTimingCacheMiss excludeLeanRuntime exportLayerInfo
        exportOutput exportProfile exportTimes exposeDMA getPlanVersionOnly hardwareCompatibilityLevel help
        helpBuildRoute idleTime ignoreParsedPluginLibs includeDataTransfers infStreams inputIOFormats int8
        iterations l2LimitForTiling layerDeviceTypes leanDLLPath loadEngine loadInputs loadRefOutputs markDebug
        markUnfusedTensorsAsDebugTensors maxAuxStreams maxShapes maxTactics memPoolSize minShapes monitorMemory
        noBuilderCache noCompilationCache noCudaGraph noDataTransfers noSpinWait noTF32 onnx optShapes
        outputIOFormats percentile persistentCacheRatio pi pluginInstanceNorm plugins preview profile
        profilingVerbosity refPair refit refitFromOnnx remoteAutoTuningConfig reportCapabilityDLA rtol
        runtimePlatform safe safetyPlugins saveAllDebugTensors saveAllEngines saveDebugTensors saveEngine
        separateProfileRun serialized setBuildRoute setPluginsToSerialize shapes skipInference sleepTime sparsity
        staticPlugins std streams stripAllWeights stripWeights stronglyTyped tacticSources tempdir tempfileControls
        threads tilingOptimizationLevel timeDeserialize timeRefit timingCacheFile tuneBuildRouteFile tuneBuildRoutes
        tuningCacheFile tuningResultFile tuningSearch tuningTimeOut uint8AsymmetricQuantizationDLA useCudaGraph
        useDLACore useManagedMemory useProfile useRuntime useSpinWait vc verbose versionCompatible warmUp
        weightStreamingBudget""".split()),
}


def _known_flags(version: str) -> set:
    """The table of the newest listed TensorRT not newer than ``version``."""
    v = trt_rules.version_tuple(version)
    return TRTEXEC_FLAGS[max((k for k in TRTEXEC_FLAGS if trt_rules.version_tuple(k) <= v),
                             key=trt_rules.version_tuple)]


@pytest.mark.parametrize("version", ["8.5", "8.6", "10.3", "10.7", "11.1", "11.4"])
def test_every_emitted_trtexec_flag_is_one_that_tensorrt_version_accepts(version):
    from edgevit.backends.tensorrt.plan import build_script

    checked = 0
    for name in sorted(list_targets()):
        t = load_target(name)
        if t.backend != "tensorrt":
            continue
        for precision in t.precisions:
            for pinned in ((), ("/blocks.0/norm1/Add", "/blocks.0/norm1/Div")):  # a decomposed LayerNorm (8.5)
                try:
                    plan = engine_plan(t, precision, version, (3, 224, 224), fp32_layers=pinned)
                except TargetError:
                    continue
                flags = _trtexec_flags(build_script(plan))
                unknown = set(flags) - _known_flags(version)
                assert not unknown, f"{name} {precision} TensorRT {version}: trtexec does not know {unknown}"
                if plan["fp32_layers"]:  # compute and storage pinned alike
                    assert flags["layerPrecisions"] == flags["layerOutputTypes"] == \
                        ",".join(f"{n}:fp32" for n in pinned)
                checked += 1
    assert checked >= 10  # every TensorRT profile, each precision it allows


def test_the_table_catches_a_flag_a_version_lacks():
    assert "stronglyTyped" not in _known_flags("8.5") and "layerPrecisions" not in _known_flags("11.1")
    assert "fp16" in _known_flags("10.3") and "fp16" not in _known_flags("11.4")


def test_no_layer_name_or_version_reaches_the_shell_unquoted(tmp_path):
    """Any layer name and TensorRT version: refused with TargetError, or a script bash parses whose trtexec call
    gets exactly those names (and the script runs nothing else: it is run here with a fake trtexec)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from edgevit.backends.tensorrt.plan import build_script

    t = load_target("jetson-xavier-nx")
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    (tmp_path / "model.onnx").write_bytes(b"x")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3),
           st.one_of(st.just("8.5"), st.text(max_size=8)))
    def check(names, version):
        try:
            plan = engine_plan(t, "int8", version, (3, 32, 32), fp32_layers=names)
        except TargetError:
            return
        script = tmp_path / "build_engine.sh"
        script.write_text(build_script(plan))
        out = tmp_path / "args.txt"
        r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                           env={"PATH": os.environ["PATH"], "TRTEXEC": str(fake), "ARGS_OUT": str(out),
                                "OUT": str(tmp_path / "out")})
        assert r.returncode == 0, r.stderr
        args = out.read_text().splitlines()
        want = "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in names)
        assert want in args

    check()


def test_fused_attention_only_where_tensorrt_fuses_it():
    assert trt_rules.mha_blocker("8.7", (1, 2, 197, 64)) is None
    assert "sm 7.2" in trt_rules.mha_blocker("7.2", (1, 2, 197, 64))  # Xavier: no fused INT8 MHA
    assert "head size 48" in trt_rules.mha_blocker("8.7", (1, 4, 197, 48))
    assert "1025 tokens" in trt_rules.mha_blocker("8.7", (1, 4, 1025, 64))


def test_xavier_gets_no_int8_softmax_and_the_bundle_says_why(fmnist_dir, tmp_path):
    import onnx

    from edgevit.build import build

    r = build("vit-tiny-fmnist", target="jetson-xavier-nx", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
              calibration="fast", out=str(tmp_path), val_samples=20, overrides=TINY_VIT)
    att = r.manifest.data["backend"]["attention_qdq"]
    assert att["matmuls"] == 0 and list(att["not_fused"].values()) == ["sm 7.2 has no fused INT8 attention (SM 7.5 "
                                                                       "and later)"] * TINY_VIT["depth"]
    model = onnx.load(str(r.bundle / "model.onnx"))
    assert not any(n.name.startswith("attn_softmax") for n in model.graph.node)


def test_layer_names_with_line_separators_are_refused():
    """Found by the property test above: U+0085 (NEL) ends a line for Python's splitlines and for some readers; every
    name that is not one printable line is refused like a comma or a newline."""
    t = load_target("jetson-xavier-nx")
    for name in ("a\x85b", "a\u2028b", "a\u2029b", "a\nb", "a,b"):
        with pytest.raises(TargetError, match="cannot be passed to trtexec"):
            engine_plan(t, "int8", "8.5", (3, 32, 32), fp32_layers=[name])
