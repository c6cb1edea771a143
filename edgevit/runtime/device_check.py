"""The check an engine must pass on the device before anything runs it.

A TensorRT bundle is finished on the board (``edgevit compile``), with a TensorRT the workstation never saw. So the
build ships what the board needs to judge the engine without torch or ONNX Runtime: a few held-out validation images,
already preprocessed (``check_inputs.npy``, float16), and the FP32 PyTorch logits on exactly those inputs
(``check_reference.npy``), both listed and checksummed in the manifest. The build also runs the shipped Q/DQ ONNX on
them (ONNX Runtime, the engine's proxy) and states the bounds from what it measured:

- top-1 agreement with the FP32 reference at least the proxy's own, less 2 images (TensorRT may run what the ONNX
  keeps in FP32 in FP16, and a near-tie may flip);
- the largest |logit - reference| at most 4x the proxy's, and never below 5% of the reference's largest |logit|
  (an FP32 engine runs TF32 matmuls on Ampere and later);
- every logit finite.

``compile`` refuses an engine outside them (one line, nothing written); ``predict``, ``time`` and ``demo`` refuse an
engine that never passed. This module is part of the device runtime: numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevit.errors import BundleError, ValidationFailedError, reading

if TYPE_CHECKING:
    from edgevit.runtime.manifest import Manifest

INPUTS = "check_inputs.npy"
REFERENCE = "check_reference.npy"
SAMPLES = 16
FLIPS_ALLOWED = 2
DIFF_FACTOR = 4.0
DIFF_FLOOR = 0.05  # of the reference's largest |logit|
RULE = (f"top-1 agreement with the FP32 reference >= the ONNX proxy's less {FLIPS_ALLOWED} images; max |logit diff| "
        f"<= max({DIFF_FACTOR:g} x the proxy's, {DIFF_FLOOR:g} x max |reference logit|); all logits finite")


def compare(got: np.ndarray, reference: np.ndarray) -> dict:
    """Top-1 agreement (%) and the largest |logit difference| of ``got`` against ``reference``."""
    finite = bool(np.isfinite(got).all())
    return {"top1_agreement": round(float((got.argmax(1) == reference.argmax(1)).mean() * 100), 2),
            "max_abs_logit_diff": round(float(np.abs(got - reference).max()), 5) if finite else None,
            "finite": finite}


def bounds(proxy: dict, reference: np.ndarray) -> dict:
    n = len(reference)
    floor = DIFF_FLOOR * float(np.abs(reference).max())
    return {"min_top1_agreement": round(max(0.0, proxy["top1_agreement"] - 100.0 * FLIPS_ALLOWED / n), 2),
            "max_abs_logit_diff": round(max(DIFF_FACTOR * proxy["max_abs_logit_diff"], floor), 5), "rule": RULE}


# ------------------------------------------------------------------------------------------------ build side
def write(stage: Path, inputs: np.ndarray, reference_fn, proxy_fn, source: str) -> tuple[list[str], dict]:
    """Write the check set into the bundle being built: ``inputs`` (float32 NCHW, normalised) are stored as float16
    and the reference and proxy run on exactly what is stored. Returns the files and the manifest record."""
    x = np.ascontiguousarray(inputs[:SAMPLES].astype(np.float16))
    x32 = x.astype(np.float32)
    reference = np.asarray(reference_fn(x32), dtype=np.float32)
    proxy = compare(np.asarray(proxy_fn(x32), dtype=np.float32), reference)
    if not proxy["finite"]:
        raise ValidationFailedError("the shipped ONNX gives non-finite logits on the check images; no bundle written")
    np.save(stage / INPUTS, x, allow_pickle=False)
    np.save(stage / REFERENCE, reference, allow_pickle=False)
    return [INPUTS, REFERENCE], {"inputs": INPUTS, "reference": REFERENCE, "samples": int(len(x)),
                                 "source": source, "reference_model": "PyTorch eager FP32",
                                 "proxy": proxy, "bounds": bounds(proxy, reference)}


# ------------------------------------------------------------------------------------------------ device side
def load(bundle: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray, dict]:
    """The verified bundle's check set: inputs (float32), reference logits, and its record."""
    rec = manifest.device_check
    if not isinstance(rec, dict):
        raise BundleError(f"{bundle.name} carries no device check images (built by an older edgevit); rebuild it "
                          "with this edgevit")
    with reading("the bundle's device check arrays: damaged bundle", BundleError, "rebuild the bundle"):
        x = np.load(bundle / rec["inputs"], allow_pickle=False).astype(np.float32)
        ref = np.load(bundle / rec["reference"], allow_pickle=False).astype(np.float32)
    classes = manifest.model.num_classes
    want = (len(x), *manifest.model.input_size)
    if x.ndim != 4 or x.shape != want or ref.shape != (len(x), classes) or not len(x) \
            or not np.isfinite(x).all() or not np.isfinite(ref).all():
        raise BundleError(f"damaged bundle: its device check arrays have shapes {x.shape} and {ref.shape}, not "
                          f"{want} images and their {classes} logits; rebuild the bundle")
    return x, ref, rec


def check_engine(bundle: Path, manifest: Manifest, runner) -> dict:
    """Run ``runner`` (the engine) on the bundle's check images, one image at a time as the device will, and
    compare with the FP32 reference; raise :class:`ValidationFailedError` outside the stated bounds. Returns the
    record that goes into the manifest."""
    x, ref, rec = load(bundle, manifest)
    got = np.concatenate([np.asarray(runner(x[i:i + 1]), dtype=np.float32).reshape(1, -1) for i in range(len(x))])
    if got.shape != ref.shape:
        raise ValidationFailedError(f"the engine gives logits of shape {got.shape[1:]}, the model has "
                                    f"{ref.shape[1]} classes; nothing written")
    result = compare(got, ref)
    b = rec["bounds"]
    problems = []
    if not result["finite"]:
        problems.append("non-finite logits")
    else:
        if result["top1_agreement"] < b["min_top1_agreement"]:
            problems.append(f"top-1 agreement {result['top1_agreement']:g}% < {b['min_top1_agreement']:g}%")
        if result["max_abs_logit_diff"] > b["max_abs_logit_diff"]:
            problems.append(f"max |logit diff| {result['max_abs_logit_diff']:g} > {b['max_abs_logit_diff']:g}")
    if problems:
        raise ValidationFailedError(
            f"the engine fails its check on the bundle's {len(x)} validation images against the FP32 reference: "
            f"{'; '.join(problems)} (the ONNX proxy gave {rec['proxy']['top1_agreement']:g}% and "
            f"{rec['proxy']['max_abs_logit_diff']:g}); nothing written. Rebuild with --precision fp16, or report "
            "the TensorRT version")
    return {**result, "samples": int(len(x)), "bounds": b, "passed": True}


def require_validated(bundle: Path, engine: dict) -> None:
    """An engine runs only once ``compile`` (or a build on the device) has checked it."""
    check = engine.get("check") if isinstance(engine, dict) else None
    if not (isinstance(check, dict) and check.get("passed") is True):
        raise BundleError(f"{bundle.name}: its TensorRT engine was never validated on the device; run "
                          f"`edgevit compile {bundle}` there")
