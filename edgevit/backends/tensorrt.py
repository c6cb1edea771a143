"""TensorRT for Jetson boards and NVIDIA GPUs.

Two halves. Everything up to the engine runs on any host: a Q/DQ INT8 ONNX (NNCF, symmetric signed INT8) that passes
:mod:`edgevit.trt_rules`, its accuracy through ONNX Runtime on the CPU, and the engine build plan derived from the
target profile. The engine itself is built where TensorRT and the GPU are, because an engine is bound to the device,
the TensorRT version and the build flags: at the end of ``edgevit build`` when this host is that device, otherwise
with ``edgevit compile BUNDLE`` on the device. The engine code below follows TensorRT's Python API (8.5 to 11.x) and
runs only where ``tensorrt`` and ``pycuda`` import and a CUDA device exists.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from edgevit.backends import BuildJob, Built
from edgevit.errors import BackendUnavailableError, BundleError, TargetError, ValidationFailedError
from edgevit.outputs import dumps

ONNX_FILE = "model.onnx"
PLAN_FILE = "engine_plan.json"
ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
LAYERS_FILE = "engine_layers.json"
ASSUMED_TENSORRT = "10.3"  # JetPack 6's TensorRT, for plans written where TensorRT is not installed


# ---------------------------------------------------------------------------------------------------- pure logic
def engine_plan(target, precision: str, tensorrt_version: str, input_shape: tuple[int, int, int],
                input_name: str = "input") -> dict:
    """The builder settings for ``target`` at ``precision`` with a given TensorRT version: what ``compile`` applies.

    TensorRT 11 removed the FP16/INT8 builder flags (every network is strongly typed; the ONNX's types decide).
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
    if major >= 11 and precision == "fp16":
        raise TargetError(f"TensorRT {tensorrt_version} builds strongly typed networks only, and edgevit's ONNX is "
                          "FP32-typed: build int8 (Q/DQ) or fp32 for this TensorRT")
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
        "notes": notes,
    }


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
    return "; ".join(problems) or None


# ------------------------------------------------------------------------------------------------- TensorRT itself
def _trt():
    import tensorrt as trt

    return trt


def device_info() -> dict:
    """TensorRT version and the CUDA device of this host (raises ImportError / RuntimeError where there is none)."""
    trt = _trt()
    import pycuda.driver as cuda

    cuda.init()
    if cuda.Device.count() < 1:
        raise RuntimeError("no CUDA device")
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return {"tensorrt": trt.__version__, "device_name": dev.name(), "compute_capability": f"{major}.{minor}"}


def engine_support() -> tuple[bool, str]:
    """Can this host build and run TensorRT engines? (ok, reason)."""
    try:
        info = device_info()
    except ImportError as e:
        return False, f"TensorRT/pycuda not importable ({e.name or e}): pip install 'edgevit[tensorrt]' on the device"
    except Exception as e:  # pycuda raises its own errors when there is no driver
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
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)  # a cache from another device is refused, not trusted

    log(f"building the TensorRT engine ({plan['precision']}, {plan['device']}) on {info['device_name']}")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValidationFailedError("TensorRT failed to build the engine; run with a larger workspace or see the "
                                    "TensorRT log above")
    seconds = time.perf_counter() - t0
    (out_dir / ENGINE_FILE).write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    (out_dir / LAYERS_FILE).write_text(dumps(layers, indent=1))
    from edgevit.models import sha256_file

    return {**info, "onnx_sha256": sha256_file(onnx_path), "precision": plan["precision"], "plan": plan,
            "build_seconds": round(seconds, 1), "layers": layer_summary(layers),
            "files": [ENGINE_FILE, TIMING_CACHE_FILE, LAYERS_FILE]}


