"""Post-training INT8 quantization with NNCF, from a calibration recipe in ``calibration/``.

NNCF quantizes OpenVINO and ONNX models through the same call, so every backend uses :func:`nncf_quantize`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit._config import load_toml_dataclass, resolve_named, shipped_dir
from edgevit._progress import library_output
from edgevit.errors import UnknownNameError, UsageError

PRESETS = ("mixed", "performance")
SELECTIONS = ("balanced", "random")
BIAS_CORRECTIONS = ("fast", "full", "none")
MODEL_TYPES = ("auto", "transformer", "default")  # auto: NNCF's transformer model type for transformer families
# auto: "enable" where this host's INT8 kernels have no VNNI (host class avx2), else NNCF's default (first layer only).
# Without VNNI, x86 multiplies u8 by s8 into int16 that saturates (vpmaddubsw); NNCF's overflow fix quantizes
# weights to 7 bits so that it cannot. Measured under AVX2 kernels (2,000 Fashion-MNIST images): MobileNetV3 lost
# 1.75 points without it and 1.10 with it (default recipe), 1.70 and 0.60 (performance); MaxViT 1.80 and 0.20.
OVERFLOW_FIXES = ("auto", "enable", "first_layer", "disable")
# Accuracy-aware PTQ validates the whole hold-out after every revert; without a cap a hopeless budget reverts layer by
# layer for many minutes (measured: still running after 8 min on 1,000 images for a 6-block ViT).
NEEDS_IMAGES = ("int8 calibration needs images: pass --data (fashion-mnist, imagefolder:DIR, or synthetic for "
                "latency-only work)")
AC_MAX_ITERATIONS = 10
AC_RANKING_SUBSET = 300
# Accuracy-aware PTQ first ranks every quantizer group by the top-1 it costs on the ranking subset: on a model with
# hundreds of groups (MaxViT) that alone ran past 15 minutes, and AC_MAX_ITERATIONS does not bound it. It runs in a
# child process that is stopped at this limit; the gate then says so and the build fails like any failed gate.
AC_TIME_LIMIT_S = 600.0


def recipes_dir() -> Path:
    return shipped_dir("calibration", UsageError)


@dataclass(frozen=True)
class Recipe:
    samples: int = 300
    selection: str = "balanced"
    seed: int = 0
    preset: str = "mixed"
    bias_correction: str = "fast"
    smooth_quant_alpha: float | None = None
    ignored_patterns: list = ()
    model_type: str = "auto"
    overflow_fix: str = "auto"
    path: str = ""

    def nncf_transformer(self, transformer_family: bool) -> bool:
        """Whether NNCF quantizes with its transformer model type (LayerNorm, Softmax, residual Adds kept in higher
        precision, SmoothQuant on): ``auto`` for the transformer families, or as the recipe says."""
        return self.model_type == "transformer" or (self.model_type == "auto" and transformer_family)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UnknownNameError(f"preset in {self.path}", self.preset, PRESETS)
        if self.selection not in SELECTIONS:
            raise UnknownNameError(f"selection in {self.path}", self.selection, SELECTIONS)
        if self.model_type not in MODEL_TYPES:
            raise UnknownNameError(f"model_type in {self.path}", self.model_type, MODEL_TYPES)
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise UnknownNameError(f"overflow_fix in {self.path}", self.overflow_fix, OVERFLOW_FIXES)
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise UnknownNameError(f"bias_correction in {self.path}", self.bias_correction, BIAS_CORRECTIONS)
        if self.samples < 1:
            raise UsageError(f"{self.path}: samples must be at least 1")

    def to_dict(self, signed_symmetric: bool = False) -> dict:
        return {"recipe": Path(self.path).name, "samples": self.samples, "selection": self.selection,
                "seed": self.seed, "preset": self.preset, "bias_correction": self.bias_correction,
                "smooth_quant_alpha": self.smooth_quant_alpha, "ignored_patterns": list(self.ignored_patterns),
                "model_type": self.model_type, "overflow_fix": self.resolved_overflow_fix(signed_symmetric)}

    def resolved_overflow_fix(self, signed_symmetric: bool = False) -> str:
        """``overflow_fix`` with ``auto`` resolved on this host: ``enable`` where its INT8 kernels lack VNNI (the
        build validates on them), ``first_layer`` (NNCF's own default) elsewhere and for symmetric signed INT8
        (TensorRT's GPUs do not saturate this way)."""
        if self.overflow_fix != "auto":
            return self.overflow_fix
        from edgevit.runtime.measure import host_class

        return "enable" if host_class() == "avx2" and not signed_symmetric else "first_layer"


DEFAULTS_FILE = "_defaults.toml"  # calibration/_defaults.toml: the measured default recipe per backend, CPU and family


def default_recipe(backend: str, family: str) -> tuple[str, str]:
    """The recipe a build without ``--calibration`` uses, and why: the entry of ``calibration/_defaults.toml`` for the
    backend, this host's class of CPU (:func:`edgevit.runtime.measure.host_class`) and the model's family, written from
    ``benchmarks/recipes.py`` runs; ``default`` where it has none."""
    from edgevit._config import tomllib
    from edgevit.runtime.measure import host_class

    cls = host_class()
    with open(recipes_dir() / DEFAULTS_FILE, "rb") as f:
        table = tomllib.load(f)
    name = table.get(backend, {}).get(cls, {}).get(family)
    if name is None:
        return "default", f"no measured default for {family} on {backend}/{cls}"
    return name, f"measured fastest within the accuracy budget for {family} on {backend}/{cls} ({DEFAULTS_FILE})"


def load_recipe(name_or_path: str | None = None, samples: int | None = None) -> Recipe:
    p = resolve_named(recipes_dir(), name_or_path or "default", "calibration recipe")
    r = load_toml_dataclass(Recipe, p, error=UsageError, path=str(p))
    if samples is not None:
        if samples < 1:
            raise UsageError("--calib-samples must be at least 1")
        r = Recipe(**{**r.__dict__, "samples": samples})
    return r


def calibration_images(ds, pre, recipe: Recipe, unlabelled=None) -> tuple[np.ndarray, np.ndarray]:
    """float32 NCHW calibration images drawn from the training split (class-balanced where the recipe says so), or
    at random from ``unlabelled`` (a Split of images without labels: ``--calib-data``), and their indices."""
    from edgevit.data import holdout_split, preprocess_split, sample_indices

    if unlabelled is not None:
        idx = sample_indices(len(unlabelled), recipe.samples, recipe.seed)
        return pre.normalize(preprocess_split(unlabelled.subset(idx), pre, "calibration images",
                                              ds.workers if ds else None)), idx

    pool, _ = holdout_split(len(ds.train))  # the hold-out stays unseen: accuracy-aware PTQ validates on it
    labels = ds.train.labels[pool] if recipe.selection == "balanced" else None
    idx = pool[sample_indices(len(pool), recipe.samples, recipe.seed, labels)]
    return pre.normalize(preprocess_split(ds.train.subset(idx), pre, "calibration images", ds.workers)), idx


def kept_in_higher_precision(ov_model) -> list[str]:
    """MatMul/Convolution ops of a quantized OpenVINO model whose activation input is not quantized."""
    kept = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution"):
            src = op.input(0).get_source_output().get_node().get_type_name()
            if src != "FakeQuantize":
                kept.append(op.get_friendly_name())
    return kept


def accuracy_controlled(backend, onnx_path: Path, images: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                        max_drop: float, recipe: Recipe, transformer: bool):
    """:func:`nncf_quantize_with_accuracy_control` on the backend's model of ``onnx_path``, in a child process
    stopped after :data:`AC_TIME_LIMIT_S` (:class:`~edgevit.errors.AccuracyControlTimeout`); the result comes back as
    an IR written beside the export."""
    import tempfile

    from edgevit.child import run_in_child
    from edgevit.errors import AccuracyControlTimeout, ChildTimedOut

    with tempfile.TemporaryDirectory(prefix="accuracy-control-", dir=Path(onnx_path).parent) as d:
        out = Path(d) / "model.xml"
        try:
            run_in_child(_accuracy_controlled_ir, backend.name, Path(onnx_path), images, val_images, val_labels,
                         max_drop, recipe, transformer, out, timeout=AC_TIME_LIMIT_S)
        except ChildTimedOut:
            raise AccuracyControlTimeout(f"stopped after {AC_TIME_LIMIT_S:g} s (still ranking or reverting layers)"
                                         ) from None
        import openvino as ov  # accuracy control is NNCF's OpenVINO path (capabilities.accuracy_control)

        return ov.Core().read_model(str(out))


def _accuracy_controlled_ir(backend_name: str, onnx_path: Path, images, val_images, val_labels, max_drop: float,
                            recipe: Recipe, transformer: bool, out: Path) -> None:
    """In the child: read, quantize with accuracy control, write the IR (an OpenVINO model does not pickle)."""
    import openvino as ov

    from edgevit._registry import get_backend

    model = get_backend(backend_name).read(onnx_path)
    q = nncf_quantize_with_accuracy_control(model, images, val_images, val_labels, max_drop, recipe, transformer)
    ov.save_model(q, str(out), compress_to_fp16=False)


def nncf_quantize_with_accuracy_control(model, images: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                                        max_drop: float, recipe: Recipe, transformer: bool):
    """NNCF's accuracy-aware PTQ for an OpenVINO model: quantize, then return the layers that cost the most top-1 to
    higher precision until the drop on ``val_images`` is at most ``max_drop`` points (or nothing is left to revert)."""

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, AdvancedQuantizationParameters

    def validate(compiled, items) -> float:
        hits = [int(np.argmax(compiled(x[None])[0]) == y) for x, y in items]
        return float(np.mean(hits)) if hits else 0.0

    calib = nncf.Dataset(list(images), lambda x: x[None])
    val = nncf.Dataset(list(zip(val_images, val_labels)), lambda item: item[0][None])
    kwargs = dict(
        max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(images),
        preset=nncf.QuantizationPreset.MIXED if recipe.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        fast_bias_correction=recipe.bias_correction != "full",
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=AC_MAX_ITERATIONS, ranking_subset_size=min(AC_RANKING_SUBSET, len(val_labels))),
        advanced_quantization_parameters=AdvancedQuantizationParameters(overflow_fix=_overflow_fix(recipe)),
    )
    if recipe.nncf_transformer(transformer):
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    with library_output():
        return nncf.quantize_with_accuracy_control(model, calib, val, validation_fn=validate, **kwargs)


def _overflow_fix(recipe: Recipe, signed_symmetric: bool = False):
    """NNCF's OverflowFix for the recipe's ``overflow_fix`` on this host (:meth:`Recipe.resolved_overflow_fix`)."""
    from nncf.quantization.advanced_parameters import OverflowFix

    return {"enable": OverflowFix.ENABLE, "disable": OverflowFix.DISABLE,
            "first_layer": OverflowFix.FIRST_LAYER}[recipe.resolved_overflow_fix(signed_symmetric)]


TORCH_CALIB_BATCH = 32  # NNCF's torch backend collects statistics per item: batches make it ~10x faster


def nncf_quantize(model, images: np.ndarray, recipe: Recipe, transformer: bool, preset: str | None = None,
                  signed_symmetric: bool = False):
    """Quantize an OpenVINO, ONNX or PyTorch model with NNCF. ``transformer`` selects NNCF's transformer model type,
    which keeps LayerNorm, Softmax and residual Adds in higher precision. A PyTorch model comes back with NNCF's
    fake quantizers inserted: the starting point of quantization-aware training.

    ``signed_symmetric``: symmetric activations, as TensorRT needs (the mixed preset makes them asymmetric). NNCF still
    picks uint8 after ReLUs; :func:`edgevit.backends.tensorrt.rules.unsigned_to_signed` turns those into int8."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    if _is_torch(model):
        import torch

        _torch_extension_timeout()
        items = [images[i:i + TORCH_CALIB_BATCH] for i in range(0, len(images), TORCH_CALIB_BATCH)]

        def transform(x):
            return torch.from_numpy(np.ascontiguousarray(x))
    else:
        items = list(images)
        input_name = _onnx_input_name(model)  # ONNX Runtime feeds inputs by name; OpenVINO takes the array

        def transform(x):
            x = x[None]
            return {input_name: x} if input_name else x

    dataset = nncf.Dataset(items, transform)
    advanced = AdvancedQuantizationParameters(disable_bias_correction=recipe.bias_correction == "none",
                                              overflow_fix=_overflow_fix(recipe, signed_symmetric))
    if recipe.smooth_quant_alpha is not None:
        advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=recipe.smooth_quant_alpha)
    if signed_symmetric:
        preset = "performance"  # symmetric activations; weights are symmetric, signed and per-channel already
    preset_name = preset or recipe.preset
    kwargs = dict(
        preset=nncf.QuantizationPreset.MIXED if preset_name == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(items),  # items are batches for PyTorch
        fast_bias_correction=recipe.bias_correction != "full",
        advanced_parameters=advanced,
    )
    if recipe.nncf_transformer(transformer):
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if recipe.ignored_patterns:
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=list(recipe.ignored_patterns), validate=False)
    with library_output():  # NNCF's progress bars go to stdout; keep stdout for results
        return nncf.quantize(model, dataset, **kwargs)


def _onnx_input_name(model) -> str | None:
    graph = getattr(model, "graph", None)  # an onnx.ModelProto
    return graph.input[0].name if graph is not None and hasattr(graph, "initializer") else None


def quantize_for(backend, onnx_path: Path, precision: str, calibration: np.ndarray | None, recipe: Recipe | None,
                 transformer: bool, accuracy_control: tuple | None = None,
                 qdq_onnx: Path | None = None) -> tuple[object, str | None]:
    """The model ``backend`` compiles, and how it was quantized: the one place the pipeline chooses a quantizer.

    A Q/DQ ONNX from quantization-aware training is taken as it is; INT8 is NNCF's PTQ on the backend's own model
    format (signed symmetric where the backend declares it must be), or NNCF's accuracy-aware PTQ with
    ``accuracy_control`` = (hold-out images, labels, max drop) where the backend declares it can; other precisions
    are the FP32 export unchanged."""
    from edgevit.errors import UsageError

    caps = backend.capabilities
    if qdq_onnx is not None:
        return backend.read(qdq_onnx), f"nncf {_nncf_version()} quantization-aware training (PyTorch), Q/DQ ONNX"
    if precision == "int8" and accuracy_control is not None:
        if not caps.accuracy_control:
            raise UsageError(f"accuracy-aware PTQ is not available for the {backend.name} backend")
        val_x, val_y, max_drop = accuracy_control
        return (accuracy_controlled(backend, onnx_path, calibration, val_x, val_y, max_drop, recipe, transformer),
                f"nncf {_nncf_version()} quantize_with_accuracy_control")
    model = backend.read(onnx_path)
    if precision != "int8":
        return model, None
    how = f"nncf {_nncf_version()}" + (" (symmetric signed INT8)" if caps.int8_signed_symmetric else "")
    return nncf_quantize(model, calibration, recipe, transformer, signed_symmetric=caps.int8_signed_symmetric), how


def _nncf_version() -> str:
    import nncf

    return nncf.__version__


def _is_torch(model) -> bool:
    return type(model).__module__.split(".")[0] != "openvino" and hasattr(model, "state_dict") and hasattr(
        model, "parameters")


def _torch_extension_timeout() -> None:
    """NNCF compiles a small C++ extension on first use in PyTorch; on a busy 2-core machine that takes longer than
    NNCF's 60 s default, after which it gives up. Allow 10 minutes unless the user set their own limit."""
    import os

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
