"""The TensorRT engine plan: the builder settings a target implies for one TensorRT version, the trtexec command and
script that apply them on the device, and what makes a built engine valid. Pure logic: runs on any host."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from edgevit.errors import TargetError
from edgevit.outputs import dumps
from edgevit.schema import TENSORRT_VERSION, bad_char

ONNX_FILE = "model.onnx"
PLAN_FILE = "engine_plan.json"
ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
LAYERS_FILE = "engine_layers.json"
PROFILE_FILE = "engine_profile.json"
SCRIPT_FILE = "build_engine.sh"
ASSUMED_TENSORRT = "10.3"  # JetPack 6's TensorRT, for plans written where TensorRT is not installed


# ---------------------------------------------------------------------------------------------------- pure logic
def engine_plan(target, precision: str, tensorrt_version: str, input_shape: tuple[int, int, int],
                input_name: str = "input", fp32_layers: list[str] | tuple = ()) -> dict:
    """The builder settings for ``target`` at ``precision`` with a given TensorRT version: what ``compile`` applies.

    TensorRT 11 removed the FP16/INT8 builder flags (every network is strongly typed; the ONNX's types decide, so an
    fp16 bundle ships an FP16-typed ONNX).
    Before 11, our Q/DQ ONNX is FP32 outside its Q/DQ pairs, so a strongly typed build would run LayerNorm, Softmax
    and the residual Adds in FP32; weakly typed with INT8+FP16 lets TensorRT run the Q/DQ layers in INT8 and pick FP16
    for the rest, the faster choice, and the one DLA needs before TensorRT 11."""
    if precision not in ("fp32", "fp16", "int8"):
        raise TargetError(f"TensorRT builds fp32, fp16 or int8, not {precision}")
    if not TENSORRT_VERSION.fullmatch(str(tensorrt_version)):
        raise TargetError(f"{tensorrt_version!r} is not a TensorRT version (like 10.3 or 8.5.2)")
    bad = [n for n in fp32_layers  # trtexec's separators and quotes, and anything that is not one printable line
           if not isinstance(n, str) or not _LAYER_NAME.fullmatch(n) or bad_char(n) is not None]
    if bad:
        raise TargetError(f"layer name {bad[0]!r} cannot be passed to trtexec (a comma, quote or control character "
                          "in it); rename the layer in the ONNX")
    major = int(str(tensorrt_version).split(".")[0])
    dla = target.dla_core >= 0
    if dla and precision == "fp32":
        raise TargetError(f"target {target.name} builds for DLA core {target.dla_core}, which runs only fp16 and "
                          "int8; choose --precision int8 or fp16, or a GPU target")
    strongly_typed = major >= 11
    flags: list[str] = []
    notes: list[str] = []
    if not strongly_typed:
        flags = {"int8": ["INT8", "FP16"], "fp16": ["FP16"], "fp32": []}[precision]
        if precision == "int8":
            notes.append("explicit quantization: INT8 where the ONNX has Q/DQ pairs; TensorRT may pick FP16 for the "
                         "rest")
    elif precision == "int8":
        notes.append("strongly typed: INT8 where the ONNX has Q/DQ pairs, FP32 elsewhere (the ONNX's types)")
    elif precision == "fp16":
        notes.append("strongly typed: the ONNX is FP16-typed, with LayerNorm and Softmax in FP32")
    if dla and target.gpu_fallback:
        flags.append("GPU_FALLBACK")
    b = target.batch_range or (target.batch, target.batch, target.batch)
    shape = list(input_shape)
    return {
        "tensorrt": str(tensorrt_version),
        "onnx": ONNX_FILE,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "builder_flags": flags,
        "device": "DLA" if dla else "GPU",
        "dla_core": target.dla_core if dla else None,
        "gpu_fallback": bool(dla and target.gpu_fallback),
        "workspace_bytes": target.workspace_mb * (1 << 20) if target.workspace_mb else None,
        "optimization_profile": {input_name: {"min": [b[0], *shape], "opt": [b[1], *shape], "max": [b[2], *shape]}},
        "timing_cache": TIMING_CACHE_FILE,
        "profiling_verbosity": "DETAILED",
        "expected_compute_capability": target.compute_capability or None,
        # layers pinned to FP32 in a weakly typed build (a decomposed LayerNorm), with precision constraints obeyed
        "fp32_layers": list(fp32_layers) if not strongly_typed else [],
        "notes": notes,
    }


# trtexec splits --layerPrecisions/--layerOutputTypes at commas and treats quotes as name delimiters (sampleOptions.cpp)
_LAYER_NAME = re.compile(r"[^,'\x00-\x1f\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _dims(shape: list[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_args(plan: dict, out: str = ".") -> list[str]:
    """The ``trtexec`` arguments that build the engine ``plan`` describes, for the plan's TensorRT version: the
    same precision (``--int8``/``--fp16`` before TensorRT 11, ``--stronglyTyped`` from 11), DLA core and GPU
    fallback, shapes of the batch range, timing cache, workspace pool, detailed profiling, layer and profile export.
    What it writes goes into ``out``."""
    args = [f"--onnx={plan['onnx']}", f"--saveEngine={out}/{ENGINE_FILE}"]
    if plan["strongly_typed"]:
        args.append("--stronglyTyped")
    args += [f"--{flag.lower()}" for flag in plan["builder_flags"] if flag in ("INT8", "FP16", "BF16", "FP8")]
    if plan["device"] == "DLA":
        args.append(f"--useDLACore={plan['dla_core']}")
        if plan["gpu_fallback"]:
            args.append("--allowGPUFallback")
    for key, flag in (("min", "minShapes"), ("opt", "optShapes"), ("max", "maxShapes")):
        args.append(f"--{flag}=" + ",".join(f"{name}:{_dims(s[key])}"
                                             for name, s in plan["optimization_profile"].items()))
    if plan.get("fp32_layers"):
        # --layerPrecisions sets where a layer computes, --layerOutputTypes what it stores: trtexec (8.5 too) applies
        # them separately, so both, or FP16 storage of a pinned LayerNorm's statistics stays possible
        pinned = ",".join(f"{name}:fp32" for name in plan["fp32_layers"])
        args += ["--precisionConstraints=obey", f"--layerPrecisions={pinned}", f"--layerOutputTypes={pinned}"]
    if plan.get("workspace_bytes"):
        args.append(f"--memPoolSize=workspace:{plan['workspace_bytes'] >> 20}")  # MiB, the unit every version reads
    args += [f"--timingCacheFile={out}/{plan['timing_cache']}", "--profilingVerbosity=detailed",
             f"--exportLayerInfo={out}/{LAYERS_FILE}", "--separateProfileRun", "--dumpProfile",
             f"--exportProfile={out}/{PROFILE_FILE}"]
    return args


def build_script(plan: dict) -> str:
    """``build_engine.sh``: the plan as the ``trtexec`` command it means, for users who build with NVIDIA's tools."""
    lines = " \\\n    ".join(_shell_word(a) for a in trtexec_args(plan, out=_OUT))
    about = (f"TensorRT {plan['tensorrt']}, {plan['precision']} on the {plan['device']}"
             + ("" if plan["dla_core"] is None else f" core {plan['dla_core']}"))
    if _CONTROL.search(about):  # a comment line ends at a line break: nothing may end it early
        raise TargetError(f"the engine plan holds a control character ({about!r}); rebuild the bundle")
    return f"""#!/usr/bin/env bash
# Builds this bundle's TensorRT engine with NVIDIA's trtexec, exactly as engine_plan.json says (written by edgevit
# for {about}).
# It writes the engine, timing cache, layer info and profile into OUT (default: a sibling folder BUNDLE.trtexec), never
# into the bundle, which stays verifiable. `edgevit compile BUNDLE` builds the same engine into the bundle and also
# checks it on the bundle's validation images and records it in the manifest.
set -euo pipefail
cd "$(dirname "$0")"
OUT="${{OUT:-$PWD.trtexec}}"
mkdir -p "$OUT"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "trtexec not found: install TensorRT (JetPack ships it in /usr/src/tensorrt/bin) or set TRTEXEC" >&2
  exit 1
fi
exec "$TRTEXEC" \\
    {lines} "$@"
"""


