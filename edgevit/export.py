"""PyTorch → ONNX with the classic TorchScript exporter (opset 17: LayerNorm stays one node; the dynamo exporter
fails on MaxViT and NNCF models), dynamic batch, then a check of ONNX Runtime's outputs against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgevit.errors import ValidationFailedError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model, input_size: tuple[int, int], path: Path, dynamic_batch: bool = True) -> Path:
    import torch

    model = model.eval()
    x = torch.zeros(1, 3, *input_size)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    import onnx

    onnx.checker.check_model(str(path))
    return path


def check_onnx(path: Path, model, images: np.ndarray, atol: float = 1e-3) -> float:
    """Max |ONNX Runtime − PyTorch| over the logits of ``images`` (float32 NCHW); raises above ``atol`` × scale."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: images})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    diff = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    if diff > atol * scale:
        raise ValidationFailedError(
            f"ONNX export of {path.name} differs from PyTorch by {diff:.4g} (tolerance {atol * scale:.4g})"
        )
    return diff
