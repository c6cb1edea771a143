"""TensorRT for Jetson boards and NVIDIA GPUs.

Two halves. Everything up to the engine runs on any host: a Q/DQ INT8 ONNX (NNCF, symmetric signed INT8) that
passes :mod:`edgevit.backends.tensorrt.rules`, its accuracy through ONNX Runtime on the CPU, and the engine build plan
derived from the target profile. The engine itself is built where TensorRT and the GPU are, because an engine is
bound to the device, the TensorRT version and the build flags: at the end of ``edgevit build`` when this host is that
device, otherwise with ``edgevit compile BUNDLE`` on the device. The plan is :mod:`edgevit.backends.tensorrt.plan`;
the engine code (TensorRT's Python API with cuda-python) is :mod:`edgevit.backends.tensorrt.engine`.
"""

from __future__ import annotations

import platform
from pathlib import Path

from edgevit._progress import say
from edgevit.backends import BuildJob, Built, Capabilities, LoadSpec, RuntimeDecides
from edgevit.backends.tensorrt.engine import TRTRunner, build_engine, device_info, engine_support, import_tensorrt
from edgevit.backends.tensorrt.plan import ASSUMED_TENSORRT, ENGINE_FILE, ONNX_FILE, PLAN_FILE, engine_plan, write_plan
from edgevit.errors import BackendUnavailableError, ValidationFailedError


class TensorRTBackend(RuntimeDecides):
    name = "tensorrt"
    capabilities = Capabilities(int8_signed_symmetric=True, engine_on_device=True)

    def available(self) -> tuple[bool, str]:
        """The part of a TensorRT build that runs on any host needs what the ONNX Runtime backend needs."""
        from edgevit.backends.onnxruntime import ONNXRuntimeBackend

        return ONNXRuntimeBackend().available()

    def version(self) -> str:
        try:
            return import_tensorrt().__version__
        except ImportError:
            return "not installed here (the engine is built on the device)"

    def read(self, onnx_path: Path):
        import onnx

        return onnx.load(str(onnx_path))

    def build(self, job: BuildJob) -> Built:
        import onnx

        from edgevit.backends.tensorrt import rules as trt_rules
        from edgevit.export import INPUT_NAME, clean_onnx

        details: dict = {"quantizer": job.quantizer} if job.quantizer else {}
        model = job.model
        target = job.target
        not_here = device_mismatch(target)
        here = not_here is None
        # the plan is for the TensorRT that will build the engine: this host's when it is the device, else the
        # target's (JetPack's), never the workstation's
        version = device_info()["tensorrt"] if here else (target.tensorrt or ASSUMED_TENSORRT)
        if job.precision == "int8":
            model = trt_rules.constants_to_initializers(clean_onnx(model))
            rewritten = trt_rules.unsigned_to_signed(model)
            trt_rules.fold_weight_transposes(model)
            fused = (trt_rules.quantize_attention(model, job.calibration, INPUT_NAME, target.compute_capability)
                     if job.calibration is not None else {"quantized": [], "not_fused": {}})
            details["attention_qdq"] = {"matmuls": len(fused["quantized"]), "not_fused": fused["not_fused"],
                                        "softmax_scale": "1/127 (softmax outputs lie in [0, 1])",
                                        "q_k_v_out_scale": "max |x| / 127 on the calibration images"}
            for block, why in fused["not_fused"].items():
                say(f"attention {block}: left as PTQ made it, TensorRT would not fuse it here: {why}")
            violations = trt_rules.check(model, compute_capability=target.compute_capability,
                                         not_fused=set(fused["not_fused"]))
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
            details["engine"] = {"status": "pending", "why": not_here, "compile_on": target.device}
        return Built(files=files, details=details)

    def device_support(self, target) -> tuple[bool, str]:
        """Engines build and run here when this host is the target's device (:func:`device_mismatch`)."""
        not_here = device_mismatch(target)
        return (True, engine_support()[1]) if not_here is None else (False, not_here)

    def required_files(self, bundle_dir: Path, manifest) -> set[str]:
        from edgevit.backends import onnx_external_files

        need = {ONNX_FILE, PLAN_FILE, *onnx_external_files(bundle_dir, manifest.files, ONNX_FILE)}
        check = manifest.device_check
        if isinstance(check, dict):
            need |= {check.get("inputs"), check.get("reference")}
        engine = manifest.backend.engine
        if (Path(bundle_dir) / ENGINE_FILE).exists() or (isinstance(engine, dict)
                                                         and engine.get("status", "built") != "pending"):
            need.add(ENGINE_FILE)
        return need

    def load(self, bundle_dir: Path, spec: LoadSpec, threads: int | None = None):
        engine = spec.details.get("engine", {})
        if (Path(bundle_dir) / ENGINE_FILE).is_file() and engine.get("status") != "pending":
            ok, why = engine_support()
            if not ok:
                raise BackendUnavailableError(f"{bundle_dir} holds a TensorRT engine, which needs TensorRT and the "
                                              f"GPU it was built on: {why}")
            from edgevit.runtime.device_check import require_validated

            require_validated(Path(bundle_dir), engine)
            return TRTRunner(Path(bundle_dir) / ENGINE_FILE, engine, spec.details.get("plan"))
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(f"{bundle_dir} holds no engine yet: run `edgevit compile {bundle_dir}` on "
                                          f"the device (or, to run its ONNX on this CPU, {why})")
        return onnx_proxy(Path(bundle_dir) / ONNX_FILE, threads)

    def load_default(self, onnx_path: Path, threads: int | None = None):
        return onnx_proxy(onnx_path, threads)


def onnx_proxy(onnx_path: Path, threads: int | None):
    """The bundle's ONNX through ONNX Runtime on the CPU: the closest honest proxy for the engine's accuracy."""
    from edgevit.backends.onnxruntime import ORTRunner

    r = ORTRunner(onnx_path, threads)
    r.info["proxy_for"] = "tensorrt"
    return r


def device_mismatch(target) -> str | None:
    """Why this host is not the device ``target`` describes, or None where it is: the one test of "is this the
    device?" (engines are built only where they will run). The CPU architecture, TensorRT and a CUDA device, the
    GPU's compute capability."""
    if target.arch and platform.machine() not in target.arch:
        return f"this host ({platform.machine()}) is not a {target.device}"
    ok, why = engine_support()
    if not ok:
        return why
    if target.compute_capability:
        try:
            have = device_info()["compute_capability"]
        except Exception as e:  # a driver that answers nothing is not the device
            return f"cannot read this host's GPU ({type(e).__name__}: {e})"
        if have != target.compute_capability:
            return (f"this host's GPU (sm {have}) is not a {target.device} (sm {target.compute_capability}): needs "
                    f"a GPU of compute capability {target.compute_capability}")
    return None