_OUT = "\x00OUT\x00"  # where the script's $OUT goes: no layer name or version holds a control character


def _shell_word(arg: str) -> str:
    """One trtexec argument as one shell word: every part quoted, the output folder left to the shell's $OUT."""
    return '"$OUT"'.join(shlex.quote(part) if part else "" for part in arg.split(_OUT))


def write_plan(out_dir: Path, plan: dict) -> list[str]:
    """``engine_plan.json`` and its ``build_engine.sh`` (executable as the umask allows); the bundle files they are
    with the ONNX."""
    import os

    from edgevit.outputs import umask, write_text

    (out_dir / PLAN_FILE).write_text(dumps(plan, indent=1))
    script = out_dir / SCRIPT_FILE
    write_text(script, build_script(plan))
    os.chmod(script, 0o777 & ~umask())
    return [ONNX_FILE, PLAN_FILE, SCRIPT_FILE]


def engine_mismatch(record: dict, current: dict) -> str | None:
    """Why an engine built as ``record`` cannot run here (``current``: tensorrt, device_name, compute_capability), or
    None. TensorRT engines are bound to the TensorRT version and the GPU they were built on."""
    problems = []
    if record.get("tensorrt") != current.get("tensorrt"):
        problems.append(f"it was built with TensorRT {record.get('tensorrt')}, this is TensorRT "
                        f"{current.get('tensorrt')}")
    if record.get("compute_capability") != current.get("compute_capability") or \
            record.get("device_name") != current.get("device_name"):
        problems.append(f"it was built on {record.get('device_name')} (sm {record.get('compute_capability')}), this "
                        f"is {current.get('device_name')} (sm {current.get('compute_capability')})")
    elif record.get("board") and current.get("board") and record["board"] != current["board"]:
        problems.append(f"it was built on a {record['board']}, this is a {current['board']}")
    elif any(record.get(k) is not None and current.get(k) is not None and record[k] != current[k]
             for k in ("sm_count", "memory_gib")):  # an AGX Orin's engine on an Orin NX/Nano, with no device tree
        problems.append(f"it was built on a GPU with {record.get('sm_count')} SMs and {record.get('memory_gib')} GiB, "
                        f"this one has {current.get('sm_count')} SMs and {current.get('memory_gib')} GiB (another "
                        "board of the same family)")
    return "; ".join(problems) or None
