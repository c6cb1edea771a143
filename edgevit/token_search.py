"""Fewer tokens, under the accuracy gate (``--token-search``): a ViT's cost grows with its token count, so the build
also tries the model at input sizes below its own (position embeddings resampled bicubically, as timm does; MaxViT's
relative position tables resized to the windows of the new size), each
quantized with the recipe already chosen, validated on the same held-out images against the **full-size** FP32
model, and timed against the full-size artifact in one interleaved, process-isolated run (each on its own input).
The fastest that stays within ``--max-drop`` of the full-size FP32 top-1 ships; with ``latency_budget``, the most
accurate within the budget.

Sizes: whole steps of the token grid (patch size × stride of any CNN stem; for MaxViT, whose windows and grids timm
sizes as the input / 32, steps of 32 px) keeping at least a quarter of the tokens (half the grid's side) and a 2×2
grid, at most :data:`MAX_SIZES` of them, spread from one step down to the fewest; the gate, not the rule, decides how
far down a model keeps its accuracy. A MaxViT at 64 px has a 2×2 grid and no smaller size; the CNN families have no
token grid and are not searched. A smaller input is kept only where accuracy was measured on trained weights and
labelled data."""

from __future__ import annotations

import math

from edgevit._progress import say
from edgevit.errors import UsageError, ValidationFailedError

MAX_SIZES = 3
MIN_TOKEN_SHARE = 0.25  # the fewest tokens tried: a quarter (half the grid's side), never under a 2x2 grid
FAMILIES = ("vit", "hybrid", "maxvit")
FINETUNE_IMAGES = 20_000  # training images per fine-tune epoch at a new size (the hold-out never among them)
FINETUNE_LR = 0.3  # of the model's training learning rate


def check(req, spec, data, weights) -> None:
    """Refused before any work where a smaller input could not be judged."""
    if not req.token_search:
        if req.token_finetune:
            raise UsageError("--token-finetune fine-tunes the smaller inputs of --token-search: add --token-search")
        return
    if spec.family not in FAMILIES:
        raise UsageError(f"--token-search resizes the token grids of ViT, hybrid and MaxViT models; {spec.alias} "
                         f"is a {spec.family} model")
    if not data or str(data).startswith("synthetic"):
        raise UsageError("--token-search keeps a smaller input only where its accuracy holds: give labelled --data "
                         "(fashion-mnist or imagefolder:DIR)")
    if not weights and not getattr(spec, "module", None):
        raise UsageError("--token-search judges accuracy, which random weights do not have: give --weights "
                         "(a trained checkpoint or hf-hub:...)")
    if req.precision != "int8":
        raise UsageError(f"--token-search searches INT8 artifacts; --precision {req.precision} has no search")
    if req.qat.epochs:
        raise UsageError("--token-search and --qat-epochs: quantization-aware training runs at one input size; "
                         "search the tokens first, then train QAT with --input-size")


def token_grid(net, size: int) -> int | None:
    """The side of the model's token grid at input ``size``: a ViT's or hybrid's patch grid; for MaxViT, whose
    windows and grids follow its input (timm sizes them as the input / 32), the grid of its last stage."""
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid:
        return int(grid[0])
    info = getattr(net, "feature_info", None)
    reduction = info[-1].get("reduction") if isinstance(info, list) and info and isinstance(info[-1], dict) else None
    if type(net).__name__ == "MaxxVit" and reduction and size % reduction == 0:
        return size // reduction
    return None


