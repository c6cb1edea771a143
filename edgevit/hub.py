"""Pretrained weights from the Hugging Face Hub (``--weights hf-hub:timm/NAME[@REVISION]``, or ``--pretrained`` for a
zoo alias's default tag), through huggingface_hub: its cache (``HF_HOME``/``HF_HUB_CACHE``) and ``HF_HUB_OFFLINE``
are honoured, so a machine without internet builds from what was downloaded before. What was used is recorded:
the repository, the revision's commit hash and the weights' sha256; the labels and preprocessing come from the
repository's pretrained config (ImageNet class names for the 1k classifiers)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgevit.errors import UsageError, WeightsError

PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class HubWeights:
    repo_id: str
    revision: str  # the commit hash the files came from
    path: Path  # the local weights file (in the Hugging Face cache)
    config: dict = field(default_factory=dict)  # the repository's config.json (timm's pretrained config)

    @property
    def source(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.revision}"

    @property
    def architecture(self) -> str | None:
        return self.config.get("architecture")

    def labels(self) -> list[str] | None:
        """Class names: the repository's own, or ImageNet-1k's (timm ships them) for 1000-class classifiers."""
        names = self.config.get("label_names") or (self.config.get("pretrained_cfg") or {}).get("label_names")
        if names:
            return [str(n) for n in names]
        if int(self.config.get("num_classes", 0)) == 1000:
            from timm.data import ImageNetInfo

            return [d.split(",")[0] for d in ImageNetInfo().label_descriptions()]
        return None

    def preprocessing_overrides(self) -> dict:
        cfg = self.config.get("pretrained_cfg") or {}
        return {k: cfg[k] for k in ("mean", "std", "crop_pct", "interpolation", "input_size") if k in cfg}


def is_hub(weights: str | None) -> bool:
    return bool(weights) and str(weights).startswith(PREFIX)


def resolve(weights: str) -> HubWeights:
    """Download (or find in the cache) ``hf-hub:OWNER/NAME[@REVISION]``; one clear error when it cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    spec = weights[len(PREFIX):]
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UsageError(f"--weights {weights}: give hf-hub:OWNER/NAME[@REVISION], e.g. "
                         "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    path = None
    for filename in WEIGHT_FILES:
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision or None))
            break
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: caught first
            raise WeightsError(
                f"{repo_id} is not in the local Hugging Face cache and this machine is offline (HF_HUB_OFFLINE or no "
                f"network); download it where there is internet: huggingface-cli download {repo_id} (then copy the "
                "cache, HF_HOME), or unset HF_HUB_OFFLINE") from None
        except EntryNotFoundError:
            continue  # try the next file name
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise WeightsError(f"{weights}: {type(e).__name__.replace('Error', '')} on the Hugging Face Hub; check "
                               "the name (timm's are timm/<model>.<tag>) and the revision") from None
    if path is None:
        raise WeightsError(f"{repo_id} has no {' or '.join(WEIGHT_FILES)}; it is not a timm model repository")
    commit = path.parent.name  # .../snapshots/<commit>/model.safetensors
    config: dict = {}
    try:
        config = json.loads(Path(hf_hub_download(repo_id, "config.json", revision=commit)).read_text())
    except (EntryNotFoundError, LocalEntryNotFoundError, ValueError, OSError):
        pass
    return HubWeights(repo_id, commit, path, config)


def default_repo(timm_name: str) -> str:
    """``--pretrained``: timm's default pretrained tag for an architecture, as its Hub repository."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise UsageError(f"timm has no pretrained weights on the Hugging Face Hub for {timm_name}; pass --weights")
    return f"{PREFIX}{cfg.hf_hub_id}"
