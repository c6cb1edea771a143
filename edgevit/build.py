"""``edgevit build``: model → (PTQ INT8) → ONNX → backend artifact → measured validation → bundle."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit._progress import say
from edgevit.errors import UsageError, ValidationFailedError, WeightsError
from edgevit.quantize import AC_MAX_ITERATIONS


@dataclass
class BuildResult:
    bundle: Path
    manifest: dict
    samples: dict | None = None  # raw per-call latency samples (ms) of what was timed, kept out of the manifest


DEFAULT_MAX_DROP = 1.0  # top-1 points an INT8 build may lose against FP32 before the gate acts
GATE_HOLDOUT = 1000  # hold-out training images accuracy-aware PTQ ranks layers on


def _accuracy_gate(precision: str, ds, validation: dict, max_drop: float | None, random_init: bool) -> dict | None:
    """The gate's record for an INT8 build with data; ``passed`` False means the fallbacks must run."""
    if precision != "int8" or ds is None:
        return None
    gate = {"max_drop": max_drop, "tried": [{"method": "PTQ", "top1": validation["top1"],
                                             "top1_drop": validation["top1_drop"]}]}
    if random_init:
        gate.update(passed=True, skipped="random weights: the drop is meaningless")
    elif max_drop is None:
        gate.update(passed=True, skipped="no budget (max_drop=None)")
    else:
        gate["passed"] = validation["top1_drop"] <= max_drop
    return gate


def _tried_text(gate: dict) -> str:
    """What the accuracy gate tried, for messages: ``PTQ: drop -0.20; accuracy-aware PTQ: drop +1.15``."""
    return "; ".join(f"{t['method']}: " + (t["skipped"] if "skipped" in t else f"drop {t['top1_drop']:+.2f}")
                     for t in gate["tried"])


def _gate_holdout(ds, pre) -> tuple[np.ndarray, np.ndarray]:
    """Images accuracy-aware PTQ may tune on: the training split's hold-out, never calibration or validation."""
    from edgevit.data import holdout_split, preprocess_split

    _, hold = holdout_split(len(ds.train))
    hold = hold[:GATE_HOLDOUT]
    split = ds.train.subset(hold)
    return pre.normalize(preprocess_split(split, pre, "gate hold-out images", ds.workers)), split.labels


def _measured_with(runner) -> str:
    from edgevit.measure import host_info

    info = runner.info
    where = f"{info['backend']} {info.get('version', '')} on {info.get('device', 'CPU')} ({host_info()['cpu']})"
    if info.get("proxy_for"):
        where += f", the same ONNX the {info['proxy_for']} engine is built from: a proxy for the engine's accuracy"
    return where


def _bundle_path(out: str | os.PathLike, name: str | None, default: str) -> Path:
    """``out/name`` with a name that is one plain path component (never ``..``, a slash or a hidden name)."""
    bundle_name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", default)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", bundle_name) or bundle_name.startswith("."):
        raise UsageError(f"bundle name {bundle_name!r} may only use letters, digits, '.', '_' and '-', and may not "
                         "start with '.'")
    return Path(out) / bundle_name


def _check_qat_output(path: Path, weights: str | None, force: bool) -> None:
    """The QAT checkpoint a build writes may replace only an earlier QAT checkpoint (or the one it resumes)."""
    from edgevit.models import read_state_dict
    from edgevit.outputs import OutputExistsError, check_output_file
    from edgevit.qat import is_qat_checkpoint

    if force or not (path.exists() or path.is_symlink()):
        check_output_file(path, "QAT checkpoint", force=True)
        return
    if weights and path.resolve() == Path(weights).resolve():
        return
    try:
        ours = path.is_file() and not path.is_symlink() and is_qat_checkpoint(read_state_dict(str(path))[1])
    except WeightsError:
        ours = False
    if not ours:
        raise OutputExistsError(f"{path} exists and is not an edgevit QAT checkpoint; pass --force to replace it, "
                                "or choose another --out/--name")


def _check_hub_architecture(hub, spec) -> None:
    """Pretrained weights name their architecture; they must be the model's (tag aside)."""
    arch = (hub.architecture or "").split(".")[0]
    if arch and arch != spec.timm_name.split(".")[0]:
        raise WeightsError(f"{hub.source} holds weights for {arch}, not {spec.timm_name} ({spec.alias}); pass "
                           f"--model {arch}")


def _weights_meta(meta: dict, spec) -> dict:
    """The edgevit training metadata of a checkpoint, checked against the requested model."""
    ev = meta.get("edgevit") if isinstance(meta.get("edgevit"), dict) else {}
    if ev and ev.get("model") not in (None, spec.alias, spec.timm_name):
        raise WeightsError(f"these weights were trained for model {ev['model']!r}, not {spec.alias!r}; "
                           f"pass --model {ev['model']}")
    return ev


