"""The prepared model: what every build of one model on one dataset shares, computed once.

Model + weights + overrides, the dataset and its preprocessing, the ONNX export and the FP32 reference logits on the
validation images. ``build`` compiles one precision from it, ``--precision best`` each candidate from the same one,
and ``inspect`` loads its model through :func:`load_model`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevit._progress import say
from edgevit.errors import UsageError, WeightsError

if TYPE_CHECKING:
    import torch

    from edgevit.data import Dataset, Split
    from edgevit.hub import HubWeights
    from edgevit.models import ModelSpec
    from edgevit.runtime.images import Preprocessing
    from edgevit.stream import ImageStream


@dataclass
class Weights:
    """A checkpoint as read: its tensors, its metadata, and where it came from."""

    arg: str  # what the user passed (a file or hf-hub:...)
    file: str  # the file read
    state: dict
    meta: dict
    edgevit: dict  # edgevit's training metadata ({} for foreign weights)
    hub: HubWeights | None = None  # pretrained weights


def read_weights(weights: str, spec) -> Weights:
    """Read ``weights`` (a checkpoint file, or hf-hub:... from the Hub or its cache) and check they are ``spec``'s."""
    from edgevit.hub import is_hub
    from edgevit.hub import resolve as resolve_hub
    from edgevit.models import read_state_dict

    hub, file = None, weights
    if is_hub(weights):
        hub = resolve_hub(weights)
        arch = (hub.architecture or "").split(".")[0]
        if arch and arch != spec.timm_name.split(".")[0]:
            raise WeightsError(f"{hub.source} holds weights for {arch}, not {spec.timm_name} ({spec.alias}); pass "
                               f"--model {arch}")
        file = str(hub.path)
    state, meta = read_state_dict(file)
    ev = meta.get("edgevit") if isinstance(meta.get("edgevit"), dict) else {}
    if ev and ev.get("model") not in (None, spec.alias, spec.timm_name):
        raise WeightsError(f"these weights were trained for model {ev['model']!r}, not {spec.alias!r}; "
                           f"pass --model {ev['model']}")
    return Weights(weights, file, state, meta, ev, hub)


def new_model(spec, num_classes: int | None, size: int, overrides: dict, seeded: bool):
    """The architecture, untrained; ``seeded``: the same random weights every run (a benchmark's history compares
    builds of random weights)."""
    from edgevit.models import create_model

    if spec.module is not None:  # the caller's own module: a copy, never changed in place
        import copy

        return copy.deepcopy(spec.module).eval()
    if seeded:
        import torch

        torch.manual_seed(0)
    return create_model(spec, num_classes=num_classes, input_size=size, **overrides)


def load_model(spec, weights: Weights | None, classes: list[str] | None, size: int, overrides: dict):
    """The FP32 PyTorch model with the checkpoint's overrides (the caller's win) and weights; random weights are
    seeded, so every run makes the same model (a benchmark's history compares them)."""
    from edgevit.models import apply_state_dict

    overrides = {**(weights.edgevit.get("model_overrides", {}) if weights else {}), **overrides}
    net = new_model(spec, len(classes) if classes else None, size, overrides, seeded=not weights)
    if weights:
        from edgevit.qat import is_qat_checkpoint

        if is_qat_checkpoint(weights.meta):
            if not weights.meta.get("fp32_model"):
                raise WeightsError(f"{weights.arg} holds no FP32 reference weights ('fp32_model'); rebuild it with "
                                   "edgevit")
            apply_state_dict(net, dict(weights.meta["fp32_model"]), weights.arg)  # the FP32 weights QAT started from
        else:
            apply_state_dict(net, weights.state, weights.arg)
    return net, overrides


CHECK_IMAGES = 16  # held-out images kept decoded: the export check, the latency input, a device's engine check


@dataclass
class Prepared:
    spec: ModelSpec
    weights: Weights | None
    overrides: dict
    ds: Dataset | None
    unlabelled: Split | None  # --calib-data images (a Split without labels)
    calib_source: str | None
    classes: list[str]
    pre: Preprocessing
    net: torch.nn.Module  # the FP32 model
    qmodel: torch.nn.Module | None  # the QAT checkpoint's quantized model, when --weights is one
    work: Path
    onnx_path: Path
    export_diff: float
    check_x: np.ndarray  # a few normalised validation images (random ones without data)
    finetuned: dict | None = None  # the token search fine-tuned ``net`` at this input size (edgevit.token_search)
    val_split: Split | None = None
    val_u8: ImageStream | None = None  # the validation images, streamed
    reference: np.ndarray | None = None  # FP32 PyTorch logits on them
    _calib: dict = field(default_factory=dict)

    @property
    def random_init(self) -> bool:
        return self.weights is None and self.spec.module is None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fresh_model(self):
        """Another instance of the prepared architecture (the QAT checkpoint is restored onto one)."""
        return new_model(self.spec, self.num_classes, self.pre.input_size[-1], self.overrides,
                         seeded=self.weights is None)

    def latency_input(self, batch: int) -> np.ndarray:
        """The image every latency figure of this model is timed on, repeated to ``batch``."""
        return np.ascontiguousarray(np.repeat(self.check_x[:1], batch, axis=0))

    def calibration(self, recipe) -> np.ndarray:
        """The recipe's calibration images (float32 NCHW), read once per recipe."""
        from edgevit.quantize import NEEDS_IMAGES, calibration_images

        key = (recipe.samples, recipe.selection, recipe.seed)  # what draws them: recipes that agree share them
        if key not in self._calib:
            if self.ds is None:
                raise UsageError(NEEDS_IMAGES)
            x = self._calib[key] = calibration_images(self.ds, self.pre, recipe, self.unlabelled)[0]
            say(f"calibrating INT8 with {len(x)} images from {self.calib_source} ("
                f"{Path(recipe.path).name}, NNCF "
                f"{'transformer' if recipe.nncf_transformer(self.spec.is_transformer) else 'default'} model type)")
        return self._calib[key]

    def model_record(self) -> dict:
        """The manifest's ``model`` section."""
        from edgevit.models import sha256_file

        w = self.weights
        if self.finetuned:  # weights of this build's own making: named by what made them
            base = ((w.hub.source if w.hub else Path(w.arg).name) if w else f"torch.nn.Module {self.spec.timm_name}")
            source = f"{base} fine-tuned at {self.finetuned['input_size']} px for {self.finetuned['epochs']} epoch(s)"
            digest = _state_sha256(self.net)
        elif w is None and self.spec.module is not None:  # the caller's module: its weights as they were given
            source, digest = f"torch.nn.Module {self.spec.timm_name}", _state_sha256(self.net)
        else:
            source = (w.hub.source if w.hub else Path(w.arg).name) if w else None
            digest = sha256_file(w.file) if w else None
        return {"alias": self.spec.alias, "timm_name": self.spec.timm_name, "family": self.spec.family,
                "num_classes": self.num_classes, "input_size": [3, *self.pre.input_size], "weights": source,
                "weights_sha256": digest, "random_init": self.random_init, "overrides": self.overrides}


