"""A bundle's manifest as types: what ``manifest.json`` holds (:mod:`edgevit.runtime.bundle` reads, checks and
writes it) and the typed view every reader takes of it, :class:`Manifest`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

# The baselines a build times beside its artifact, by explicit key (``latency_ms.baselines``)
TORCH_EAGER = "torch_eager_fp32"  # PyTorch eager FP32 at its fastest thread count
BACKEND_DEFAULT = "backend_default_fp32"  # the backend with its own defaults on the FP32 export ("backend" names it)
NNCF_DEFAULT = "nncf_default_int8"  # NNCF's one-line INT8 of the same export (peers)
BASELINES = (TORCH_EAGER, BACKEND_DEFAULT, NNCF_DEFAULT)


# ------------------------------------------------------------------------------------------- schema, as types
# What ``manifest.json`` holds; :func:`edgevit.runtime.bundle.validate_manifest` checks the same at run time. Every
# reader goes through :func:`edgevit.runtime.bundle.read_manifest`, which returns a :class:`Manifest`.
class ModelRecord(TypedDict):
    alias: str
    timm_name: str
    family: str
    num_classes: int
    input_size: list[int]  # [3, H, W]
    weights: str | None
    weights_sha256: str | None
    random_init: bool
    overrides: dict


class Timing(TypedDict, total=False):
    p50: float  # ms
    p90: float
    p99: float
    isolated: bool  # timed in its own process
    threads: int
    executed_precision: str | None
    backend: str  # BACKEND_DEFAULT: which backend's defaults
    threads_sweep: dict
    recipe: str  # NNCF_DEFAULT: the call that made it


class Baselines(TypedDict, total=False):
    torch_eager_fp32: Timing
    backend_default_fp32: Timing
    nncf_default_int8: Timing


class LatencyRecord(TypedDict, total=False):
    host: dict  # cpu, isa, cores (+ gpu after `edgevit compile`)
    threads: int | None
    batch: int
    artifact: Timing
    baselines: Baselines
    threads_sweep: dict
    method: str
    p50: float
    p90: float
    skipped: str  # why nothing was timed


class Validation(TypedDict, total=False):
    dataset: str
    split: str
    samples: int
    reference: str
    reference_top1: float
    top1: float
    top5: float
    top1_drop: float  # points lost against FP32 PyTorch
    max_abs_logit_diff: float
    argmax_agreement: float
    measured_with: str
    note: str
    qdq_onnx: dict
    skipped: str  # why accuracy was not measured


@dataclass(frozen=True)
class ModelInfo:
    """The manifest's ``model`` section, read."""

    alias: str
    timm_name: str
    family: str
    num_classes: int
    input_size: tuple[int, int, int]  # (3, H, W)
    random_init: bool
    weights_sha256: str | None


@dataclass(frozen=True)
class BackendInfo:
    """The manifest's ``backend`` section, read: its name and version, the runtime it ran in here, and what the
    backend recorded when it built the artifact (``details``: threads, host precision, engine, plan...)."""

    name: str
    version: str | None
    runtime: dict
    details: dict

    @property
    def engine(self) -> dict | None:  # TensorRT: the engine built here, or why it is pending
        return self.details.get("engine")

    @property
    def plan(self) -> dict:  # TensorRT: the engine plan
        return self.details.get("plan") or {}

    @property
    def trt_rules(self) -> dict | None:  # TensorRT: the Q/DQ rule check of the ONNX
        return self.details.get("trt_rules")