def build(model: str, target: str = "cpu-x86", precision: str = "int8", data: str | None = None,
          weights: str | None = None, out: str = "build", calibration: str | None = None,
          calib_samples: int | None = None, val_samples: int | None = None, input_size: int | None = None,
          threads: int | None = None, name: str | None = None, measure_latency: bool = True,
          max_drop: float | None = DEFAULT_MAX_DROP, keep_failed: bool = False, qat_epochs: int = 0,
          distill: bool = False, qat_lr: float | None = None, qat_samples: int | None = None,
          ignore_trt_rules: bool = False, force: bool = False, profile: bool = False, calib_data: str | None = None,
          workers: int | None = None, peers: bool = False, **model_overrides) -> BuildResult | None:
    """Build ``model`` for ``target`` at ``precision`` into ``out/<name>``: a verified, self-describing bundle.

    INT8 is NNCF post-training quantization calibrated on ``data``; ``qat_epochs`` > 0 adds quantization-aware
    training from that initialisation (``distill``: from the FP32 model), whose checkpoint is written beside the bundle
    as ``<name>.qat.pt``. ``weights`` may be such a checkpoint: it is rebuilt (or, with ``qat_epochs``, resumed)
    without calibrating again. Every INT8 build is measured against FP32 and gated by ``max_drop`` (top-1 points).
    ``out/<name>`` is replaced only if it is an edgevit bundle (or empty), unless ``force``.

    ``peers`` (INT8): the backend's one-line INT8 recipe (NNCF with every default) of the same export, on the same
    calibration images, is timed beside the artifact as a baseline (``nncf_default_int8``); it is never shipped.

    Under ``torchrun`` (with ``qat_epochs``), QAT runs data-parallel: every process trains its shard, rank 0 alone
    builds, validates and writes; the other ranks return None."""
    from edgevit import __version__
    from edgevit.backends import BuildJob, get_backend, require
    from edgevit.bundle import write_manifest
    from edgevit.data import load_dataset, preprocess_split, sample_indices
    from edgevit.export import check_onnx, export_onnx, freeze_weight_standardization, onnx_metadata
    from edgevit.hub import is_hub
    from edgevit.hub import resolve as resolve_hub
    from edgevit.measure import (
        compare_latency,
        host_info,
        run_batches,
        thread_counts,
        top1,
        topk,
        torch_runner,
        without_samples,
    )
    from edgevit.models import apply_state_dict, create_model, data_config, read_state_dict, resolve_spec, sha256_file
    from edgevit.outputs import check_output, claim, output_dir
    from edgevit.qat import is_qat_checkpoint, restore
    from edgevit.quantize import calibration_images, load_recipe
    from edgevit.targets import load_target

    if target == "auto":
        from edgevit.detect import detect_target

        target, why = detect_target()
        say(f"--target auto: {target} ({why})")
    if precision == "best":
        return _build_best(model, target=target, data=data, weights=weights, out=out, calibration=calibration,
                           calib_samples=calib_samples, val_samples=val_samples, input_size=input_size,
                           threads=threads, name=name, max_drop=max_drop, qat_epochs=qat_epochs, distill=distill,
                           qat_lr=qat_lr, qat_samples=qat_samples, ignore_trt_rules=ignore_trt_rules,
                           force=force, profile=profile, calib_data=calib_data, workers=workers,
                           peers=peers, **model_overrides)
    t_start = time.perf_counter()
    samples: dict | None = None
    layer_profile: dict | None = None
    tgt = load_target(target)
    tgt.check_precision(precision)
    spec = resolve_spec(model)
    backend = get_backend(tgt.backend)
    signed = getattr(backend, "signed_symmetric", False)  # TensorRT: int8 symmetric quantizers only
    require(backend)
    final = _bundle_path(out, name, f"{spec.alias}-{tgt.name}-{precision}")
    bundle_name = final.name
    check_output(final, "bundle", force)  # before any work: a user's directory is refused, not replaced
    if qat_epochs:
        _check_qat_output(final.with_name(f"{bundle_name}.qat.pt"), weights, force)
    recipe = load_recipe(calibration, calib_samples) if precision == "int8" else None
    if precision == "int8" and not data:
        raise UsageError("int8 calibration needs images: pass --data (fashion-mnist, imagefolder:DIR, or "
                         "synthetic for latency-only work)")
    if val_samples is not None and val_samples < 1:
        raise UsageError("--val-samples must be at least 1")
    if qat_epochs and qat_epochs < 0:
        raise UsageError("--qat-epochs must be 0 or more")
    if (qat_epochs or distill) and precision != "int8":
        raise UsageError(f"quantization-aware training makes INT8 models; --qat-epochs/--distill need --precision "
                         f"int8, not {precision}")
    if distill and not qat_epochs:
        raise UsageError("--distill distils during quantization-aware training: add --qat-epochs N")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not qat_epochs:
        raise UsageError(f"build runs under torchrun with {world} processes, but only its quantization-aware "
                         "training runs data-parallel: add --qat-epochs N, or run build as one process")

    # -- model and data ------------------------------------------------------------------------------------
    ev: dict = {}
    meta: dict = {}
    hub = None
    if weights:
        weights_file = weights
        if is_hub(weights):  # pretrained from the Hugging Face Hub (or its local cache)
            hub = resolve_hub(weights)
            _check_hub_architecture(hub, spec)
            weights_file = str(hub.path)
        state, meta = read_state_dict(weights_file)
        ev = _weights_meta(meta, spec)
        model_overrides = {**ev.get("model_overrides", {}), **model_overrides}
    ds = load_dataset(data, workers) if data else None
    unlabelled = None
    if calib_data:
        from edgevit.data import load_unlabelled

        if precision != "int8":
            raise UsageError(f"--calib-data calibrates INT8; --precision {precision} needs no calibration images")
        unlabelled = load_unlabelled(calib_data)
    classes = ds.classes if ds else (ev.get("classes") or (hub.labels() if hub else None))
    if ds and ev.get("classes") and len(ev["classes"]) != ds.num_classes:
        raise WeightsError(f"{weights} was trained on {len(ev['classes'])} classes but {ds.spec} has "
                           f"{ds.num_classes}; use matching data or weights")
    size = input_size or spec.input_size

    def fresh():
        if not weights:  # random weights are the same model every run (a benchmark's history compares them)
            import torch

            torch.manual_seed(0)
        return create_model(spec, num_classes=len(classes) if classes else None, input_size=size, **model_overrides)

    net, qmodel = fresh(), None
    if weights and is_qat_checkpoint(meta):
        if precision != "int8":
            raise UsageError(f"{weights} is a quantization-aware training checkpoint: build it with --precision int8")
        trained_for = ev.get("qat_quantizer")  # absent in checkpoints older than this field: the rules check decides
        if signed and trained_for and trained_for != "signed symmetric":
            raise UsageError(
                f"{weights} was quantization-aware trained for {ev.get('qat_target', 'another target')} with "
                f"{trained_for} quantizers; {tgt.name} ({backend.name}) needs signed symmetric INT8. Train QAT for "
                f"this target from the FP32 weights: --weights FP32.pt --target {tgt.name} --qat-epochs N")
        qmodel = restore(fresh(), state, meta)
        if not meta.get("fp32_model"):
            raise WeightsError(f"{weights} holds no FP32 reference weights ('fp32_model'); rebuild it with edgevit")
        apply_state_dict(net, dict(meta["fp32_model"]), weights)  # the FP32 weights QAT started from
    elif weights:
        apply_state_dict(net, state, weights)
    freeze_weight_standardization(net)  # outputs unchanged; constant conv weights for NNCF and TensorRT
    num_classes = int(net.num_classes) if hasattr(net, "num_classes") else len(classes or [])
    classes = classes or [str(i) for i in range(num_classes)]
    pre = data_config(spec, size, pretrained=hub.preprocessing_overrides() if hub else None)
    random_init = not weights
    if random_init:
        say("warning: no --weights: the model is randomly initialised; accuracy figures are meaningless "
            "(latency is still real)")
    if world > 1:
        from edgevit.train import _distributed

        if _distributed()[0]:  # a follower: it trains its shard of QAT beside rank 0, which builds and writes
            _follow_qat(net, qmodel, ds, pre, spec, recipe, unlabelled, qat_epochs, signed, distill, qat_lr,
                        qat_samples, meta.get("qat") if qmodel is not None else None)
            return None

    with claim(final, "bundle", force), tempfile.TemporaryDirectory(prefix="edgevit-") as work, \
            output_dir(final, "bundle", force, claimed=True) as stage:
        work = Path(work)
        # -- validation images (held out: the dataset's val/test split, never calibration images) -----------
        if ds:
            idx = (sample_indices(len(ds.val), val_samples, seed=0) if val_samples and val_samples < len(ds.val)
                   else np.arange(len(ds.val)))
            val_split = ds.val.subset(idx)
            val_u8 = ds.stream(val_split, pre)  # decoded on each pass: memory does not grow with the split
            check_x = pre.normalize(preprocess_split(val_split.subset(range(min(8, len(idx)))), pre, workers=0))
        else:
            val_u8 = None
            check_x = np.random.default_rng(0).standard_normal((2, 3, *pre.input_size)).astype(np.float32)

        # -- export ---------------------------------------------------------------------------------------
        say(f"exporting {spec.alias} ({spec.timm_name}, {size}px) to ONNX")
        onnx_path = export_onnx(net, pre.input_size, work / "model_fp32.onnx")
        export_diff = check_onnx(onnx_path, net, check_x)

        # -- calibrate + compile ----------------------------------------------------------------------------
        calib = None
        if precision == "int8" and ds is not None and (qmodel is None or signed):  # TensorRT: V's scale too
            say(f"calibrating INT8 with {min(recipe.samples, len(unlabelled or ds.train))} images from "
                f"{calib_data or ds.spec} "
                f"({Path(recipe.path).name}, NNCF "
                f"{'transformer' if recipe.nncf_transformer(spec.is_transformer) else 'default'} model type)")
            calib, _ = calibration_images(ds, pre, recipe, unlabelled)
        say(f"building {precision} for {tgt.name} with {backend.name} {backend.version()}")
        (stage / "labels.txt").write_text("\n".join(classes) + "\n")
        partial = {"precision": precision, "target": tgt.to_dict()}
        ref = run_batches(torch_runner(net), val_u8, pre, desc="FP32 reference (torch)") if ds else None

        def compile_and_validate(accuracy_control=None, quantized=None):
            built = backend.build(BuildJob(onnx_path=onnx_path, precision=precision, target=tgt, out_dir=stage,
                                           transformer=spec.is_transformer, calibration=calib, recipe=recipe,
                                           accuracy_control=accuracy_control, quantized_onnx=quantized,
                                           allow_rule_violations=ignore_trt_rules,
                                           metadata=onnx_metadata(classes, pre.to_dict(), spec.alias)))
            runner = backend.load(stage, {**partial, "backend": built.details}, threads)
            if not ds:
                return built, runner, {"skipped": "no --data given: accuracy not measured"}
            # the built artifact through its own runtime vs FP32 PyTorch, on held-out images
            labels = val_split.labels
            say(f"validating on {len(labels)} held-out images ({ds.val_name})")
            got = run_batches(runner, val_u8, pre, desc=f"{precision} ({backend.name})")
            v = {"dataset": ds.spec, "split": ds.val_name, "samples": int(len(labels)),
                 "reference": "PyTorch eager FP32", "reference_top1": top1(ref, labels), "top1": top1(got, labels),
                 "top5": topk(got, labels, 5), "measured_with": _measured_with(runner)}
            v["top1_drop"] = round(v["reference_top1"] - v["top1"], 2)
            v["max_abs_logit_diff"] = round(float(np.abs(ref - got).max()), 5)
            v["argmax_agreement"] = round(float((ref.argmax(1) == got.argmax(1)).mean() * 100), 2)
            if random_init:
                v["note"] = "random weights: accuracy is meaningless"
            return built, runner, v

        qat_ckpt = Path(out) / f"{bundle_name}.qat.pt"
        qat: dict = {}

        def run_qat(epochs: int) -> Path:
            """QAT for ``epochs`` (from PTQ, or on from a checkpoint; 0: the checkpoint as it is) → Q/DQ ONNX; its
            ONNX Runtime top-1 goes in ``qat``."""
            nonlocal qmodel
            from edgevit.backends.onnxruntime import ORTRunner
            from edgevit.qat import export_qdq_onnx, finetune

            prev = meta.get("qat") if qmodel is not None else None
            if epochs:
                if qmodel is None:
                    say("QAT: PTQ initialisation of the PyTorch model")
                    qmodel = _ptq_init(net, calib, recipe, spec, signed)
                res = finetune(qmodel, ds, pre, spec, epochs, teacher=net if distill else None, lr=qat_lr,
                               samples=qat_samples, checkpoint=qat_ckpt, previous=prev, fp32_state=net.state_dict(),
                               meta={**ev, "model": spec.alias, "classes": classes, "model_overrides": model_overrides,
                                     "qat_target": tgt.name, "qat_quantizer": "signed symmetric" if signed
                                     else f"{backend.name} default",
                                     "preprocessing": pre.to_dict()})
                qat.update(checkpoint=str(qat_ckpt), history=res.history, seconds=res.seconds, distill=distill,
                           epochs=epochs, rebuilt_from_checkpoint=False)
            else:
                qat.update(checkpoint=Path(weights).name, history=(prev or {}).get("history", []),
                           rebuilt_from_checkpoint=True)
            qdq = export_qdq_onnx(qmodel, pre.input_size, work / "model_qdq.onnx")
            if ds:
                ort_runner = ORTRunner(qdq, threads)
                got = run_batches(ort_runner, val_u8, pre, desc="Q/DQ ONNX (onnxruntime)")
                qat["qdq_onnx"] = {"top1": top1(got, val_split.labels), "measured_with": _measured_with(ort_runner)}
            return qdq

        if qmodel is not None:  # a QAT checkpoint: first as it is, without training
            built, runner, validation = compile_and_validate(quantized=run_qat(0))
        else:
            built, runner, validation = compile_and_validate()
        gate = _accuracy_gate(precision, ds, validation, max_drop, random_init)
        if gate and qat:
            gate["tried"][0]["method"] = "QAT checkpoint"
        if gate and (qat_epochs or not gate["passed"]):
            hold = _gate_holdout(ds, pre)

            def holdout_top1(r) -> float:  # choosing between artifacts never looks at the validation images
                return top1(np.concatenate([r(hold[0][s:s + 100]) for s in range(0, len(hold[1]), 100)]), hold[1])

            first = (built, runner, validation)
            gate["tried"][0]["holdout_top1"] = holdout_top1(runner)
            shutil.copytree(stage, work / "first")
            try:
                if qat_epochs:
                    say(f"quantization-aware training for {qat_epochs} epoch(s) (--qat-epochs)"
                        + ("" if gate["passed"] else f"; PTQ loses {validation['top1_drop']:.2f} points"))
                    method, extra = "QAT", {"epochs": qat_epochs, "distill": distill}
                    built, runner, validation = compile_and_validate(quantized=run_qat(qat_epochs))
                else:
                    say(f"accuracy gate: INT8 loses {validation['top1_drop']:.2f} points, over the budget of "
                        f"{max_drop:.2f}; trying accuracy-aware PTQ (layers that cost most go back to higher "
                        "precision)")
                    method, extra = "accuracy-aware PTQ", {"tuned_on": f"{len(hold[1])} hold-out training images",
                                                           "max_reverts": AC_MAX_ITERATIONS}
                    built, runner, validation = compile_and_validate((*hold, max_drop))
                gate["tried"].append({"method": method, "top1": validation["top1"],
                                      "top1_drop": validation["top1_drop"], **extra,
                                      "holdout_top1": holdout_top1(runner)})
                if gate["tried"][-1]["holdout_top1"] < gate["tried"][0]["holdout_top1"]:  # keep the better one
                    say(f"{method} did worse than {gate['tried'][0]['method']} on the hold-out; keeping the latter")
                    shutil.rmtree(stage)
                    shutil.copytree(work / "first", stage)
                    built, runner, validation = first
                    gate["kept"] = gate["tried"][0]["method"]
                else:
                    gate["kept"] = method
            except NotImplementedError as e:
                gate["tried"].append({"method": "accuracy-aware PTQ", "skipped": str(e)})
            gate["passed"] = max_drop is None or validation["top1_drop"] <= max_drop
            gate["kept_in_higher_precision"] = built.details.get("kept_in_higher_precision", [])
            if not gate["passed"]:
                tried = _tried_text(gate)
                if not keep_failed:
                    more = "" if qat_epochs else "train with --qat-epochs 2, "
                    raise ValidationFailedError(
                        f"INT8 build of {spec.alias} fails the accuracy gate: top-1 drop {validation['top1_drop']:.2f}"
                        f" points > --max-drop {max_drop:.2f} (tried {tried}); no bundle written. Raise --max-drop, "
                        f"{more}calibrate with more images (--calib-samples), or build fp32/bf16"
                    )
                say(f"warning: keeping a FAILED bundle (--keep-failed): {tried}")
        if qat and gate and gate.get("kept", "QAT") == "PTQ":
            qat["kept"] = False  # trained, but plain PTQ did better on the hold-out
        elif qat and "qdq_onnx" in qat:
            validation["qdq_onnx"] = qat["qdq_onnx"]
        executed = runner.info.get("executed_precision")
        if executed and executed != precision:
            say(f"warning: {precision} was asked for but {backend.name} executes {executed} on this host "
                f"({host_info()['cpu']}); the manifest records what ran")

        # -- latency, side by side with the plain recipes, in the same run ------------------------------------
        lat: dict = {"host": host_info(), "threads": runner.info.get("threads"), "batch": tgt.batch}
        if runner.info.get("proxy_for"):
            lat["skipped"] = (f"the {runner.info['proxy_for']} engine runs on the device ({tgt.device}); "
                              "`edgevit compile BUNDLE` there builds it and measures its latency")
        elif measure_latency:
            x = np.ascontiguousarray(np.repeat(check_x[:1], tgt.batch, axis=0))
            # Every runtime at its own fastest thread count, found in the same interleaved run: a small model often
            # runs fastest on fewer threads than the host has, and a baseline timed at a thread count that suits it
            # badly (PyTorch's OpenMP on all cores of a loaded host: 2.2x slower) is no baseline.
            counts = thread_counts()
            sweep = not threads and not tgt.threads and backend.name in ("openvino", "onnxruntime")
            art_counts = counts if sweep else [runner.info.get("threads")]
            torch_counts = [threads] if threads else counts
            manifest_now = {**partial, "backend": built.details}
            cands = {f"artifact@{n}": (runner if runner.info.get("threads") == n or not sweep
                                       else backend.load(stage, manifest_now, n)) for n in art_counts}
            cands.update({f"torch@{n}": torch_runner(net, n) for n in torch_counts})
            plain = backend.load_default(onnx_path, threads)
            plain_name = f"{backend.name}_default_fp32_export"
            cands[plain_name] = plain
            peer = backend.peer_int8(onnx_path, calib, work) if peers and calib is not None else None
            peer_counts = art_counts if peer else []
            cands.update({f"peer@{n}": backend.load_default(peer, n) for n in peer_counts})
            say(f"measuring latency at batch {tgt.batch}" + (f" (threads {', '.join(map(str, counts))} for the "
                                                             "artifact and PyTorch)" if len(cands) > 3 else ""))
            timed = compare_latency(cands, x)
            a_n, a_sweep = _fastest_of(timed, "artifact", art_counts)
            t_n, t_sweep = _fastest_of(timed, "torch", torch_counts)
            runner = cands[f"artifact@{a_n}"]
            if sweep:
                built.details["threads"] = lat["threads"] = runner.info.get("threads")
                lat["threads_sweep"] = a_sweep
            res = {"artifact": timed[f"artifact@{a_n}"], "torch_eager_fp32": timed[f"torch@{t_n}"],
                   plain_name: timed[plain_name]}
            if peer_counts:
                p_n, _ = _fastest_of(timed, "peer", peer_counts)
                res["nncf_default_int8"] = timed[f"peer@{p_n}"]
            samples = {k: v["samples"] for k, v in res.items()}
            lat["artifact"] = without_samples(res["artifact"])
            torch_base = {**without_samples(res["torch_eager_fp32"]), "executed_precision": "fp32", "threads": t_n}
            if len(torch_counts) > 1:
                torch_base["threads_sweep"] = t_sweep
            lat["baselines"] = {
                "torch_eager_fp32": torch_base,
                plain_name: {**without_samples(res[plain_name]),
                             "executed_precision": plain.info.get("executed_precision")},
            }
            if peer_counts:  # the one-line NNCF recipe on the same export and calibration images
                lat["baselines"]["nncf_default_int8"] = {
                    **without_samples(res["nncf_default_int8"]), "threads": p_n,
                    "executed_precision": cands[f"peer@{p_n}"].info.get("executed_precision"),
                    "recipe": "nncf.quantize(model, dataset), every option at its default"}
            where = "each candidate in its own process" if res["artifact"]["isolated"] else "same process"
            lat["method"] = f"interleaved rounds, {where}, same input; wall clock per call"
            lat["p50"], lat["p90"] = lat["artifact"]["p50"], lat["artifact"]["p90"]
            if profile:
                say("profiling per-layer time (--profile)")
                layer_profile = runner.profile(x)
        else:
            lat["skipped"] = "latency not measured (measure_latency=False)"

        manifest = {
            "edgevit_version": __version__,
            "model": {"alias": spec.alias, "timm_name": spec.timm_name, "family": spec.family,
                      "num_classes": num_classes, "input_size": [3, *pre.input_size],
                      "weights": (hub.source if hub else Path(weights).name) if weights else None,
                      "weights_sha256": sha256_file(weights_file) if weights else None, "random_init": random_init,
                      "overrides": model_overrides},
            "preprocessing": pre.to_dict(),
            "labels": classes,
            "target": tgt.to_dict(),
            "precision": precision,
            "backend": {"name": backend.name, "version": backend.version(), **built.details,
                        "runtime": runner.info},
            "export": {"format": "onnx", "opset": 17, "max_abs_diff_vs_torch": round(export_diff, 6)},
            "calibration": ({"dataset": str(calib_data) if calib_data else ds.spec,
                             "split": "unlabelled images" if calib_data else "train",
                             "method": "NNCF post-training quantization",
                             **recipe.to_dict(), "samples": int(len(calib))} if calib is not None else None),
            "validation": validation,
            "accuracy_gate": gate,
            "qat": qat or None,
            "status": "failed-validation" if gate and not gate["passed"] else "ok",
            "latency_ms": lat,
            "build_seconds": round(time.perf_counter() - t_start, 1),
            "provenance": provenance(),
            "profile": layer_profile,
            "_files": [*built.files, "labels.txt"],
        }
        manifest = write_manifest(stage, manifest)
    return BuildResult(final, manifest, samples)


