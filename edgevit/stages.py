"""The stages of one build, each reading the checked :class:`Request` and the :class:`~edgevit.prepare.Prepared`
model: compile (the pipeline's one choice of quantizer, then the backend), validate and gate (fallbacks: QAT, or
accuracy-aware PTQ), latency, and the bundle's manifest. :func:`edgevit.build.build` runs them for one precision,
:func:`edgevit.best.build_best` for every candidate."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgevit._progress import say
from edgevit.backends import LoadSpec
from edgevit.errors import AccuracyControlTimeout, UsageError, ValidationFailedError
from edgevit.qat import QATOptions, QATStage
from edgevit.quantize import AC_MAX_ITERATIONS, NEEDS_IMAGES
from edgevit.validate import DEFAULT_MAX_DROP, Artifact, Gate

if TYPE_CHECKING:
    import numpy as np

    from edgevit.backends import Backend
    from edgevit.models import ModelSpec
    from edgevit.quantize import Recipe
    from edgevit.runtime.manifest import Manifest
    from edgevit.targets import Target


@dataclass
class BuildResult:
    bundle: Path
    manifest: Manifest
    samples: dict | None = None  # raw per-call latency samples (ms) of what was timed, kept out of the manifest


@dataclass
class Request:
    """A build request, checked before any work: what every stage reads."""

    spec: ModelSpec
    target: Target
    backend: Backend
    precision: str
    final: Path  # out/<name>
    recipe: Recipe | None  # int8
    qat: QATOptions
    weights: str | None
    force: bool = False
    threads: int | None = None
    max_drop: float | None = DEFAULT_MAX_DROP
    keep_failed: bool = False
    ignore_trt_rules: bool = False
    measure_latency: bool = True
    profile: bool = False
    peers: bool = False
    speed_search: bool = True
    measure: str = "full"  # "quick": no speed search, no thread or host-precision sweep, shorter timing
    calib_samples: int | None = None  # --calib-samples: every recipe tried takes this count
    search_recipe: str | None = None  # no --calibration: search the recipes, this one (the shipped table's) first
    token_search: bool = False  # also smaller inputs (edgevit.token_search)
    token_finetune: int = 0  # epochs of fine-tuning at each smaller input
    latency_budget: float | None = None  # ms: the most accurate candidate within it, not the fastest
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def signed(self) -> bool:  # TensorRT: INT8 quantizers must be signed symmetric
        return self.backend.capabilities.int8_signed_symmetric


@dataclass
class Candidate:
    """One artifact on its way to a bundle, as every stage after compiling takes and returns it."""

    precision: str
    stage: Path  # the directory its files are in
    art: Artifact
    gate: Gate | None
    qat: dict  # the QAT record ({} without QAT)
    calib: np.ndarray | None  # the calibration images (float32 NCHW) it was quantized with
    req: Request  # what built it, with the recipe it was quantized with
    speed_search: dict | None = None  # the speed stage's record (None: it did not run)

    def size_bytes(self) -> int:
        """The bytes of the artifact's files (what a bundle of it would ship, less labels and check images)."""
        return sum((self.stage / f).stat().st_size for f in self.art.built.files)

    def moved_to(self, stage: Path) -> Candidate:
        """The same candidate with its files copied into ``stage`` (replacing what is there)."""
        restore_stage(self.stage, stage)
        return replace(self, stage=stage)


