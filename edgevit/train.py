"""Train or fine-tune a zoo model: AdamW + one-cycle, light augmentation, per-epoch held-out accuracy, best and last
checkpoints (tensor-only, so they load with ``weights_only=True``), ``--resume``."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit import parallel
from edgevit._progress import duration, progress, say
from edgevit.data import holdout_split
from edgevit.errors import UsageError, WeightsError
from edgevit.outputs import made_dirs


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best_top1: float
    epochs: int
    seconds: float
    history: list[dict]


def _augment(x, pad: int):
    """Random horizontal flip and random translation by up to ``pad`` pixels (reflect padding), per sample."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    flip = (torch.rand(n) < 0.5).to(x.device)  # drawn on the CPU: the same random stream on every device
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx, dy = np.random.randint(0, 2 * pad + 1, n), np.random.randint(0, 2 * pad + 1, n)
        x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return x


def fit_epoch(model, images, pre, opt, sched, loss_fn, batch_size: int, pad: int, desc: str, teacher=None,
              order: np.ndarray | None = None, device=None, autocast=None) -> float:
    """One epoch over a :class:`~edgevit.stream.ImageStream` in ``order`` (default: a random permutation); returns the
    smoothed loss. ``pad`` > 0 turns on random flips and shifts. ``loss_fn(logits, labels, teacher_logits)`` is
    called with the teacher's logits when ``teacher`` is given (distillation), else ``loss_fn(logits, labels)``.
    ``autocast``: the dtype of mixed-precision forward passes (:func:`edgevit.parallel.autocast_dtype`), None
    for FP32."""
    import contextlib

    import torch

    def forward():
        if autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast)

    model.train()
    order = np.random.permutation(len(images)) if order is None else order
    bar = progress(images.batches(batch_size, order), desc=desc, total=math.ceil(len(order) / batch_size))
    running = 0.0
    for step, (x_u8, y) in enumerate(bar):
        target = torch.from_numpy(y)
        if device is not None and device.type == "cuda":  # uint8 crosses (a quarter of the bytes); the GPU does
            x = pre.normalize_tensor(torch.from_numpy(x_u8).to(device, non_blocking=True))  # the rest
            target = target.to(device, non_blocking=True)
        else:  # on the CPU, numpy's normalize is the faster (160 vs 260 ms for 128 images at 224 px, 1 thread)
            x = torch.from_numpy(pre.normalize(x_u8))
        if pad:
            x = _augment(x, pad)
        with forward():
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x)
                loss = loss_fn(model(x), target, soft)
            else:
                loss = loss_fn(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
    return running


def evaluate_torch(model, images_u8, labels: np.ndarray, pre,
                   desc: str = "eval") -> tuple[float, np.ndarray]:
    """Top-1 (%) of a torch model on preprocessed uint8 NHWC images (an array or an ImageStream); also returns the
    logits."""
    from edgevit.runtime.measure import top1, torch_runner
    from edgevit.stream import run_batches

    model.eval()
    logits = run_batches(torch_runner(model), images_u8, pre, batch_size=256, desc=desc)
    return top1(logits, labels), logits


def _save(obj: dict, path: Path) -> None:
    import torch

    from edgevit.outputs import atomic_file

    with atomic_file(path) as tmp:  # a full disk leaves the previous checkpoint and no partial file
        torch.save(obj, tmp)


CHECKPOINTS = ("best.pt", "last.pt")


def cpu_state(model) -> dict:
    """A state dict on the CPU: checkpoints load on any machine, with or without a GPU."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _check_run_dir(out: Path) -> None:
    """``out`` may hold anything, but the checkpoints train writes there must be edgevit's own (or absent)."""
    from edgevit.errors import OutputExistsError

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; pass a directory for best.pt and last.pt")
    for name in CHECKPOINTS:
        p = out / name
        if p.is_dir() or p.is_symlink():
            raise OutputExistsError(f"{p} is a directory or a symlink; choose another --out")
        if p.exists() and _edgevit_checkpoint(p) is None:
            raise OutputExistsError(f"{p} exists and is not an edgevit checkpoint; move it away or choose another "
                                    "--out")


def _edgevit_checkpoint(path: Path) -> dict | None:
    """An edgevit training checkpoint as a dict, or None for anything else (missing, garbage, foreign)."""
    import pickle
    import zipfile

    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError):
        return None
    if not isinstance(ck, dict) or not isinstance(ck.get("edgevit"), dict) or not isinstance(ck.get("model"), dict):
        return None
    return ck


