"""Every zoo family builds to INT8 on cpu-x86 (tiny random models; accuracy is not the point here)."""

import pytest

from edgevit.build import build
from edgevit.runtime.bundle import read_manifest

FAMILIES = {
    "hybrid-tiny-fmnist": dict(depth=1, embed_dim=32, num_heads=2),
    "maxvit-pico-fmnist": dict(img_size=32, depths=(1, 1, 1, 1)),  # every block kind, one per stage
    "mobilenetv3-fmnist": {},
    "resnet18-fmnist": {},
}


@pytest.mark.parametrize("alias", FAMILIES)
def test_family_builds_int8(alias, fmnist_dir, tmp_path):
    overrides = dict(FAMILIES[alias])
    size = overrides.pop("img_size", None)
    r = build(alias, target="cpu-x86", precision="int8", data=f"fashion-mnist:{fmnist_dir}", out=str(tmp_path),
              calibration="fast", val_samples=20, input_size=size, measure_latency=False, overrides=overrides)
    m = read_manifest(r.bundle).data
    assert m["model"]["random_init"] and m["validation"]["note"].startswith("random weights")
    layers = m["backend"]["runtime"]["compute_layers_by_precision"]
    assert any(p in layers for p in ("i8", "u8")), layers