def check_candidate(prep, req: Request, precision: str) -> None:
    """What the prepared model allows at ``precision``: a QAT checkpoint builds only INT8, for the quantizers it was
    trained with; INT8 needs calibration images."""
    if precision == "int8" and prep.ds is None:
        raise UsageError(NEEDS_IMAGES)
    if req.qat.epochs and precision != "int8":
        raise UsageError(f"quantization-aware training makes INT8 models; --qat-epochs/--distill need --precision "
                         f"int8, not {precision}")
    if prep.qmodel is None:
        return
    w = prep.weights
    if precision != "int8":
        raise UsageError(f"{w.arg} is a quantization-aware training checkpoint: build it with --precision int8")
    trained_for = w.edgevit.get("qat_quantizer")  # absent in checkpoints older than this field: the rules decide
    if req.signed and trained_for and trained_for != "signed symmetric":
        raise UsageError(
            f"{w.arg} was quantization-aware trained for {w.edgevit.get('qat_target', 'another target')} with "
            f"{trained_for} quantizers; {req.target.name} ({req.backend.name}) needs signed symmetric INT8. Train QAT "
            f"for this target from the FP32 weights: --weights FP32.pt --target {req.target.name} --qat-epochs N")


def compile_artifact(prep, req: Request, precision: str, stage: Path, calib=None, accuracy_control=None,
                     qdq: Path | None = None) -> Artifact:
    """Quantize (the pipeline's one choice of quantizer), compile with the backend, load and validate."""
    from edgevit.backends import BuildJob
    from edgevit.export import onnx_metadata
    from edgevit.quantize import quantize_for
    from edgevit.validate import validate

    model, quantizer = quantize_for(req.backend, prep.onnx_path, precision, calib, req.recipe,
                                    prep.spec.is_transformer, accuracy_control, qdq)
    built = req.backend.build(BuildJob(
        model=model, onnx_path=prep.onnx_path, precision=precision, target=req.target, out_dir=stage,
        quantizer=quantizer, qat=qdq is not None, calibration=calib, allow_rule_violations=req.ignore_trt_rules,
        metadata=onnx_metadata(prep.classes, prep.pre.to_dict(), prep.spec.alias)))
    runner = req.backend.load(stage, LoadSpec(precision, req.target, built.details), req.threads)
    return Artifact(built, runner, validate(prep, runner, f"{precision} ({req.backend.name})"))


def compile_gated(prep, req: Request, precision: str, stage: Path, fallback: bool = True,
                  method: str = "PTQ") -> Candidate:
    """The artifact for ``precision`` in ``stage``, held to the accuracy gate with its fallbacks (QAT, accuracy-aware
    PTQ). Without ``fallback`` (a candidate of a search), one over budget is returned as it is, its gate not
    passed, for the caller to leave out. ``method``: what the gate calls plain PTQ here."""
    check_candidate(prep, req, precision)
    (stage / "labels.txt").write_text("\n".join(prep.classes) + "\n")
    calib = None
    if precision == "int8" and (prep.qmodel is None or req.signed):  # TensorRT: V's scale from calibration too
        calib = prep.calibration(req.recipe)
    say(f"building {precision} for {req.target.name} with {req.backend.name} {req.backend.version()}")
    qat = QATStage(prep, req.qat, req.recipe, req.final.with_name(f"{req.final.name}.qat.pt"),
                   _qat_meta(prep, req), req.threads) if precision == "int8" else None
    qdq = qat.qdq(0, req.signed) if qat and prep.qmodel is not None else None  # a QAT checkpoint, as it is
    art = compile_artifact(prep, req, precision, stage, calib, qdq=qdq)
    gate = Gate.open(precision, prep, art.validation, req.max_drop, "QAT checkpoint" if qdq else method)
    if fallback and gate and (req.qat.epochs or not gate.passed):
        art = _fallback(prep, req, stage, art, gate, qat, calib)
    record = qat.record if qat else {}
    if record and gate and gate.kept == "PTQ":
        record["kept"] = False  # trained, but plain PTQ did better on the hold-out
    elif "qdq_onnx" in record:
        art.validation["qdq_onnx"] = record["qdq_onnx"]
    executed = art.runner.info.get("executed_precision")
    if executed and executed != precision:
        from edgevit.runtime.measure import host_info

        say(f"warning: {precision} was asked for but {req.backend.name} executes {executed} on this host "
            f"({host_info()['cpu']}); the manifest records what ran")
    return Candidate(precision, stage, art, gate, record, calib, req)


