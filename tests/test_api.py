"""The library API: ``import edgevit``, a build from the caller's own ``nn.Module`` and data (a torch Dataset, a
DataLoader, numpy arrays), and ``edgevit.load``; and the README's example, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_VIT

ROOT = Path(__file__).resolve().parents[1]


def _net(classes=10):
    import timm

    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=classes, **TINY_VIT)


class _Images:
    """A map-style dataset of (PIL image, label), as torchvision's datasets give them."""

    def __init__(self, split):
        self.split = split
        self.classes = [f"class {i}" for i in range(10)]

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.image(i), int(self.split.labels[i])


def test_import_edgevit_brings_no_build_side_and_exposes_the_api():
    r = subprocess.run([sys.executable, "-c", "import sys, edgevit; print(sorted(m for m in ('torch', 'nncf', "
                        "'timm', 'openvino') if m in sys.modules)); print(edgevit.__all__)"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    loaded, names = r.stdout.splitlines()
    assert loaded == "[]"
    for name in ("build", "train", "load", "Predictor", "read_manifest", "EdgevitError"):
        assert name in names


def test_build_from_a_module_and_a_torch_dataset(tiny_checkpoint, fmnist_dir, tmp_path):
    """A trained module (loaded from the tiny checkpoint), the caller's Dataset and DataLoader: a bundle whose weights
    are the module's, validated on the caller's images, and a predictor that agrees with the module."""
    import torch
    from torch.utils.data import DataLoader

    import edgevit
    from edgevit.data import load_dataset

    ds = load_dataset(f"fashion-mnist:{fmnist_dir}")
    net = _net()
    net.load_state_dict(torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"])
    data = {"train": DataLoader(_Images(ds.train.subset(range(200)))), "val": _Images(ds.val.subset(range(100)))}
    r = edgevit.build(net, input_size=32, data=data, precision="int8", out=str(tmp_path), calibration="fast",
                      mean=(0.2860,) * 3, std=(0.3530,) * 3, measure_latency=False)
    m = r.manifest.data
    assert m["model"]["weights"] == "torch.nn.Module VisionTransformer" and not m["model"]["random_init"]
    assert m["labels"][:2] == ["class 0", "class 1"] and m["validation"]["samples"] == 100
    assert m["validation"]["top1"] > 50, "the trained module keeps its accuracy through INT8"
    model = edgevit.load(r.bundle)
    imgs = [ds.val.image(i) for i in range(20)]
    preds = model(imgs, k=1)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(np.stack([model.preprocessing(i) for i in imgs]))).argmax(1).numpy()
    agree = np.mean([p.top[0][0] == f"class {c}" for p, c in zip(preds, ref)])
    assert agree >= 0.9, agree
    assert model(np.asarray(imgs[0]), k=3)[0].top[0][0] == preds[0].top[0][0]  # a uint8 array, the same answer


def test_build_from_numpy_arrays(tmp_path):
    import edgevit
    from edgevit.data import make_synthetic

    syn = make_synthetic(n_train=200, n_val=10, size=28)
    r = edgevit.build(_net(), input_size=32, data=(syn.train.arrays, syn.train.labels), precision="fp32",
                      out=str(tmp_path), classes=[f"c{i}" for i in range(10)], measure_latency=False)
    assert r.manifest.data["validation"]["samples"] == 40  # a fifth of the 200 held out, seeded
    assert r.manifest.data["labels"][0] == "c0"


@pytest.mark.parametrize("data, pattern", [
    ((np.zeros((4, 8, 8), np.float32), np.zeros(4, int)), "must be uint8"),
    ((np.zeros((4, 8, 8), np.uint8), np.zeros(3, int)), "labels must be 4 integers"),
    (object(), "pass \\(images, labels\\) arrays"),
    ({"train": [(np.zeros((8, 8), np.uint8), 0)]}, "exactly 'train' and 'val'"),
])
def test_bad_python_data_is_one_dataset_error(data, pattern):
    from edgevit.data import from_python
    from edgevit.errors import DatasetError

    with pytest.raises(DatasetError, match=pattern):
        from_python(data)


def test_a_normalised_tensor_is_refused_rather_than_guessed_at():
    import torch

    from edgevit.data import from_python
    from edgevit.errors import DatasetError

    ds = from_python([(torch.rand(3, 8, 8), 0), (torch.rand(3, 8, 8), 1)] * 3)
    with pytest.raises(DatasetError, match="applies the model's preprocessing itself"):
        ds.train.image(0)


def test_the_readme_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tested: tests/test_api.py runs this block -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README's tested example is missing"
    (tmp_path / "example.py").write_text(block.group(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEVIT_QUIET": "1"}
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("Prediction(") == 3
    assert (tmp_path / "build" / "visiontransformer-cpu-x86-int8" / "manifest.json").is_file()


def test_a_mistyped_option_is_a_type_error_not_a_model_argument(tmp_path):
    """Model constructor arguments travel in ``overrides``; a misspelt build option stops at the call, before any
    work, instead of reaching timm as a model argument."""
    import edgevit

    with pytest.raises(TypeError, match="toke_search"):
        edgevit.build("vit-tiny-fmnist", precision="fp32", out=str(tmp_path), toke_search=True)
    assert not any(tmp_path.iterdir())