def _ptq_init(net, calib, recipe, spec, signed: bool):
    """QAT's starting point, made alike on every rank: NNCF's fake quantizers calibrated on ``calib`` (symmetric for
    TensorRT targets)."""
    from edgevit.qat import quantize_torch

    return quantize_torch(net, calib, recipe, spec.is_transformer, preset="performance" if signed else None)


def _follow_qat(net, qmodel, ds, pre, spec, recipe, unlabelled, epochs: int, signed: bool, distill: bool,
                lr: float | None, samples: int | None, previous: dict | None) -> None:
    """What a rank other than 0 does in a data-parallel QAT build: the same PTQ initialisation as rank 0 (the same
    calibration images; DDP then broadcasts rank 0's parameters), then its shard of every QAT epoch. It writes
    nothing: rank 0 validates, bundles and checkpoints."""
    from edgevit.qat import finetune
    from edgevit.quantize import calibration_images

    if qmodel is None:
        calib, _ = calibration_images(ds, pre, recipe, unlabelled)
        qmodel = _ptq_init(net, calib, recipe, spec, signed)
    finetune(qmodel, ds, pre, spec, epochs, teacher=net if distill else None, lr=lr, samples=samples,
             previous=previous)


def _fastest_of(timed: dict, name: str, counts: list[int]) -> tuple[int, dict]:
    """The thread count at which candidate ``name`` (timed as ``name@N``) ran fastest, and the sweep's record."""
    from edgevit.measure import THREADS_TIE, fastest_threads

    p50 = {n: timed[f"{name}@{n}"]["p50"] for n in counts}
    chosen = fastest_threads(p50)
    return chosen, {"chosen": chosen, "p50_ms": {str(n): v for n, v in p50.items()},
                    "rule": f"fastest p50 at the target's batch; within {THREADS_TIE:.0%} of it, fewer threads"}