def _read_resume(resume: str, spec) -> dict:
    p = Path(resume)
    if not p.is_file():
        raise WeightsError(f"--resume {resume}: no such file; pass the last.pt of an interrupted run")
    ck = _edgevit_checkpoint(p)
    if ck is None:
        raise WeightsError(f"--resume {resume} is not an edgevit training checkpoint; pass the last.pt that "
                           "'edgevit train' wrote")
    for key in ("optimizer", "scheduler", "epoch", "best_top1", "total_steps"):
        if key not in ck:
            raise WeightsError(f"--resume {resume} has no {key!r}: it is a best.pt or weights file, not a last.pt; "
                               "resume from last.pt, or start from it with --weights")
    trained = ck["edgevit"].get("model")
    if trained != spec.alias:
        raise WeightsError(f"{resume} is a checkpoint of {trained!r}, not {spec.alias!r}")
    return ck


def train(model_name: str, data: str, out: str | os.PathLike, *, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, weights: str | None = None,
          resume: str | None = None, seed: int = 0, limit: int | None = None, workers: int | None = None,
          amp: bool = True, **model_overrides) -> TrainResult:
    """Train ``model_name`` on ``data`` and write ``best.pt`` / ``last.pt`` into ``out``. On a GPU with bf16 the
    forward passes run in bf16 mixed precision unless ``amp=False``."""
    import torch

    from edgevit.data import load_dataset
    from edgevit.models import data_config, resolve_spec

    spec = resolve_spec(model_name)
    d = spec.train
    epochs = epochs if epochs is not None else d.epochs
    batch_size = batch_size or d.batch_size
    lr = lr or d.lr
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UsageError("--epochs and --batch-size must be at least 1 and --lr positive")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit}); omit it to train on the whole train split")
    out = Path(out)
    plan = parallel.parallel_plan(batch_size, seed, "--batch-size")
    rank, world, local_batch, device = plan.rank, plan.world, plan.local_batch, plan.device
    mixed = parallel.autocast_dtype(device, amp)
    if rank == 0:
        _check_run_dir(out)
    ck = _read_resume(resume, spec) if resume else None

    ds = load_dataset(data, parallel.decode_workers_for(device, workers))
    pre = data_config(spec)
    model, weights_source = _initial_model(spec, ds.num_classes, weights, model_overrides)

    tr_idx, ho_idx = holdout_split(len(ds.train), seed)
    if limit:
        tr_idx, ho_idx = tr_idx[:limit], ho_idx[: max(1, limit // 5)]
    x_tr = ds.stream(ds.train.subset(tr_idx), pre)  # decoded batch by batch: memory does not grow with the data
    x_ho = ds.stream(ds.train.subset(ho_idx), pre)
    y_ho = x_ho.labels

    # --batch-size is the global batch, --lr is for it: 1 or N processes train alike
    steps_per_epoch = plan.steps_per_epoch(len(x_tr))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=d.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=min(0.3, 1.0 / epochs), anneal_strategy="cos")
    start_epoch, best, history = 0, -1.0, []
    # rank 0 makes --out; if training fails, the directories it made are removed again where empty
    with made_dirs(out) if rank == 0 else contextlib.nullcontext():
        meta = _meta(spec, ds, pre, model_overrides, len(tr_idx), len(ho_idx), weights_source, plan, batch_size, mixed)
        if ck:
            start_epoch, best, history = _resume(ck, resume, model, opt, sched, epochs * steps_per_epoch)

        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=d.label_smoothing)
        pad = max(1, spec.input_size // 16) if d.augment else 0
        net = model  # what is evaluated and saved; ``model`` is what trains (DDP-wrapped with several processes)
        model = parallel.data_parallel(net, device, world)
        _announce(spec, net, ds, plan, batch_size, x_tr, len(x_ho), epochs - start_epoch, steps_per_epoch, mixed)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, epochs):
            epoch_start = time.perf_counter() - t0
            running = fit_epoch(model, x_tr, pre, opt, sched, loss_fn, local_batch, pad,
                                desc=f"epoch {epoch + 1}/{epochs}",
                                order=parallel.shard_indices(len(x_tr), epoch, rank, world, seed), device=device,
                                autocast=mixed)
            if rank:  # rank 0 evaluates and writes; the others go on to the next epoch (DDP syncs them)
                continue
            top1, _ = evaluate_torch(net, x_ho, y_ho, pre, desc="held-out")
            history.append({"epoch": epoch + 1, "loss": round(running, 4), "holdout_top1": round(top1, 2),
                            "elapsed_s": round(time.perf_counter() - t0, 1)})
            is_best = top1 > best
            best = max(best, top1)
            _checkpoint(out, net, opt, sched, epoch + 1, best, is_best, history, meta, epochs * steps_per_epoch)
            now = time.perf_counter() - t0
            left = now / (epoch + 1 - start_epoch) * (epochs - epoch - 1)
            say(f"epoch {epoch + 1}/{epochs}: loss {running:.3f}, held-out top-1 {top1:.2f}%"
                f"{' (best)' if is_best else ''}; {duration(now - epoch_start)} this epoch, {duration(now)} in all"
                + (f", about {duration(left)} to go" if left else ""))
    best, history = parallel.from_rank0(world, best, history)
    return TrainResult(out / "best.pt", out / "last.pt", best, epochs, time.perf_counter() - t0, history)


