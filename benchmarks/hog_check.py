"""Does "x torch eager" hold up on a shared host? Builds the quick suite's models twice, on an idle host and with a
CPU hog (a busy loop) on one core beside it, and compares the ratio PyTorch eager p50 / artifact p50 that each build
measured. The ratio is a figure of the artifact, not of the host's load, when the two builds agree within 25%.

    python benchmarks/hog_check.py            # exit 1 if a ratio moves by more than 25%
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgevit.targets import Precision

TOLERANCE = 0.25
MODELS = {"vit-tiny-fmnist": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "mobilenetv3-fmnist": {}}


def ratio(model: str, overrides: dict, out: str, precision: Precision) -> tuple[float, dict]:
    from edgevit.build import build

    r = build(model, precision=precision, data="synthetic", out=out, name=f"{model}-{precision}", force=True,
              val_samples=50, calibration="fast", overrides=overrides)
    return ratio_of(r.manifest.data)


def ratio_of(m: dict) -> tuple[float, dict]:
    """PyTorch eager p50 / artifact p50 from a build's manifest (its JSON), and the figures behind it."""
    lat = m["latency_ms"]
    torch = lat["baselines"]["torch_eager_fp32"]
    return torch["p50"] / lat["artifact"]["p50"], {"artifact_ms": lat["artifact"]["p50"],
                                                  "artifact_threads": lat["threads"], "torch_ms": torch["p50"],
                                                  "torch_threads": torch["threads"]}


def main() -> int:
    from edgevit.runtime.measure import host_info

    os.environ.setdefault("EDGEVIT_QUIET", "1")
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory(prefix="edgevit-hog-") as out:
        for model, ov in MODELS.items():
            for precision in ("fp32", "int8"):
                idle, di = ratio(model, ov, out, precision)
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    time.sleep(1)
                    loaded, dl = ratio(model, ov, out, precision)
                finally:
                    hog.kill()
                change = loaded / idle - 1
                worst = max(worst, abs(change))
                rows.append((model, precision, idle, loaded, change, di, dl))
    print(f"host: {host_info()['cpu']}, {os.cpu_count()} cores; hog: one busy Python loop")
    print("| model | precision | x torch eager, idle | x torch eager, hog | change | "
          "threads artifact/torch idle -> hog |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, precision, idle, loaded, change, di, dl in rows:
        print(f"| {model} | {precision} | {idle:.2f}x | {loaded:.2f}x | {change:+.0%} | "
              f"{di['artifact_threads']}/{di['torch_threads']} -> {dl['artifact_threads']}/{dl['torch_threads']} |")
    ok = worst <= TOLERANCE
    print(f"largest change {worst:.0%}: {'within' if ok else 'OVER'} the {TOLERANCE:.0%} tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
