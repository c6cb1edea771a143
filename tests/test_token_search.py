"""Fewer tokens under the gate: smaller inputs of a trained ViT, judged against the full-size FP32 model on the
same held-out images, timed against the full-size artifact; and the latency budget's choice."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgevit.errors import UsageError
from tests.conftest import TINY_VIT


def test_token_search_judges_smaller_inputs_against_the_full_size_model(fmnist_dir, tiny_checkpoint, tmp_path):
    from edgevit.build import build
    from edgevit.runtime.predict import Predictor

    r = build("vit-tiny-fmnist", precision="int8", data=f"fashion-mnist:{fmnist_dir}", weights=str(tiny_checkpoint),
              out=str(tmp_path), calibration="fast", token_search=True, token_finetune=1, max_drop=100.0,
              latency_budget=1e6, threads=1, speed_search=False, overrides=TINY_VIT)
    m = r.manifest.data
    ts = m["token_search"]
    assert ts["full_size"] == 32 and ts["sizes"] == [24, 16]  # 4x4 tokens of 8 px: 3x3 and 2x2 (a quarter)
    cands = {c["size"]: c for c in ts["candidates"]}
    assert set(cands) == {32, 24, 16} and all(c["p50_ms"] > 0 for c in cands.values())
    ref = {round(c["top1"] + c["top1_drop"], 2) for c in cands.values()}
    assert len(ref) == 1  # both judged against one reference: the full-size FP32 model
    assert ts["chosen"] == max(cands, key=lambda s: (cands[s]["top1"], -cands[s]["p50_ms"]))  # budget: most accurate
    assert m["model"]["input_size"] == [3, ts["chosen"], ts["chosen"]]
    assert m["preprocessing"]["input_size"][-1] == ts["chosen"]
    assert m["latency_budget"]["met"] is True and m["latency_budget"]["p50_ms"] == m["latency_ms"]["p50"]
    assert ts["finetune_epochs"] == 1
    if ts["chosen"] != 32:  # what ships was fine-tuned here, and is timed against the model as given
        assert f"fine-tuned at {ts['chosen']} px for 1 epoch(s)" in m["model"]["weights"]
        assert m["latency_ms"]["baselines_on"].startswith("the full-size model (32 px)")
    else:
        assert m["model"]["weights"] == tiny_checkpoint.name and "baselines_on" not in m["latency_ms"]
    img = np.zeros((28, 28), np.uint8)
    assert Predictor(r.bundle)(img)[0].top[0][0] in m["labels"]  # the bundle resizes to its own input size


@pytest.mark.parametrize("model, data, weights, why", [
    ("mobilenetv3-fmnist", "fashion-mnist", "w.pt", "resizes the token grids of ViT, hybrid and MaxViT models"),
    ("vit-tiny-fmnist", "synthetic", "w.pt", "give labelled --data"),
    ("vit-tiny-fmnist", "fashion-mnist", None, "random weights do not have"),
])
def test_token_search_is_refused_where_accuracy_cannot_judge_it(tmp_path, model, data, weights, why):
    from edgevit.build import request

    with pytest.raises(UsageError, match=why):
        request(model, target="cpu-x86", precision="int8", out=tmp_path, data=data, weights=weights,
                token_search=True)


def test_token_finetune_needs_the_token_search(tmp_path):
    from edgevit.build import request

    with pytest.raises(UsageError, match="add --token-search"):
        request("vit-tiny-fmnist", target="cpu-x86", precision="int8", out=tmp_path, data="fashion-mnist",
                weights="w.pt", token_finetune=1)


def test_choice_among_sizes():
    from edgevit.token_search import _choose, sizes

    cands = {32: 90.0, 24: 89.5, 16: 85.0}  # top-1 by size
    assert _choose(cands, {32: 1.0, 24: 0.6, 16: 0.4}, None)[0] == 16  # the fastest that passed
    assert _choose(cands, {32: 1.0, 24: 0.6, 16: 0.4}, 0.7)[0] == 24  # the most accurate within 0.7 ms
    assert _choose(cands, {32: 1.0, 24: 0.99, 16: 0.98}, None)[0] == 32  # not faster beyond the noise
    assert _choose(cands, {32: 1.0, 24: 0.6, 16: 0.4}, 0.1)[0] == 16  # none within: the fastest

    def net(grid):
        return SimpleNamespace(patch_embed=SimpleNamespace(grid_size=(grid, grid)))

    assert sizes(net(14), 224) == [208, 160, 112]  # ViT-Ti/16: at least a quarter of the 196 tokens
    assert sizes(net(4), 32) == [24, 16] and sizes(net(3), 24) == [16]  # never below a 2x2 grid
    assert sizes(net(2), 32) == [] and sizes(SimpleNamespace(), 64) == []


def test_maxvit_token_grid_follows_its_windows_and_tables_resize(tmp_path):
    """MaxViT's windows and grids follow its input (timm: the input / 32): its token grid is its last stage's, a
    64 px MaxViT has none smaller, and a relative position table trained at one window loads at another."""
    import timm
    import torch

    from edgevit.models import _resize_rel_pos_table, apply_state_dict
    from edgevit.token_search import sizes

    def maxvit(size):
        return timm.create_model("maxvit_nano_rw_256", img_size=size, num_classes=10, depths=(1, 1, 1, 1)).eval()

    assert sizes(maxvit(256), 256) == [224, 192, 128] and sizes(maxvit(96), 96) == [64]
    assert sizes(maxvit(64), 64) == []  # a 2x2 grid already
    big = maxvit(96)
    small = maxvit(64)
    apply_state_dict(small, dict(big.state_dict()), "w.pt")  # 3x3 windows' tables (25 rows) into 2x2 ones (9)
    key = next(k for k in big.state_dict() if k.endswith("relative_position_bias_table"))
    assert big.state_dict()[key].shape[0] == 25 and small.state_dict()[key].shape[0] == 9
    assert small(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    flat = torch.full((25, 2), 0.5)  # a constant bias stays that constant at any window
    assert torch.allclose(_resize_rel_pos_table(flat, (9, 2)), torch.full((9, 2), 0.5), atol=1e-5)


@pytest.mark.slow
def test_maxvit_token_search_builds_each_size_through_the_gate(fmnist_dir, tmp_path):
    """A real token search of a MaxViT (table-based relative position bias, one block per stage) at 96 px: 64 px
    is tried, its tables resized from the given weights, quantized, validated and timed beside the full size."""
    import timm
    import torch

    from edgevit.build import build

    w = tmp_path / "w.pt"
    torch.save(timm.create_model("maxvit_nano_rw_256", img_size=96, num_classes=10, depths=(1, 1, 1, 1))
               .state_dict(), w)
    r = build("maxvit-nano", precision="int8", data=f"fashion-mnist:{fmnist_dir}", weights=str(w), input_size=96,
              out=str(tmp_path / "out"), calibration="fast", calib_samples=32, val_samples=50, token_search=True,
              max_drop=100.0, threads=1, measure="quick", overrides={"depths": (1, 1, 1, 1)})
    ts = r.manifest.data["token_search"]
    cands = {c["size"]: c for c in ts["candidates"]}
    assert ts["full_size"] == 96 and ts["sizes"] == [64] and set(cands) == {96, 64}
    assert all(c["p50_ms"] > 0 and c["top1"] is not None for c in cands.values())
    assert r.manifest.data["model"]["input_size"] == [3, ts["chosen"], ts["chosen"]]
