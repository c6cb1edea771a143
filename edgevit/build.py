"""``edgevit build``: model → (PTQ INT8) → ONNX → backend artifact → measured validation → bundle."""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit._progress import say
from edgevit.errors import UsageError, WeightsError


@dataclass
class BuildResult:
    bundle: Path
    manifest: dict


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
          **model_overrides) -> BuildResult:
    from edgevit import __version__
    from edgevit.backends import BuildJob, get_backend, require
    from edgevit.bundle import staging_dir, write_manifest
    from edgevit.data import load_dataset, preprocess_split, sample_indices
    from edgevit.export import check_onnx, export_onnx
    from edgevit.measure import compare_latency, host_info, run_batches, top1, torch_runner
    from edgevit.models import apply_state_dict, create_model, data_config, read_state_dict, resolve_spec, sha256_file
    from edgevit.quantize import calibration_images, load_recipe
    from edgevit.targets import load_target

    t_start = time.perf_counter()
    tgt = load_target(target)
    tgt.check_precision(precision)
    spec = resolve_spec(model)
    backend = get_backend(tgt.backend)
    require(backend)
    recipe = load_recipe(calibration, calib_samples) if precision == "int8" else None
    if precision == "int8" and not data:
        raise UsageError("int8 calibration needs images: pass --data (fashion-mnist, imagefolder:DIR, or "
                         "synthetic for latency-only work)")
    if val_samples is not None and val_samples < 1:
        raise UsageError("--val-samples must be at least 1")

    # -- model and data ------------------------------------------------------------------------------------
    ev: dict = {}
    if weights:
        state, meta = read_state_dict(weights)
        ev = _weights_meta(meta, spec)
        model_overrides = {**ev.get("model_overrides", {}), **model_overrides}
    ds = load_dataset(data) if data else None
    classes = ds.classes if ds else ev.get("classes")
    if ds and ev.get("classes") and len(ev["classes"]) != ds.num_classes:
        raise WeightsError(f"{weights} was trained on {len(ev['classes'])} classes but {ds.spec} has "
                           f"{ds.num_classes}; use matching data or weights")
    size = input_size or spec.input_size
    net = create_model(spec, num_classes=len(classes) if classes else None, input_size=size, **model_overrides)
    if weights:
        apply_state_dict(net, state, weights)
    num_classes = int(net.num_classes) if hasattr(net, "num_classes") else len(classes or [])
    classes = classes or [str(i) for i in range(num_classes)]
    pre = data_config(spec, size)
    random_init = not weights
    if random_init:
        say("warning: no --weights: the model is randomly initialised; accuracy figures are meaningless "
            "(latency is still real)")

    bundle_name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec.alias}-{tgt.name}-{precision}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", bundle_name) or bundle_name.startswith("."):
        raise UsageError(f"bundle name {bundle_name!r} may only use letters, digits, '.', '_' and '-'")
    final = Path(out) / bundle_name

    with tempfile.TemporaryDirectory(prefix="edgevit-") as work, staging_dir(final) as stage:
        work = Path(work)
        # -- validation images (held out: the dataset's val/test split, never calibration images) -----------
        if ds:
            idx = (sample_indices(len(ds.val), val_samples, seed=0) if val_samples and val_samples < len(ds.val)
                   else np.arange(len(ds.val)))
            val_split = ds.val.subset(idx)
            val_u8 = preprocess_split(val_split, pre, "validation images")
            check_x = pre.normalize(val_u8[:8])
        else:
            val_u8 = None
            check_x = np.random.default_rng(0).standard_normal((2, 3, *pre.input_size)).astype(np.float32)

        # -- export ---------------------------------------------------------------------------------------
        say(f"exporting {spec.alias} ({spec.timm_name}, {size}px) to ONNX")
        onnx_path = export_onnx(net, pre.input_size, work / "model_fp32.onnx")
        export_diff = check_onnx(onnx_path, net, check_x)

        # -- calibrate + compile ----------------------------------------------------------------------------
        calib = None
        if precision == "int8":
            say(f"calibrating INT8 with {min(recipe.samples, len(ds.train))} images from {ds.spec} "
                f"({Path(recipe.path).name}, {'transformer' if spec.is_transformer else 'CNN'} recipe)")
            calib, _ = calibration_images(ds, pre, recipe)
        say(f"building {precision} for {tgt.name} with {backend.name} {backend.version()}")
        built = backend.build(BuildJob(onnx_path=onnx_path, precision=precision, target=tgt, out_dir=stage,
                                       transformer=spec.is_transformer, calibration=calib, recipe=recipe))
        (stage / "labels.txt").write_text("\n".join(classes) + "\n")
        partial = {"precision": precision, "target": tgt.to_dict()}
        runner = backend.load(stage, partial, threads)
        executed = runner.info.get("executed_precision")
        if executed and executed != precision:
            say(f"warning: {precision} was asked for but {backend.name} executes {executed} on this host "
                f"({host_info()['cpu']}); the manifest records what ran")

        # -- validate: the built artifact through its own runtime vs FP32 PyTorch -----------------------------
        validation: dict
        if ds:
            labels = val_split.labels
            say(f"validating on {len(labels)} held-out images ({ds.val_name})")
            ref = run_batches(torch_runner(net), val_u8, pre, desc="FP32 reference (torch)")
            got = run_batches(runner, val_u8, pre, desc=f"{precision} ({backend.name})")
            validation = {
                "dataset": ds.spec, "split": ds.val_name, "samples": int(len(labels)),
                "reference": "PyTorch eager FP32", "reference_top1": top1(ref, labels),
                "top1": top1(got, labels), "measured_with": f"{backend.name} on {host_info()['cpu']}",
            }
            validation["top1_drop"] = round(validation["reference_top1"] - validation["top1"], 2)
            validation["max_abs_logit_diff"] = round(float(np.abs(ref - got).max()), 5)
            validation["argmax_agreement"] = round(float((ref.argmax(1) == got.argmax(1)).mean() * 100), 2)
            if random_init:
                validation["note"] = "random weights: accuracy is meaningless"
        else:
            validation = {"skipped": "no --data given: accuracy not measured"}

        # -- latency, side by side with the plain recipes, in the same run ------------------------------------
        lat: dict = {"host": host_info(), "threads": runner.info.get("threads"), "batch": tgt.batch}
        if measure_latency:
            x = np.ascontiguousarray(np.repeat(check_x[:1], tgt.batch, axis=0))
            say(f"measuring latency at batch {tgt.batch}")
            plain = backend.load_default(onnx_path, threads)
            plain_name = f"{backend.name}_default_fp32_export"
            res = compare_latency({"artifact": runner, "torch_eager_fp32": torch_runner(net, threads),
                                   plain_name: plain}, x)
            lat["artifact"] = res["artifact"]
            lat["baselines"] = {
                "torch_eager_fp32": {**res["torch_eager_fp32"], "executed_precision": "fp32"},
                plain_name: {**res[plain_name], "executed_precision": plain.info.get("executed_precision")},
            }
            lat["method"] = "interleaved rounds, same process, same input; wall clock per call"
            lat["p50"], lat["p90"] = lat["artifact"]["p50"], lat["artifact"]["p90"]
        else:
            lat["skipped"] = "latency not measured (measure_latency=False)"

        manifest = {
            "edgevit_version": __version__,
            "model": {"alias": spec.alias, "timm_name": spec.timm_name, "family": spec.family,
                      "num_classes": num_classes, "input_size": [3, *pre.input_size],
                      "weights": Path(weights).name if weights else None,
                      "weights_sha256": sha256_file(weights) if weights else None, "random_init": random_init,
                      "overrides": model_overrides},
            "preprocessing": pre.to_dict(),
            "labels": classes,
            "target": tgt.to_dict(),
            "precision": precision,
            "backend": {"name": backend.name, "version": backend.version(), **built.details,
                        "runtime": runner.info},
            "export": {"format": "onnx", "opset": 17, "max_abs_diff_vs_torch": round(export_diff, 6)},
            "calibration": ({"dataset": ds.spec, "split": "train", "method": "NNCF post-training quantization",
                             **recipe.to_dict(), "samples": int(len(calib))} if calib is not None else None),
            "validation": validation,
            "latency_ms": lat,
            "build_seconds": round(time.perf_counter() - t_start, 1),
            "_files": [*built.files, "labels.txt"],
        }
        manifest = write_manifest(stage, manifest)
    return BuildResult(final, manifest)