def sizes(net, size: int) -> list[int]:
    """Input sizes below ``size`` in whole steps of the model's token grid, keeping at least
    :data:`MIN_TOKEN_SHARE` of its tokens: at most :data:`MAX_SIZES`, spread from one step down to the fewest."""
    g = token_grid(net, size)
    if not g or g < 2 or size % g:
        return []
    step = size // g
    k_max = max(min(int(g * (1 - math.sqrt(MIN_TOKEN_SHARE))), g - 2), 0)
    ks = sorted({1, (k_max + 1) // 2, k_max} - {0}) if k_max else []
    return [size - k * step for k in ks][:MAX_SIZES]


def search(prep, cand, inputs: dict, enter):
    """The candidate to ship: the full-size one or a smaller input's (copied into the full-size one's stage
    directory), with its preparation, and the search's record for the manifest. ``enter`` keeps a smaller input's
    preparation open until the bundle is written (an ``ExitStack.enter_context``)."""
    from edgevit.prepare import prepare
    from edgevit.stages import compile_gated

    req, budget = cand.req, cand.req.latency_budget
    full = prep.pre.input_size[-1]
    tried = sizes(prep.net, full)
    record = {"full_size": full, "sizes": tried, "reference": f"PyTorch eager FP32 at {full} px",
              "max_drop": req.max_drop, "latency_budget_ms": budget, "finetune_epochs": req.token_finetune,
              "candidates": []}
    if not tried:
        record["result"] = f"no smaller size keeps {MIN_TOKEN_SHARE:.0%} of {prep.spec.alias}'s tokens"
        say(f"token search: {record['result']}")
        return prep, cand, record
    say(f"token search: {prep.spec.alias} at {', '.join(f'{s} px' for s in tried)} beside {full} px")
    cands = {full: (prep, cand)}
    for s in tried:
        p = enter(prepare(prep.spec, **{**inputs, "input_size": s, "reference": False}))
        p.reference = prep.reference  # judged against the full-size FP32 model, on the same held-out images
        if req.token_finetune:
            finetune(p, req.token_finetune)
        sub = p.work / f"tokens-{s}"
        sub.mkdir()
        try:
            c = compile_gated(p, req, "int8", sub, fallback=False, method=f"PTQ at {s} px")
        except (ValidationFailedError, UsageError) as e:
            record["candidates"].append({"size": s, "rejected": str(e)})
            continue
        a = c.art
        if c.gate and not c.gate.passed:
            record["candidates"].append({"size": s, "top1": a.validation["top1"],
                                         "top1_drop": a.validation["top1_drop"],
                                         "rejected": f"top-1 drop {a.validation['top1_drop']:.2f} points against "
                                                     f"the full-size FP32 model > --max-drop {req.max_drop:.2f}"})
            say(f"token search: {s} px loses {a.validation['top1_drop']:.2f} points; left out")
            continue
        cands[s] = (p, c)
    lat = _time(cands)
    top1 = {s: c.art.validation.get("top1") for s, (_, c) in cands.items()}
    for s, (_, c) in cands.items():
        record["candidates"].append({"size": s, "tokens_share": round((s / full) ** 2, 3), "top1": top1[s],
                                     "top1_drop": c.art.validation.get("top1_drop"), "p50_ms": lat[s],
                                     "size_bytes": c.size_bytes()})
    chosen, rule = _choose(top1, lat, budget)
    record.update(chosen=chosen, rule=rule, speedup_vs_full=round(lat[full] / lat[chosen], 3))
    say(f"token search: {chosen} px; " + ", ".join(f"{s} px {lat[s]:.3f} ms top-1 {top1[s]}"
                                                    for s in sorted(cands, reverse=True)) + f" ({rule})")
    p, c = cands[chosen]
    return p, (c if chosen == full else c.moved_to(cand.stage)), record


def finetune(p, epochs: int) -> None:
    """Fine-tune the preparation's FP32 model at its (smaller) input size for ``epochs`` on the training split less
    its hold-out (at most :data:`FINETUNE_IMAGES` images an epoch), then export it again: what a resampled position
    embedding alone loses, a short fine-tune mostly wins back. The model's record says it was fine-tuned."""
    import numpy as np
    import torch

    from edgevit.data import holdout_split
    from edgevit.export import check_onnx, export_onnx
    from edgevit.models import TrainDefaults
    from edgevit.train import fit_epoch

    d = p.spec.train or TrainDefaults()
    tr_idx, _ = holdout_split(len(p.ds.train))
    x_tr = p.ds.stream(p.ds.train.subset(tr_idx[:FINETUNE_IMAGES]), p.pre)
    steps = -(-len(x_tr) // d.batch_size)
    lr = d.lr * FINETUNE_LR
    opt = torch.optim.AdamW(p.net.parameters(), lr=lr, weight_decay=d.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.2,
                                                anneal_strategy="cos")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=d.label_smoothing)
    size = p.pre.input_size[-1]
    for epoch in range(epochs):
        fit_epoch(p.net, x_tr, p.pre, opt, sched, loss_fn, d.batch_size, 0,
                  desc=f"token search: fine-tuning at {size} px, epoch {epoch + 1}/{epochs}",
                  order=np.random.default_rng(epoch).permutation(len(x_tr)))
    p.net.eval()
    export_onnx(p.net, p.pre.input_size, p.onnx_path)
    p.export_diff = check_onnx(p.onnx_path, p.net, p.check_x)
    p.finetuned = {"input_size": size, "epochs": epochs, "images_per_epoch": len(x_tr), "lr": lr,
                   "from": "the build's --weights, position embeddings or relative position tables resampled"}


def _time(cands: dict) -> dict[int, float]:
    """Each size's p50, timed against the others in one interleaved, process-isolated run on its own input."""
    from edgevit.runtime.measure import compare_latency
    from edgevit.runtime.timing import OwnInput

    runners = {}
    for s, (p, c) in cands.items():
        factory, args = c.art.runner.spec()
        runners[str(s)] = OwnInput(factory, args, p.latency_input(c.req.target.batch))
    x = next(iter(cands.values()))[0].latency_input(1)  # each runs on its own input; this one is not used
    lat = compare_latency(runners, x, desc=f"token search: timing {len(runners)} sizes")
    return {s: lat[str(s)]["p50"] for s in cands}


def _choose(top1: dict, lat: dict, budget: float | None) -> tuple[int, str]:
    """The size to ship: with a budget, the most accurate within it; else the fastest, where it is faster than the
    full size (the largest) beyond the noise that ties candidates (:data:`edgevit.best.BEST_TIE`)."""
    from edgevit.best import BEST_TIE

    fastest = min(top1, key=lat.get)
    if budget is not None:
        within = [s for s in top1 if lat[s] <= budget]
        if within:
            best = max(within, key=lambda s: (top1[s] or 0, -lat[s]))
            return best, f"the most accurate within the latency budget of {budget:g} ms"
        return fastest, f"none within the latency budget of {budget:g} ms: the fastest that passed the gate"
    full = max(top1)
    if lat[fastest] >= lat[full] * (1 - BEST_TIE):  # not faster beyond the noise: the full size keeps its accuracy
        return full, f"no smaller size is {BEST_TIE:.0%} or more faster than the full size"
    return fastest, "the fastest within the accuracy budget"