def _meta(spec, ds, pre, overrides: dict, n_train: int, n_holdout: int, weights_source, plan, batch_size: int,
          mixed) -> dict:
    """What every checkpoint says it is: model, data, preprocessing, initial weights, and how it was trained."""
    from edgevit import __version__

    return {
        "edgevit_version": __version__, "model": spec.alias, "timm_name": spec.timm_name,
        "num_classes": ds.num_classes, "classes": ds.classes, "input_size": spec.input_size, "data": ds.spec,
        "preprocessing": pre.to_dict(), "model_overrides": overrides, "train_images": n_train,
        "holdout_images": n_holdout, "initial_weights": weights_source,
        "distributed": {"world_size": plan.world, "global_batch": batch_size, "batch_per_process": plan.local_batch},
        "trained_on": {"device": parallel.device_name(plan.device), "precision": "bf16 mixed" if mixed else "fp32"}}


def _initial_model(spec, num_classes: int, weights: str | None, overrides: dict):
    """The model to train, from ``weights`` when given (a file or the Hub: a fine-tune; a classifier of another class
    count is replaced); and what to record as its initial weights."""
    from edgevit.models import create_model, load_weights

    model = create_model(spec, num_classes=num_classes, **overrides)
    source = weights
    if weights:
        from edgevit.hub import is_hub, resolve

        if is_hub(weights):  # pretrained from the Hugging Face Hub (or its local cache)
            hub = resolve(weights)
            weights, source = str(hub.path), hub.source
        load_weights(model, weights, replace_head=True)
    return model, source


def _resume(ck: dict, resume: str, model, opt, sched, total_steps: int) -> tuple[int, float, list]:
    """Model, optimizer and schedule state of an interrupted run (the same schedule only): (epoch, best, history)."""
    if ck.get("total_steps") != total_steps:
        raise UsageError(f"{resume} was trained for a schedule of {ck.get('total_steps')} steps, this run asks for "
                         f"{total_steps}; resume with the same --epochs and --batch-size")
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{resume} does not fit this model and run ({str(e).splitlines()[0][:160]}); resume "
                           "with the same --model and options it was trained with") from None
    say(f"resumed from {resume} after epoch {ck['epoch']} (best held-out top-1 {ck['best_top1']:.2f}%)")
    return ck["epoch"], ck["best_top1"], list(ck.get("history", []))


def _checkpoint(out: Path, net, opt, sched, epoch: int, best: float, is_best: bool, history: list, meta: dict,
                total_steps: int) -> None:
    """last.pt (all a resume needs) after every epoch; best.pt (the weights) when the hold-out improved. The weights
    are copied to the CPU once for both."""
    weights = cpu_state(net)
    _save({"model": weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
           "best_top1": best, "history": history, "edgevit": meta, "total_steps": total_steps}, out / "last.pt")
    if is_best:
        _save({"model": weights, "epoch": epoch, "best_top1": best, "edgevit": meta}, out / "best.pt")


def _announce(spec, net, ds, plan, batch_size: int, x_tr, holdout: int, epochs: int, steps: int, mixed) -> None:
    """The run's header: model, data, schedule, where it trains."""
    device, world = plan.device, plan.world
    where = parallel.device_name(device) + (" in bf16 mixed precision" if mixed else "")
    if world > 1:
        say(f"data-parallel training on {world} processes ({parallel.process_group_backend(device)}): global "
            f"batch {batch_size}, {plan.local_batch} per process, {len(x_tr) // world} images per process per epoch")
    n_params = sum(p.numel() for p in net.parameters())
    say(f"training {spec.alias} ({n_params / 1e6:.2f}M parameters, {spec.input_size} px) on {ds.description}: "
        f"{len(x_tr)} images, {epochs} epoch(s) of {steps} steps at batch {batch_size}, on {where}; "
        f"{x_tr.workers or 'no'} decode worker(s); best checkpoint chosen on {holdout} held-out images")