def _fallback(prep, req: Request, stage: Path, first: Artifact, gate: Gate, qat: QATStage, calib) -> Artifact:
    """The gate's second try, QAT (asked for) or accuracy-aware PTQ (over budget), kept only if it beats the first
    on the training hold-out; raises when the kept one is still over budget (unless ``keep_failed``)."""
    gate.tried[0]["holdout_top1"] = gate.holdout_top1(prep, first.runner)
    kept_first = snapshot_stage(stage, prep.work)
    art = first
    if req.qat.epochs:
        say(f"quantization-aware training for {req.qat.epochs} epoch(s) (--qat-epochs)"
            + ("" if gate.passed else f"; PTQ loses {first.validation['top1_drop']:.2f} points"))
        method, extra = "QAT", {"epochs": req.qat.epochs, "distill": req.qat.distill}
        art = compile_artifact(prep, req, "int8", stage, calib, qdq=qat.qdq(req.qat.epochs, req.signed))
    elif req.backend.capabilities.accuracy_control:
        from edgevit.quantize import AC_TIME_LIMIT_S

        say(f"accuracy gate: INT8 loses {first.validation['top1_drop']:.2f} points, over the budget of "
            f"{req.max_drop:.2f}; trying accuracy-aware PTQ (layers that cost most go back to higher precision)")
        method, extra = "accuracy-aware PTQ", {"tuned_on": f"{len(gate.holdout[1])} hold-out training images",
                                               "max_reverts": AC_MAX_ITERATIONS, "time_limit_s": AC_TIME_LIMIT_S}
        try:
            art = compile_artifact(prep, req, "int8", stage, calib, accuracy_control=(*gate.holdout, req.max_drop))
        except AccuracyControlTimeout as e:  # bounded: the gate records it and fails like any other attempt
            say(f"accuracy-aware PTQ {e}; keeping {gate.tried[0]['method']}")
            restore_stage(kept_first, stage)
            gate.skip(method, f"{e}")
            method = None
    else:
        method = None
        gate.skip("accuracy-aware PTQ", f"not available for the {req.backend.name} backend (it needs NNCF's "
                                        "OpenVINO path)")
    if method and not gate.add(method, art.validation, gate.holdout_top1(prep, art.runner), **extra):
        say(f"{method} did worse than {gate.tried[0]['method']} on the hold-out; keeping the latter")
        restore_stage(kept_first, stage)
        art = first
    gate.close(art.validation, art.built.details.get("kept_in_higher_precision", []))
    if not gate.passed:
        if not req.keep_failed:
            more = "" if req.qat.epochs else "train with --qat-epochs 2, "
            raise ValidationFailedError(
                f"INT8 build of {prep.spec.alias} fails the accuracy gate: top-1 drop "
                f"{art.validation['top1_drop']:.2f} points > --max-drop {req.max_drop:.2f} (tried "
                f"{gate.tried_text()}); no bundle written. Raise --max-drop, {more}calibrate with more images "
                "(--calib-samples), or build fp32/bf16")
        say(f"warning: keeping a FAILED bundle (--keep-failed): {gate.tried_text()}")
    return art


def snapshot_stage(stage: Path, work: Path) -> Path:
    """A copy of the artifact in ``stage`` to go back to if what replaces it is not kept."""
    copy = Path(tempfile.mkdtemp(dir=work))
    shutil.copytree(stage, copy, dirs_exist_ok=True)
    return copy


def restore_stage(snapshot: Path, stage: Path) -> None:
    """Replace what ``stage`` holds with ``snapshot``'s files. The directory itself stays, with its mode and its
    owner record (:data:`edgevit.outputs.OWNER`), so a staging directory is still known as edgevit's after it."""
    from edgevit.outputs import OWNER

    for entry in stage.iterdir():
        if entry.name == OWNER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in snapshot.iterdir():  # entry by entry: copytree of the whole would give ``stage`` its mode
        if entry.name == OWNER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name)
        else:
            shutil.copy2(entry, stage / entry.name)


