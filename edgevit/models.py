"""The model zoo: short aliases over timm, and safe weight loading.

Every model is built by ``timm.create_model``; an alias only fixes the timm name, its input size and the kwargs that
make a small variant. Any other timm model name works too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgevit.errors import UnknownNameError, UsageError, WeightsError
from edgevit.outputs import sha256_file  # noqa: F401  (re-exported: models and weights are hashed with it)

FMNIST_MEAN = (0.2860, 0.2860, 0.2860)
FMNIST_STD = (0.3530, 0.3530, 0.3530)
TRANSFORMER_FAMILIES = ("vit", "hybrid", "maxvit")


@dataclass(frozen=True)
class TrainDefaults:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: bool = True  # random flips and small shifts; short schedules converge faster without


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    timm_name: str
    family: str  # vit | hybrid | maxvit | mobilenet | resnet | other
    input_size: int
    description: str
    num_classes: int | None = None  # None: the timm default (1000) unless data or weights say otherwise
    kwargs: dict = field(default_factory=dict)
    # preprocessing overrides; None takes timm's pretrained config for the architecture
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    train: TrainDefaults = TrainDefaults()
    module: object = field(default=None, compare=False, repr=False)  # a user's torch.nn.Module (module_spec)

    @property
    def is_transformer(self) -> bool:
        return self.family in TRANSFORMER_FAMILIES


def module_spec(module, input_size: int | None, name: str | None = None, mean=None, std=None) -> ModelSpec:
    """A spec for the caller's own ``torch.nn.Module`` (``edgevit.build(my_model, input_size=..., ...)``): its
    family from its class and layers (attention → a transformer, so NNCF's transformer recipe applies), its
    preprocessing the caller's mean/std (ImageNet's otherwise) without a centre crop."""
    import torch

    from edgevit.errors import UsageError

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"model must be a zoo or timm name or a torch.nn.Module, not {type(module).__name__}")
    if not input_size or not isinstance(input_size, int) or not 8 <= input_size <= 1024:
        raise UsageError("a torch.nn.Module needs input_size= (its square input side in pixels, 8..1024)")
    cls = type(module).__name__
    family = _guess_family(cls)
    if family == "other" and any("attention" in type(m).__name__.lower() for m in module.modules()):
        family = "vit"
    alias = name or re.sub(r"[^a-z0-9]+", "-", cls.lower()).strip("-") or "model"
    return ModelSpec(alias, cls, family, input_size, f"the caller's {cls}", mean=tuple(mean) if mean else None,
                     std=tuple(std) if std else None, crop_pct=1.0, module=module)


_FMNIST = dict(num_classes=10, mean=FMNIST_MEAN, std=FMNIST_STD, crop_pct=1.0, interpolation="bilinear")

ZOO: dict[str, ModelSpec] = {s.alias: s for s in [
    ModelSpec("vit-tiny", "vit_tiny_patch16_224", "vit", 224, "ViT-Ti/16, 5.7M params"),
    ModelSpec("vit-small", "vit_small_patch16_224", "vit", 224, "ViT-S/16, 22M params"),
    ModelSpec("hybrid-tiny", "vit_tiny_r_s16_p8_224", "hybrid", 224, "ResNet stem + ViT-Ti, 8x8 patches"),
    ModelSpec("maxvit-pico", "maxvit_rmlp_pico_rw_256", "maxvit", 256, "MaxViT pico (relative-MLP bias), 7.5M"),
    ModelSpec("maxvit-nano", "maxvit_nano_rw_256", "maxvit", 256, "MaxViT nano, 15M params"),
    ModelSpec("mobilenetv3-large", "mobilenetv3_large_100", "mobilenet", 224, "MobileNetV3-Large 1.0 (baseline)"),
    ModelSpec("resnet18", "resnet18", "resnet", 224, "ResNet-18 (baseline)"),
    ModelSpec("resnet50", "resnet50", "resnet", 224, "ResNet-50 (baseline)"),
    # Small-input variants that train on Fashion-MNIST in minutes on 2 CPU cores.
    ModelSpec("vit-tiny-fmnist", "vit_tiny_patch16_224", "vit", 32,
              "ViT 32px, 8x8 patches (16 tokens), dim 128, depth 6, 4 heads",
              kwargs=dict(patch_size=8, embed_dim=128, depth=6, num_heads=4),
              train=TrainDefaults(epochs=5, batch_size=64, lr=1e-3, augment=False), **_FMNIST),
    ModelSpec("hybrid-tiny-fmnist", "vit_tiny_r_s16_p8_224", "hybrid", 32,
              "ResNet stem (stride 4) + ViT dim 192, depth 4, 2x2 patches (16 tokens)",
              kwargs=dict(patch_size=2, depth=4), train=TrainDefaults(epochs=3, lr=1e-3), **_FMNIST),
    ModelSpec("maxvit-pico-fmnist", "maxvit_rmlp_pico_rw_256", "maxvit", 64,
              "MaxViT pico at 64px (Fashion-MNIST upscaled)", train=TrainDefaults(epochs=2, lr=1e-3), **_FMNIST),
    ModelSpec("mobilenetv3-fmnist", "mobilenetv3_large_100", "mobilenet", 32, "MobileNetV3-Large at 32px",
              train=TrainDefaults(epochs=3, lr=2e-3, weight_decay=0.01), **_FMNIST),
    ModelSpec("resnet18-fmnist", "resnet18", "resnet", 32, "ResNet-18 at 32px",
              train=TrainDefaults(epochs=3, lr=1e-3, weight_decay=0.01), **_FMNIST),
]}


def _guess_family(timm_name: str) -> str:
    n = timm_name.lower()
    if "maxvit" in n or "maxxvit" in n:
        return "maxvit"
    if "_r_" in n or "_r26_" in n or "_r50_" in n or "hybrid" in n:
        return "hybrid"
    if n.startswith(("vit", "deit", "eva", "beit")):
        return "vit"
    if "mobilenet" in n:
        return "mobilenet"
    if "resnet" in n:
        return "resnet"
    return "other"


def resolve_spec(name: str) -> ModelSpec:
    """An alias from the zoo, or any timm model name (its family guessed from the name)."""
    if name in ZOO:
        return ZOO[name]
    import timm

    if name in timm.list_models():
        cfg = timm.models.get_pretrained_cfg(name)
        size = int(cfg.input_size[-1]) if cfg is not None else 224
        return ModelSpec(name, name, _guess_family(name), size, f"timm model {name}")
    raise UnknownNameError("model", name, list(ZOO), hint="or any name from timm.list_models()")


def data_config(spec: ModelSpec, input_size: int | None = None, pretrained: dict | None = None):
    """The preprocessing of a model: timm's pretrained config (or ``pretrained``: the config of the weights actually
    used, from their Hub repository), overridden by the alias."""
    import timm

    from edgevit.runtime.images import Preprocessing

    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    cfg = {**(cfg.to_dict() if cfg is not None else {}), **(pretrained or {})}
    size = input_size or spec.input_size
    crop_pct = spec.crop_pct if spec.crop_pct is not None else cfg.get("crop_pct", 0.875)
    interpolation = spec.interpolation or cfg.get("interpolation", "bilinear")
    return Preprocessing(
        input_size=(size, size), resize=int(round(size / crop_pct)),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
        mean=tuple(spec.mean or cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(spec.std or cfg.get("std", (0.229, 0.224, 0.225))),
    )


def create_model(spec: ModelSpec, num_classes: int | None = None, input_size: int | None = None, **overrides):
    """Build a randomly initialised timm model for ``spec`` (eval mode)."""
    import timm

    kwargs = dict(spec.kwargs)
    kwargs.update(overrides)
    size = input_size or spec.input_size
    nc = num_classes or spec.num_classes
    if nc:
        kwargs["num_classes"] = nc
    if spec.is_transformer:  # CNNs are size-agnostic; transformers size their position tables and windows
        kwargs.setdefault("img_size", size)
    try:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    except TypeError as e:
        raise UsageError(f"timm model {spec.timm_name} does not accept {sorted(kwargs)}: {e}") from None
    return model.eval()


# ------------------------------------------------------------------------------------------------------ weights
def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a state dict without executing pickled code: safetensors, or ``torch.load(weights_only=True)`` for
    plain state dicts, timm checkpoints (``state_dict``/``model``/``state_dict_ema`` keys) and edgevit checkpoints.
    Returns (state_dict, metadata) where metadata is whatever non-tensor information the file carried."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    if p.stat().st_size == 0:
        raise WeightsError(f"weights file is empty: {p}")
    meta: dict = {}
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read safetensors file {p}: {e}") from None
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(
                f"cannot read weights {p}: {first} (edgevit loads only safetensors or tensor-only checkpoints)"
            ) from None
        if not isinstance(obj, dict):
            raise WeightsError(f"{p} holds a {type(obj).__name__}, not a state dict")
        sd = obj
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                sd = obj[key]
                meta = {k: v for k, v in obj.items() if k not in ("state_dict", "model", "optimizer", "scheduler",
                                                                   "state_dict_ema", "model_ema")}
                break
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items() if hasattr(v, "shape")}
    if not sd:
        raise WeightsError(f"{p} contains no tensors")
    return sd, meta


HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head.fc.")


def load_weights(model, path: str | os.PathLike, replace_head: bool = False) -> dict:
    """Load ``path`` into ``model`` (see :func:`apply_state_dict`). Returns the file's metadata. ``replace_head``
    (fine-tuning pretrained weights on other classes): a classifier of another class count is left freshly
    initialised instead of refused."""
    sd, meta = read_state_dict(path)
    if replace_head:
        own = model.state_dict()
        other = [k for k, v in sd.items() if k.startswith(HEAD_PREFIXES) and k in own
                 and tuple(v.shape) != tuple(own[k].shape)]
        if other:
            from edgevit._progress import say

            for k in other:
                sd[k] = own[k]
            say(f"fine-tuning: the classifier ({', '.join(other)}) is new for this dataset's "
                f"{next(iter(own[k].shape for k in other))[0]} classes; the rest is pretrained")
            meta = {**meta, "replaced_head": other}
    apply_state_dict(model, sd, path)
    return meta


def apply_state_dict(model, sd: dict, path: str | os.PathLike) -> None:
    """Load ``sd`` (read from ``path``) into ``model``; resample absolute position embeddings (bicubic) when the grid
    differs; refuse missing, unexpected or mis-shaped tensors with a message naming both shapes."""
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        sd["pos_embed"] = _resample_pos_embed(model, sd["pos_embed"])
    for k in [k for k in sd if k.endswith(REL_POS_TABLE) and k in own and sd[k].shape != own[k].shape]:
        sd[k] = _resize_rel_pos_table(sd[k], tuple(own[k].shape))  # windows sized by the input (MaxViT)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not match this architecture: {len(missing)} missing tensors "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); check --model"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            if k.startswith(HEAD_PREFIXES) and v.ndim >= 1:
                raise WeightsError(
                    f"{path}: classifier {k} has shape {tuple(v.shape)} ({v.shape[0]} classes) but the model "
                    f"expects {tuple(own[k].shape)} ({own[k].shape[0]} classes); use data with {v.shape[0]} classes "
                    "or weights trained for this dataset"
                )
            raise WeightsError(f"{path}: tensor {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=True)


REL_POS_TABLE = "relative_position_bias_table"


def _resize_rel_pos_table(table, shape: tuple):
    """A relative position bias table of (2w-1)² rows resized to another window (timm's interpolation), as a model
    whose windows follow its input size (MaxViT: the input / 32) needs at another size."""
    import math
    import warnings

    from timm.layers import resize_rel_pos_bias_table

    side = math.isqrt(shape[0])
    if side * side != shape[0] or side % 2 == 0 or table.ndim != len(shape):
        raise WeightsError(f"a relative position table of shape {tuple(table.shape)} cannot be resized to {shape}")
    w = (side + 1) // 2
    with warnings.catch_warnings():  # timm's interpolation warns about its own tensor layout, nothing of ours
        warnings.simplefilter("ignore", UserWarning)
        return resize_rel_pos_bias_table(table, new_window_size=(w, w), new_bias_shape=shape)


def _resample_pos_embed(model, pos_embed):
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    new_grid = model.patch_embed.grid_size
    old_tokens = pos_embed.shape[1] - prefix
    old = int(round(old_tokens ** 0.5))
    if old * old != old_tokens or pos_embed.shape[-1] != model.pos_embed.shape[-1]:
        raise WeightsError(
            f"pos_embed of shape {tuple(pos_embed.shape)} cannot be resampled to {tuple(model.pos_embed.shape)}"
        )
    return resample_abs_pos_embed(pos_embed, new_size=new_grid, old_size=(old, old), num_prefix_tokens=prefix,
                                  interpolation="bicubic", antialias=False)
