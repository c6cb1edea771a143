"""Shared fixtures: tiny generated data and tiny models, so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("EDGEVIT_QUIET", "1")
# Failure logs (edgevit.failure) go to a folder of this test session, never the user's ~/.local/state (tests own the
# paths they write; tests that read a log set their own).
if "EDGEVIT_LOG_DIR" not in os.environ:
    import tempfile as _tempfile

    os.environ["EDGEVIT_LOG_DIR"] = _tempfile.mkdtemp(prefix="test-logs-of-edgevit-")

# The recipe cache (edgevit.recipe_search) of this test session, never the user's ~/.cache/edgevit.
if "EDGEVIT_CACHE_DIR" not in os.environ:
    import tempfile as _tempfile

    os.environ["EDGEVIT_CACHE_DIR"] = _tempfile.mkdtemp(prefix="test-cache-of-edgevit-")

# OpenVINO's telemetry (used by OpenVINO and NNCF) sends from a forked process; with no network its DNS lookup can
# hang, and pytest then waits for that child at exit. Tests send nothing off this machine: decline, in this process
# and its forks (.ci/run also opts out for the subprocesses, with `opt_in_out --opt_out`).
try:
    from openvino_telemetry.utils import opt_in_checker as _optin

    _optin.OptInChecker.check = lambda self, *args, **kwargs: _optin.ConsentCheckResult.DECLINED
except ImportError:
    pass

# Hypothesis keeps no example database in the checkout (tests own every path they write); CI's bound on examples is
# set per test.
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("edgevit", database=None, derandomize=True)  # the same examples every run
    _hyp_settings.load_profile("edgevit")
except ImportError:
    pass

# A ViT small enough to train and quantize in seconds: 32 px, 8x8 patches, width 32, one block.
TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)


def write_idx(path: Path, arr: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped IDX set (600 train, 200 test images of 28x28) with a learnable pattern."""
    from edgevit.data import make_synthetic

    d = tmp_path_factory.mktemp("fmnist")
    ds = make_synthetic(n_train=600, n_val=200, num_classes=10, size=28, seed=1)
    for prefix, split in (("train", ds.train), ("t10k", ds.val)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", split.arrays)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", split.labels.astype(np.uint8))
    return d


@pytest.fixture(scope="session")
def tiny_checkpoint(fmnist_dir, tmp_path_factory) -> Path:
    """best.pt of a tiny ViT trained for 6 epochs on the generated set (edgevit's own checkpoint format)."""
    from edgevit.train import train

    out = tmp_path_factory.mktemp("run")
    r = train("vit-tiny-fmnist", f"fashion-mnist:{fmnist_dir}", out, epochs=6, batch_size=32, lr=3e-3, **TINY_VIT)
    return r.best_path


@pytest.fixture(scope="session")
def int8_bundle(fmnist_dir, tiny_checkpoint, tmp_path_factory) -> Path:
    from edgevit.build import build

    out = tmp_path_factory.mktemp("build")
    r = build("vit-tiny-fmnist", target="cpu-x86", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
              weights=str(tiny_checkpoint), out=str(out), calibration="fast")
    return r.bundle


@pytest.fixture()
def png(tmp_path) -> Path:
    from PIL import Image

    p = tmp_path / "img.png"
    arr = np.zeros((28, 28), np.uint8)
    arr[4:24, 4:24] = 230  # a large centred square, like the synthetic set's high classes
    Image.fromarray(arr).save(p)
    return p
