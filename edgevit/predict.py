"""Run a bundle: the runtime and preprocessing come from its manifest, never guessed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.errors import BundleError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass
class Prediction:
    source: str
    top: list[tuple[str, float]]  # (label, probability), best first


class Predictor:
    def __init__(self, bundle: str | os.PathLike, threads: int | None = None) -> None:
        from edgevit.backends import get_backend, require
        from edgevit.bundle import read_manifest
        from edgevit.images import Preprocessing

        self.path = Path(bundle)
        self.manifest = read_manifest(self.path)
        self.preprocessing = Preprocessing.from_dict(self.manifest["preprocessing"])
        self.labels = list(self.manifest["labels"])
        if self.manifest.get("status", "ok") != "ok":
            from edgevit._progress import say

            say(f"warning: {self.path.name} is marked {self.manifest['status']}: it failed its accuracy gate")
        backend = get_backend(self.manifest["backend"]["name"])
        if not backend.capabilities.engine_on_device:  # an engine's backend says itself what its runner needs
            require(backend)
        self.runner = backend.load(self.path, self.manifest, threads)
        if len(self.labels) != self.manifest["model"]["num_classes"]:
            raise BundleError(f"{self.path}: {len(self.labels)} labels for {self.manifest['model']['num_classes']} "
                              "classes; the bundle is damaged, rebuild it")

    def probabilities(self, images: list) -> np.ndarray:
        """PIL images → softmax probabilities (N, classes)."""
        from edgevit.measure import require_finite

        logits = self.runner(np.stack([self.preprocessing(img) for img in images]))
        return softmax(require_finite(np.asarray(logits), f"bundle {self.path.name}",
                                      "its model is broken: rebuild it from good weights"))

    def top(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """One image's probabilities → the ``k`` best (label, probability), best first."""
        best = np.argsort(-probs)[: max(1, min(k, len(probs)))]
        return [(self.labels[i], float(probs[i])) for i in best]

    def predict_files(self, paths: list[str | os.PathLike], k: int = 5) -> list[Prediction]:
        from edgevit.images import load_image

        images = [load_image(p) for p in paths]  # all read (and checked) before any inference
        return [Prediction(str(p), self.top(row, k)) for p, row in zip(paths, self.probabilities(images))]


def time_bundle(bundle, throughput_batch: int = 16, threads: int | None = None) -> dict:
    """A bundle's latency (batch of its target, SingleStream-style p50/p90/p99) and throughput at
    ``throughput_batch`` through its own runtime on this host: what ``edgevit time`` prints, and what
    ``bench --remote`` runs on a device."""
    from edgevit.measure import compare_latency, host_info, offline_throughput

    pred = Predictor(bundle, threads=threads)
    m, runner = pred.manifest, pred.runner
    batch = int(m["target"].get("batch", 1))
    lat = compare_latency({"artifact": runner}, np.zeros((batch, *m["model"]["input_size"]), np.float32))["artifact"]
    throughput, offline = offline_throughput(runner, throughput_batch, m)  # the same Offline figure bench records
    return {"bundle": str(bundle), "model": m["model"]["alias"], "target": m["target"]["name"],
            "precision": m["precision"], "executed": runner.info.get("executed_precision"),
            "backend": runner.info.get("backend"), "device": runner.info.get("device"),
            "host": host_info(), "latency_ms": lat,
            "throughput": throughput, "throughput_batch": offline.get("batch", throughput_batch), "offline": offline}
