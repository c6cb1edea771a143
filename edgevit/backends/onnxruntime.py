"""ONNX Runtime on any CPU: the portable reference. INT8 is NNCF's QuantizeLinear/DequantizeLinear ONNX graph."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgevit.backends import BuildJob, Built, Capabilities, LoadSpec, RuntimeDecides


class ORTRunner:
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads if threads and threads > 0 else (os.cpu_count() or 1)
        self._path = str(path)
        self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._sess.get_inputs()[0].name
        from edgevit.runtime._onnx_wire import op_types

        quantized = "QuantizeLinear" in op_types(path)
        self.info = {"backend": "onnxruntime", "version": ort.__version__, "device": "CPU",
                     "executed_precision": "int8" if quantized else "fp32",
                     "providers": self._sess.get_providers(), "threads": opts.intra_op_num_threads}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def spec(self) -> tuple:
        """How a timing worker process makes the same runner (see measure.compare_latency)."""
        return _ort_runner, (Path(self._path), self.info["threads"], self.info.get("proxy_for"))

    def profile(self, x: np.ndarray, runs: int = 50) -> dict:
        """Per-node kernel time from ONNX Runtime's profiler (a separate session with profiling on)."""
        import json

        import onnxruntime as ort

        from edgevit.outputs import work_dir
        from edgevit.runtime.profile import summarize

        with work_dir("edgevit-ortprof-") as d:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.info["threads"]
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(d) / "ort")
            sess = ort.InferenceSession(self._path, opts, providers=["CPUExecutionProvider"])
            feed = {self._input: np.ascontiguousarray(x, dtype=np.float32)}
            for _ in range(runs):
                sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
        acc: dict[str, dict] = {}
        for ev in events:
            if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
                continue
            op = ev.get("args", {}).get("op_name", "?")
            int8 = op.startswith(("QLinear", "QGemm")) or "Integer" in op or op == "DynamicQuantizeLinear"
            e = acc.setdefault(ev["name"][:-len("_kernel_time")], {
                "type": op, "exec": ev.get("args", {}).get("provider", "CPUExecutionProvider"),
                "precision": "int8" if int8 else ("q/dq" if op.endswith("QuantizeLinear") else "fp32"), "ms": 0.0})
            e["ms"] += ev.get("dur", 0) / 1000.0
        return summarize(acc, runs, f"ONNX Runtime node profiler, {runs} runs at batch {x.shape[0]}")


def _ort_runner(path: Path, threads: int, proxy_for: str | None) -> ORTRunner:
    r = ORTRunner(path, threads)
    if proxy_for:
        r.info["proxy_for"] = proxy_for
    return r


class ONNXRuntimeBackend(RuntimeDecides):
    name = "onnxruntime"
    capabilities = Capabilities()

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return False, f"onnxruntime is not importable ({e}); pip install 'edgevit[cpu]' (OpenVINO and ONNX Runtime)"
        return True, "ok"

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def read(self, onnx_path: Path):
        import onnx

        return onnx.load(str(onnx_path))

    def build(self, job: BuildJob) -> Built:
        import onnx

        from edgevit.export import set_metadata

        set_metadata(job.model, job.metadata)
        onnx.save(job.model, str(job.out_dir / "model.onnx"))
        return Built(files=["model.onnx"], details={"quantizer": job.quantizer} if job.quantizer else {})

    def device_support(self, target) -> tuple[bool, str]:
        return self.available()

    def required_files(self, bundle_dir: Path, manifest) -> set[str]:
        from edgevit.backends import onnx_external_files

        return {"model.onnx", *onnx_external_files(bundle_dir, manifest.files, "model.onnx")}

    def load(self, bundle_dir: Path, spec: LoadSpec, threads: int | None = None):
        return ORTRunner(Path(bundle_dir) / "model.onnx", threads or spec.details.get("threads") or spec.target.threads)

    def load_default(self, onnx_path: Path, threads: int | None = None):
        return ORTRunner(onnx_path, threads)
