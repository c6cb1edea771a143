"""Measurements every build and benchmark shares: top-1 through a runner, logit agreement, and latency."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from functools import lru_cache

import numpy as np

# CPU features that decide whether INT8 / BF16 are fast on a CPU (VNNI and AMX for INT8, AVX512-BF16/AMX for BF16).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "asimddp", "i8mm")


@lru_cache(maxsize=1)
def host_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "model name" and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "os": platform.system(),
            "isa": [f for f in ISA_FLAGS if f in flags]}


HOST_CLASSES = ("amx", "avx512_vnni", "avx2", "other")  # what INT8 speed ranks by on a CPU, fastest INT8 first
_ONEDNN_CAP = {"AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX512_CORE": "avx2", "AVX512_CORE_VNNI": "avx512_vnni",
               "AVX512_CORE_BF16": "avx512_vnni"}


def host_class() -> str:
    """The kind of CPU for choosing an INT8 recipe: 'amx', 'avx512_vnni' (or AVX-VNNI), 'avx2', or 'other'.
    ``ONEDNN_MAX_CPU_ISA`` caps it, as it caps the kernels oneDNN (and so OpenVINO) runs: AVX2 on an AVX-512 host
    is that host running as an AVX2-only CPU."""
    isa = set(host_info()["isa"])
    found = ("amx" if {"amx_int8"} & isa else "avx512_vnni" if {"avx512_vnni", "avx_vnni"} & isa
             else "avx2" if "avx2" in isa else "other")
    cap = _ONEDNN_CAP.get(os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper())
    if cap and HOST_CLASSES.index(cap) > HOST_CLASSES.index(found):
        return cap
    return found


def library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of these distributions (None where one is not installed)."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


BROKEN_WEIGHTS = "the weights (or the artifact) are broken: check --weights; nothing was written"


def require_finite(logits: np.ndarray, what: str, fix: str = BROKEN_WEIGHTS) -> np.ndarray:
    """Logits with a NaN or an infinity are a broken model, never an accuracy: fail with how many images."""
    bad = ~np.isfinite(logits).reshape(len(logits), -1).all(1)
    if bad.any():
        from edgevit.errors import ValidationFailedError

        raise ValidationFailedError(f"{what} produced NaN or infinite logits on {int(bad.sum())} of {len(logits)} "
                                    f"images; {fix}")
    return logits


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float((logits.argmax(1) == labels).mean() * 100), 2)


def topk(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    k = min(k, logits.shape[1])
    best = np.argsort(-logits, axis=1)[:, :k]
    return round(float((best == labels[:, None]).any(1).mean() * 100), 2)


def compare_latency(fns: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, warmup: int = 10,
                    rounds: int = 5, min_iters: int = 50, min_seconds: float = 2.0, max_iters: int = 5000,
                    isolate: bool = True, desc: str | None = None) -> dict:
    """Wall-clock latency of each ``fn(x)`` in milliseconds. The candidates are timed in interleaved rounds (A B C,
    A B C, ...) so that a noisy machine's slow spells fall on all of them alike; each gets at least ``min_iters``
    single calls and ``min_seconds`` in all. Percentiles over all of a candidate's timed calls. With ``isolate``
    (and runners that say how to make them again: ``spec()``), each candidate runs in its own process, one at a
    time, with passive thread pools, so that no runtime's threads slow another's."""
    per_round_s, per_round_n = min_seconds / rounds, max(1, -(-min_iters // rounds))
    isolate = isolate and len(fns) > 1 and all(hasattr(fn, "spec") for fn in fns.values())
    times, isolated = None, False
    if isolate:
        try:
            times = _isolated_times(fns, x, warmup, rounds, per_round_n, per_round_s, max_iters // rounds, desc)
            isolated = True
        except (EOFError, OSError, RuntimeError) as e:  # e.g. a __main__ that spawn cannot re-import
            from edgevit._progress import say

            say(f"warning: timing in separate processes failed ({type(e).__name__}: {e}); timing in this process")
    if times is None:
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                start, n = time.perf_counter(), 0
                while n < max_iters // rounds and (n < per_round_n or time.perf_counter() - start < per_round_s):
                    t = time.perf_counter()
                    fn(x)
                    times[k].append((time.perf_counter() - t) * 1000)
                    n += 1
    out = {}
    for k, ts in times.items():
        a = np.asarray(ts)
        out[k] = {"p50": round(float(np.percentile(a, 50)), 4), "p90": round(float(np.percentile(a, 90)), 4),
                  "p99": round(float(np.percentile(a, 99)), 4), "mean": round(float(a.mean()), 4),
                  "iterations": len(a), "batch": int(x.shape[0]), "isolated": isolated,
                  "samples": [round(t, 4) for t in ts]}  # raw per-call ms, in round order: what regressions test
    return out


def offline_throughput(runner, batch: int, input_size: tuple, seconds: float = 3.0) -> tuple[float, dict]:
    """Offline images/s of one image shape (C, H, W), over about ``seconds``: through the runtime's own async API
    where the runner has one (OpenVINO: THROUGHPUT hint, optimal requests); other runtimes at the suite's batch, one
    synchronous call after another."""
    if hasattr(runner, "throughput"):
        r = runner.throughput(batch, seconds)
        return r["images_per_s"], r
    ran = min(batch, int(getattr(runner, "max_batch", batch) or batch))  # an engine's profile caps its batch
    xb = np.zeros((ran, *input_size), np.float32)
    off = compare_latency({"artifact": runner}, xb, warmup=3, min_iters=10, min_seconds=min(seconds, 1.0))["artifact"]
    record = {"method": f"synchronous calls at batch {ran}", "batch": ran}
    if ran != batch:
        record["requested_batch"] = batch
        record["why"] = f"the engine's optimization profile allows batch {ran} at most"
    return round(ran * 1000.0 / off["mean"], 1), record


def without_samples(res: dict) -> dict:
    """A latency figure as a manifest keeps it: the summary, not the thousands of raw samples."""
    return {k: v for k, v in res.items() if k != "samples"}


class TorchRunner:
    """PyTorch eager FP32, the plain recipe every build is compared with."""

    def __init__(self, model, threads: int | None = None) -> None:
        import torch

        self.model, self.threads = model.eval(), threads
        param = next(model.parameters(), None)
        self.device = None if param is None or param.device.type == "cpu" else param.device  # where the model is
        self.info = {"backend": "torch", "executed_precision": "fp32", "threads": threads or torch.get_num_threads()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        if self.threads and torch.get_num_threads() != self.threads:  # torch's thread count is per process
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            if self.device is None:
                return self.model(torch.from_numpy(x)).numpy()
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def spec(self) -> tuple:
        """How a timing worker process makes the same runner (see :func:`compare_latency`)."""
        return TorchRunner, (self.model, self.threads)


def torch_runner(model, threads: int | None = None) -> TorchRunner:
    return TorchRunner(model, threads)


THREADS_TIE = 0.03  # within 3 % of the fastest, fewer threads win: less to share, the same speed


def thread_counts() -> list[int]:
    """The thread counts a sweep tries on this host: 1, 2, 4, ... up to all cores."""
    cores = os.cpu_count() or 1
    return sorted({min(c, cores) for c in (1, 2, 4, 8, 16, 32, 64)} | {cores})


def fastest_threads(p50_by_threads: dict[int, float]) -> int:
    """The thread count with the fastest p50; within :data:`THREADS_TIE` of it, the fewest threads."""
    best = min(p50_by_threads.values())
    return min(n for n, p in p50_by_threads.items() if p <= best * (1 + THREADS_TIE))


# ----------------------------------------------------------------------------------------- isolated timing
# Each candidate of a comparison runs in its own process, and only one process computes at a time, so no
# runtime's thread pool competes with another's (a busy OpenVINO TBB arena or spinning OpenMP workers slowed
# whichever ran next in the same process by 2-3x on a loaded host). Worker thread pools wait passively.
PASSIVE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def _timing_worker(conn, factory, args, x: np.ndarray) -> None:
    os.environ.update(PASSIVE_ENV)  # before torch/OpenMP start their pools in this process
    try:
        fn = factory(*args)
        conn.send(("ready", getattr(fn, "info", {})))
    except Exception as e:  # the parent reports it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "warmup":
            for _ in range(msg[1]):
                fn(x)
            conn.send(("done",))
            continue
        _, n_min, seconds, n_max = msg
        times, start = [], time.perf_counter()
        while len(times) < n_max and (len(times) < n_min or time.perf_counter() - start < seconds):
            t = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t) * 1000)
        conn.send(("times", times))


def _isolated_times(fns: dict, x: np.ndarray, warmup: int, rounds: int, per_round_n: int, per_round_s: float,
                    max_per_round: int, desc: str | None = None) -> dict[str, list[float]]:
    import multiprocessing

    from edgevit.child import not_rerunning_main

    ctx = multiprocessing.get_context("spawn")
    workers = {}
    try:
        for k, fn in fns.items():
            parent, child = ctx.Pipe()
            factory, args = fn.spec()
            proc = ctx.Process(target=_timing_worker, args=(child, factory, args, x), daemon=True)
            with not_rerunning_main():
                proc.start()
            workers[k] = (proc, parent)
        from edgevit._progress import progress

        starting = list(workers.items())  # each worker imports its runtime and warms up: seconds each
        shown = 1 if desc else len(starting) + 1  # a bar only where the caller named the work
        for k, (_, conn) in progress(starting, f"{desc or 'timing'}: starting", min_total=shown):
            status, *rest = conn.recv()
            if status != "ready":
                from edgevit.errors import MeasurementError

                raise MeasurementError(f"timing worker for {k} failed: {rest[0]}")
            conn.send(("warmup", warmup))
            conn.recv()
        times: dict[str, list[float]] = {k: [] for k in fns}
        # interleaved: A B C, A B C, ... one process computing at a time; ``desc``: a bar with ETA per round
        for _ in progress(range(rounds), desc or "timing", min_total=1 if desc else rounds + 1):  # noqa: B007
            for k, (_, conn) in workers.items():
                conn.send(("round", per_round_n, per_round_s, max_per_round))
                times[k] += conn.recv()[1]
        return times
    finally:
        for proc, conn in workers.values():
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
