"""PyTorch → ONNX with the classic TorchScript exporter (opset 17: LayerNorm stays one node; the dynamo exporter
fails on MaxViT and NNCF models), dynamic batch, then a check of ONNX Runtime's outputs against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch.nn as nn

from edgevit.errors import ValidationFailedError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def freeze_weight_standardization(model):
    """Bake timm's weight-standardized convolutions (``StdConv2d``/``StdConv2dSame``, the ResNet stem of the hybrid
    ViT) into plain convolutions with the standardized weights, in place. The outputs are unchanged; the exported graph
    then has constant conv weights instead of a training-mode BatchNormalization on them, which neither NNCF nor
    TensorRT can treat as weights. Returns ``model``."""
    import torch
    import torch.nn.functional as F
    from timm.layers import StdConv2d, StdConv2dSame

    for m in model.modules():
        if isinstance(m, (StdConv2d, StdConv2dSame)):
            with torch.no_grad():
                w = F.batch_norm(m.weight.reshape(1, m.out_channels, -1), None, None, training=True, momentum=0.0,
                                 eps=m.eps).reshape_as(m.weight)
                m.weight.copy_(w)
            m.__class__ = _FrozenStdConv2d
    return model


class _FrozenStdConv2d(nn.Conv2d):
    """A weight-standardized conv whose standardization was applied once to its weights."""

    def forward(self, x):
        if getattr(self, "same_pad", False):
            from timm.layers.padding import pad_same

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.weight, self.bias)


def export_onnx(model, input_size: tuple[int, int], path: Path, dynamic_batch: bool = True) -> Path:
    import torch

    model = model.eval()
    x = torch.zeros(1, 3, *input_size)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    from edgevit.errors import WeightsError, reading

    with reading(f"the {type(model).__name__} to ONNX opset {OPSET}", WeightsError,
                 "the model must be exportable to ONNX (plain torch ops; a fused fast path such as "
                 "nn.TransformerEncoderLayer's in eval mode is not)", verb="export"), \
            warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    import onnx

    m = clean_onnx(onnx.load(str(path)))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def clean_onnx(model):
    """Fold constants (onnxscript's optimizer: shape arithmetic, constant tables such as MaxViT's relative positions)
    and infer shapes, so every edge is typed and every weight is a constant, as NNCF and TensorRT expect."""
    import onnx
    from onnxscript import optimizer

    model = optimizer.optimize(model, input_size_limit=1 << 26, output_size_limit=1 << 26)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def check_onnx(path: Path, model, images: np.ndarray, atol: float = 1e-3) -> float:
    """Max |ONNX Runtime − PyTorch| over the logits of ``images`` (float32 NCHW); raises above ``atol`` × scale."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: images})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    from edgevit.runtime.measure import require_finite

    require_finite(want, "the PyTorch model")
    require_finite(got, f"the ONNX export {path.name}")
    diff = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    if diff > atol * scale:
        raise ValidationFailedError(
            f"ONNX export of {path.name} differs from PyTorch by {diff:.4g} (tolerance {atol * scale:.4g})"
        )
    return diff


FP32_OPS_IN_FP16 = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf")


def fp16_typed(model):
    """An FP16-typed copy of an FP32 ONNX for strongly typed TensorRT (11+: no FP16 builder flag, the ONNX's types
    decide): weights and activations in FP16, inputs and outputs kept float32, and LayerNorm, Softmax and the
    statistics of a decomposed LayerNorm (ReduceMean, Pow, Sqrt) and GELU's Erf kept in FP32, with casts around them.
    onnxruntime's converter does the typing."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS_IN_FP16),
                                    disable_shape_infer=False)


def onnx_metadata(labels: list[str], preprocessing: dict, model: str) -> dict[str, str]:
    """What every ONNX edgevit ships carries in ``metadata_props`` (as Ultralytics does for its exports), so the file
    describes itself outside a bundle too."""
    import json

    return {"edgevit.model": model, "edgevit.labels": json.dumps(labels),
            "edgevit.preprocessing": json.dumps(preprocessing)}


def set_metadata(model, metadata: dict[str, str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
