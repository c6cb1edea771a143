"""TensorRT itself: building an engine from the checked ONNX and its plan, and running it. Runs only where
``tensorrt`` and ``cuda-python`` import and a CUDA device exists; written against TensorRT's Python API (8.5 to 11.x).
CUDA is driven through cuda-python's runtime bindings (``cuda.bindings.runtime``), as TensorRT's own samples do since
10.x: the primary context, pinned host buffers, aarch64 wheels for Jetson (pycuda has none and fails to build there)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from edgevit.backends.tensorrt.plan import ENGINE_FILE, LAYERS_FILE, TIMING_CACHE_FILE, engine_mismatch
from edgevit.errors import BundleError, CudaError, EngineError, TargetError, ValidationFailedError
from edgevit.outputs import dumps, sha256_file


def import_tensorrt():
    import tensorrt as trt

    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python (JetPack 5's CUDA 11.4: cuda-python 11.x)
    return cudart


INSUFFICIENT_DRIVER, NO_DEVICE = 35, 100  # cudaErrorInsufficientDriver, cudaErrorNoDevice


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def cuda_error_line(code: int, name: str) -> str:
    """What a failed CUDA call means for the user, in one line: for a driver older than cuda-python's runtime, the
    driver's CUDA and the cuda-python to install (cuda-python 13 needs a CUDA 13 driver; JetPack 6 has 12.6)."""
    if code == INSUFFICIENT_DRIVER:
        cudart = _cudart()
        try:
            driver = _cuda_version(int(cudart.cudaDriverGetVersion()[1]))
            runtime = _cuda_version(int(cudart.cudaRuntimeGetVersion()[1]))
        except Exception:  # an older binding without these calls: say what is known
            return f"{name}: the CUDA driver is older than cuda-python's runtime; install the cuda-python major " \
                   "that matches the driver (nvidia-smi or JetPack's release names it)"
        major = driver.split(".")[0]
        return (f"{name}: the driver supports CUDA {driver} but cuda-python's runtime is CUDA {runtime}: "
                f"pip install 'cuda-python>={major},<{int(major) + 1}' (or edgevit[jetson] / "
                f"edgevit[tensorrt-cu{major}]), or update the driver")
    if code == NO_DEVICE:
        return f"{name}: no CUDA device is visible (in Docker, run with --runtime nvidia)"
    return name


def cuda_call(result):
    """cuda-python returns ``(error, *values)``: raise :class:`CudaError` on an error, return the value(s)."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        code = int(err)
        raise CudaError(code, cuda_error_line(code, f"CUDA error {name}"))
    return values[0] if len(values) == 1 else values


# Where a Jetson says which board it is. /proc/device-tree is masked inside Docker unless bind-mounted
# (docker run -v /proc/device-tree:/proc/device-tree:ro); NVIDIA's container runtime mounts /etc/nv_tegra_release.
BOARD_SOURCES = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")


def board_source(root: Path = Path("/")) -> tuple[str, str] | None:
    """(board name, where it was read) for this host: ``EDGEVIT_BOARD``, else the device tree under ``root``; None
    where neither says. ``root`` lets tests stand in a board's file system."""
    named = os.environ.get("EDGEVIT_BOARD", "").strip()
    if named:
        return named, "EDGEVIT_BOARD"
    for source in BOARD_SOURCES:
        path = root / source.lstrip("/")
        try:
            text = path.read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
        except OSError:
            continue
        if text:
            return text, str(path)
    return None


def board_model() -> str | None:
    """The Jetson board (``NVIDIA Jetson AGX Orin Developer Kit``...): every Orin reports sm 8.7, the board differs.
    ``EDGEVIT_BOARD`` names it where no device tree is readable."""
    found = board_source()
    return found[0] if found else None


def cuda_devices() -> list[dict]:
    """The CUDA devices that CUDA's runtime (cuda-python) reports, for a host without torch (a board's lean
    runtime): name, compute capability, SMs, memory. Raises :class:`CudaError` / ImportError."""
    cudart = _cudart()
    out = []
    for i in range(cuda_call(cudart.cudaGetDeviceCount())):
        prop = cuda_call(cudart.cudaGetDeviceProperties(i))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        out.append({"index": i, "name": name.split("\x00")[0], "capability": f"{prop.major}.{prop.minor}",
                    "sm_count": int(prop.multiProcessorCount),
                    "memory_gib": round(int(prop.totalGlobalMem) / 2**30, 1)})
    return out


def device_info() -> dict:
    """TensorRT version and the CUDA device of this host: what an engine is bound to (TensorRT, GPU, SM count and
    memory, which tell an AGX Orin from an Orin NX or Nano even when no device tree is readable). Raises ImportError
    / :class:`CudaError` / RuntimeError where there is none."""
    trt = import_tensorrt()
    devices = cuda_devices()
    if not devices:
        raise CudaError(100, "no CUDA device (cudaErrorNoDevice)")
    d = devices[0]
    info = {"tensorrt": trt.__version__, "device_name": d["name"], "compute_capability": d["capability"],
            "sm_count": d["sm_count"], "memory_gib": d["memory_gib"]}
    board = board_model()
    if board:
        info["board"] = board
    return info


