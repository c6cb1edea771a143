"""Mixed precision by speed: the graph surgery that puts quantized layers back in the host precision, and the rule
that picks which groups to try."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import TINY_VIT

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def int8_ir(tmp_path_factory):
    import torch

    from edgevit.backends.openvino.backend import OpenVINOBackend
    from edgevit.export import export_onnx
    from edgevit.models import create_model, resolve_spec
    from edgevit.quantize import load_recipe, quantize_for

    torch.manual_seed(0)
    spec = resolve_spec("vit-tiny-fmnist")
    net = create_model(spec, num_classes=10, input_size=32, **TINY_VIT).eval()
    d = tmp_path_factory.mktemp("speedmix")
    onnx = export_onnx(net, (32, 32), d / "fp32.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    model, _ = quantize_for(OpenVINOBackend(), onnx, "int8", x, load_recipe("plain"), False)
    ov.save_model(model, str(d / "int8.xml"), compress_to_fp16=False)
    with torch.no_grad():
        ref = net(torch.from_numpy(x[:4])).numpy()
    return d / "int8.xml", onnx, x, ref


def test_roles_group_layers_across_blocks():
    from edgevit.backends.openvino.speedmix import _role

    assert _role("/blocks/blocks.11/mlp/fc2/MatMul") == "/blocks/blocks.*/mlp/fc2/MatMul"
    assert _role("/stages/stages.2/blocks/blocks.0/attn_grid/qkv/MatMul") == \
        "/stages/stages.*/blocks/blocks.*/attn_grid/qkv/MatMul"
    assert _role("/head/fc/MatMul") == "/head/fc/MatMul"


def test_a_reverted_group_runs_in_the_host_precision(int8_ir):
    from edgevit.backends.openvino.speedmix import quantized_groups, without_activation_quantizers

    xml, _, x, ref = int8_ir
    model = ov.Core().read_model(str(xml))
    groups = quantized_groups(model)
    assert groups, "the INT8 IR has quantized compute layers"
    role = next(iter(groups))
    fqs_before = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    assert without_activation_quantizers(model, set(groups[role])) >= 1
    assert role not in quantized_groups(model)
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) < fqs_before
    for op in model.get_ordered_ops():  # its weights are plain f32 constants now
        if op.get_friendly_name() in groups[role]:
            w = op.input_value(1).get_node()
            assert w.get_type_name() == "Constant" and w.get_output_element_type(0) == ov.Type.f32
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x[:4])[0]
    assert got.shape == ref.shape and (got.argmax(1) == ref.argmax(1)).mean() >= 0.5


def test_candidates_are_groups_int8_does_not_make_clearly_faster():
    from edgevit.backends.openvino.speedmix import group_costs

    groups = {"fast": ["a"], "slow": ["b"], "even": ["c"]}
    int8 = {"a": 0.2, "b": 0.9, "b/fq": 0.3, "c": 0.95}
    host = {"a": 0.6, "b": 1.0, "c": 1.0}
    costs = group_costs(groups, int8, host, {"b": ["b/fq"]})
    assert costs["slow"]["int8_ms"] == pytest.approx(1.2)  # the quantizer that runs on its own counts
    assert [r for r, c in costs.items() if c["candidate"]] == ["slow", "even"]


def test_search_records_what_it_tried(int8_ir, tmp_path):
    from edgevit.backends.openvino.backend import OVRunner
    from edgevit.backends.openvino.speedmix import search

    xml, onnx, x, _ = int8_ir
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}

    class SlowFc2(OVRunner):
        """The INT8 IR's profile as a CPU where the fc2 MatMuls run slowly in INT8 would report it, so that one group
        is always a candidate; the variants are built, compiled and timed for real."""

        def layer_times(self, x, runs=50):
            t = super().layer_times(x, runs)
            return {k: v * 50 if "fc2" in k and self._path == str(xml) else v for k, v in t.items()}

    rec = search(xml, onnx, lambda p: SlowFc2(p, cfg), x[:1], tmp_path, log=lambda s: None)
    assert set(rec["groups"]) and "result" in rec
    tried = [r for r, c in rec["groups"].items() if c["candidate"]]
    assert any("fc2" in r for r in tried)
    assert set(rec["variants_p50_ms"]) == {"int8", *tried}  # every candidate timed against the INT8 IR in one run
    if "xml" in rec:
        assert set(rec["kept"]) <= set(tried) and rec["mixed_p50_ms"] < rec["int8_p50_ms"]
    else:
        assert rec["result"] in ("no revert made the model faster", "the reverts together were not faster")
