"""OpenVINO on CPUs: FP32 ONNX → IR; INT8 through NNCF on the IR; inference precision always set explicitly
(OpenVINO's CPU default is bf16 where the CPU supports it) and what actually executed read back from the runtime."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from edgevit.backends import BuildJob, Built, Capabilities, LoadSpec

HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution")


def _resolved(host_precision: str) -> str:
    return "f32" if host_precision == "auto" else host_precision  # auto: f32 until the build has measured


def _threads(threads: int | None) -> int:
    return threads if threads and threads > 0 else (os.cpu_count() or 1)


def runtime_summary(compiled) -> dict:
    """What the CPU plugin actually runs: the inference precision it settled on and, for the compute-heavy
    layers (FullyConnected/MatMul/Convolution), how many execute in each precision."""
    prec = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and rt["layerType"].astype(str) in COMPUTE_LAYERS and "runtimePrecision" in rt:
            prec[rt["runtimePrecision"].astype(str)] += 1
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    names = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
    executed = "int8" if prec.get("i8") or prec.get("u8") else names.get(hint, hint)
    return {
        "executed_precision": executed,
        "inference_precision": hint,
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "hint": str(compiled.get_property("PERFORMANCE_HINT")).rsplit(".", 1)[-1].lower(),
        "compute_layers_by_precision": dict(sorted(prec.items())),
    }


def describe_ir(model, metadata: dict[str, str]) -> None:
    """Labels and preprocessing inside the IR's ``rt_info``, so it describes itself outside a bundle: under
    ``model_info`` as OpenVINO's Model API reads a classifier (labels space-separated with spaces as ``_``; mean and
    scale in 0-255 pixel units; RGB input), and edgevit's exact labels and preprocessing under ``edgevit``."""
    import json

    if "edgevit.labels" not in metadata:
        return
    labels = json.loads(metadata["edgevit.labels"])
    pre = json.loads(metadata["edgevit.preprocessing"])
    info = {"model_type": "Classification", "labels": " ".join(str(x).replace(" ", "_") for x in labels),
            "mean_values": " ".join(f"{m * 255:g}" for m in pre["mean"]),
            "scale_values": " ".join(f"{s * 255:g}" for s in pre["std"]),
            "reverse_input_channels": "True", "resize_type": "standard"}
    for key, value in info.items():
        model.set_rt_info(value, ["model_info", key])
    for key, value in metadata.items():
        model.set_rt_info(value, ["edgevit", key.removeprefix("edgevit.")])


def static_model(core, path, batch: int):
    """The IR read and reshaped to a static ``batch``: what every compile of it here starts from."""
    model = core.read_model(str(path))
    shape = [d.get_length() if d.is_static else 1 for d in model.input(0).get_partial_shape()]
    shape[0] = batch
    model.reshape({model.input(0).get_any_name(): shape})
    return model


def _infer(req, x: np.ndarray) -> np.ndarray:
    """One synchronous inference on ``req``: the input shared, not copied, the output copied out."""
    import openvino as ov

    xc = np.ascontiguousarray(x, dtype=np.float32)  # kept alive here while the request reads it
    req.set_input_tensor(ov.Tensor(xc, shared_memory=True))
    req.infer()
    return req.get_output_tensor().data.copy()


NOT_COMPUTED = ("Parameter", "Result", "Constant", "Input", "Output")  # what the counters list but nothing runs


