import time

import numpy as np

from edgevit.measure import compare_latency, host_info, top1, topk


def test_compare_latency_interleaves_and_orders():
    order = []

    def make(name, seconds):
        def fn(x):
            order.append(name)
            time.sleep(seconds)
        return fn

    res = compare_latency({"fast": make("fast", 0.0005), "slow": make("slow", 0.004)}, np.zeros((1, 3)),
                          warmup=1, rounds=3, min_iters=6, min_seconds=0.03)
    assert res["fast"]["p50"] < res["slow"]["p50"]
    assert res["slow"]["p50"] >= 4.0 and res["fast"]["iterations"] >= 6 and res["slow"]["iterations"] >= 6
    assert res["fast"]["p90"] >= res["fast"]["p50"] and res["fast"]["batch"] == 1
    # interleaved: the timed calls alternate in blocks (fast..., slow..., fast..., slow..., ...)
    timed = order[2:]
    blocks = [timed[0]] + [b for a, b in zip(timed, timed[1:]) if a != b]
    assert blocks == ["fast", "slow"] * 3


def test_accuracy_helpers_and_host():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 2])
    assert top1(logits, labels) == 66.67
    assert topk(logits, labels, k=2) == 66.67 and topk(logits, labels, k=3) == 100.0
    h = host_info()
    assert h["cpu"] and h["cores"] >= 1 and isinstance(h["isa"], list)


ALONE = """
import sys, numpy as np, torch
from edgevit.measure import TorchRunner, compare_latency
model = torch.load(sys.argv[1], weights_only=False)
x = np.zeros((1, 3, 32, 32), np.float32)
print(compare_latency({"torch": TorchRunner(model, 2)}, x, isolate=False)["torch"]["p50"])
"""


def test_torch_baseline_timed_beside_openvino_matches_torch_alone(tmp_path):
    """The PyTorch eager baseline, timed by compare_latency interleaved with OpenVINO (each in its own process,
    passive thread pools), is within 15 % of the same model timed alone in a fresh process."""
    import subprocess
    import sys

    import torch

    from edgevit.backends.openvino import OVRunner
    from edgevit.export import export_onnx
    from edgevit.measure import TorchRunner, compare_latency
    from edgevit.models import create_model, resolve_spec

    torch.manual_seed(0)
    model = create_model(resolve_spec("vit-tiny-fmnist"), num_classes=10).eval()
    torch.save(model, tmp_path / "m.pt")
    onnx_path = export_onnx(model, (32, 32), tmp_path / "m.onnx")
    x = np.zeros((1, 3, 32, 32), np.float32)
    (tmp_path / "alone.py").write_text(ALONE)
    ratios = []
    for _ in range(3):  # a shared CI host has slow spells; one clean attempt in three shows there is no bias
        together = compare_latency({"torch": TorchRunner(model, 2), "openvino": OVRunner(
            onnx_path, {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})}, x)["torch"]["p50"]
        alone = float(subprocess.run([sys.executable, str(tmp_path / "alone.py"), str(tmp_path / "m.pt")],
                                     capture_output=True, text=True, check=True).stdout.split()[-1])
        ratios.append(together / alone)
        if abs(ratios[-1] - 1) <= 0.15:
            break
    assert abs(ratios[-1] - 1) <= 0.15, ratios
