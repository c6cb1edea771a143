"""Peak memory of every path a user takes as the number of images grows: it must stay flat, because images are
decoded batch by batch by DataLoader workers and only per-image results (logits, labels) are kept.

    python benchmarks/streaming_memory.py                 # 2,000 vs 20,000 images, train and build
    python benchmarks/streaming_memory.py --sizes 2000 20000 100000 --skip-build
    python benchmarks/streaming_memory.py --val 2000 20000 --px 96 --paths train fp32 int8 best bench inspect

Without ``--val``: for each size an ImageFolder of small PNGs (10 classes, 48x48, a learnable pattern, no val/
folder: the validation split is its 10% hold-out); one epoch of training and an INT8 build from it.
With ``--val``: an ImageFolder with an explicit ``train/`` (300 images) and ``val/`` of each size (RGB PNGs of
``--px`` pixels), and each chosen path on it: ``fp32`` / ``int8`` (with the speed search) / ``best`` builds at
``--input-size PX`` with ``--val-samples N``; ``train`` (one epoch at the model's own size; its held-out pass is the
val/ split); ``inspect --images N``; ``bench`` (INT8 of the model and of the MobileNetV3 baseline a suite must have,
at their own sizes, ``val_samples = N``; its cells run in a process of their own: the worker column).
Each command runs in its own process; the table gives the peak resident set size of that process (VmHWM) and of the
largest worker it started, and the growth per added image, with the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    with tempfile.TemporaryDirectory(prefix="edgevit-mem-") as name:
        tmp = Path(name)
        for n in sizes:
            data = make_imagefolder(tmp / f"images{n}", n)
            row: dict = {"images": n}
            row["train"] = measure(["train", "--model", "vit-tiny-fmnist", "--data", f"imagefolder:{data}",
                                    "--out", str(tmp / f"run{n}"), "--epochs", "1", *extra], tmp)
            if build:
                row["build"] = measure(["build", "--model", "vit-tiny-fmnist", "--data", f"imagefolder:{data}",
                                        "--weights", str(tmp / f"run{n}" / "best.pt"), "--out", str(tmp / "b"),
                                        "--name", f"b{n}", "--calib-samples", "200", *extra], tmp)
            rows.append(row)
    return rows


def make_split_folder(root: Path, n_val: int, px: int, n_train: int = 300, seed: int = 0) -> Path:
    """``root/train/<class>/`` (``n_train`` images) and ``root/val/<class>/`` (``n_val``): RGB PNGs of ``px``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sides = np.linspace(6, px - 6, 10).round().astype(int)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(10):
            (root / split / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(rng.integers(0, 10, n)):
            img = rng.integers(0, 50, (px, px, 3), dtype=np.uint8)
            a = (px - sides[k]) // 2
            img[a:a + sides[k], a:a + sides[k]] = 220
            Image.fromarray(img).save(root / split / f"class{k}" / f"{i:06d}.png", compress_level=1)
    return root


PATHS = ("train", "fp32", "int8", "best", "bench", "inspect")


def path_args(path: str, data: Path, n: int, px: int, out: Path, model: str) -> list[str]:
    spec = f"imagefolder:{data}"
    common = ["--model", model, "--data", spec]
    if path == "train":
        return ["train", *common, "--epochs", "1", "--out", str(out / "run")]  # at the model's own input size
    if path in ("fp32", "int8", "best"):
        return ["build", *common, "--input-size", str(px), "--precision", path, "--val-samples", str(n),
                "--calib-samples", "64", "--out", str(out), "--name", f"{path}{n}"]
    if path == "bench":
        suite = out / "suite.toml"
        suite.write_text(f'name = "mem"\ndescription = "memory"\ndataset = "{spec}"\nval_samples = {n}\n'
                         f'calibration = "fast"\ntargets = ["cpu-x86"]\nprecisions = ["int8"]\n'
                         f'[[models]]\nmodel = "{model}"\n[[models]]\nmodel = "mobilenetv3-fmnist"\n')
        return ["bench", "--suite", str(suite), "--db", str(out / "h.sqlite")]
    if path == "inspect":
        return ["inspect", "--model", model, "--data", spec, "--images", str(n), "--out", str(out / "inspect")]
    raise ValueError(path)


def run_paths(vals: list[int], px: int, paths: list[str], model: str, a_json: str | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgevit-mem-") as name:
        tmp = Path(name)
        for n in vals:
            data = make_split_folder(tmp / f"split{n}", n, px)
            for path in paths:
                out = tmp / f"{path}{n}"
                out.mkdir()
                t0 = time.perf_counter()
                r = measure(path_args(path, data, n, px, out, model), tmp)
                rows.append({"path": path, "val": n, **r, "seconds": round(time.perf_counter() - t0)})
                if a_json:
                    Path(a_json).write_text(json.dumps(rows, indent=1))
                print(f"  {path:8} {n:7d} images: peak {r['peak_mib']} MiB, worker peak {r['worker_peak_mib']} MiB "
                      f"({rows[-1]['seconds']} s)", flush=True)
            shutil.rmtree(data)
    return rows


def growth_table(rows: list[dict]) -> list[str]:
    lines = ["| path | images | peak MiB | worker peak MiB | seconds | growth of the larger peak per added image |",
             "| --- | --- | --- | --- | --- | --- |"]
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    for path, rs in by_path.items():
        rs = sorted(rs, key=lambda r: r["val"])
        for r in rs:
            grow = ""
            if r is not rs[0]:
                top = max(r["peak_mib"], r["worker_peak_mib"]) - max(rs[0]["peak_mib"], rs[0]["worker_peak_mib"])
                d = top * 1024 / (r["val"] - rs[0]["val"])
                grow = f"{d:+.2f} KiB"
            lines.append(f"| {path} | {r['val']} | {r['peak_mib']} | {r['worker_peak_mib']} | {r['seconds']} | "
                         f"{grow} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--val", type=int, nargs="+", help="explicit val/ split sizes (the per-path matrix)")
    ap.add_argument("--px", type=int, default=96)
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--model", default="vit-tiny-fmnist")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    from edgevit.runtime.measure import host_info

    host = f"host: {host_info()['cpu']}, {os.cpu_count()} cores"
    if a.val:
        rows = run_paths(a.val, a.px, a.paths, a.model, a.json)
        print(host + f"; {a.model} at {a.px} px (bench: the model's own size), explicit val/ split")
        print("\n".join(growth_table(rows)))
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        return
    rows = run(a.sizes, build=not a.skip_build, workers=a.workers)
    print(host)
    print("| images | train peak MiB | train worker peak MiB | build peak MiB | build worker peak MiB |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        b = r.get("build", {})
        print(f"| {r['images']} | {r['train']['peak_mib']} | {r['train']['worker_peak_mib']} | "
              f"{b.get('peak_mib', '-')} | {b.get('worker_peak_mib', '-')} |")


if __name__ == "__main__":
    main()