def _qat_meta(prep, req: Request) -> dict:
    """What a QAT checkpoint says it was trained for (read back when it is rebuilt or resumed)."""
    return {**(prep.weights.edgevit if prep.weights else {}), "model": prep.spec.alias, "classes": prep.classes,
            "model_overrides": prep.overrides, "qat_target": req.target.name,
            "qat_quantizer": "signed symmetric" if req.signed else f"{req.backend.name} default",
            "preprocessing": prep.pre.to_dict()}


def speed_stage(prep, req: Request, cand: Candidate) -> Candidate:
    """Mixed precision by speed (:mod:`edgevit.backends.openvino.speedmix`): INT8 layers that run slower than in the
    host precision go back to it when that makes the model faster here; the accuracy gate checks the result like
    any artifact."""
    from edgevit.validate import validate

    precision, art, stage, gate = cand.precision, cand.art, cand.stage, cand.gate
    if precision != "int8" or not req.speed_search or not req.measure_latency or req.measure == "quick" \
            or not req.backend.capabilities.speed_search or art.runner.info.get("proxy_for"):
        return cand
    kept_first = snapshot_stage(stage, prep.work)
    x = prep.latency_input(req.target.batch)
    loaded = LoadSpec(precision, req.target, art.built.details)
    rec = req.backend.mix_for_speed(stage, loaded, prep.onnx_path, x, prep.work, say)
    cand = replace(cand, speed_search=rec)
    if not rec or not rec.get("kept"):
        return cand
    runner = req.backend.load(stage, loaded, req.threads)
    v = validate(prep, runner, f"{precision} ({req.backend.name}, {len(rec['kept'])} layer group(s) reverted for "
                               "speed)")
    if gate is not None and not gate.admit("speed search (layers back to the host precision)", v):
        say(f"the faster mix loses {v['top1_drop']:.2f} points, over the budget; keeping the INT8 layers")
        restore_stage(kept_first, stage)
        rec["result"] += "; undone: over the accuracy budget"
        return cand
    say(f"speed search: {rec['result']} ({rec['int8_p50_ms']:.3f} → {rec['mixed_p50_ms']:.3f} ms p50)")
    return replace(cand, art=Artifact(art.built, runner, art.revalidated(v)))


def latency_stage(prep, req: Request, cand: Candidate, base=None):
    """The latency stage; a host precision other than the one validated is kept only if its accuracy holds.
    ``base``: the full-size preparation the baselines run, where the token search chose a smaller input."""
    from edgevit.latency import Latency, measure_build

    precision, art, stage, calib, gate = cand.precision, cand.art, cand.stage, cand.calib, cand.gate
    if not req.measure_latency and not art.runner.info.get("proxy_for"):
        from edgevit.runtime.measure import host_info

        return Latency({"host": host_info(), "threads": art.runner.info.get("threads"), "batch": req.target.batch,
                        "skipped": "latency not measured (measure_latency=False)"}, runner=art.runner)

    revalidated = []

    def accept(host_precision: str, runner) -> bool:
        from edgevit.validate import validate

        v = validate(prep, runner, f"{precision} ({req.backend.name}, unquantized ops in {host_precision})")
        if gate is not None and not gate.admit(f"unquantized ops in {host_precision} (faster)", v):
            say(f"{host_precision} for the unquantized ops is faster but loses {v['top1_drop']:.2f} points; "
                "keeping what was validated")
            return False
        revalidated.append(art.revalidated(v))
        return True

    base_calib = base.calibration(cand.req.recipe) if base is not None and req.peers else None
    lat = measure_build(prep, req.backend, req.target, art, stage, precision, req.threads, calib,
                        peers=req.peers, profile=req.profile, accept=accept, quick=req.measure == "quick",
                        base=base, base_calib=base_calib)
    return replace(lat, validation=revalidated[-1]) if revalidated else lat


