"""Run a bundle: the runtime and preprocessing come from its manifest, never guessed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevit.errors import BundleError, EdgevitError

if TYPE_CHECKING:
    from edgevit.runtime.manifest import Manifest

PREDICT_BATCH = 32  # images decoded and classified at a time by predict_files


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
        from edgevit._registry import get_backend, require
        from edgevit.runtime.bundle import read_manifest

        self.path = Path(bundle)
        self.manifest = m = read_manifest(self.path)
        self.preprocessing = m.preprocessing
        self.labels = m.labels
        backend = get_backend(m.backend.name)
        if not backend.capabilities.engine_on_device:  # an engine's backend says itself what its runner needs
            require(backend)
        if len(self.labels) != m.model.num_classes:
            raise BundleError(f"{self.path}: {len(self.labels)} labels for {m.model.num_classes} "
                              "classes; the bundle is damaged, rebuild it")
        self.runner = load_checked(backend, self.path, self.manifest, threads)
        from edgevit._progress import warn  # once it loads: a bundle that cannot run gets its one error line alone

        if m.status != "ok":
            warn(f"{self.path.name} is marked {m.status}: it failed its accuracy gate")
        if m.model.random_init:
            warn(f"{self.path.name} was built from randomly initialised weights: its labels mean nothing (its "
                 "latency is real); build with --weights or --pretrained")

    def __call__(self, images, k: int = 5) -> list[Prediction]:
        """Classify one image or many: PIL images, uint8 numpy arrays (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, or
        image file paths, a list of those, or a uint8 batch (N, H, W) / (N, H, W, C); through the bundle's own
        runtime and preprocessing; the ``k`` best labels of each, one Prediction per image."""
        from edgevit.runtime.images import as_image

        batch = isinstance(images, (list, tuple)) or isinstance(images, np.ndarray) and (
            images.ndim == 4 or images.ndim == 3 and images.shape[-1] not in (3, 4))  # (N,H,W[,C]): N images
        items = list(images) if batch else [images]
        out = []
        for i in range(0, len(items), PREDICT_BATCH):
            chunk = items[i:i + PREDICT_BATCH]
            probs = self.probabilities([as_image(x) for x in chunk])
            out += [Prediction(x if isinstance(x, str) else f"image {i + j}", self.top(row, k))
                    for j, (x, row) in enumerate(zip(chunk, probs))]
        return out

    def probabilities(self, images: list) -> np.ndarray:
        """PIL images → softmax probabilities (N, classes)."""
        from edgevit.runtime.measure import require_finite

        logits = self.runner(np.stack([self.preprocessing(img) for img in images]))
        return softmax(require_finite(np.asarray(logits), f"bundle {self.path.name}",
                                      "its model is broken: rebuild it from good weights"))

    def top(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """One image's probabilities → the ``k`` best (label, probability), best first."""
        best = np.argsort(-probs)[: max(1, min(k, len(probs)))]
        return [(self.labels[i], float(probs[i])) for i in best]

    def predict_files(self, paths: list[str | os.PathLike], k: int = 5, batch: int = PREDICT_BATCH) -> list[Prediction]:
        """Every file's header checked before any inference (a bad file among thousands fails at once), then decoded
        and classified ``batch`` at a time: memory does not grow with the number of images."""
        from edgevit.runtime.images import check_image_file, load_image

        for p in paths:
            check_image_file(p)
        out = []
        for i in range(0, len(paths), batch):
            chunk = paths[i:i + batch]
            probs = self.probabilities([load_image(p) for p in chunk])
            out += [Prediction(str(p), self.top(row, k)) for p, row in zip(chunk, probs)]
        return out


def load(bundle: str | os.PathLike, threads: int | None = None) -> Predictor:
    """``edgevit.load(bundle)``: the bundle verified and loaded through its own runtime; call the result on images."""
    return Predictor(bundle, threads)


def load_checked(backend, path: Path, manifest: Manifest, threads: int | None = None):
    """The bundle's runner, loaded and run once on one blank image of the manifest's input size: a verified bundle
    whose artifact does not load, or whose input or output shape disagrees with its manifest, is one ``damaged
    bundle`` line here rather than a runtime's traceback later. (A missing runtime is not damage: its ImportError
    goes on to the CLI, which names the extra to install.)"""
    shape = (1, *manifest.model.input_size)
    classes = manifest.model.num_classes
    try:
        from edgevit.runtime.runner import LoadSpec

        runner = backend.load(path, LoadSpec.of_manifest(manifest), threads)
        out = np.asarray(runner(np.zeros(shape, np.float32)))
    except (EdgevitError, ImportError):
        raise
    except Exception as e:
        raise BundleError(f"damaged bundle {path}: its {manifest.backend.name} artifact does not load or run "
                          f"at the manifest's input {list(shape)} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}); rebuild it or copy it again") from None
    if out.shape != (1, classes):
        raise BundleError(f"damaged bundle {path}: its artifact answers shape {list(out.shape)} for one image, the "
                          f"manifest says {classes} classes; rebuild it or copy it again")
    return runner


def time_bundle(bundle, throughput_batch: int = 16, threads: int | None = None) -> dict:
    """A bundle's latency (batch of its target, SingleStream-style p50/p90/p99) and throughput at
    ``throughput_batch`` through its own runtime on this host: what ``edgevit time`` prints, and what
    ``bench --remote`` runs on a device."""
    from edgevit.runtime.measure import compare_latency, host_info, offline_throughput

    pred = Predictor(bundle, threads=threads)
    m, runner = pred.manifest, pred.runner
    lat = compare_latency({"artifact": runner}, np.zeros((m.batch, *m.model.input_size), np.float32))["artifact"]
    # the same Offline figure bench records
    throughput, offline = offline_throughput(runner, throughput_batch, m.model.input_size)
    return {"bundle": str(bundle), "model": m.model.alias, "target": m.target_name, "precision": m.precision,
            "executed": runner.info.get("executed_precision"),
            "backend": runner.info.get("backend"), "device": runner.info.get("device"),
            "host": host_info(), "latency_ms": lat,
            "throughput": throughput, "throughput_batch": offline.get("batch", throughput_batch), "offline": offline}