def engine_support() -> tuple[bool, str]:
    """Can this host build and run TensorRT engines? (ok, reason)."""
    try:
        info = device_info()
    except ImportError as e:
        return False, (f"TensorRT/cuda-python not importable ({e.name or e}): on a Jetson, pip install "
                       "'edgevit[jetson]' in a venv made with --system-site-packages (JetPack provides TensorRT); "
                       "on an x86 GPU host, 'edgevit[tensorrt-cu12]' or 'edgevit[tensorrt-cu13]' by its driver")
    except Exception as e:  # cuda-python reports a missing or old driver as a CUDA error
        return False, f"no usable CUDA device ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return True, f"TensorRT {info['tensorrt']} on {info['device_name']} (sm {info['compute_capability']})"


class _StderrLogger:
    """TensorRT's messages on stderr: the binding's default logger prints to stdout, where ``time --json`` and
    ``bench --remote`` read JSON. One per process, made on first use (TensorRT wants one logger for all its objects)."""

    instance = None

    @classmethod
    def get(cls, trt):
        if cls.instance is None:
            shown = {trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR, trt.ILogger.WARNING}

            class Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity, msg) -> None:  # noexcept in TensorRT: never raise from here
                    try:
                        if severity in shown:
                            sys.stderr.write(f"[TensorRT] {msg}\n")
                    except Exception:
                        pass

            cls.instance = Logger()
        return cls.instance


def logger():
    """The process's one TensorRT logger (warnings and errors to stderr)."""
    return _StderrLogger.get(import_tensorrt())


def build_engine(onnx_path: Path, plan: dict, out_dir: Path, log=print) -> dict:
    """Build a serialized engine from ``onnx_path`` following ``plan``; write the engine, the timing cache and the
    engine inspector's layer report into ``out_dir``. Returns the engine record (what makes it valid)."""
    trt = import_tensorrt()
    info = device_info()
    log_to = logger()
    builder = trt.Builder(log_to)
    flags = 0
    if plan["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(info["tensorrt"].split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log_to)
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
    blob = bytes(cache.serialize()) if cache is not None else b""
    if blob:
        cache_path.write_bytes(blob)
    elif cache_path.exists():
        cache_path.unlink()

    runtime = trt.Runtime(log_to)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()  # without one, a dynamic-shape engine's formats read "N/A"
    for name, shp in plan["optimization_profile"].items():
        context.set_input_shape(name, tuple(shp["opt"]))
    inspector.execution_context = context
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    (out_dir / LAYERS_FILE).write_text(dumps(layers, indent=1))

    return {**info, "onnx_sha256": sha256_file(onnx_path), "precision": plan["precision"], "plan": plan,
            "build_seconds": round(seconds, 1), "layers": layer_summary(layers),
            "files": [ENGINE_FILE, LAYERS_FILE] + ([TIMING_CACHE_FILE] if cache_path.is_file() else [])}


def apply_timing_cache(config, cache_path: Path, log=print) -> bool:
    """Use the timing cache at ``cache_path`` if TensorRT accepts it; a cache from another device or TensorRT is
    refused (``set_timing_cache`` returns False) and replaced by a fresh one, never trusted blindly. Returns whether
    the old cache was used. ``create_timing_cache`` may return None (TensorRT's Python binding says so): then the
    build runs without a cache."""
    old = cache_path.read_bytes() if cache_path.is_file() else b""
    if old:
        cache = config.create_timing_cache(old)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        log(f"the timing cache {cache_path.name} is from another device or TensorRT version; starting a fresh one")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        log("TensorRT gave no usable timing cache; building without one")
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
        trt = import_tensorrt()
        cudart = _cudart()
        why = engine_mismatch(record, device_info())
        if why:
            raise BundleError(f"{engine_path} cannot run here: {why}; rebuild it on this device with "
                              f"`edgevit compile {engine_path.parent}`")
        self._cudart = cudart
        self._engine_path = engine_path
        runtime = trt.Runtime(logger())
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
            raise EngineError("TensorRT execution failed (IExecutionContext.execute_async_v3 returned False)")
        cuda_call(cudart.cudaMemcpyAsync(host_out.ctypes.data, d_out, host_out.nbytes, d2h, self._stream))
        cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return np.array(host_out)

    def profile(self, x: np.ndarray, runs: int = 50) -> dict:
        """Per-layer time from TensorRT's IProfiler on the device; precisions from the engine inspector's layers."""
        from edgevit.runtime.profile import precision_of, summarize

        trt = import_tensorrt()

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
