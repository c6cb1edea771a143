"""``edgevit build``: the pipeline, stage by stage.

request (checked before any work) → prepare (model, data, ONNX export, FP32 reference: :mod:`edgevit.prepare`) →
quantize + compile (:func:`edgevit.quantize.quantize_for`, the backend) → validate and gate (:mod:`edgevit.validate`,
QAT in :mod:`edgevit.qat`) → latency (:mod:`edgevit.latency`) → manifest and bundle (:mod:`edgevit.runtime.bundle`).
``--precision best`` compiles every candidate from one preparation (:mod:`edgevit.best`); a TensorRT bundle is
finished on the device (:mod:`edgevit.backends.tensorrt.compile`)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from edgevit._progress import say
from edgevit.errors import UsageError
from edgevit.qat import QATOptions
from edgevit.stages import BuildResult, Request, compile_gated, latency_stage, speed_stage, write_bundle
from edgevit.targets import Precision
from edgevit.validate import DEFAULT_MAX_DROP

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MAX_DROP", "BuildResult", "QATOptions", "build"]


def build(model: str | torch.nn.Module, *, target: str = "cpu-x86", precision: Precision = "int8", data=None,
          weights: str | None = None, out: str = "build", name: str | None = None, force: bool = False,
          calibration: str | None = None, calib_samples: int | None = None, calib_data: str | None = None,
          val_samples: int | None = None, input_size: int | None = None, workers: int | None = None,
          threads: int | None = None, max_drop: float | None = DEFAULT_MAX_DROP, keep_failed: bool = False,
          qat: QATOptions | None = None, ignore_trt_rules: bool = False, measure_latency: bool = True,
          profile: bool = False, peers: bool = False, speed_search: bool = True, measure: str = "full",
          classes: list[str] | None = None, token_search: bool = False, token_finetune: int = 0,
          latency_budget: float | None = None,
          mean: tuple | None = None, std: tuple | None = None,
          overrides: dict | None = None) -> BuildResult | None:
    """Build ``model`` for ``target`` at ``precision`` into ``out/<name>``: a verified, self-describing bundle.

    INT8 is NNCF post-training quantization calibrated on ``data`` (or ``calib_data``); ``qat`` adds
    quantization-aware training from that initialisation, whose checkpoint is written beside the bundle as
    ``<name>.qat.pt``. ``weights`` may be such a checkpoint: it is rebuilt (or, with ``qat.epochs``, resumed) without
    calibrating again. Every INT8 build is measured against FP32 and gated by ``max_drop`` (top-1 points).
    ``out/<name>`` is replaced only if it is an edgevit bundle (or empty), unless ``force``. ``precision="best"``
    builds every precision the target allows from one preparation and keeps the fastest that passes.

    ``speed_search`` (INT8, OpenVINO): layers that run slower in INT8 than in the host precision on this CPU go
    back to it when that makes the model faster (:mod:`edgevit.backends.openvino.speedmix`); the accuracy gate
    checks the result.

    Without ``calibration``, an OpenVINO INT8 build measures its family's candidate recipes on this host and keeps
    the fastest that passes the gate (:mod:`edgevit.recipe_search`; cached per host, versions and model).
    ``token_search`` (ViT, hybrid; trained weights and labelled data) also tries smaller inputs, judged against the
    full-size FP32 model (:mod:`edgevit.token_search`), each fine-tuned at its size for ``token_finetune``
    epochs. ``latency_budget`` (ms): among the candidates that pass, the most accurate within it rather than the
    fastest.

    ``measure="quick"``: no speed search and no thread or host-precision sweep, a third of the timing: a first look
    in a third of the time (the bundle says so); ``"full"`` measures everything it chooses by.

    ``peers`` (INT8): the backend's one-line INT8 recipe (NNCF with every default) of the same export, on the same
    calibration images, is timed beside the artifact as a baseline (``nncf_default_int8``); it is never shipped.

    Under ``torchrun`` (with ``qat.epochs``), QAT runs data-parallel: every process trains its shard, rank 0 alone
    builds, validates and writes; the other ranks return None.

    ``overrides``: keyword arguments for the model's constructor (timm), e.g. ``{"depth": 6}``.

    From Python, ``model`` may be your own ``torch.nn.Module`` (with ``input_size=``, and ``mean``/``std`` of its
    normalisation; ImageNet's otherwise), and ``data`` your own images: ``(images, labels)`` uint8 arrays, a
    map-style ``Dataset`` or ``DataLoader`` of ``(image, label)``, or ``{"train": ..., "val": ...}`` of those
    (:func:`edgevit.data.from_python`; ``classes`` names the labels)."""
    from edgevit.failure import DURATIONS
    from edgevit.failure import stage as step
    from edgevit.outputs import claim
    from edgevit.prepare import prepare
    from edgevit.runtime.bundle import bundle_dir

    DURATIONS.clear()  # this build's stages only
    if not isinstance(model, str):  # the caller's own module
        from edgevit.models import module_spec

        model = module_spec(model, input_size, name, mean, std)
    if data is not None and not isinstance(data, (str, os.PathLike)):  # the caller's own images
        from edgevit.data import from_python

        data = from_python(data, classes)

    req = request(model, target=target, precision=precision, out=out, name=name, data=data, weights=weights,
                  calibration=calibration, calib_samples=calib_samples, calib_data=calib_data,
                  val_samples=val_samples, qat=qat or QATOptions(), force=force, threads=threads, max_drop=max_drop,
                  keep_failed=keep_failed, ignore_trt_rules=ignore_trt_rules, measure_latency=measure_latency,
                  profile=profile, peers=peers, speed_search=speed_search, measure=measure,
                  token_search=token_search, token_finetune=token_finetune, latency_budget=latency_budget)
    follower = int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    inputs = dict(data=data, weights=weights, input_size=input_size, calib_data=calib_data, val_samples=val_samples,
                  workers=workers, reference=not follower, **(overrides or {}))
    if req.precision == "best":
        from edgevit.best import build_best

        return build_best(req, inputs)
    with contextlib.ExitStack() as prepared:
        with step("preparing the model and data", req.final.parent):
            prep = prepared.enter_context(prepare(req.spec, **inputs))
        if follower:  # it trains its shard of QAT beside rank 0, which builds and writes
            from edgevit.qat import follow_qat

            follow_qat(prep, req.qat, req.recipe, req.signed)
            return None
        with claim(req.final, "bundle", force), bundle_dir(req.final, force, claimed=True) as stage:
            manifest, lat = _stages(prep, req, stage, inputs, prepared.enter_context)
    return BuildResult(req.final, manifest, lat.samples)


def _stages(prep, req: Request, stage: Path, inputs: dict, enter) -> tuple[dict, object]:
    """The stages of one INT8/FP build into ``stage``, each timed (:func:`edgevit.failure.stage`): the recipe (by
    measurement) or the given one, the token search, the speed search, latency, the bundle's manifest."""
    from edgevit.failure import stage as step

    extra = {}
    if req.search_recipe is not None:
        from edgevit.recipe_search import search

        with step("choosing the INT8 recipe by measurement", stage):
            cand, extra["recipe_search"] = search(prep, req, stage, req.search_recipe)
    else:
        with step(f"quantizing and compiling {req.precision}", stage):
            cand = compile_gated(prep, req, req.precision, stage)
    full = prep
    if req.token_search:
        from edgevit.token_search import search as search_tokens

        with step("the token search", stage):
            prep, cand, extra["token_search"] = search_tokens(prep, cand, inputs, enter)
    with step("the speed search", stage):
        cand = speed_stage(prep, req, cand)
    with step("measuring latency", stage):
        lat = latency_stage(prep, req, cand, base=full if prep is not full else None)
    if req.latency_budget is not None and lat.record.get("p50") is not None:
        met = lat.record["p50"] <= req.latency_budget
        extra["latency_budget"] = {"ms": req.latency_budget, "p50_ms": lat.record["p50"], "met": met}
        if not met:
            from edgevit._progress import warn

            warn(f"no candidate runs within the latency budget of {req.latency_budget:g} ms here: the bundle's p50 "
                 f"is {lat.record['p50']:.3f} ms (try --token-search, or a smaller model)")
    with step("writing the bundle", stage):
        return write_bundle(prep, cand, lat, **extra), lat


def request(model, *, target: str, precision: Precision, out: str | os.PathLike, name: str | None = None, data=None,
            weights: str | None = None, calibration: str | None = None, calib_samples: int | None = None,
            calib_data: str | None = None, val_samples: int | None = None, qat: QATOptions | None = None,
            **options) -> Request:
    """Every check that needs no model or data, so a mistake costs nothing and a user's directory is refused before
    any work."""
    from edgevit import recipe_search, token_search
    from edgevit.backends import get_backend, require
    from edgevit.models import ModelSpec, resolve_spec
    from edgevit.outputs import check_output
    from edgevit.qat import check_qat_output
    from edgevit.quantize import NEEDS_IMAGES, default_recipe, load_recipe
    from edgevit.targets import load_target

    if target == "auto":
        from edgevit.detect import detect_target

        target, why = detect_target()
        say(f"--target auto: {target} ({why})")
    tgt = load_target(target)
    if precision != "best":
        tgt.check_precision(precision)
    spec = model if isinstance(model, ModelSpec) else resolve_spec(model)
    backend = get_backend(tgt.backend)
    require(backend)
    final = bundle_path(out, name, f"{spec.alias}-{tgt.name}-{precision}")
    check_output(final, "bundle", options.get("force", False))  # a user's directory is refused, not replaced
    qat = qat or QATOptions()
    qat.check(precision)
    if qat.epochs:
        check_qat_output(final.with_name(f"{final.name}.qat.pt"), weights, options.get("force", False))
    if options.get("measure", "full") not in ("quick", "full"):
        raise UsageError(f"--measure must be quick or full, not {options.get('measure')!r}")
    quantizes = precision in ("int8", "best")
    if precision == "int8" and not data:
        raise UsageError(NEEDS_IMAGES)
    if options.get("latency_budget") is not None and not options["latency_budget"] > 0:
        raise UsageError(f"--latency-budget is milliseconds above 0, not {options['latency_budget']}")
    if val_samples is not None and val_samples < 1:
        raise UsageError("--val-samples must be at least 1")
    if calib_data and not quantizes:
        raise UsageError(f"--calib-data calibrates INT8; --precision {precision} needs no calibration images")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not qat.epochs:
        raise UsageError(f"build runs under torchrun with {world} processes, but only its quantization-aware "
                         "training runs data-parallel: add --qat-epochs N, or run build as one process")
    recipe, search_first = None, None
    if quantizes:
        if calibration is None:  # measured on this host where it can be; else the development machines' table
            calibration, why = default_recipe(tgt.backend, spec.family)
            req = Request(spec, tgt, backend, precision, final, None, qat, weights, **options)
            searching, why_not = recipe_search.applies(req)
            if searching:
                search_first = calibration
            else:
                say(f"calibration recipe {calibration}: {why} (no search: {why_not})")
        recipe = load_recipe(calibration, calib_samples)
    req = Request(spec, tgt, backend, precision, final, recipe, qat, weights, calib_samples=calib_samples,
                  search_recipe=search_first, **options)
    token_search.check(req, spec, data, weights)
    return req


def bundle_path(out: str | os.PathLike, name: str | None, default: str) -> Path:
    """``out/name`` with a name that is one plain path component (never ``..``, a slash or a hidden name)."""
    bundle_name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", default)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", bundle_name) or bundle_name.startswith("."):
        raise UsageError(f"bundle name {bundle_name!r} may only use letters, digits, '.', '_' and '-', and may not "
                         "start with '.'")
    return Path(out) / bundle_name


