import math
from pathlib import Path

import numpy as np
import pytest

from edgevit.errors import WeightsError
from edgevit.inspection import (
    inspect_model,
    mean_attention_distance,
    onnx_scope,
    position_similarity,
    principal_filters,
    sqnr_db,
)

ROOT = Path(__file__).resolve().parents[1]


def test_attention_distance_of_hand_set_maps():
    n = 4  # a 2x2 grid
    ident = np.eye(n)[None, None].repeat(2, axis=1)  # (1 image, 2 heads, 4, 4): every patch attends to itself
    np.testing.assert_allclose(mean_attention_distance(ident, (2, 2), 8.0), [0.0, 0.0])
    uniform = np.full((1, 1, n, n), 0.25)
    # from any corner of a 2x2 grid: distances 0, 1, 1, sqrt(2) patches
    np.testing.assert_allclose(mean_attention_distance(uniform, (2, 2), 1.0), [(2 + math.sqrt(2)) / 4])
    np.testing.assert_allclose(mean_attention_distance(uniform, (2, 2), 16.0), [16 * (2 + math.sqrt(2)) / 4])
    # rows are renormalised over patch keys (class token dropped upstream)
    np.testing.assert_allclose(mean_attention_distance(uniform * 0.5, (2, 2), 1.0), [(2 + math.sqrt(2)) / 4])


def test_sqnr_of_known_noise():
    ref = np.ones(10000)
    noise = np.where(np.arange(10000) % 2 == 0, 0.1, -0.1)  # power 0.01 vs signal power 1
    assert sqnr_db(ref, ref + noise) == pytest.approx(20.0)
    assert sqnr_db(ref, ref + 10 * noise) == pytest.approx(0.0, abs=1e-9)
    assert sqnr_db(ref, ref) == float("inf")


def test_position_similarity_and_filters():
    rng = np.random.default_rng(0)
    pe = rng.standard_normal((1, 1 + 6, 8))  # class token + a 2x3 grid
    sim = position_similarity(pe, (2, 3), prefix=1)
    assert sim.shape == (2, 3, 2, 3)
    np.testing.assert_allclose([sim[i, j, i, j] for i in range(2) for j in range(3)], 1.0)
    np.testing.assert_allclose(sim, np.transpose(sim, (2, 3, 0, 1)))
    base = rng.standard_normal((2, 3 * 4 * 4))
    w = (rng.standard_normal((32, 1)) * 5) * base[0] + rng.standard_normal((32, 1)) * base[1] * 0.5
    comps, ratio = principal_filters(w.reshape(32, 3, 4, 4), k=4)
    assert comps.shape == (4, 3, 4, 4) and ratio[0] > 0.9 and np.all(np.diff(ratio) <= 1e-12)
    cos = abs(comps[0].ravel() @ base[0]) / np.linalg.norm(base[0])
    assert cos > 0.99


def test_onnx_scope_names():
    assert onnx_scope("blocks.0.attn.qkv") == "/blocks/blocks.0/attn/qkv/"
    assert onnx_scope("head") == "/head/"
    assert onnx_scope("stages.1.blocks.2.conv") == "/stages/stages.1/blocks/blocks.2/conv/"


def test_inspect_vit_with_int8_bundle(int8_bundle, tiny_checkpoint, fmnist_dir, tmp_path):
    r = inspect_model("vit-tiny-fmnist", str(tiny_checkpoint), tmp_path, bundle=str(int8_bundle), images=16)
    assert set(r.figures) == {"filters", "position", "attention", "sqnr"}
    for f in r.figures.values():
        assert (tmp_path / f).stat().st_size > 1000
    assert len(r.worst_layers) == 3 and all(np.isfinite(e.sqnr_db) for e in r.worst_layers)
    assert r.attention_distance.shape == (1, 2)  # one block, two heads
    page = (tmp_path / "index.html").read_text()
    for e in r.worst_layers:
        assert e.name in page and f"{e.sqnr_db:.2f}" in page
    assert "rule of thumb" in page  # what a good SQNR is


def test_inspect_snippet_keeps_the_worst_layers_in_higher_precision(int8_bundle, tiny_checkpoint, fmnist_dir,
                                                                    tmp_path):
    """The paste-ready recipe line does what it says: a build with it leaves those layers unquantized."""
    import html
    import re

    import tomllib

    from edgevit.build import build
    from edgevit.inspection import onnx_scope

    r = inspect_model("vit-tiny-fmnist", str(tiny_checkpoint), tmp_path / "i", bundle=str(int8_bundle), images=16)
    page = (tmp_path / "i" / "index.html").read_text()
    line = html.unescape(re.search(r"<pre>(ignored_patterns = .*?)</pre>", page).group(1))
    recipe = (ROOT / "calibration" / "fast.toml").read_text().replace("ignored_patterns = []", line)
    (tmp_path / "keep.toml").write_text(recipe)
    assert tomllib.loads(recipe)["ignored_patterns"]  # valid TOML, as pasted
    b = build("vit-tiny-fmnist", data=f"fashion-mnist:{fmnist_dir}", weights=str(tiny_checkpoint),
              out=str(tmp_path / "b"), calibration=str(tmp_path / "keep.toml"), val_samples=32,
              measure_latency=False)
    kept = b.manifest.data["backend"]["kept_in_higher_precision"]
    for e in r.worst_layers:
        if e.kind == "Linear":
            assert any(k.startswith(onnx_scope(e.name)) for k in kept), (e.name, kept)


def test_inspect_maxvit_says_what_does_not_apply(tmp_path):
    r = inspect_model("maxvit-pico-fmnist", None, tmp_path, input_size=32)
    assert "relative position biases" in r.notes["position"] and "position" not in r.figures
    assert "filters" in r.figures and "stem" in r.notes["filters"]
    assert "relative position biases" in (tmp_path / "index.html").read_text()


def test_inspect_refuses_bundle_of_other_weights(int8_bundle, tmp_path):
    import torch

    from edgevit.models import ZOO, create_model

    from .conftest import TINY_VIT

    p = tmp_path / "other.pt"
    torch.save(create_model(ZOO["vit-tiny-fmnist"], **TINY_VIT).state_dict(), p)
    with pytest.raises(WeightsError, match="other weights"):
        inspect_model("vit-tiny-fmnist", str(p), tmp_path / "o", bundle=str(int8_bundle))


def test_cli_inspect_quantizes_on_the_fly(tiny_checkpoint, fmnist_dir, tmp_path):
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edgevit", "inspect", "--model", "vit-tiny-fmnist", "--weights",
                        str(tiny_checkpoint), "--data", f"fashion-mnist:{fmnist_dir}", "--images", "16",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "EDGEVIT_QUIET": "1"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("worst ") == 3 and "index.html" in p.stdout
    assert (tmp_path / "layer_sqnr.png").is_file()
    assert "quantized now with the default recipe" in (tmp_path / "index.html").read_text()