def _stage_seconds() -> dict:
    """The seconds of each build stage finished so far (``edgevit.failure.stage`` times them)."""
    from edgevit.failure import DURATIONS

    return dict(DURATIONS)


def write_bundle(prep, cand: Candidate, lat, **extra) -> Manifest:
    """The manifest of the candidate's artifact in its stage directory (checksummed and checked against the schema
    by :func:`edgevit.runtime.bundle.write_manifest`)."""
    from edgevit.runtime.bundle import update_manifest, write_manifest

    req, precision, stage, art, gate, qat, calib = (cand.req, cand.precision, cand.stage, cand.art, cand.gate,
                                                    cand.qat, cand.calib)
    files = [*art.built.files, "labels.txt"]
    if req.backend.capabilities.engine_on_device:
        more, extra["device_check"] = _device_check(prep, stage)
        files += more
    written = write_manifest(
        stage, files,
        model=prep.model_record(),
        preprocessing=prep.pre.to_dict(),
        labels=prep.classes,
        target=req.target.to_dict(),
        precision=precision,
        backend={"name": req.backend.name, "version": req.backend.version(), **art.built.details,
                 **({"speed_search": cand.speed_search} if cand.speed_search is not None else {}), **lat.chosen,
                 "runtime": lat.runner.info},
        export={"format": "onnx", "opset": 17, "max_abs_diff_vs_torch": round(prep.export_diff, 6)},
        calibration=({"dataset": prep.calib_source,
                      "split": "unlabelled images" if prep.unlabelled is not None else "train",
                      "method": "NNCF post-training quantization",
                      **req.recipe.to_dict(req.backend.capabilities.int8_signed_symmetric),
                      "samples": int(len(calib))} if calib is not None else None),
        validation=lat.validation or art.validation,
        accuracy_gate=gate.to_dict() if gate else None,
        qat=qat or None,
        status="failed-validation" if gate and not gate.passed else "ok",
        latency_ms=lat.record,
        build_seconds=round(time.perf_counter() - req.t_start, 1),
        stage_seconds=_stage_seconds(),
        provenance=provenance(),
        profile=lat.profile,
        **extra,
    )
    engine = written.backend.engine
    if isinstance(engine, dict) and engine.get("status") != "pending":  # built on this host, which is the device
        from edgevit.runtime import device_check
        engine = {**engine, "check": device_check.check_engine(stage, written, lat.runner)}
        return update_manifest(stage, written.updated(backend={**written.backend.details, "engine": engine}))
    return written


def _device_check(prep, stage: Path) -> tuple[list[str], dict]:
    """Ship the images and FP32 logits the device judges its engine by (:mod:`edgevit.runtime.device_check`): the files
    written and the manifest's record. An engine built here is judged by the same rule once the manifest is
    written."""
    from edgevit.backends.tensorrt.backend import onnx_proxy
    from edgevit.backends.tensorrt.plan import ONNX_FILE
    from edgevit.runtime import device_check
    from edgevit.runtime.measure import torch_runner

    source = (f"{len(prep.check_x[:device_check.SAMPLES])} held-out images of {prep.ds.spec} ({prep.ds.val_name})"
              if prep.ds is not None else "random normal images (no --data given)")
    return device_check.write(stage, prep.check_x, torch_runner(prep.net), onnx_proxy(stage / ONNX_FILE, None),
                              source)


def provenance() -> dict:
    """What made this bundle: library versions, the command line, when (UTC)."""
    import shlex
    import sys
    from datetime import datetime, timezone

    from edgevit.runtime.measure import library_versions

    versions = library_versions(("edgevit", "torch", "timm", "nncf", "openvino", "onnxruntime", "onnx"))
    cmd = os.environ.get("EDGEVIT_COMMAND")  # set by the CLI (and inherited by bench's cell processes)
    command = shlex.split(cmd) if cmd else [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    return {"versions": versions, "command": command,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