def layer_summary(layers: dict) -> dict:
    """Counts of the engine's layers by output precision and by placement, from the inspector's JSON."""
    by_precision: dict[str, int] = {}
    by_device: dict[str, int] = {}
    for layer in layers.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        outs = layer.get("Outputs") or [{}]
        fmt = str(outs[0].get("Format/Datatype", "unknown"))
        low = fmt.lower()  # e.g. "Row major linear FP32", "Channel major FP16 format ...", "Int8"
        prec = next((name for name, keys in (("INT8", ("int8",)), ("FP16", ("fp16", "half")), ("FP8", ("fp8",)),
                                             ("FP32", ("fp32", "float"))) if any(k in low for k in keys)), fmt)
        by_precision[prec] = by_precision.get(prec, 0) + 1
        where = "DLA" if "dla" in str(layer.get("LayerType", "")).lower() or "DLA" in str(layer.get("Name", "")) \
            else "GPU"
        by_device[where] = by_device.get(where, 0) + 1
    return {"by_precision": by_precision, "by_device": by_device}


class TRTRunner:
    """Runs a TensorRT engine with pycuda device buffers and one CUDA stream."""

    def __init__(self, engine_path: Path, record: dict) -> None:
        trt = _trt()
        import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
        import pycuda.driver as cuda

        why = engine_mismatch(record, device_info())
        if why:
            raise BundleError(f"{engine_path} cannot run here: {why}; rebuild it on this device with "
                              f"`edgevit compile {engine_path.parent}`")
        self._cuda = cuda
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._output = next(n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._stream = cuda.Stream()
        self._buffers: dict[int, tuple] = {}
        self.info = {"backend": "tensorrt", "version": trt.__version__, "device": record.get("device_name"),
                     "executed_precision": record.get("precision"), "engine_layers": record.get("layers")}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        self._context.set_input_shape(self._input, x.shape)
        if n not in self._buffers:
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            host_out = cuda.pagelocked_empty(out_shape, np.float32)
            self._buffers[n] = (cuda.mem_alloc(x.nbytes), cuda.mem_alloc(host_out.nbytes), host_out)
        d_in, d_out, host_out = self._buffers[n]
        self._context.set_tensor_address(self._input, int(d_in))
        self._context.set_tensor_address(self._output, int(d_out))
        cuda.memcpy_htod_async(d_in, x, self._stream)
        if not self._context.execute_async_v3(stream_handle=self._stream.handle):
            raise RuntimeError("TensorRT execution failed")
        cuda.memcpy_dtoh_async(host_out, d_out, self._stream)
        self._stream.synchronize()
        return np.array(host_out)


# ------------------------------------------------------------------------------------------------------ backend
class TensorRTBackend:
    name = "tensorrt"
    signed_symmetric = True  # INT8 must be symmetric and signed (zero-point 0, int8)

    def available(self) -> tuple[bool, str]:
        """The part of a TensorRT build that runs on any host needs what the ONNX Runtime backend needs."""
        from edgevit.backends.onnxruntime import ONNXRuntimeBackend

        return ONNXRuntimeBackend().available()

    def version(self) -> str:
        try:
            return _trt().__version__
        except ImportError:
            return "not installed here (the engine is built on the device)"

    def build(self, job: BuildJob) -> Built:
        import onnx

        from edgevit import trt_rules
        from edgevit.export import INPUT_NAME, clean_onnx

        if job.accuracy_control:
            raise NotImplementedError("accuracy-aware PTQ is implemented for the openvino backend only")
        details: dict = {}
        if job.quantized_onnx:
            model = onnx.load(str(job.quantized_onnx))
            details["quantizer"] = "nncf quantization-aware training (PyTorch), Q/DQ ONNX"
        elif job.precision == "int8":
            from edgevit.quantize import nncf_quantize

            model = nncf_quantize(onnx.load(str(job.onnx_path)), job.calibration, job.recipe, job.transformer,
                                  input_name=INPUT_NAME, signed_symmetric=True)
            details["quantizer"] = "nncf (ONNX, symmetric INT8 for TensorRT)"
        else:
            model = onnx.load(str(job.onnx_path))
        if job.precision == "int8":
            model = trt_rules.constants_to_initializers(clean_onnx(model))
            rewritten = trt_rules.unsigned_to_signed(model)
            violations = trt_rules.check(model)
            details["trt_rules"] = {"violations": [str(v) for v in violations], "passed": not violations,
                                    "unsigned_rewritten_to_int8": rewritten,
                                    "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in model.graph.node)}
            if violations and not job.allow_rule_violations:
                raise ValidationFailedError(
                    f"the Q/DQ ONNX breaks {len(violations)} TensorRT rule(s):\n{trt_rules.report(violations)}\n"
                    "no bundle written; pass --ignore-trt-rules to build it anyway")
            if violations:
                details["trt_rules"]["overridden"] = True
        onnx.save(model, str(job.out_dir / ONNX_FILE))

        target = job.target
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
        ok, why = engine_support()
        version = device_info()["tensorrt"] if ok else ASSUMED_TENSORRT
        plan = engine_plan(target, job.precision, version, shape)
        (job.out_dir / PLAN_FILE).write_text(dumps(plan, indent=1))
        details["plan"] = plan
        files = [ONNX_FILE, PLAN_FILE]
        if ok and _is_target_device(target):
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
            return TRTRunner(Path(bundle_dir) / ENGINE_FILE, engine)
        return _proxy(Path(bundle_dir) / ONNX_FILE, threads)

    def load_default(self, onnx_path: Path, threads: int | None = None):
        return _proxy(onnx_path, threads)


def _proxy(onnx_path: Path, threads: int | None):
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


def compile_bundle(bundle: str | Path, log=print) -> dict:
    """Finish a TensorRT bundle on the device: build the engine from its checked ONNX with the plan re-derived for
    this TensorRT, check the engine against the ONNX on ONNX Runtime, time it, and update the bundle atomically."""
    from edgevit.bundle import read_manifest, write_manifest
    from edgevit.measure import compare_latency, host_info
    from edgevit.outputs import output_dir
    from edgevit.targets import Target

    bundle = Path(bundle)
    m = read_manifest(bundle)
    if m["backend"]["name"] != "tensorrt":
        raise BundleError(f"{bundle} is a {m['backend']['name']} bundle; only TensorRT bundles are compiled")
    ok, why = engine_support()
    if not ok:
        raise BackendUnavailableError(f"cannot compile here: {why}")
    target = Target(**{k: v for k, v in m["target"].items() if k in Target.__dataclass_fields__})
    with output_dir(bundle, "bundle") as stage:
        shutil.rmtree(stage)
        shutil.copytree(bundle, stage)
        plan = engine_plan(target, m["precision"], device_info()["tensorrt"], tuple(m["model"]["input_size"]))
        (stage / PLAN_FILE).write_text(dumps(plan, indent=1))
        record = build_engine(stage / ONNX_FILE, plan, stage, log)
        runner = TRTRunner(stage / ENGINE_FILE, record)
        proxy = _proxy(stage / ONNX_FILE, None)
        x = np.random.default_rng(0).standard_normal((8, *m["model"]["input_size"])).astype(np.float32)
        got, want = np.concatenate([runner(x[i:i + 1]) for i in range(8)]), proxy(x)
        record["check_vs_onnxruntime"] = {"inputs": "8 random normal images",
                                          "argmax_agreement": float((got.argmax(1) == want.argmax(1)).mean() * 100),
                                          "max_abs_logit_diff": round(float(np.abs(got - want).max()), 5)}
        lat = compare_latency({"engine": runner}, x[:1])
        m["backend"].update(version=record["tensorrt"], plan=plan,
                            engine={k: v for k, v in record.items() if k not in ("plan", "files")},
                            runtime=runner.info)
        m["latency_ms"] = {"host": {**host_info(), "gpu": record["device_name"]}, "batch": 1, "artifact":
                           lat["engine"], "p50": lat["engine"]["p50"], "p90": lat["engine"]["p90"],
                           "method": "TensorRT engine on the device, wall clock per call incl. copies"}
        m["_files"] = sorted(set(m["files"]) | set(record["files"]))
        write_manifest(stage, m)
    return read_manifest(bundle)
