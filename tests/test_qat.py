"""Quantization-aware training: PTQ init → fine-tune → Q/DQ ONNX → OpenVINO IR; checkpoints rebuild and resume."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TINY_VIT


@pytest.fixture(scope="module")
def qat_build(fmnist_dir, tiny_checkpoint, tmp_path_factory):
    from edgevit.build import QATOptions, build

    out = tmp_path_factory.mktemp("qat")
    r = build("vit-tiny-fmnist", precision="int8", data=f"fashion-mnist:{fmnist_dir}", weights=str(tiny_checkpoint),
              out=str(out), calibration="fast", qat=QATOptions(epochs=1, distill=True), measure_latency=False)
    return r, out


def test_qat_build_records_training_and_both_exports(qat_build):
    r, out = qat_build
    m = r.manifest.data
    assert [t["method"] for t in m["accuracy_gate"]["tried"]] == ["PTQ", "QAT"]
    assert m["accuracy_gate"]["tried"][1]["distill"] is True
    assert [h["epoch"] for h in m["qat"]["history"]] == [0, 1]  # the PTQ initialisation, then one epoch
    assert m["qat"]["history"][0]["note"] == "PTQ initialisation"
    # the same Q/DQ ONNX was measured through ONNX Runtime next to the OpenVINO IR
    assert 0 <= m["qat"]["qdq_onnx"]["top1"] <= 100 and "onnxruntime" in m["qat"]["qdq_onnx"]["measured_with"]
    assert m["backend"]["runtime"]["executed_precision"] == "int8"
    ckpt = out / "vit-tiny-fmnist-cpu-x86-int8.qat.pt"
    assert ckpt.is_file() and m["qat"]["checkpoint"] == str(ckpt)


def test_qat_checkpoint_is_tensor_only_and_keeps_fp32_reference(qat_build, tiny_checkpoint):
    import torch

    _, out = qat_build
    ck = torch.load(out / "vit-tiny-fmnist-cpu-x86-int8.qat.pt", map_location="cpu", weights_only=True)
    assert {"model", "nncf_config", "fp32_model", "qat", "edgevit"} <= set(ck)
    assert any(k.startswith("__nncf_hooks.") for k in ck["model"])  # quantizer scales are saved
    fp32 = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(fp32[k], ck["fp32_model"][k]) for k in fp32)


def test_qat_checkpoint_rebuilds_without_training(qat_build, fmnist_dir, tmp_path):
    from edgevit.build import build
    from edgevit.runtime.predict import Predictor

    first, out = qat_build
    r = build("vit-tiny-fmnist", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
              weights=str(out / "vit-tiny-fmnist-cpu-x86-int8.qat.pt"), out=str(tmp_path), measure_latency=False)
    m = r.manifest.data
    assert m["qat"]["rebuilt_from_checkpoint"] is True
    assert m["calibration"] is None  # nothing was calibrated again
    assert [t["method"] for t in m["accuracy_gate"]["tried"]] == ["QAT checkpoint"]
    # the FP32 reference is the model QAT started from, not the QAT weights
    assert m["validation"]["reference_top1"] == first.manifest.data["validation"]["reference_top1"]
    assert m["validation"]["qdq_onnx"]["top1"] == first.manifest.data["qat"]["qdq_onnx"]["top1"]
    if first.manifest.data["accuracy_gate"]["kept"] == "QAT":  # then both bundles hold the same quantized model
        from PIL import Image

        rng = np.random.default_rng(0)
        x = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(4)]
        a, b = Predictor(first.bundle), Predictor(r.bundle)
        np.testing.assert_allclose(a.probabilities(x), b.probabilities(x), atol=1e-5)


def test_qat_checkpoint_rebuild_with_latency_keeps_its_quantizers(qat_build, fmnist_dir, tmp_path):
    """Without --calibration an OpenVINO build searches its recipe; a QAT checkpoint has none to search: it is
    rebuilt as it was trained, never re-quantized by PTQ."""
    from edgevit.build import build

    _, out = qat_build
    m = build("vit-tiny-fmnist", precision="int8", data=f"fashion-mnist:{fmnist_dir}", threads=1, speed_search=False,
              weights=str(out / "vit-tiny-fmnist-cpu-x86-int8.qat.pt"), out=str(tmp_path), val_samples=50).manifest.data
    assert m["recipe_search"] == {"searched": False, "why": "a QAT checkpoint keeps its trained quantizers"}
    assert m["qat"]["rebuilt_from_checkpoint"] is True and m["calibration"] is None
    assert [t["method"] for t in m["accuracy_gate"]["tried"]][0] == "QAT checkpoint"


def test_qat_resumes_from_its_checkpoint(qat_build, fmnist_dir, tmp_path):
    from edgevit.build import QATOptions, build

    _, out = qat_build
    r = build("vit-tiny-fmnist", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
              weights=str(out / "vit-tiny-fmnist-cpu-x86-int8.qat.pt"), out=str(tmp_path),
              qat=QATOptions(epochs=1, samples=200), measure_latency=False)
    assert [h["epoch"] for h in r.manifest.data["qat"]["history"]] == [0, 1, 2]
    assert [t["method"] for t in r.manifest.data["accuracy_gate"]["tried"]] == ["QAT checkpoint", "QAT"]


def test_cpu_qat_checkpoint_is_refused_for_tensorrt_with_the_fix(qat_build, fmnist_dir, tmp_path):
    """A checkpoint trained with OpenVINO's (asymmetric) quantizers cannot give TensorRT's signed symmetric Q/DQ:
    the build says so up front and names the fix, instead of failing 500 rule checks after the export."""
    import torch

    from edgevit.build import build
    from edgevit.errors import UsageError

    _, out = qat_build
    ck = out / "vit-tiny-fmnist-cpu-x86-int8.qat.pt"
    meta = torch.load(ck, map_location="cpu", weights_only=True)["edgevit"]
    assert meta["qat_target"] == "cpu-x86" and meta["qat_quantizer"] == "openvino default"
    with pytest.raises(UsageError, match=r"needs signed symmetric INT8.*--target jetson-orin --qat-epochs N"):
        build("vit-tiny-fmnist", target="jetson-orin", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
              weights=str(ck), out=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_qdq_export_is_standard_onnx_that_matches_torch(fmnist_dir):
    import onnx
    import onnxruntime as ort
    import torch

    from edgevit.data import load_dataset, preprocess_split
    from edgevit.models import create_model, data_config, resolve_spec
    from edgevit.qat import export_qdq_onnx, quantize_torch
    from edgevit.quantize import calibration_images, load_recipe

    spec = resolve_spec("vit-tiny-fmnist")
    ds, pre = load_dataset(f"fashion-mnist:{fmnist_dir}"), data_config(spec)
    net = create_model(spec, num_classes=10, **TINY_VIT)
    calib, _ = calibration_images(ds, pre, load_recipe("fast"))
    q = quantize_torch(net, calib, load_recipe("fast"), transformer=True, preset="performance")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = export_qdq_onnx(q, pre.input_size, Path(d) / "q.onnx")
        g = onnx.load(str(path)).graph
        ops = [n.op_type for n in g.node]
        assert ops.count("QuantizeLinear") >= 5 and "FakeQuantize" not in ops
        assert {n.domain for n in g.node} <= {"", "ai.onnx"}  # no org.openvinotoolkit custom ops
        x = pre.normalize(preprocess_split(ds.val.subset(np.arange(16)), pre, "x"))
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = q(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 0.05 * max(1.0, np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("args, needle", [
    (["--precision", "fp32", "--qat-epochs", "1"], "need --precision int8"),
    (["--distill"], "add --qat-epochs"),
    (["--qat-epochs", "-1"], "--qat-epochs: -1 is out of range 0.."),
])
def test_qat_flag_misuse_is_a_usage_error(args, needle, fmnist_dir, tmp_path, capsys):
    from edgevit.cli import main

    try:
        rc = main(["build", "--model", "vit-tiny-fmnist", "--data", f"fashion-mnist:{fmnist_dir}",
                   "--out", str(tmp_path), *args])
    except SystemExit as e:  # a flag out of range is refused by the parser
        rc = e.code
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_qat_for_tensorrt_quantizes_at_least_what_ptq_does(fmnist_dir, tiny_checkpoint, tmp_path):
    """A QAT export leaves timm's fused attention unquantized; the TensorRT path quantizes it (and softmax @ V), so
    every GEMM input PTQ quantizes is quantized after QAT too, and the attention blocks can fuse."""
    from edgevit.build import QATOptions, build

    common = dict(target="jetson-orin", precision="int8", data=f"fashion-mnist:{fmnist_dir}", out=str(tmp_path),
                  calibration="fast", val_samples=50)
    ptq = build("vit-tiny-fmnist", weights=str(tiny_checkpoint), name="ptq", **common)
    build("vit-tiny-fmnist", weights=str(tiny_checkpoint), name="q", qat=QATOptions(epochs=1, samples=128),
          **common)
    qat = build("vit-tiny-fmnist", weights=str(tmp_path / "q.qat.pt"), name="qat", **common)  # the QAT model itself
    assert qat.manifest.data["qat"]["rebuilt_from_checkpoint"]
    rules = qat.manifest.data["backend"]["trt_rules"]
    assert rules["passed"], rules["violations"]
    q_cov, p_cov = rules["gemm_inputs_quantized"], ptq.manifest.data["backend"]["trt_rules"]["gemm_inputs_quantized"]
    assert q_cov[1] == p_cov[1] and q_cov[0] >= p_cov[0] and q_cov[0] == q_cov[1]