def summary(result: BuildResult) -> str:
    """The report card printed after a build: accuracy and latency, with what they were measured on."""
    m = result.manifest
    v, lat = m["validation"], m["latency_ms"]
    prec = m["precision"].upper()
    lines = [f"bundle    {result.bundle}  ({m['model']['alias']} → {m['target']['name']} {m['precision']}, "
             f"{m['backend']['name']} {m['backend']['version']})"]
    if "top1" in v:
        lines.append(f"accuracy  {v['split']} of {v['dataset']}, {v['samples']} images: FP32 (torch) "
                     f"{v['reference_top1']:.2f}%  {prec} ({m['backend']['name']}) {v['top1']:.2f}%  "
                     f"drop {v['top1_drop']:+.2f} pts" + ("  [random weights: meaningless]" if v.get("note") else ""))
    else:
        lines.append(f"accuracy  {v['skipped']}")
    if "artifact" in lat:
        b = lat["baselines"]
        parts = [f"{prec} {lat['artifact']['p50']:.3f} ms"] + [
            f"{k} {val['p50']:.3f} ms ({val['p50'] / lat['artifact']['p50']:.2f}x)" for k, val in b.items()]
        isa = ",".join(lat["host"].get("isa", [])) or "no SIMD flags read"
        lines.append(f"latency   p50 at batch {lat['batch']}, {lat['host']['cpu']} ({isa}), {lat['threads']} threads: "
                     + " | ".join(parts))
        default = next((val for k, val in b.items() if k.endswith("_default_fp32_export")), None)
        if default and default["p50"] < lat["artifact"]["p50"]:
            lines.append(f"note      {prec} is slower than the backend's defaults on the FP32 export "
                         f"(which executed {default.get('executed_precision')}) on this host: "
                         f"{default['p50']:.3f} vs {lat['artifact']['p50']:.3f} ms p50")
    rt = m["backend"]["runtime"]
    if "compute_layers_by_precision" in rt:
        lines.append(f"executed  inference precision {rt['inference_precision']}, compute layers by precision "
                     f"{rt['compute_layers_by_precision']}")
    return "\n".join(lines)
