"""Peak memory of `edgevit train` and `edgevit build` as an ImageFolder grows: it must stay flat, because images are
decoded batch by batch by DataLoader workers instead of being held (preprocessed) in memory.

    python benchmarks/streaming_memory.py                 # 2,000 vs 20,000 images, train and build
    python benchmarks/streaming_memory.py --sizes 2000 20000 100000 --skip-build

For each size it generates an ImageFolder of small PNGs (10 classes, 48x48, a learnable pattern), trains the
Fashion-MNIST ViT for one epoch on it (32 px input) and builds an INT8 bundle from it (calibration and validation on
the folder), each in its own process, and prints the peak resident set size of that process (VmHWM) and of the
largest worker process it started, with the host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Runs an edgevit command in this process and reports peak RSS (this process; its largest reaped child) as JSON.
_MEASURE = """
import json, resource, sys
from edgevit.cli import main
rc = main(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "peak_mib": round(peak, 1), "worker_peak_mib": round(child, 1)}, f)
sys.exit(rc)
"""


def make_imagefolder(root: Path, n: int, size: int = 48, classes: int = 10, seed: int = 0) -> Path:
    """``n`` PNGs in ``root/<class>/``: class k is a bright square of side growing with k on a dim noisy ground."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sides = np.linspace(6, size - 6, classes).round().astype(int)
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
    for i, k in enumerate(rng.integers(0, classes, n)):
        img = rng.integers(0, 50, (size, size), dtype=np.uint8)
        a = (size - sides[k]) // 2
        img[a:a + sides[k], a:a + sides[k]] = 220
        Image.fromarray(img).save(root / f"class{k}" / f"{i:06d}.png", compress_level=1)
    return root


def measure(args: list[str], work: Path) -> dict:
    """Peak RSS (MiB) of one edgevit command run in a fresh process."""
    out = work / "peak.json"
    env = {**os.environ, "EDGEVIT_QUIET": "1"}
    p = subprocess.run([sys.executable, "-c", _MEASURE, str(out), *args], env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"edgevit {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return json.loads(out.read_text())


def run(sizes: list[int], build: bool = True, workers: int | None = None) -> list[dict]:
    rows = []
    extra = [] if workers is None else ["--workers", str(workers)]
    with tempfile.TemporaryDirectory(prefix="edgevit-mem-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            data = make_imagefolder(tmp / f"images{n}", n)
            row = {"images": n}
            row["train"] = measure(["train", "--model", "vit-tiny-fmnist", "--data", f"imagefolder:{data}",
                                    "--out", str(tmp / f"run{n}"), "--epochs", "1", *extra], tmp)
            if build:
                row["build"] = measure(["build", "--model", "vit-tiny-fmnist", "--data", f"imagefolder:{data}",
                                        "--weights", str(tmp / f"run{n}" / "best.pt"), "--out", str(tmp / "b"),
                                        "--name", f"b{n}", "--calib-samples", "200", *extra], tmp)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--workers", type=int)
    a = ap.parse_args()
    from edgevit.measure import host_info

    rows = run(a.sizes, build=not a.skip_build, workers=a.workers)
    print(f"host: {host_info()['cpu']}, {os.cpu_count()} cores")
    print("| images | train peak MiB | train worker peak MiB | build peak MiB | build worker peak MiB |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        b = r.get("build", {})
        print(f"| {r['images']} | {r['train']['peak_mib']} | {r['train']['worker_peak_mib']} | "
              f"{b.get('peak_mib', '-')} | {b.get('worker_peak_mib', '-')} |")


if __name__ == "__main__":
    main()
