"""Validation and the accuracy gate.

An artifact is validated through its own runtime against FP32 PyTorch on held-out images (the dataset's val/test
split, never calibration images). The gate holds an INT8 build to a top-1 budget: when PTQ is over it (or QAT was
asked for) the fallbacks run, and choosing between artifacts looks only at a hold-out of the training split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgevit._progress import say

if TYPE_CHECKING:
    from edgevit.backends import Built, Runner


DEFAULT_MAX_DROP = 1.0  # top-1 points an INT8 build may lose against FP32 before the gate acts
GATE_HOLDOUT = 1000  # hold-out training images accuracy-aware PTQ ranks layers on and the gate chooses by


@dataclass
class Artifact:
    """One compiled candidate: what the backend built, the runner that executes it, and its validation record."""

    built: Built
    runner: Runner
    validation: dict

    def revalidated(self, validation: dict) -> dict:
        """``validation`` of a variant of this artifact, keeping what only the first validation measured (the Q/DQ
        ONNX's own top-1)."""
        return {**validation, **{k: self.validation[k] for k in ("qdq_onnx",) if k in self.validation}}


def measured_with(runner) -> str:
    from edgevit.runtime.measure import host_info

    info = runner.info
    where = f"{info['backend']} {info.get('version', '')} on {info.get('device', 'CPU')} ({host_info()['cpu']})"
    if info.get("proxy_for"):
        where += f", the same ONNX the {info['proxy_for']} engine is built from: a proxy for the engine's accuracy"
    return where


def validate(prep, runner, label: str) -> dict:
    """Top-1/top-5 of ``runner`` on the prepared validation images beside the FP32 reference, and how far apart
    their logits are."""
    from edgevit.runtime.measure import top1, topk
    from edgevit.stream import run_batches

    if prep.ds is None:
        return {"skipped": "no --data given: accuracy not measured"}
    ref, labels = prep.reference, prep.val_split.labels
    say(f"validating on {len(labels)} held-out images ({prep.ds.val_name})")
    got = run_batches(runner, prep.val_u8, prep.pre, desc=label)
    v = {"dataset": prep.ds.spec, "split": prep.ds.val_name, "samples": int(len(labels)),
         "reference": "PyTorch eager FP32", "reference_top1": top1(ref, labels), "top1": top1(got, labels),
         "top5": topk(got, labels, 5), "measured_with": measured_with(runner)}
    v["top1_drop"] = round(v["reference_top1"] - v["top1"], 2)
    v["max_abs_logit_diff"] = round(float(np.abs(ref - got).max()), 5)
    v["argmax_agreement"] = round(float((ref.argmax(1) == got.argmax(1)).mean() * 100), 2)
    if prep.random_init:
        v["note"] = "random weights: accuracy is meaningless"
    return v


def gate_holdout(prep) -> tuple[np.ndarray, np.ndarray]:
    """Images accuracy-aware PTQ may tune on: the training split's hold-out, never calibration or validation."""
    from edgevit.data import holdout_split, preprocess_split

    ds, pre = prep.ds, prep.pre
    _, hold = holdout_split(len(ds.train))
    split = ds.train.subset(hold[:GATE_HOLDOUT])
    return pre.normalize(preprocess_split(split, pre, "gate hold-out images", ds.workers)), split.labels


@dataclass
class Gate:
    """The accuracy gate's state for one INT8 build; :meth:`to_dict` is its manifest record."""

    max_drop: float | None
    tried: list[dict] = field(default_factory=list)
    passed: bool = True
    skipped: str | None = None
    kept: str | None = None
    kept_in_higher_precision: list | None = None
    holdout: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def open(cls, precision: str, prep, validation: dict, max_drop: float | None,
             method: str = "PTQ") -> Gate | None:
        """The gate for a first artifact, or None where there is nothing to gate (not INT8, or no data)."""
        if precision != "int8" or prep.ds is None:
            return None
        gate = cls(max_drop, [{"method": method, "top1": validation["top1"], "top1_drop": validation["top1_drop"]}])
        if prep.random_init:
            gate.skipped = "random weights: the drop is meaningless"
        elif max_drop is None:
            gate.skipped = "no budget (max_drop=None)"
        else:
            gate.passed = validation["top1_drop"] <= max_drop
        return gate

    def holdout_top1(self, prep, runner) -> float:
        """Top-1 on the training split's hold-out: choosing between artifacts never looks at the validation images."""
        from edgevit.runtime.measure import top1

        if self.holdout is None:
            self.holdout = gate_holdout(prep)
        x, y = self.holdout
        return top1(np.concatenate([runner(x[s:s + 100]) for s in range(0, len(y), 100)]), y)

    def add(self, method: str, validation: dict, holdout_top1: float, **extra) -> bool:
        """Record a fallback; True when it beat the first artifact on the hold-out (so it is kept)."""
        self.tried.append({"method": method, "top1": validation["top1"], "top1_drop": validation["top1_drop"],
                           **extra, "holdout_top1": holdout_top1})
        better = holdout_top1 >= self.tried[0]["holdout_top1"]
        self.kept = method if better else self.tried[0]["method"]
        return better

    def admit(self, method: str, validation: dict) -> bool:
        """A faster variant of the kept artifact (same quantizers, other kernels or host precision): False when its
        drop is over the budget; else it is recorded as tried and the gate's verdict follows it."""
        if "top1_drop" not in validation:  # no data: nothing to gate
            return True
        if not self.skipped and self.max_drop is not None and validation["top1_drop"] > self.max_drop:
            return False
        self.tried.append({"method": method, "top1": validation["top1"], "top1_drop": validation["top1_drop"]})
        self.passed = bool(self.skipped) or self.max_drop is None or validation["top1_drop"] <= self.max_drop
        return True

    def skip(self, method: str, why: str) -> None:
        self.tried.append({"method": method, "skipped": why})

    def close(self, validation: dict, kept_in_higher_precision: list) -> None:
        self.passed = self.max_drop is None or validation["top1_drop"] <= self.max_drop
        self.kept_in_higher_precision = kept_in_higher_precision

    def tried_text(self) -> str:
        """What the gate tried, for messages: ``PTQ: drop -0.20; accuracy-aware PTQ: drop +1.15``."""
        return tried_text(self.to_dict())

    def to_dict(self) -> dict:
        d = {"max_drop": self.max_drop, "tried": self.tried, "passed": self.passed}
        if self.skipped:
            d["skipped"] = self.skipped
        if self.kept:
            d["kept"] = self.kept
        if self.kept_in_higher_precision is not None:
            d["kept_in_higher_precision"] = self.kept_in_higher_precision
        return d


def tried_text(gate: dict) -> str:
    """A gate record's attempts in one line (the manifest's ``accuracy_gate``)."""
    return "; ".join(f"{t['method']}: " + (t["skipped"] if "skipped" in t else f"drop {t['top1_drop']:+.2f}")
                     for t in gate["tried"])
