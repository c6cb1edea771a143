"""Pretrained weights from the Hugging Face Hub (``--weights hf-hub:timm/NAME[@REVISION]``, or ``--pretrained`` for a
zoo alias's default tag), through huggingface_hub: its cache (``HF_HOME``/``HF_HUB_CACHE``) and ``HF_HUB_OFFLINE``
are honoured, so a machine without internet builds from what was downloaded before. What was used is recorded:
the repository, the revision's commit hash and the weights' sha256; the labels and preprocessing come from the
repository's pretrained config (ImageNet class names for the 1k classifiers)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgevit._progress import library_output
from edgevit.errors import UsageError, WeightsError, reading
from edgevit.outputs import loads
from edgevit.runtime.images import INTERPOLATIONS
from edgevit.schema import Fields

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
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id or (revision and not
                                                                                 REVISION.fullmatch(revision)):
        raise UsageError(f"--weights {weights[:200]!r}: give hf-hub:OWNER/NAME[@REVISION] (letters, digits, '-', '_', "
                         "'.'), e.g. hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    path, offline = None, False
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and not _reachable(constants.ENDPOINT):
        # no network: what the cache holds, at once (huggingface_hub would retry each file for ~45 s)
        path = _cached(repo_id, revision)
        if path is None:
            raise WeightsError(
                f"{repo_id} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be reached; "
                f"download it where there is internet: hf download {repo_id} (then copy the cache, HF_HOME)")
    for filename in WEIGHT_FILES if path is None else ():
        try:
            with library_output():  # huggingface_hub's retry and progress lines only with -v
                path = Path(hf_hub_download(repo_id, filename, revision=revision or None))
            break
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: this file is not cached, maybe the next
            offline = True
        except EntryNotFoundError:
            continue  # try the next file name
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise WeightsError(f"{weights}: {type(e).__name__.replace('Error', '')} on the Hugging Face Hub; check "
                               "the name (timm's are timm/<model>.<tag>) and the revision") from None
    if path is None and offline:
        raise WeightsError(
            f"{repo_id} is not in the local Hugging Face cache and this machine is offline (HF_HUB_OFFLINE or no "
            f"network); download it where there is internet: hf download {repo_id} (then copy the cache, HF_HOME), "
            "or unset HF_HUB_OFFLINE")
    if path is None:
        raise WeightsError(f"{repo_id} has no {' or '.join(WEIGHT_FILES)}; it is not a timm model repository")
    commit = path.parent.name  # .../snapshots/<commit>/model.safetensors
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        try:
            with library_output():
                config_path = Path(hf_hub_download(repo_id, "config.json", revision=commit))
        except (EntryNotFoundError, OSError):  # no config.json (cached or on the Hub): timm's defaults apply
            return HubWeights(repo_id, commit, path, {})
    with reading(f"{repo_id}'s config.json ({config_path})", WeightsError,
                 f"download it again: hf download {repo_id} --force-download"):
        config = check_config(loads(config_path.read_text()), repo_id)
    return HubWeights(repo_id, commit, path, config)


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Does the Hub answer at all (one HEAD request, no retries)? Any HTTP answer counts."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _cached(repo_id: str, revision: str | None) -> Path | None:
    """The weights file of ``repo_id`` at ``revision`` (default: the cached ``main``) in the local cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,99}")


def check_config(cfg, repo_id: str) -> dict:
    """A Hub repository's config.json (timm's pretrained config), checked field by field before any work uses it:
    a WeightsError naming the field otherwise."""
    f = Fields(lambda field, why: WeightsError(f"{repo_id}'s config.json: {field} {why}; the repository is not a "
                                               "timm classifier edgevit can read (or the download is damaged)"))
    if not isinstance(cfg, dict):
        raise f.fail("(top level)", f"must be an object, not {type(cfg).__name__}")
    cfg = {k: v for k, v in cfg.items() if v is not None}  # JSON null: not given (timm's default applies)
    if isinstance(cfg.get("pretrained_cfg"), dict):
        cfg["pretrained_cfg"] = {k: v for k, v in cfg["pretrained_cfg"].items() if v is not None}
    if f.get(cfg, "architecture", "", str, optional=True) is not None and not re.fullmatch(
            r"[A-Za-z0-9_.]{1,100}", cfg["architecture"]):
        raise f.fail("architecture", "is not a timm model name")
    classes = f.int(cfg, "num_classes", "", 1, 100_000, optional=True)
    pre = f.get(cfg, "pretrained_cfg", "", dict, optional=True) or {}
    for where, d in (("", cfg), ("pretrained_cfg", pre)):
        names = f.get(d, "label_names", where, list, optional=True)
        for i, n in enumerate(names or []):
            f.check_text(n, f"{where + '.' if where else ''}label_names[{i}]", 200)
        if names is not None and classes is not None and len(names) != classes:
            raise f.fail(f"{where + '.' if where else ''}label_names", f"has {len(names)} names for {classes} classes")
    f.numbers(pre, "mean", "pretrained_cfg", 3, optional=True)
    f.numbers(pre, "std", "pretrained_cfg", 3, positive=True, optional=True)
    f.number(pre, "crop_pct", "pretrained_cfg", 0.0, 1.0, optional=True, above=True)
    f.choice(pre, "interpolation", "pretrained_cfg", INTERPOLATIONS, optional=True)  # what edgevit resizes with
    size = f.get(pre, "input_size", "pretrained_cfg", list, optional=True)
    if size is not None and (len(size) != 3 or size[0] != 3 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= 4096 for s in size[1:])):
        raise f.fail("pretrained_cfg.input_size", f"must be [3, height, width] with sides 8..4096, got {size!r}"[:160])
    return cfg


def default_repo(timm_name: str) -> str:
    """``--pretrained``: timm's default pretrained tag for an architecture, as its Hub repository."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise UsageError(f"timm has no pretrained weights on the Hugging Face Hub for {timm_name}; pass --weights")
    return f"{PREFIX}{cfg.hf_hub_id}"