def _state_sha256(net) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in order): what identifies its weights."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def prepare(spec, *, data: str | None = None, weights: str | None = None, input_size: int | None = None,
            calib_data: str | None = None, val_samples: int | None = None, workers: int | None = None,
            reference: bool = True, **overrides):
    """Load, export and (with data) run the FP32 reference once; the export lives in a temporary directory for as
    long as the ``with`` block."""
    from edgevit.outputs import work_dir

    with work_dir() as work:
        yield _prepare(spec, work, data, weights, input_size, calib_data, val_samples, workers, reference,
                       overrides)


def _prepare(spec, work: Path, data, weights, input_size, calib_data, val_samples, workers, reference,
             overrides) -> Prepared:
    from edgevit.data import load_dataset, load_unlabelled
    from edgevit.export import check_onnx, export_onnx, freeze_weight_standardization
    from edgevit.models import data_config

    w = read_weights(weights, spec) if weights else None
    ds = load_dataset(data, workers) if data else None
    unlabelled = load_unlabelled(calib_data) if calib_data else None
    classes = ds.classes if ds else ((w.edgevit.get("classes") or (w.hub.labels() if w.hub else None)) if w
                                     else None)
    if ds and w and w.edgevit.get("classes") and len(w.edgevit["classes"]) != ds.num_classes:
        raise WeightsError(f"{weights} was trained on {len(w.edgevit['classes'])} classes but {ds.spec} has "
                           f"{ds.num_classes}; use matching data or weights")
    size = input_size or spec.input_size
    net, overrides = load_model(spec, w, classes, size, overrides)
    freeze_weight_standardization(net)  # outputs unchanged; constant conv weights for NNCF and TensorRT
    num_classes = int(net.num_classes) if hasattr(net, "num_classes") else len(classes or []) or _outputs(net, size)
    pre = data_config(spec, size, pretrained=w.hub.preprocessing_overrides() if w and w.hub else None)
    if w is None and spec.module is None:
        say("warning: no --weights: the model is randomly initialised; accuracy figures are meaningless "
            "(latency is still real)")
    prep = Prepared(spec=spec, weights=w, overrides=overrides, ds=ds, unlabelled=unlabelled,
                    calib_source=str(calib_data) if calib_data else (ds.spec if ds else None),
                    classes=classes or [str(i) for i in range(num_classes)], pre=pre, net=net, qmodel=None,
                    work=work, onnx_path=work / "model_fp32.onnx", export_diff=0.0, check_x=np.zeros(0))
    if w is not None:
        from edgevit.qat import is_qat_checkpoint, restore

        if is_qat_checkpoint(w.meta):
            prep.qmodel = restore(prep.fresh_model(), w.state, w.meta)
    _validation_images(prep, val_samples)
    say(f"exporting {spec.alias} ({spec.timm_name}, {size}px) to ONNX")
    export_onnx(net, pre.input_size, prep.onnx_path)
    prep.export_diff = check_onnx(prep.onnx_path, net, prep.check_x)
    if reference and ds is not None:
        from edgevit.runtime.measure import torch_runner
        from edgevit.stream import run_batches

        prep.reference = run_batches(torch_runner(net), prep.val_u8, pre, desc="FP32 reference (torch)")
    return prep


def _outputs(net, size: int) -> int:
    """How many classes a module answers for one image (a module without ``num_classes``)."""
    import torch

    with torch.no_grad():
        return int(net(torch.zeros(1, 3, size, size)).shape[-1])


def _validation_images(prep: Prepared, val_samples: int | None) -> None:
    """Held out: the dataset's val/test split, never calibration images."""
    from edgevit.data import preprocess_split, sample_indices

    ds, pre = prep.ds, prep.pre
    if ds is None:
        prep.check_x = np.random.default_rng(0).standard_normal((CHECK_IMAGES, 3, *pre.input_size)).astype(np.float32)
        return
    idx = (sample_indices(len(ds.val), val_samples, seed=0) if val_samples and val_samples < len(ds.val)
           else np.arange(len(ds.val)))
    prep.val_split = ds.val.subset(idx)
    prep.val_u8 = ds.stream(prep.val_split, pre)  # decoded on each pass: memory does not grow with the split
    prep.check_x = pre.normalize(preprocess_split(prep.val_split.subset(range(min(CHECK_IMAGES, len(idx)))), pre,
                                                  workers=0))
