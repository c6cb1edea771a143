"""The fastest artifact within the accuracy budget, on trained Fashion-MNIST models: each family's default INT8 build
(its recipe chosen by measurement on this host) and, for ViT and hybrid, its token-searched build, each timed beside
NNCF's one-line INT8 (`nncf.quantize(model, dataset)` under OpenVINO's defaults) in the same interleaved run.

    python benchmarks/searched.py                                  # this host's CPU class
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/searched.py          # the same host as an AVX2-only CPU
    python benchmarks/searched.py vit-tiny-fmnist                  # these models again, the others' cells kept
    python benchmarks/searched.py --finetune 2 vit-tiny-fmnist     # two epochs of fine-tune at each smaller input
    python benchmarks/searched.py --redraw benchmarks/results/searched-avx2.json   # the chart again

Models are trained here when their weights are missing (runs/searched/<model>/best.pt, a short recipe: the point is
the comparison between artifacts of one trained model, not the best Fashion-MNIST accuracy). The recipe cache is a
fresh directory, so every build measures its recipes and the build time of the search is real. Writes
benchmarks/results/searched-<class>.json/.md and a chart (top-1 against p50) beside them."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = [  # (model, training options, token search)
    ("vit-tiny-fmnist", {"epochs": 2, "limit": 20000}, True),
    ("hybrid-tiny-fmnist", {"epochs": 1, "limit": 20000}, True),
    ("maxvit-pico-fmnist", {"epochs": 1, "limit": 6000}, False),
    ("mobilenetv3-fmnist", {"epochs": 2, "limit": 20000}, False),
    ("resnet18-fmnist", {"epochs": 1, "limit": 20000}, False),
]
VAL_SAMPLES = 2000
MAX_DROP = 1.0
FINETUNE = 1  # epochs at each smaller input (--token-finetune)


def weights_of(model: str, train_opts: dict) -> Path:
    from edgevit.train import train

    w = ROOT / "runs" / "searched" / model / "best.pt"
    if not w.is_file():
        print(f"training {model} ({train_opts})", file=sys.stderr, flush=True)
        train(model, "fashion-mnist", w.parent, **train_opts)
    return w


def cell(model: str, weights: Path, out: str, token_search: bool, finetune: int = FINETUNE) -> dict:
    from edgevit.build import build

    t0 = time.perf_counter()
    r = build(model, precision="int8", data="fashion-mnist", weights=str(weights), out=out, val_samples=VAL_SAMPLES,
              max_drop=MAX_DROP, peers=True, token_search=token_search, token_finetune=finetune if token_search else 0,
              force=True,
              name=f"{model}-{'tokens' if token_search else 'default'}")
    return row(r.manifest.data, model, token_search, time.perf_counter() - t0)


def row(m: dict, model: str, token_search: bool, seconds: float) -> dict:
    """A cell's figures from its build's manifest (its JSON)."""
    lat, v = m["latency_ms"], m["validation"]
    peer = lat["baselines"]["nncf_default_int8"]
    rs, ts = m.get("recipe_search") or {}, m.get("token_search") or {}
    return {"model": model, "family": m["model"]["family"], "variant": "tokens" if token_search else "default",
            "input": m["model"]["input_size"][-1], "recipe": m["calibration"]["recipe"],
            "fp32_top1": v["reference_top1"], "top1": v["top1"], "top1_drop": v["top1_drop"],
            "p50": lat["p50"], "threads": lat["threads"], "nncf_one_line_p50": peer["p50"],
            "nncf_one_line_ran": peer.get("executed_precision"), "x_nncf": round(peer["p50"] / lat["p50"], 3),
            "torch_eager_p50": lat["baselines"]["torch_eager_fp32"]["p50"], "baselines_on": lat.get("baselines_on"),
            "finetune_epochs": ts.get("finetune_epochs"), "recipes_p50": rs.get("p50_ms"),
            "sizes": [(c["size"], c.get("top1"), c.get("p50_ms"), c.get("rejected")) for c in ts.get("candidates", [])],
            "stage_seconds": m.get("stage_seconds"), "build_seconds": round(seconds, 1)}


def chart(cells: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    colors = {"vit": "tab:blue", "hybrid": "tab:purple", "maxvit": "tab:green", "mobilenet": "tab:orange",
              "resnet": "tab:red"}
    for c in cells:
        marker = "*" if c["variant"].startswith("tokens") else "o"
        tag = (f" (tokens, fine-tune {c['finetune_epochs']} ep)" if c.get("finetune_epochs") else " (tokens)") \
            if marker == "*" else ""
        ax.scatter(c["p50"], c["top1"], s=140 if marker == "*" else 60, marker=marker,
                   color=colors.get(c["family"], "gray"), zorder=3)
        crowded = any(0 < o["top1"] - c["top1"] <= 0.8 and 1 / 1.8 < o["p50"] / c["p50"] < 1.8 for o in cells)
        ax.annotate(f"{c['model'].replace('-fmnist', '')} {c['input']}px{tag}", (c["p50"], c["top1"]),
                    textcoords="offset points", xytext=(6, -13 if crowded else 4), fontsize=9)  # below a close one
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.tick_params(labelsize=10)
    ax.set_xlabel("p50 latency, ms (batch 1, log scale)", fontsize=11)
    ax.set_ylabel("top-1 on Fashion-MNIST test images, %", fontsize=11)
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(host: dict, cls: str, versions: dict, cells: list[dict]) -> str:
    lines = [f"# Searched INT8 artifacts on {host['cpu']} ({cls}; ISA {','.join(host['isa'])}; {host['cores']} "
             f"cores)", "", f"OpenVINO {versions.get('openvino')}, NNCF {versions.get('nncf')}, torch "
             f"{versions.get('torch')}. Top-1 on {VAL_SAMPLES} Fashion-MNIST test images; p50 at batch 1, each build "
             "timing its artifact beside NNCF's one-line INT8 (OpenVINO defaults) in one interleaved run.", "",
             "| model | variant | px | recipe | FP32 top-1 | INT8 top-1 | drop | p50 ms | NNCF one-line p50 (ran) | "
             "× one-line | build s (recipes, tokens) |", "| --- " * 11 + "|"]
    for c in cells:
        st = c["stage_seconds"] or {}
        rs = st.get("choosing the INT8 recipe by measurement", 0)
        ts = st.get("the token search", 0)
        lines.append(f"| {c['model']} | {c['variant']} | {c['input']} | {c['recipe']} | {c['fp32_top1']:.2f} | "
                     f"{c['top1']:.2f} | {c['top1_drop']:+.2f} | {c['p50']:.3f} | {c['nncf_one_line_p50']:.3f} "
                     f"({c['nncf_one_line_ran']}) | {c['x_nncf']:.2f}x | {c['build_seconds']:.0f} ({rs:.0f}, "
                     f"{ts:.0f}) |")
    return "\n".join(lines + [""])


def redraw(json_path: Path) -> None:
    """The chart again from a results JSON (``--redraw``)."""
    d = json.loads(json_path.read_text())
    chart(d["cells"], f"INT8 on {d['host']['cpu']} ({d['class']}): top-1 vs p50", json_path.with_suffix(".png"))


def main() -> int:
    from edgevit.runtime.measure import host_class, host_info, library_versions

    os.environ.setdefault("EDGEVIT_QUIET", "1")
    os.chdir(ROOT)
    cls, host = host_class(), host_info()
    versions = library_versions(("openvino", "nncf", "torch"))
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="only these models (the others' cells of the last run stay)")
    ap.add_argument("--finetune", type=int, default=FINETUNE, help="epochs of fine-tune at each smaller input")
    ap.add_argument("--redraw", nargs="+", type=Path, metavar="JSON", help="only draw these results' charts again")
    args = ap.parse_args()
    if args.redraw:
        for p in args.redraw:
            redraw(p)
        return 0
    only = set(args.models)
    cells = []
    with tempfile.TemporaryDirectory(prefix="edgevit-searched-") as out:
        os.environ["EDGEVIT_CACHE_DIR"] = str(Path(out) / "cache")  # every build measures its recipes
        for model, opts, tokens in MODELS:
            if only and model not in only:
                continue
            w = weights_of(model, opts)
            for token_search in (False, True) if tokens else (False,):
                cells.append(cell(model, w, out, token_search, args.finetune))
                print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    res = ROOT / "benchmarks/results"
    res.mkdir(parents=True, exist_ok=True)
    stem = res / f"searched-{cls}"
    if only and stem.with_suffix(".json").is_file():  # the other models' cells of the last run stay
        kept = [c for c in json.loads(stem.with_suffix(".json").read_text())["cells"] if c["model"] not in only]
        order = [m for m, _, _ in MODELS]
        cells = sorted(kept + cells, key=lambda c: (order.index(c["model"]), c["variant"]))
    stem.with_suffix(".json").write_text(json.dumps({"host": host, "class": cls, "versions": versions,
                                                     "cells": cells}, indent=1))
    stem.with_suffix(".md").write_text(markdown(host, cls, versions, cells))
    chart(cells, f"INT8 on {host['cpu']} ({cls}): top-1 vs p50", stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
