"""Training speed on a GPU: bf16 mixed precision (``edgevit train``'s default there) against FP32 (``--no-amp``),
the same model, data, schedule and seed, one after the other on one GPU. The first epoch warms up (CUDA kernels,
allocator, decode workers) and is not counted: the figure is images/s over the later epochs.

    python benchmarks/train_amp.py --model vit-tiny --data fashion-mnist --limit 8192 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit-tiny")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--limit", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: edgevit train's)")
    a = ap.parse_args(argv)
    if a.epochs < 2:
        ap.error("--epochs must be at least 2: the first epoch is warm-up")
    os.environ.setdefault("EDGEVIT_QUIET", "1")
    import torch

    from edgevit.train import train

    if not torch.cuda.is_available():
        print("benchmarks/train_amp.py: needs an NVIDIA GPU (torch sees none); nothing was measured", file=sys.stderr)
        return 1
    gpu = torch.cuda.get_device_name(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgevit-amp-") as tmp:
        for amp in (False, True):
            r = train(a.model, a.data, os.path.join(tmp, f"amp{int(amp)}"), epochs=a.epochs, batch_size=a.batch_size,
                      limit=a.limit, amp=amp, workers=a.workers)
            h = r.history
            secs = h[-1]["elapsed_s"] - h[0]["elapsed_s"]  # the epochs after the first, evaluation included
            ck = torch.load(r.best_path, map_location="cpu", weights_only=True)
            rows.append((ck["edgevit"]["trained_on"]["precision"], (len(h) - 1) * ck["edgevit"]["train_images"] / secs,
                         secs / (len(h) - 1), r.best_top1))
    print(f"{a.model} on {a.data} ({a.limit} images, batch {a.batch_size}, decode workers: "
          f"{'default' if a.workers is None else a.workers}), {gpu}, torch {torch.__version__}")
    print("| precision | images/s | s per epoch | best held-out top-1 |")
    print("| --- | --- | --- | --- |")
    for prec, ips, spe, top1 in rows:
        print(f"| {prec} | {ips:.0f} | {spe:.2f} | {top1:.2f}% |")
    print(f"bf16 mixed / fp32 speed: {rows[1][1] / rows[0][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
