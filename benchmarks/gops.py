"""How much of the CPU's INT8 throughput a ViT uses: GOPS (2 x multiply-accumulates per second) of vit-tiny INT8
beside ResNet-18 INT8, both timed in one interleaved run at batch 1, each at its fastest thread count.

    python benchmarks/gops.py [vit-tiny resnet18 ...]
"""

from __future__ import annotations

import os
import sys
import tempfile


def gflops(model: str) -> float:
    """FLOPs of one image (torch's FlopCounterMode: 2 per multiply-accumulate), in G."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgevit.models import create_model, resolve_spec

    spec = resolve_spec(model)
    net = create_model(spec).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, spec.input_size, spec.input_size))
    return fc.get_total_flops() / 1e9


def main(models: list[str]) -> int:
    import numpy as np

    from edgevit.backends import get_backend
    from edgevit.build import build
    from edgevit.runtime.measure import compare_latency, host_class, host_info
    from edgevit.runtime.runner import LoadSpec

    os.environ.setdefault("EDGEVIT_QUIET", "1")
    runners, flops = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgevit-gops-") as out:
        for m in models:
            r = build(m, precision="int8", data="synthetic", calib_samples=64, val_samples=8, out=out, name=m,
                      max_drop=None)
            runners[m] = get_backend("openvino").load(r.bundle, LoadSpec.of_manifest(r.manifest))
            flops[m] = gflops(m)
        xs = {m: np.zeros((1, 3, *build_size(m)), np.float32) for m in models}
        # one interleaved run in this process (each model on its own input), at the threads each build chose
        timed = compare_latency({m: _Fixed(runners[m], xs[m]) for m in models}, np.zeros((1,), np.float32))
    host = host_info()
    print(f"host: {host['cpu']} ({host_class()}; {','.join(host['isa'])}; {host['cores']} cores)")
    print("| model | GFLOPs | INT8 p50 ms | GOPS |\n| --- | --- | --- | --- |")
    for m in models:
        print(f"| {m} | {flops[m]:.2f} | {timed[m]['p50']:.3f} | {flops[m] / timed[m]['p50'] * 1000:.0f} |")
    return 0


def build_size(model: str) -> tuple[int, int]:
    from edgevit.models import resolve_spec

    s = resolve_spec(model).input_size
    return s, s


class _Fixed:
    """A runner called on its own input (compare_latency gives every candidate the same one)."""

    def __init__(self, runner, x):
        self.runner, self.x, self.info = runner, x, runner.info

    def __call__(self, _):
        return self.runner(self.x)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["vit-tiny", "resnet18"]))