def provenance() -> dict:
    """What made this bundle: library versions, the command line, when (UTC)."""
    import shlex
    import sys
    from datetime import datetime, timezone

    from edgevit.measure import library_versions

    versions = library_versions(("edgevit", "torch", "timm", "nncf", "openvino", "onnxruntime", "onnx"))

    cmd = os.environ.get("EDGEVIT_COMMAND")  # set by the CLI (and inherited by bench's cell processes)
    command = shlex.split(cmd) if cmd else [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    return {"versions": versions, "command": command,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


BEST_ORDER = ("int8", "bf16", "fp16", "fp32")  # the candidates --precision best builds, where the target allows them
BEST_TIE = 0.03  # p50s this close are the same speed: identical reruns must not flip between two candidates
BEST_ALPHA = 0.01


def choose_fastest(lat: dict[str, dict]) -> tuple[str, list[str]]:
    """The candidate ``--precision best`` keeps, and the candidates tied with the fastest. Ties are decided by
    :data:`BEST_ORDER` (lower precision first: the smaller artifact), so that reruns on the same host choose the same
    one where the timing noise would otherwise pick at random (0.369 vs 0.370 ms once flipped int8 and bf16)."""
    from scipy.stats import mannwhitneyu

    fastest = min(lat, key=lambda p: lat[p]["p50"])
    best = lat[fastest]

    def tied(p: str) -> bool:
        if p == fastest or lat[p]["p50"] <= best["p50"] * (1 + BEST_TIE):
            return True
        a, b = lat[p].get("samples"), best.get("samples")
        if not a or not b:
            return False
        return float(mannwhitneyu(a, b, alternative="greater").pvalue) >= BEST_ALPHA

    ties = [p for p in sorted(lat, key=lambda p: BEST_ORDER.index(p) if p in BEST_ORDER else len(BEST_ORDER))
            if tied(p)]
    return ties[0], ties


def _build_best(model: str, target: str, out: str, name: str | None, threads: int | None, force: bool = False,
                **kw) -> BuildResult:
    """Build every precision the target allows, time them against each other on this host in interleaved rounds,
    and keep the fastest that passes the accuracy gate. Every candidate is recorded in the manifest."""
    from edgevit.backends import get_backend
    from edgevit.bundle import read_manifest, update_manifest
    from edgevit.measure import compare_latency
    from edgevit.models import resolve_spec
    from edgevit.outputs import claim, output_dir
    from edgevit.targets import load_target

    tgt = load_target(target)
    spec = resolve_spec(model)
    cands = [p for p in BEST_ORDER if p in tgt.precisions]
    final = _bundle_path(out, name, f"{spec.alias}-{tgt.name}-best")
    with claim(final, "bundle", force), tempfile.TemporaryDirectory(prefix="edgevit-best-") as work:
        built: dict[str, BuildResult] = {}
        record: list[dict] = []
        for p in cands:
            say(f"--precision best: building the {p} candidate")
            try:
                built[p] = build(model, target=target, precision=p, out=work, name=p, threads=threads, **kw)
            except (ValidationFailedError, UsageError) as e:
                record.append({"precision": p, "rejected": str(e)})
        if not built:
            raise ValidationFailedError(f"--precision best: no candidate of {', '.join(cands)} could be built: "
                                        + "; ".join(r["rejected"] for r in record))
        backend = get_backend(tgt.backend)
        runners = {p: backend.load(r.bundle, r.manifest, threads) for p, r in built.items()}
        for p in list(built):  # e.g. bf16 on a CPU without native bf16 runs in fp32: the fp32 candidate again
            ran = runners[p].info.get("executed_precision")
            if ran and ran != p and ran in built and len(built) > 1:
                say(f"--precision best: the {p} candidate executes as {ran} on this host; dropped as a duplicate")
                record.append({"precision": p, "executed": ran, "rejected": f"executes as {ran} on this host "
                               f"(it has no native {p}), the same as the {ran} candidate"})
                del built[p], runners[p]
        size = built[next(iter(built))].manifest["model"]["input_size"]
        remote = any(r.info.get("proxy_for") for r in runners.values())
        if remote:  # the engine runs on the device; nothing here can time it
            lat = {p: {"p50": None, "p90": None} for p in runners}
            rule = (f"remote target: latency cannot be measured on this host, so the documented rule applies: the "
                    f"first of {' > '.join(BEST_ORDER)} that passed the accuracy gate")
            chosen = next(p for p in BEST_ORDER if p in built)
            say(f"--precision best: {tgt.name} cannot be timed here; by rule, {chosen} (the lowest precision that "
                "passed the gate)")
        else:
            x = np.zeros((tgt.batch, *size), np.float32)
            say(f"--precision best: timing {', '.join(runners)} against each other")
            lat = compare_latency(runners, x)
            chosen, tied = choose_fastest({p: lat[p] for p in built})
            rule = (f"fastest measured p50 on this host among candidates that passed the accuracy gate; candidates "
                    f"within the noise of the fastest (p50 within {BEST_TIE:.0%}, or not slower by a one-sided "
                    f"Mann-Whitney U test at p < {BEST_ALPHA}) tie, and the first of {' > '.join(BEST_ORDER)} wins")
            say(f"--precision best: {chosen} is the fastest that passed ({lat[chosen]['p50']:.3f} ms p50)"
                + (f"; tied within the noise with {', '.join(t for t in tied if t != chosen)}" if len(tied) > 1
                   else ""))
        for p, r in built.items():
            record.append({"precision": p, "executed": runners[p].info.get("executed_precision"),
                           "latency_ms_p50": lat[p]["p50"], "latency_ms_p90": lat[p]["p90"],
                           "top1": r.manifest["validation"].get("top1"),
                           "top1_drop": r.manifest["validation"].get("top1_drop")})
        with output_dir(final, "bundle", force, claimed=True) as stage:
            shutil.rmtree(stage)
            shutil.copytree(built[chosen].bundle, stage)
            m = read_manifest(stage)
            m["requested_precision"] = "best"
            m["selection"] = {"rule": rule, "chosen": chosen, "candidates": record}
            if not remote:
                m["selection"]["tied_with_fastest"] = tied
            update_manifest(stage, m)
    return BuildResult(final, m, None if remote else {"artifact": lat[chosen].get("samples")})


def summary(result: BuildResult) -> str:
    """The report card printed after a build: accuracy and latency, with what they were measured on."""
    m = result.manifest
    v, lat = m["validation"], m["latency_ms"]
    prec = m["precision"].upper()
    lines = [f"bundle    {result.bundle}  ({m['model']['alias']} → {m['target']['name']} {m['precision']}, "
             f"{m['backend']['name']} {m['backend']['version']})"]
    rt = m["backend"]["runtime"]
    ran = rt.get("backend", m["backend"]["name"]) + (f" on the CPU, proxy for {rt['proxy_for']}"
                                                      if rt.get("proxy_for") else "")
    if "top1" in v:
        lines.append(f"accuracy  {v['split']} of {v['dataset']}, {v['samples']} images: FP32 (torch) "
                     f"{v['reference_top1']:.2f}%  {prec} ({ran}) {v['top1']:.2f}%  "
                     f"drop {v['top1_drop']:+.2f} pts" + ("  [random weights: meaningless]" if v.get("note") else ""))
    else:
        lines.append(f"accuracy  {v['skipped']}")
    g = m.get("accuracy_gate")
    if g:
        verdict = "passed" if g["passed"] else "FAILED (bundle kept by --keep-failed)"
        lines.append(f"gate      max drop {g['max_drop']:.2f} pts: {verdict}; {g.get('skipped') or _tried_text(g)}"
                     + (f"; {len(g['kept_in_higher_precision'])} layers kept in higher precision"
                        if g.get("kept_in_higher_precision") else ""))
    if "artifact" in lat:
        b = lat["baselines"]
        parts = [f"{prec} {lat['artifact']['p50']:.3f} ms"] + [
            f"{_baseline_label(k, val)} {val['p50']:.3f} ms ({val['p50'] / lat['artifact']['p50']:.2f}x)"
            for k, val in b.items()]
        isa = ",".join(lat["host"].get("isa", [])) or "no SIMD flags read"
        lines.append(f"latency   p50 at batch {lat['batch']}, {lat['host']['cpu']} ({isa}), "
                     f"{_threads(lat['threads'])}: " + " | ".join(parts))
        default = next((val for k, val in b.items() if k.endswith("_default_fp32_export")), None)
        if default and default["p50"] < lat["artifact"]["p50"]:
            lines.append(f"note      {prec} is slower than the backend's defaults on the FP32 export "
                         f"(which executed {default.get('executed_precision')}) on this host: "
                         f"{default['p50']:.3f} vs {lat['artifact']['p50']:.3f} ms p50")
    sel = m.get("selection")
    if sel:
        lines.append("selection --precision best → " + sel["chosen"] + ": " + " | ".join(
            f"{c['precision']} rejected ({c['rejected'][:60]}…)" if "rejected" in c else
            f"{c['precision']} " + (f"{c['latency_ms_p50']:.3f} ms" if c["latency_ms_p50"] is not None else
                                    "not timed here") + f" (ran {c['executed']}), top-1 {c['top1']}"
            for c in sel["candidates"]))
    rules = m["backend"].get("trt_rules")
    if rules:
        lines.append(f"tensorrt  Q/DQ ONNX: {rules['qdq_pairs']} Q/DQ pairs, TensorRT rules "
                     + ("passed" if rules["passed"] else f"BROKEN ({len(rules['violations'])}, --ignore-trt-rules)"))
    engine = m["backend"].get("engine")
    if engine:
        plan = m["backend"].get("plan", {})
        dla = "" if plan.get("dla_core") is None else f" core {plan['dla_core']}"
        how = (f"{plan.get('device')}{dla}, flags {', '.join(plan.get('builder_flags') or []) or 'none'}, "
               + ("strongly typed" if plan.get("strongly_typed") else "weakly typed"))
        pending = engine.get("status") == "pending"
        lines.append(f"engine    pending: {engine['why']}; {engine['next']} ({how})" if pending
                     else f"engine    built with TensorRT {engine['tensorrt']} on {engine['device_name']} ({how})")
    if "skipped" in lat:
        lines.append(f"latency   {lat['skipped']}")
    if "compute_layers_by_precision" in rt:
        by = ", ".join(f"{n} in {p}" for p, n in rt["compute_layers_by_precision"].items())
        lines.append(f"executed  inference precision {rt['inference_precision']}; compute layers: {by}")
    # the real path where the messages name a bundle
    return "\n".join(lines).replace("edgevit compile BUNDLE", f"edgevit compile {result.bundle}")


def _threads(n) -> str:
    return f"{n} thread{'' if n == 1 else 's'}" if n else "default threads"


def _baseline_label(key: str, val: dict) -> str:
    """A baseline named by what it executed: 'torch eager fp32 (1 thread)', 'openvino defaults (ran bf16)'."""
    if key == "torch_eager_fp32":
        return f"torch eager fp32 ({_threads(val.get('threads'))})" if val.get("threads") else "torch eager fp32"
    if key == "nncf_default_int8":
        return f"NNCF default int8 ({_threads(val.get('threads'))})"
    backend = key.removesuffix("_default_fp32_export")
    ran = val.get("executed_precision")
    return f"{backend} defaults on the fp32 export" + (f" (ran {ran})" if ran else "")
