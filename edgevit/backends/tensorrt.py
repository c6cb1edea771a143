"""TensorRT for Jetson boards and NVIDIA GPUs.

Two halves. Everything up to the engine runs on any host: a Q/DQ INT8 ONNX (NNCF, symmetric signed INT8) that passes
:mod:`edgevit.trt_rules`, its accuracy through ONNX Runtime on the CPU, and the engine build plan derived from the
target profile. The engine itself is built where TensorRT and the GPU are, because an engine is bound to the device,
the TensorRT version and the build flags: at the end of ``edgevit build`` when this host is that device, otherwise
with ``edgevit compile BUNDLE`` on the device. The engine code below follows TensorRT's Python API (8.5 to 11.x) and
runs only where ``tensorrt`` and ``cuda-python`` import and a CUDA device exists. CUDA is driven through
cuda-python's runtime bindings (``cuda.bindings.runtime``), as TensorRT's own samples do since 10.x: the primary
context, pinned host buffers, aarch64 wheels for Jetson (pycuda has none and fails to build there).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from edgevit.backends import BuildJob, Built, Capabilities
from edgevit.errors import BackendUnavailableError, BundleError, TargetError, ValidationFailedError
from edgevit.outputs import dumps

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
        args += ["--precisionConstraints=obey",
                 "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in plan["fp32_layers"])]
    if plan.get("workspace_bytes"):
        args.append(f"--memPoolSize=workspace:{plan['workspace_bytes'] >> 20}")  # MiB, the unit every version reads
    args += [f"--timingCacheFile={out}/{plan['timing_cache']}", "--profilingVerbosity=detailed",
             f"--exportLayerInfo={out}/{LAYERS_FILE}", "--separateProfileRun", "--dumpProfile",
             f"--exportProfile={out}/{PROFILE_FILE}"]
    return args


def build_script(plan: dict) -> str:
    """``build_engine.sh``: the plan as the ``trtexec`` command it means, for users who build with NVIDIA's tools."""
    lines = " \\\n    ".join(a.replace("=$OUT/", '="$OUT"/') for a in trtexec_args(plan, out="$OUT"))
    return f"""#!/usr/bin/env bash
# Builds this bundle's TensorRT engine with NVIDIA's trtexec, exactly as engine_plan.json says (written by edgevit
# for TensorRT {plan['tensorrt']}, {plan['precision']} on the {plan['device']}{'' if plan['dla_core'] is None
                                                                          else f" core {plan['dla_core']}"}).
# It writes the engine, timing cache, layer info and profile into OUT (default: a sibling folder BUNDLE.trtexec), never
# into the bundle, which stays verifiable. `edgevit compile BUNDLE` builds the same engine into the bundle and also
# checks it against ONNX Runtime and records it in the manifest.
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
    return "; ".join(problems) or None


# ------------------------------------------------------------------------------------------------- TensorRT itself
def _trt():
    import tensorrt as trt

    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def cuda_call(result):
    """cuda-python returns ``(error, *values)``: raise on an error, return the value(s)."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def board_model() -> str | None:
    """The Jetson board (``NVIDIA Jetson AGX Orin Developer Kit``...): every Orin reports sm 8.7, the board differs."""
    try:
        return Path("/proc/device-tree/model").read_bytes().rstrip(b"\x00").decode(errors="replace").strip() or None
    except OSError:
        return None


def device_info() -> dict:
    """TensorRT version and the CUDA device of this host (raises ImportError / RuntimeError where there is none)."""
    trt = _trt()
    cudart = _cudart()
    if cuda_call(cudart.cudaGetDeviceCount()) < 1:
        raise RuntimeError("no CUDA device")
    prop = cuda_call(cudart.cudaGetDeviceProperties(0))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    info = {"tensorrt": trt.__version__, "device_name": name.split("\x00")[0],
            "compute_capability": f"{prop.major}.{prop.minor}"}
    board = board_model()
    if board:
        info["board"] = board
    return info


