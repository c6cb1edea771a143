"""Quantization-aware training with NNCF on the PyTorch model.

QAT starts from the PTQ initialisation (NNCF's fake quantizers inserted and calibrated by :func:`nncf_quantize` on
the torch model), fine-tunes weights and quantizer scales with a small learning rate, optionally distilling from the
FP32 model, and reports held-out accuracy after every epoch. A QAT checkpoint holds the weights, the quantizer
parameters and NNCF's quantization config (as JSON), so it can be resumed or rebuilt without training again; it also
keeps the FP32 weights QAT started from, the reference a rebuilt bundle's accuracy is measured against (SmoothQuant
rescales the quantized model's weights, so they are no FP32 reference on their own).

The result leaves PyTorch as standard Q/DQ ONNX (QuantizeLinear/DequantizeLinear, no custom ops): NNCF's quantizers
are stripped to PyTorch's native fake-quantize ops, which the classic exporter writes as Q/DQ pairs. OpenVINO reads
that ONNX into an INT8 IR; ONNX Runtime and TensorRT take it as it is.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevit._progress import library_output, say
from edgevit.errors import UsageError, WeightsError

if TYPE_CHECKING:
    import torch


QAT_LR_FACTOR = 0.02  # QAT's peak learning rate: this fraction of the model's training learning rate
DISTILL_TEMPERATURE = 2.0
DISTILL_WEIGHT = 0.5  # loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)
QAT_HOLDOUT = 2000  # hold-out training images scored after every QAT epoch


@dataclass
class QATResult:
    model: torch.nn.Module  # with NNCF fake quantizers
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0


def quantize_torch(net, calib: np.ndarray, recipe, transformer: bool, preset: str | None = None):
    """A copy of ``net`` with NNCF fake quantizers, calibrated on ``calib`` (float32 NCHW): the PTQ initialisation."""
    from edgevit.quantize import nncf_quantize

    return nncf_quantize(copy.deepcopy(net).eval(), calib, recipe, transformer, preset=preset)


def is_qat_checkpoint(meta: dict) -> bool:
    return "nncf_config" in meta


def restore(net, state: dict, meta: dict):
    """Rebuild the quantized model of a QAT checkpoint on top of a freshly created ``net`` of the same architecture."""
    from nncf.torch import load_from_config

    from edgevit.quantize import _torch_extension_timeout

    _torch_extension_timeout()
    try:
        qmodel = load_from_config(net, json.loads(meta["nncf_config"]))
        qmodel.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsError(f"cannot restore the QAT checkpoint ({first}); was it made for this --model?") from None
    return qmodel.eval()


def save_checkpoint(qmodel, path: Path, meta: dict, qat: dict, fp32_state: dict) -> Path:
    """Weights + quantizer parameters + NNCF's config + the FP32 reference weights, tensor-only (loads with
    ``weights_only=True``); written to a temporary name and renamed."""
    import torch
    from nncf.torch import get_config

    from edgevit.train import cpu_state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from edgevit.outputs import atomic_file

    with atomic_file(path) as tmp:
        torch.save({"model": cpu_state(qmodel), "nncf_config": json.dumps(get_config(qmodel)), "edgevit": meta,
                    "qat": qat, "fp32_model": fp32_state}, tmp)
    return path


def _loss(label_smoothing: float, distill: bool):
    import torch
    import torch.nn.functional as F

    ce = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if not distill:
        return ce
    t = DISTILL_TEMPERATURE

    def loss(logits, labels, teacher_logits):
        kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                      reduction="batchmean") * t * t
        return (1 - DISTILL_WEIGHT) * ce(logits, labels) + DISTILL_WEIGHT * kd

    return loss


def finetune(qmodel, ds, pre, spec, epochs: int, teacher=None, lr: float | None = None,
             batch_size: int | None = None, samples: int | None = None, seed: int = 0,
             checkpoint: Path | None = None, meta: dict | None = None, previous: dict | None = None,
             fp32_state: dict | None = None) -> QATResult:
    """Fine-tune a fake-quantized model for ``epochs`` on the training split (the hold-out excluded), distilling from
    ``teacher`` when given. After every epoch: held-out top-1 and, when ``checkpoint`` is set, a checkpoint (which
    keeps ``fp32_state``, the FP32 weights QAT started from).

    Under ``torchrun`` every process trains a disjoint shard of each epoch (DDP: NCCL on GPUs, gloo on CPUs);
    ``batch_size`` is the global batch. Only rank 0 scores the hold-out and writes the checkpoint. Training runs on
    this process's GPU when there is one; the model comes back on the CPU for export."""
    import torch

    from edgevit import parallel
    from edgevit.data import holdout_split, sample_indices
    from edgevit.train import evaluate_torch, fit_epoch

    if epochs < 1:
        raise UsageError("--qat-epochs must be at least 1")
    d = spec.train
    lr = lr or d.lr * QAT_LR_FACTOR
    batch_size = batch_size or d.batch_size
    plan = parallel.parallel_plan(batch_size, seed, "the QAT batch")
    rank, world, local_batch, device = plan.rank, plan.world, plan.local_batch, plan.device
    pool, hold = holdout_split(len(ds.train))
    if samples and samples < len(pool):
        pool = pool[sample_indices(len(pool), samples, seed, ds.train.labels[pool])]
    hold = hold[:QAT_HOLDOUT]
    x_tr = ds.stream(ds.train.subset(pool), pre)  # decoded batch by batch: memory does not grow with the data
    x_ho = ds.stream(ds.train.subset(hold), pre)
    y_ho = x_ho.labels

    steps = epochs * plan.steps_per_epoch(len(x_tr))
    qmodel.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    params = [p for p in qmodel.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = _loss(d.label_smoothing, teacher is not None)
    prev = previous or {}
    done = int(prev.get("epochs_done", 0))
    history = list(prev.get("history", []))
    if not history and rank == 0:
        start, _ = evaluate_torch(qmodel, x_ho, y_ho, pre, desc="QAT hold-out")
        history.append({"epoch": done, "holdout_top1": round(start, 2), "note": "PTQ initialisation"})
        say(f"QAT: PTQ initialisation scores {start:.2f}% on {len(y_ho)} hold-out images")
    say(f"QAT: {epochs} epoch(s) on {len(x_tr)} images, lr {lr:.1e}, batch {batch_size}"
        + (f" ({local_batch} on each of {world} processes)" if world > 1 else "")
        + f", on {device.type.upper()}"
        + (f", distilling from FP32 (T={DISTILL_TEMPERATURE:g}, weight {DISTILL_WEIGHT:g})" if teacher else ""))
    pad = max(1, spec.input_size // 16) if d.augment else 0
    model = parallel.data_parallel(qmodel, device, world)
    t0 = time.perf_counter()
    res = QATResult(qmodel)
    for e in range(epochs):
        running = fit_epoch(model, x_tr, pre, opt, sched, loss_fn, local_batch, pad,
                            desc=f"QAT epoch {done + e + 1}", teacher=teacher,
                            order=parallel.shard_indices(len(x_tr), done + e, rank, world, seed), device=device)
        if rank:  # rank 0 scores and writes; the others go on (DDP keeps them in step)
            continue
        top1, _ = evaluate_torch(qmodel, x_ho, y_ho, pre, desc="QAT hold-out")
        history.append({"epoch": done + e + 1, "loss": round(running, 4), "holdout_top1": round(top1, 2),
                        "elapsed_s": round(time.perf_counter() - t0, 1)})
        say(f"QAT epoch {done + e + 1}: loss {running:.3f}, held-out top-1 {top1:.2f}%, "
            f"{time.perf_counter() - t0:.0f}s")
        if checkpoint:
            res.checkpoint = save_checkpoint(qmodel, checkpoint, meta or {}, qat_record(
                done + e + 1, lr, batch_size, len(x_tr), teacher is not None, history), fp32_state or {})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank leaves QAT once rank 0 has written the last checkpoint
    qmodel.cpu().eval()
    if teacher is not None:
        teacher.cpu()
    res.history, res.seconds = history, round(time.perf_counter() - t0, 1)
    return res


def qat_record(epochs_done: int, lr: float, batch_size: int, samples: int, distill: bool, history: list) -> dict:
    return {"epochs_done": epochs_done, "lr": lr, "batch_size": batch_size, "samples": samples, "distill": distill,
            "history": history}


def export_qdq_onnx(qmodel, input_size: tuple[int, int], path: Path) -> Path:
    """Standard Q/DQ ONNX of a fake-quantized model: NNCF's quantizers become PyTorch's native fake-quantize ops
    (``nncf.strip(..., NATIVE)``), which the classic exporter writes as QuantizeLinear/DequantizeLinear."""
    import nncf
    import torch

    from edgevit.export import export_onnx

    with library_output():
        stripped = nncf.strip(copy.deepcopy(qmodel).eval(), strip_format=nncf.StripFormat.NATIVE,
                              example_input=torch.zeros(1, 3, *input_size))
        return export_onnx(stripped, input_size, path)


# ------------------------------------------------------------------------------------------ QAT inside a build
@dataclass(frozen=True)
class QATOptions:
    """Quantization-aware training inside ``build`` (the rare knobs together, as NNCF groups its advanced ones).
    ``epochs`` 0 is plain PTQ; ``distill`` distils from the FP32 model; ``lr`` and ``samples`` override the model's
    QAT learning rate and the number of training images per epoch."""

    epochs: int = 0
    distill: bool = False
    lr: float | None = None
    samples: int | None = None

    def check(self, precision: str) -> None:
        if self.epochs < 0:
            raise UsageError("--qat-epochs must be 0 or more")
        if (self.epochs or self.distill) and precision not in ("int8", "best"):
            raise UsageError(f"quantization-aware training makes INT8 models; --qat-epochs/--distill need "
                             f"--precision int8, not {precision}")
        if self.distill and not self.epochs:
            raise UsageError("--distill distils during quantization-aware training: add --qat-epochs N")


def ptq_init(net, calib, recipe, spec, signed: bool):
    """QAT's starting point, made alike on every rank: NNCF's fake quantizers calibrated on ``calib`` (symmetric for
    targets that need signed symmetric INT8)."""
    return quantize_torch(net, calib, recipe, spec.is_transformer, preset="performance" if signed else None)


def check_qat_output(path: Path, weights: str | None, force: bool) -> None:
    """The QAT checkpoint a build writes may replace only an earlier QAT checkpoint (or the one it resumes)."""
    from edgevit.errors import OutputExistsError
    from edgevit.models import read_state_dict
    from edgevit.outputs import check_output_file

    if force or not (path.exists() or path.is_symlink()):
        check_output_file(path, "QAT checkpoint", force=True)
        return
    if weights and path.resolve() == Path(weights).resolve():
        return
    try:
        ours = path.is_file() and not path.is_symlink() and is_qat_checkpoint(read_state_dict(str(path))[1])
    except WeightsError:
        ours = False
    if not ours:
        raise OutputExistsError(f"{path} exists and is not an edgevit QAT checkpoint; pass --force to replace it, "
                                "or choose another --out/--name")


def follow_qat(prep, opts: QATOptions, recipe, signed: bool) -> None:
    """What a rank other than 0 does in a data-parallel QAT build: the same PTQ initialisation as rank 0 (the same
    calibration images; DDP then broadcasts rank 0's parameters), then its shard of every QAT epoch. It writes
    nothing: rank 0 validates, bundles and checkpoints."""
    qmodel = prep.qmodel
    if qmodel is None:
        qmodel = ptq_init(prep.net, prep.calibration(recipe), recipe, prep.spec, signed)
    finetune(qmodel, prep.ds, prep.pre, prep.spec, opts.epochs, teacher=prep.net if opts.distill else None,
             lr=opts.lr, samples=opts.samples,
             previous=prep.weights.meta.get("qat") if prep.qmodel is not None else None)


class QATStage:
    """QAT for one build: from the PTQ initialisation (or on from a QAT checkpoint), fine-tuning with a checkpoint
    after every epoch, to the Q/DQ ONNX the backend compiles. :attr:`record` becomes the manifest's ``qat``."""

    def __init__(self, prep, opts: QATOptions, recipe, checkpoint: Path, meta: dict, threads: int | None) -> None:
        self.prep, self.opts, self.recipe, self.checkpoint = prep, opts, recipe, checkpoint
        self.meta, self.threads = meta, threads  # meta: what the checkpoint says it was trained for
        self.qmodel = prep.qmodel
        self.record: dict = {}

    def qdq(self, epochs: int, signed: bool) -> Path:
        """Train for ``epochs`` (0: the checkpoint as it is) and export the Q/DQ ONNX; its ONNX Runtime top-1 goes in
        :attr:`record`."""
        prep = self.prep
        w = prep.weights
        prev = w.meta.get("qat") if prep.qmodel is not None else None
        if epochs:
            if self.qmodel is None:
                say("QAT: PTQ initialisation of the PyTorch model")
                self.qmodel = ptq_init(prep.net, prep.calibration(self.recipe), self.recipe, prep.spec, signed)
            res = finetune(self.qmodel, prep.ds, prep.pre, prep.spec, epochs,
                           teacher=prep.net if self.opts.distill else None, lr=self.opts.lr, samples=self.opts.samples,
                           checkpoint=self.checkpoint, previous=prev, fp32_state=prep.net.state_dict(), meta=self.meta)
            self.record.update(checkpoint=str(self.checkpoint), history=res.history, seconds=res.seconds,
                               distill=self.opts.distill, epochs=epochs, rebuilt_from_checkpoint=False)
        else:
            self.record.update(checkpoint=Path(w.arg).name, history=(prev or {}).get("history", []),
                               rebuilt_from_checkpoint=True)
        qdq = export_qdq_onnx(self.qmodel, prep.pre.input_size, prep.work / "model_qdq.onnx")
        if prep.ds is not None:
            from edgevit.backends.onnxruntime import ORTRunner
            from edgevit.runtime.measure import top1
            from edgevit.stream import run_batches
            from edgevit.validate import measured_with

            runner = ORTRunner(qdq, self.threads)
            got = run_batches(runner, prep.val_u8, prep.pre, desc="Q/DQ ONNX (onnxruntime)")
            self.record["qdq_onnx"] = {"top1": top1(got, prep.val_split.labels), "measured_with": measured_with(runner)}
        return qdq