class Manifest:
    """A bundle's ``manifest.json``, read through typed fields. :mod:`edgevit.runtime.bundle` makes one
    (``read_manifest``, ``write_manifest``, ``update_manifest``, each after ``validate_manifest``); ``data`` is the
    JSON object itself, which ``--json`` prints and :meth:`updated` copies for a rewrite."""

    __slots__ = ("data",)

    def __init__(self, data: dict):
        self.data = data

    def __repr__(self) -> str:
        return f"Manifest({self.model.alias} {self.precision} for {self.target_name})"

    @property
    def model(self) -> ModelInfo:
        m = self.data["model"]
        return ModelInfo(m["alias"], m["timm_name"], m["family"], m["num_classes"], tuple(m["input_size"]),
                         bool(m.get("random_init")), m.get("weights_sha256"))

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def status(self) -> str:  # "ok" or "failed-validation"
        return self.data.get("status", "ok")

    @property
    def labels(self) -> list[str]:
        return list(self.data["labels"])

    @property
    def files(self) -> dict[str, dict]:  # relative path -> {sha256, bytes}
        return self.data["files"]

    @property
    def target(self):  # -> edgevit.targets.Target
        from edgevit.targets import Target

        return Target.from_dict(self.data["target"])

    @property
    def target_name(self) -> str:
        return self.data["target"]["name"]

    @property
    def batch(self) -> int:
        return int(self.data["target"].get("batch", 1))

    @property
    def preprocessing(self):  # -> edgevit.runtime.images.Preprocessing
        from edgevit.runtime.images import Preprocessing

        return Preprocessing.from_dict(self.data["preprocessing"])

    @property
    def backend(self) -> BackendInfo:
        b = self.data["backend"]
        return BackendInfo(b["name"], b.get("version"), b.get("runtime") or {}, b)

    @property
    def validation(self) -> Validation:
        return self.data["validation"]

    @property
    def latency(self) -> LatencyRecord:
        return self.data["latency_ms"]

    @property
    def device_check(self) -> dict | None:
        return self.data.get("device_check")

    def section(self, name: str) -> dict | None:
        """An optional record of the build (accuracy_gate, selection, recipe_search, token_search, latency_budget,
        stage_seconds, profile, qat, calibration...), or None; a name the schema does not know is an error."""
        if name not in OPTIONAL_SECTIONS:
            raise KeyError(f"{name!r} is not an optional manifest section ({', '.join(OPTIONAL_SECTIONS)})")
        return self.data.get(name)

    def candidates(self) -> list[dict]:
        """Every candidate the build measured and that passed its gate, as points for an accuracy/latency front:
        ``label`` (``recipe performance``, ``24 px``), ``p50_ms`` (timed against each other in the build's search),
        ``top1``, ``size_bytes`` and whether it was ``chosen``; empty where nothing was searched or measured."""
        out = []
        rs, v = self.data.get("recipe_search") or {}, self.validation
        ref = v.get("reference_top1")
        for name, p50 in (rs.get("p50_ms") or {}).items():
            drop = (rs.get("top1_drop") or {}).get(name)
            out.append({"label": f"recipe {name}", "p50_ms": p50, "chosen": name == rs.get("chosen"),
                        "top1": None if ref is None or drop is None else round(ref - drop, 2),
                        "size_bytes": (rs.get("size_bytes") or {}).get(name)})
        ts = self.data.get("token_search") or {}
        for c in ts.get("candidates", []):
            if "p50_ms" in c:
                out.append({"label": f"{c['size']} px", "p50_ms": c["p50_ms"], "top1": c.get("top1"),
                            "size_bytes": c.get("size_bytes"), "chosen": c["size"] == ts.get("chosen")})
        return out

    @property
    def build_seconds(self) -> float | None:
        return self.data.get("build_seconds")

    def updated(self, **sections) -> dict:
        """A copy of the JSON object with these top-level sections replaced, for :func:`update_manifest`."""
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise KeyError(f"not manifest sections: {', '.join(unknown)}")
        import copy

        return {**copy.deepcopy(self.data), **sections}


# Every top-level section a manifest may hold (the one builder, :func:`write_manifest`, takes no other)
REQUIRED_SECTIONS = ("edgevit_version", "model", "preprocessing", "labels", "target", "precision", "backend",
                     "validation", "latency_ms", "files", "schema_version")
OPTIONAL_SECTIONS = ("requested_precision", "export", "calibration", "device_check", "accuracy_gate", "qat",
                     "selection", "recipe_search", "token_search", "latency_budget", "status", "build_seconds",
                     "stage_seconds", "provenance", "profile")
SECTIONS = REQUIRED_SECTIONS + OPTIONAL_SECTIONS