def engine_support() -> tuple[bool, str]:
    """Can this host build and run TensorRT engines? (ok, reason)."""
    try:
        info = device_info()
    except ImportError as e:
        return False, (f"TensorRT/cuda-python not importable ({e.name or e}): pip install 'edgevit[tensorrt]' on the "
                       "device (JetPack provides TensorRT)")
    except Exception as e:  # cuda-python reports a missing driver as a CUDA error
        return False, f"no usable CUDA device ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return True, f"TensorRT {info['tensorrt']} on {info['device_name']} (sm {info['compute_capability']})"


def build_engine(onnx_path: Path, plan: dict, out_dir: Path, log=print) -> dict:
    """Build a serialized engine from ``onnx_path`` following ``plan``; write the engine, the timing cache and the
    engine inspector's layer report into ``out_dir``. Returns the engine record (what makes it valid)."""
    trt = _trt()
    info = device_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(info["tensorrt"].split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValidationFailedError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    for flag in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    pinned = set(plan.get("fp32_layers", []))
    if pinned:
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in pinned:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if plan["workspace_bytes"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_bytes"])
    if plan["device"] == "DLA":
        if builder.num_DLA_cores <= plan["dla_core"]:
            raise TargetError(f"the plan asks for DLA core {plan['dla_core']} but this device has "
                              f"{builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan["dla_core"]
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for name, s in plan["optimization_profile"].items():
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    config.add_optimization_profile(profile)
    cache_path = out_dir / TIMING_CACHE_FILE
    apply_timing_cache(config, cache_path, log)

    log(f"building the TensorRT engine ({plan['precision']}, {plan['device']}) on {info['device_name']}")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValidationFailedError("TensorRT failed to build the engine; run with a larger workspace or see the "
                                    "TensorRT log above")
    seconds = time.perf_counter() - t0
    (out_dir / ENGINE_FILE).write_bytes(bytes(serialized))
    cache = config.get_timing_cache()
    if cache is not None:
        cache_path.write_bytes(bytes(cache.serialize()))
    else:
        cache_path.unlink(missing_ok=True)

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()  # without one, a dynamic-shape engine's formats read "N/A"
    for name, shp in plan["optimization_profile"].items():
        context.set_input_shape(name, tuple(shp["opt"]))
    inspector.execution_context = context
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    (out_dir / LAYERS_FILE).write_text(dumps(layers, indent=1))
    from edgevit.models import sha256_file

    return {**info, "onnx_sha256": sha256_file(onnx_path), "precision": plan["precision"], "plan": plan,
            "build_seconds": round(seconds, 1), "layers": layer_summary(layers),
            "files": [ENGINE_FILE, LAYERS_FILE] + ([TIMING_CACHE_FILE] if cache_path.is_file() else [])}


def apply_timing_cache(config, cache_path: Path, log=print) -> bool:
    """Use the timing cache at ``cache_path`` if TensorRT accepts it; a cache from another device or TensorRT is
    refused (``set_timing_cache`` returns False) and replaced by a fresh one, never trusted blindly. Returns whether
    the old cache was used."""
    old = cache_path.read_bytes() if cache_path.is_file() else b""
    if old and config.set_timing_cache(config.create_timing_cache(old), ignore_mismatch=False):
        return True
    if old:
        log(f"the timing cache {cache_path.name} is from another device or TensorRT version; starting a fresh one")
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        log("TensorRT refused an empty timing cache; building without one")
    return False


def layer_format(layer: dict) -> str:
    """An inspector layer's output format and type: TensorRT <= 10 reports "Format/Datatype", later versions split
    it into separate format and type fields."""
    outs = layer.get("Outputs") or [{}]
    out0 = outs[0] if isinstance(outs[0], dict) else {}
    return str(out0.get("Format/Datatype") or " ".join(str(v) for k, v in out0.items()
                                                       if "type" in k.lower() or "format" in k.lower()) or "unknown")


def layer_summary(layers: dict) -> dict:
    """Counts of the engine's layers by output precision and by placement, from the inspector's JSON."""
    by_precision: dict[str, int] = {}
    by_device: dict[str, int] = {}
    for layer in layers.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        fmt = layer_format(layer)
        low = fmt.lower()  # e.g. "Row major linear FP32", "Channel major FP16 format ...", "Int8"
        prec = next((name for name, keys in (("INT8", ("int8",)), ("FP16", ("fp16", "half")), ("FP8", ("fp8",)),
                                             ("FP32", ("fp32", "float"))) if any(k in low for k in keys)), fmt)
        by_precision[prec] = by_precision.get(prec, 0) + 1
        where = "DLA" if "dla" in str(layer.get("LayerType", "")).lower() or "DLA" in str(layer.get("Name", "")) \
            else "GPU"
        by_device[where] = by_device.get(where, 0) + 1
    return {"by_precision": by_precision, "by_device": by_device}


def profile_chunks(x: np.ndarray, max_batch: int) -> list[np.ndarray]:
    """``x`` split into batches the engine's optimization profile allows (at most ``max_batch`` images each)."""
    return [x[s:s + max_batch] for s in range(0, len(x), max(1, max_batch))]


class TRTRunner:
    """Runs a TensorRT engine with cuda-python: the primary CUDA context, one stream, pinned host buffers. Inputs of
    any batch are split into the batches the engine's profile allows."""

    def __init__(self, engine_path: Path, record: dict, plan: dict | None = None) -> None:
        trt = _trt()
        cudart = _cudart()
        why = engine_mismatch(record, device_info())
        if why:
            raise BundleError(f"{engine_path} cannot run here: {why}; rebuild it on this device with "
                              f"`edgevit compile {engine_path.parent}`")
        self._cudart = cudart
        self._engine_path = engine_path
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        plan = plan or record.get("plan") or {}
        if plan.get("dla_core") is not None:
            runtime.DLA_core = int(plan["dla_core"])  # as trtexec --useDLACore does, before deserializing
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BundleError(f"TensorRT could not deserialize {engine_path}; rebuild it with `edgevit compile`")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        lo, _, hi = self._engine.get_tensor_profile_shape(self._input, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self._stream = cuda_call(cudart.cudaStreamCreate())
        self._buffers: dict[int, tuple] = {}
        self.info = {"backend": "tensorrt", "version": trt.__version__, "device": record.get("device_name"),
                     "executed_precision": record.get("precision"), "engine_layers": record.get("layers"),
                     "batch_range": [self.min_batch, self.max_batch]}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self._run(c) for c in profile_chunks(x, self.max_batch)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        if not self._context.set_input_shape(self._input, tuple(x.shape)):
            raise ValidationFailedError(f"TensorRT refused input shape {tuple(x.shape)}: the engine's profile allows "
                                        f"batch {self.min_batch}..{self.max_batch}")
        return self._execute(x)

    def _pinned(self, shape: tuple) -> tuple[int, np.ndarray]:
        import ctypes

        count = int(np.prod(shape))
        ptr = cuda_call(self._cudart.cudaMallocHost(count * 4))
        return ptr, np.ctypeslib.as_array((ctypes.c_float * count).from_address(int(ptr))).reshape(shape)

    def _execute(self, x: np.ndarray) -> np.ndarray:
        cudart, n = self._cudart, x.shape[0]
        if n not in self._buffers:
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            h_in, h_out = self._pinned(x.shape), self._pinned(out_shape)
            d_in = cuda_call(cudart.cudaMalloc(x.nbytes))
            d_out = cuda_call(cudart.cudaMalloc(h_out[1].nbytes))
            self._buffers[n] = (h_in, h_out, d_in, d_out)
        (_, host_in), (_, host_out), d_in, d_out = self._buffers[n]
        np.copyto(host_in, x)
        self._context.set_tensor_address(self._input, int(d_in))
        self._context.set_tensor_address(self._output, int(d_out))
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, x.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(stream_handle=int(self._stream)):
            raise RuntimeError("TensorRT execution failed")
        cuda_call(cudart.cudaMemcpyAsync(host_out.ctypes.data, d_out, host_out.nbytes, d2h, self._stream))
        cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return np.array(host_out)

    def profile(self, x: np.ndarray, runs: int = 50) -> dict:
        """Per-layer time from TensorRT's IProfiler on the device; precisions from the engine inspector's layers."""
        from edgevit.profile import precision_of, summarize

        trt = _trt()

        class LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.ms: dict[str, float] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.ms[layer_name] = self.ms.get(layer_name, 0.0) + ms

        x = np.ascontiguousarray(x[: self.max_batch], dtype=np.float32)
        for _ in range(5):
            self._run(x)
        times = LayerTimes()
        self._context.profiler = times
        try:
            for _ in range(runs):
                self._run(x)
        finally:
            self._context.profiler = None
        layers_file = self._engine_path.parent / LAYERS_FILE
        layers = json.loads(layers_file.read_text()) if layers_file.is_file() else {}
        entries = layers.get("Layers", []) if isinstance(layers, dict) else []
        formats = {layer.get("Name"): (str(layer.get("LayerType", "?")), layer_format(layer))
                   for layer in entries if isinstance(layer, dict)}
        acc = {name: {"type": formats.get(name, ("?", "?"))[0], "exec": formats.get(name, ("?", "?"))[1],
                      "precision": precision_of(formats.get(name, ("?", ""))[1]), "ms": ms}
               for name, ms in times.ms.items()}
        return summarize(acc, runs, f"TensorRT IProfiler on {self.info.get('device')}, {runs} runs at batch "
                                    f"{x.shape[0]}")

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for (hp, _), (op, _), d_in, d_out in getattr(self, "_buffers", {}).values():
            for ptr in (hp, op):
                cudart.cudaFreeHost(ptr)
            for ptr in (d_in, d_out):
                cudart.cudaFree(ptr)


# ------------------------------------------------------------------------------------------------------ backend
class TensorRTBackend:
    name = "tensorrt"
    capabilities = Capabilities(int8_signed_symmetric=True, engine_on_device=True)

    def available(self) -> tuple[bool, str]:
        """The part of a TensorRT build that runs on any host needs what the ONNX Runtime backend needs."""
        from edgevit.backends.onnxruntime import ONNXRuntimeBackend

        return ONNXRuntimeBackend().available()

    def version(self) -> str:
        try:
            return _trt().__version__
        except ImportError:
            return "not installed here (the engine is built on the device)"

    def read(self, onnx_path: Path):
        import onnx

        return onnx.load(str(onnx_path))

    def build(self, job: BuildJob) -> Built:
        import onnx

        from edgevit import trt_rules
        from edgevit.export import INPUT_NAME, clean_onnx

        details: dict = {"quantizer": job.quantizer} if job.quantizer else {}
        model = job.model
        target = job.target
        ok, why = engine_support()
        here = ok and _is_target_device(target)
        # the plan is for the TensorRT that will build the engine: this host's when it is the device, else the
        # target's (JetPack's), never the workstation's
        version = device_info()["tensorrt"] if here else (target.tensorrt or ASSUMED_TENSORRT)
        if job.precision == "int8":
            model = trt_rules.constants_to_initializers(clean_onnx(model))
            rewritten = trt_rules.unsigned_to_signed(model)
            trt_rules.fold_weight_transposes(model)
            fused = (trt_rules.quantize_attention(model, job.calibration, INPUT_NAME)
                     if job.calibration is not None else [])
            details["attention_qdq"] = {"matmuls": len(fused), "softmax_scale": "1/127",
                                        "v_scale": "max |V| / 127 on the calibration images"}
            violations = trt_rules.check(model)
            covered, gemm_inputs = trt_rules.gemm_coverage(model)
            details["trt_rules"] = {"violations": [str(v) for v in violations], "passed": not violations,
                                    "gemm_inputs_quantized": [covered, gemm_inputs],
                                    "unsigned_rewritten_to_int8": rewritten,
                                    "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in model.graph.node)}
            if violations and not job.allow_rule_violations:
                raise ValidationFailedError(
                    f"the Q/DQ ONNX breaks {len(violations)} TensorRT rule(s):\n{trt_rules.report(violations)}\n"
                    "no bundle written; pass --ignore-trt-rules to build it anyway")
            if violations:
                details["trt_rules"]["overridden"] = True
        fp32_layers: list[str] = []
        if job.precision == "fp16":  # FP16-typed: what a strongly typed build needs, and fine for a weakly typed one
            from edgevit.export import fp16_typed

            model = fp16_typed(model)
            details["fp16_onnx"] = "FP16-typed, float32 inputs/outputs, LayerNorm and Softmax in FP32"
        if trt_rules.version_tuple(version) < trt_rules.LAYERNORM_SINCE:
            fp32_layers = trt_rules.decompose_layernorm(model)
            details["layernorm"] = (f"decomposed for TensorRT {version} (no LayerNormalization importer before "
                                    f"8.6); {len(fp32_layers)} layers pinned to FP32")
            left = [v for v in trt_rules.check(model, tensorrt=version) if v.rule == "unsupported-op"]
            if left:
                raise ValidationFailedError(f"the ONNX still has ops TensorRT {version} cannot import: "
                                            f"{trt_rules.report(left)}")
        from edgevit.export import set_metadata

        set_metadata(model, job.metadata)
        onnx.save(model, str(job.out_dir / ONNX_FILE))

        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
        plan = engine_plan(target, job.precision, version, shape, fp32_layers=fp32_layers)
        files = write_plan(job.out_dir, plan)
        details["plan"] = plan
        if here:
            record = build_engine(job.out_dir / ONNX_FILE, plan, job.out_dir)
            details["engine"] = {k: v for k, v in record.items() if k != "plan"}
            files += record["files"]
        else:
            if target.arch and platform.machine() not in target.arch:
                why = f"this host ({platform.machine()}) is not a {target.device}"
            elif ok:
                why = f"this host's GPU is not a {target.device} (sm {target.compute_capability})"
            details["engine"] = {"status": "pending", "why": why,
                                 "next": f"on the {target.device}: edgevit compile BUNDLE"}
        return Built(files=files, details=details)

    def device_support(self, target) -> tuple[bool, str]:
        """Engines build and run here when TensorRT and a CUDA device are, of the target's compute capability."""
        ok, why = engine_support()
        if ok and target.compute_capability:
            have = device_info()["compute_capability"]
            if have != target.compute_capability:
                return False, f"needs a GPU of compute capability {target.compute_capability}; this host has {why}"
        return ok, why

    def required_files(self, bundle_dir: Path, manifest: dict) -> set[str]:
        from edgevit.backends import onnx_external_files

        need = {ONNX_FILE, PLAN_FILE, *onnx_external_files(bundle_dir, manifest, ONNX_FILE)}
        engine = manifest["backend"].get("engine")
        if (Path(bundle_dir) / ENGINE_FILE).exists() or (isinstance(engine, dict)
                                                         and engine.get("status", "built") != "pending"):
            need.add(ENGINE_FILE)
        return need

    def load(self, bundle_dir: Path, manifest: dict, threads: int | None = None):
        engine = manifest["backend"].get("engine", {})
        if (Path(bundle_dir) / ENGINE_FILE).is_file() and engine.get("status") != "pending":
            ok, why = engine_support()
            if not ok:
                raise BackendUnavailableError(f"{bundle_dir} holds a TensorRT engine, which needs TensorRT and the "
                                              f"GPU it was built on: {why}")
            return TRTRunner(Path(bundle_dir) / ENGINE_FILE, engine, manifest["backend"].get("plan"))
        return onnx_proxy(Path(bundle_dir) / ONNX_FILE, threads)

    def peer_int8(self, onnx_path: Path, calibration, work_dir: Path) -> None:
        return None  # no one-line INT8 recipe of its own to compare with

    def load_default(self, onnx_path: Path, threads: int | None = None):
        return onnx_proxy(onnx_path, threads)


def onnx_proxy(onnx_path: Path, threads: int | None):
    """The bundle's ONNX through ONNX Runtime on the CPU: the closest honest proxy for the engine's accuracy."""
    from edgevit.backends.onnxruntime import ORTRunner

    r = ORTRunner(onnx_path, threads)
    r.info["proxy_for"] = "tensorrt"
    return r


def _is_target_device(target) -> bool:
    """Is this host the device the target describes? (engines are only built where they will run)"""
    if target.arch and platform.machine() not in target.arch:
        return False
    if target.compute_capability:
        try:
            return device_info()["compute_capability"] == target.compute_capability
        except Exception:
            return False
    return True