class OVRunner:
    def __init__(self, model_path: Path, config: dict) -> None:
        import openvino as ov

        self._core = ov.Core()
        self._path = str(model_path)
        self._config = config
        self._compiled: dict[int, object] = {}
        self._requests: dict[int, tuple] = {}
        self.info = {"backend": "openvino", "version": ov.get_version(), "device": "CPU",
                     **runtime_summary(self._get(1))}

    def _get(self, batch: int):
        if batch not in self._compiled:
            if len(self._compiled) >= 2:  # batch 1 for latency/predict plus one evaluation batch size
                self._compiled.pop(next(k for k in self._compiled if k != 1))
            self._compiled[batch] = self._core.compile_model(static_model(self._core, self._path, batch), "CPU",
                                                             self._config)
        return self._compiled[batch]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        compiled = self._get(x.shape[0])
        request = self._requests.get(x.shape[0])
        if request is None or request[0] is not compiled:
            request = self._requests[x.shape[0]] = (compiled, compiled.create_infer_request())
        return _infer(request[1], x)  # one request per batch size: the least Python per call

    def spec(self) -> tuple:
        """How a timing worker process makes the same runner (see measure.compare_latency)."""
        return OVRunner, (Path(self._path), self._config)

    def reconfigured(self, extra: dict) -> OVRunner:
        """The same model compiled with ``extra`` OpenVINO properties over this runner's."""
        return OVRunner(Path(self._path), {**self._config, **extra})

    def throughput(self, batch: int, seconds: float = 3.0) -> dict:
        """Offline (MLPerf's term): images per second through OpenVINO's own async API, the THROUGHPUT hint and the
        number of requests the plugin finds optimal, as benchmark_app -hint throughput measures it."""
        import time

        import openvino as ov

        model = static_model(self._core, self._path, batch)
        compiled = self._core.compile_model(model, "CPU", {**self._config, "PERFORMANCE_HINT": "THROUGHPUT"})
        n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, n)
        x = np.zeros(list(model.input(0).get_shape()), np.float32)
        done = [0]

        def finished(_request, _userdata) -> None:
            done[0] += 1

        queue.set_callback(finished)
        for _ in range(n):  # warm-up: every request once
            queue.start_async({0: x})
        queue.wait_all()
        done[0] = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            queue.start_async({0: x})  # blocks while all requests are busy
        queue.wait_all()
        elapsed = time.perf_counter() - t0
        return {"images_per_s": round(done[0] * batch / elapsed, 1), "batch": batch, "requests": n,
                "streams": int(compiled.get_property("NUM_STREAMS")), "seconds": round(elapsed, 2),
                "method": "OpenVINO AsyncInferQueue, THROUGHPUT hint, optimal number of requests"}

    def _counters(self, x: np.ndarray, runs: int) -> tuple[dict[str, dict], int]:
        """Per executed layer: type, exec type, precision and ms summed over ``runs`` (performance counters, a
        separate compile with PERF_COUNT on, warmed up first as the timing is); and how many layers ran under the
        counters' resolution (see below)."""
        import time

        from edgevit.runtime.profile import precision_of

        model = static_model(self._core, self._path, x.shape[0])
        compiled = self._core.compile_model(model, "CPU", {**self._config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        t_warm = time.perf_counter() + 0.3
        while time.perf_counter() < t_warm:  # caches and clocks as in the timed run's steady state
            _infer(request, x)
        acc: dict[str, dict] = {}
        for _ in range(runs):
            _infer(request, x)
            for p in request.profiling_info:
                if str(p.status).endswith("EXECUTED"):
                    e = acc.setdefault(p.node_name, {"type": p.node_type, "exec": p.exec_type,
                                                     "precision": precision_of(p.exec_type), "ms": 0.0,
                                                     "samples": []})
                    ms = p.real_time.total_seconds() * 1000
                    e["ms"] += ms
                    e["samples"].append(ms)
        # A layer's counter is the average of whole microseconds, each run's time cut down to one; a layer whose
        # average is under 1 µs reads 0 and OpenVINO reports it NOT_RUN. Those that ran are counted here (not the
        # graph's inputs, outputs and constants), so that the profile can say how much it cannot see.
        below = sum(1 for p in request.profiling_info if str(p.status).endswith("NOT_RUN") and p.node_name not in acc
                    and p.node_type not in NOT_COMPUTED and not str(p.exec_type).startswith(("unknown", "undef")))
        return acc, below

    def layer_times(self, x: np.ndarray, runs: int = 50) -> dict[str, float]:
        """Every executed layer's ms per inference."""
        return {name: e["ms"] / runs for name, e in self._counters(x, runs)[0].items()}

    def profile(self, x: np.ndarray, runs: int = 50) -> dict:
        """Per-layer time from OpenVINO's performance counters, summarised for the manifest, with the time of a
        call that is in no layer (:meth:`outside_layers`)."""
        from edgevit.runtime.profile import summarize

        layers, below = self._counters(x, runs)
        prof = summarize(layers, runs, f"OpenVINO performance counters, {runs} runs at batch {x.shape[0]}")
        prof["resolution_ms"] = 0.001  # the counters count whole microseconds, each layer's truncated
        prof["below_resolution"] = below  # layers that ran under 1 µs: reported NOT_RUN
        prof["outside_layers_ms"] = self.outside_layers(x)
        prof["outside_layers"] = ("a call's time in no layer, measured on a one-layer model of the same input "
                                  "through the same request path and configuration: the Python call, setting the "
                                  "input, starting and waiting for the request, copying the output")
        return prof

    def outside_layers(self, x: np.ndarray, seconds: float = 0.5) -> float:
        """The median ms of a call on a model whose only layer reduces the input to one number, less that layer's
        own counted time: what every inference costs besides its layers on this host (the runner's own call
        path, threads and configuration). The dispatch between a real model's layers is not in it."""
        import statistics
        import time

        import openvino as ov
        from openvino import opset13 as ops

        par = ops.parameter(list(x.shape), ov.Type.f32)
        axes = ops.constant(np.arange(1, x.ndim, dtype=np.int64))
        model = ov.Model([ops.reduce_max(par, axes, keep_dims=False)], [par])
        compiled = self._core.compile_model(model, "CPU", {**self._config, "PERF_COUNT": True})
        req = compiled.create_infer_request()
        calls, layer = [], []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(calls) < 200:
            t0 = time.perf_counter()
            _infer(req, x)
            calls.append(time.perf_counter() - t0)
            layer.append(sum(p.real_time.total_seconds() for p in req.profiling_info))
        skip = len(calls) // 5  # warm-up
        return round(max(statistics.median(calls[skip:]) - statistics.median(layer[skip:]), 0.0) * 1000, 4)


class OpenVINOBackend:
    name = "openvino"
    capabilities = Capabilities(accuracy_control=True, speed_search=True)

    def available(self) -> tuple[bool, str]:
        try:
            import openvino as ov

            devices = ov.Core().available_devices
        except Exception as e:  # import errors, broken installs
            return False, f"openvino is not importable ({e}); pip install 'edgevit[cpu]' (OpenVINO and ONNX Runtime)"
        if "CPU" not in devices:
            return False, f"OpenVINO sees no CPU device (devices: {devices})"
        return True, "ok"

    def version(self) -> str:
        import openvino as ov

        return ov.get_version()

    def _config(self, precision: str, target, threads: int | None = None, host: str | None = None) -> dict:
        hint = (host or _resolved(target.host_precision)) if precision == "int8" else HINT[precision]
        return {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": _threads(threads or target.threads),
                "PERFORMANCE_HINT": "LATENCY"}

    def host_precisions(self, precision: str, target) -> list[str | None]:
        """What an INT8 artifact may run its unquantized ops in, to be timed against each other: with the target's
        ``host_precision = "auto"``, f32 and, where this CPU computes it natively (AVX-512 BF16, AMX), bf16."""
        if precision != "int8":
            return [None]
        if target.host_precision != "auto":
            return [target.host_precision]
        from edgevit.runtime.measure import host_class, host_info

        isa = set(host_info()["isa"])
        native_bf16 = bool({"avx512_bf16", "amx_bf16"} & isa) and host_class() != "avx2"
        return ["f32", "bf16"] if native_bf16 else ["f32"]

    def read(self, onnx_path: Path):
        import openvino as ov

        return ov.convert_model(str(onnx_path))

    def build(self, job: BuildJob) -> Built:
        import openvino as ov

        details = {"quantizer": job.quantizer} if job.quantizer else {}
        if job.precision == "int8" and not job.qat:  # what the recipe or the gate left unquantized
            from edgevit.quantize import kept_in_higher_precision

            details["kept_in_higher_precision"] = kept_in_higher_precision(job.model)
        describe_ir(job.model, job.metadata)
        ov.save_model(job.model, str(job.out_dir / "model.xml"), compress_to_fp16=False)
        details["compile_config"] = self._config(job.precision, job.target)
        if job.precision == "int8":
            details["host_precision"] = details["compile_config"]["INFERENCE_PRECISION_HINT"]
        return Built(files=["model.xml", "model.bin"], details=details)

    def device_support(self, target) -> tuple[bool, str]:
        return self.available()

    def required_files(self, bundle_dir: Path, manifest) -> set[str]:
        return {"model.xml", "model.bin"}

    def _runtime_config(self, spec: LoadSpec, threads: int | None = None) -> dict:
        """The compile config a bundle runs with: its precision, host precision and threads."""
        return self._config(spec.precision, spec.target, threads or spec.details.get("threads"),
                            spec.details.get("host_precision"))

    def load(self, bundle_dir: Path, spec: LoadSpec, threads: int | None = None):
        return OVRunner(Path(bundle_dir) / "model.xml", self._runtime_config(spec, threads))

    def mix_for_speed(self, bundle_dir: Path, spec: LoadSpec, fp32_onnx: Path, x: np.ndarray, work_dir: Path,
                      log=print) -> dict:
        import shutil

        from edgevit.backends.openvino.speedmix import search

        cfg = self._runtime_config(spec)
        rec = search(Path(bundle_dir) / "model.xml", fp32_onnx, lambda p: OVRunner(p, cfg), x, Path(work_dir), log)
        mixed = rec.pop("xml", None)
        if mixed:
            for ext in (".xml", ".bin"):
                shutil.copyfile(Path(mixed).with_suffix(ext), Path(bundle_dir) / f"model{ext}")
        return rec

    def load_default(self, onnx_path: Path, threads: int | None = None):
        from edgevit.runtime.measure import host_class

        cfg = {"INFERENCE_NUM_THREADS": _threads(threads)} if threads else {}
        if host_class() in ("avx2", "other") and os.environ.get("ONEDNN_MAX_CPU_ISA"):
            # OpenVINO picks its default precision from the CPU's own flags, which ONEDNN_MAX_CPU_ISA does not hide:
            # on an AVX-512 BF16 host capped to AVX2 it would ask for bf16 kernels that the cap removed. A real AVX2
            # CPU defaults to f32, so the emulated one is given what the real one would choose.
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        return OVRunner(onnx_path, cfg)

    def peer_int8(self, onnx_path: Path, calibration, work_dir: Path) -> Path:
        import nncf
        import openvino as ov

        from edgevit._progress import library_output

        with library_output():  # NNCF's one-line call, as a user of NNCF writes it: every option at its default
            q = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(list(calibration), lambda x: x[None]))
        path = Path(work_dir) / "peer_nncf_default_int8.xml"
        ov.save_model(q, str(path), compress_to_fp16=False)
        return path


def benchmark_app(xml: Path, batch: int, hint: str, threads: int, inference_precision: str,
                  seconds: int = 5) -> dict:
    """OpenVINO's own benchmark_app on the same IR (shipped with the openvino wheel): the reference our SingleStream
    median (``hint="latency"``) and Offline throughput (``hint="throughput"``) are checked against."""
    import json
    import re
    import shutil
    import subprocess
    import sys

    import openvino as ov

    exe = shutil.which("benchmark_app")
    argv = [exe] if exe else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    shape = "[" + ",".join(map(str, static_model(ov.Core(), xml, batch).input(0).get_shape())) + "]"

    from edgevit.outputs import work_dir

    with work_dir("edgevit-bapp-") as d:
        # benchmark_app refuses -nthreads next to -hint; the same properties go in through its config file
        cfg = Path(d) / "config.json"
        cfg.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads),
                                           "INFERENCE_PRECISION_HINT": inference_precision}}))
        argv += ["-m", str(xml), "-d", "CPU", "-hint", hint, "-t", str(seconds), "-shape", shape,
                 "-load_config", str(cfg)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 10 + 120)
    if p.returncode:
        from edgevit.errors import ToolError

        raise ToolError(f"benchmark_app failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    out = p.stdout
    fps = re.search(r"Throughput:\s*([\d.]+)\s*FPS", out)
    med = re.search(r"Median:\s*([\d.]+)\s*(ms|us)", out)
    return {"hint": hint, "batch": batch, "throughput_fps": float(fps.group(1)) if fps else None,
            "median_ms": (float(med.group(1)) / (1000.0 if med.group(2) == "us" else 1.0)) if med else None,
            "command": "benchmark_app " + " ".join(a for a in argv[1 if exe else 3:] if "config.json" not in a)
            + f" (with INFERENCE_NUM_THREADS={threads}, INFERENCE_PRECISION_HINT={inference_precision})"}
