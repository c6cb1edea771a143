"""One contract, run over every registered backend: what the pipeline relies on from a backend, checked the same way
for each. A backend that cannot run here skips, naming why (its own ``available()``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevit.backends import BACKENDS, BuildJob, Built, Capabilities, LoadSpec, get_backend
from edgevit.errors import UsageError

from .conftest import TINY_VIT


def _target_for(backend: str, precision: str = "fp32"):
    """A shipped target of ``backend`` that builds ``precision`` on its main device (not a DLA core)."""
    from edgevit.targets import list_targets, load_target

    return next(t for t in map(load_target, list_targets())
                if t.backend == backend and precision in t.precisions and t.dla_core < 0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny ViT, its FP32 ONNX, a few images and the PyTorch logits on them."""
    import torch

    from edgevit.export import export_onnx
    from edgevit.models import create_model, resolve_spec

    torch.manual_seed(0)
    spec = resolve_spec("vit-tiny-fmnist")
    net = create_model(spec, num_classes=10, input_size=32, **TINY_VIT).eval()
    path = export_onnx(net, (32, 32), tmp_path_factory.mktemp("contract") / "model.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    return spec, path, x, ref


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    b = get_backend(request.param)
    ok, why = b.available()
    if not ok:
        pytest.skip(f"backend {request.param} cannot run here: {why}")
    return b


def _build(backend, exported, precision: str, out: Path, accuracy_control=None):
    from edgevit.quantize import load_recipe, quantize_for

    spec, onnx_path, x, _ = exported
    target = _target_for(backend.name, precision)
    calib = x if precision == "int8" else None
    model, quantizer = quantize_for(backend, onnx_path, precision, calib, load_recipe("fast"), spec.is_transformer,
                                    accuracy_control)
    out.mkdir()
    built = backend.build(BuildJob(model=model, onnx_path=onnx_path, precision=precision, target=target,
                                   out_dir=out, quantizer=quantizer, calibration=calib))
    from edgevit.runtime.manifest import Manifest

    manifest = Manifest({"precision": precision, "target": target.to_dict(),
                         "backend": {"name": backend.name, **built.details}, "files": {f: {} for f in built.files}})
    return target, built, manifest, quantizer


def test_declares_what_the_pipeline_reads(backend):
    assert backend.name in BACKENDS
    assert isinstance(backend.capabilities, Capabilities)
    assert isinstance(backend.version(), str) and backend.version()
    ok, why = backend.device_support(_target_for(backend.name))
    assert isinstance(ok, bool) and isinstance(why, str) and why


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_builds_loads_and_runs_what_it_lists(backend, exported, precision, tmp_path):
    """Every file it writes is listed, everything its loader reads is among them, and the artifact computes the
    model: FP32 matches PyTorch, INT8 agrees on most top-1s."""
    _, _, x, ref = exported
    stage = tmp_path / "stage"
    target, built, manifest, quantizer = _build(backend, exported, precision, stage)
    assert isinstance(built, Built) and built.files
    assert all((stage / f).is_file() for f in built.files)
    assert backend.required_files(stage, manifest) <= set(built.files)
    assert (quantizer is None) == (precision != "int8")
    runner = backend.load(stage, LoadSpec.of_manifest(manifest), 1)
    assert runner.info["backend"] and isinstance(runner.info, dict)
    got = np.concatenate([runner(x[i:i + 4]) for i in range(0, len(x), 4)])
    assert got.shape == ref.shape and np.isfinite(got).all()
    if precision == "fp32":
        np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
    else:
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.5


def test_plain_recipe_and_peer_run_on_the_export(backend, exported, tmp_path):
    _, onnx_path, x, ref = exported
    plain = backend.load_default(onnx_path, 1)
    assert plain(x[:2]).shape == (2, ref.shape[1])
    peer = backend.peer_int8(onnx_path, x, tmp_path)
    if peer is not None:  # the field's one-line INT8 recipe, run the way its own defaults run it
        assert backend.load_default(Path(peer), 1)(x[:2]).shape == (2, ref.shape[1])


def test_accuracy_control_only_where_declared(backend, exported, tmp_path):
    _, _, x, _ = exported
    control = (x, np.zeros(len(x), np.int64), 100.0)
    if not backend.capabilities.accuracy_control:
        with pytest.raises(UsageError, match="accuracy-aware PTQ is not available"):
            _build(backend, exported, "int8", tmp_path / "ac", accuracy_control=control)
    else:
        _, built, _, quantizer = _build(backend, exported, "int8", tmp_path / "ac", accuracy_control=control)
        assert "accuracy_control" in quantizer and built.files


def test_speed_search_only_where_declared(backend, exported, tmp_path):
    """mix_for_speed answers None without the capability, and a record (what it tried, what it kept) with it; a
    backend that reverts layers leaves an artifact that still loads and computes the model."""
    _, onnx_path, x, ref = exported
    stage = tmp_path / "stage"
    _, built, manifest, _ = _build(backend, exported, "int8", stage)
    rec = backend.mix_for_speed(stage, LoadSpec.of_manifest(manifest), onnx_path, x[:1], tmp_path,
                                log=lambda s: None)
    if not backend.capabilities.speed_search:
        assert rec is None
        return
    assert "groups" in rec and "result" in rec and "xml" not in rec
    got = backend.load(stage, LoadSpec.of_manifest(manifest), 1)(x[:4])
    assert got.shape == (4, ref.shape[1]) and np.isfinite(got).all()
