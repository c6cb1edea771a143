"""``edgevit bench``: every model × target × precision of a suite, with its peers, into a SQLite history.

A cell is one ``build`` (which already validates against FP32 and times the artifact interleaved with PyTorch eager
FP32 and the backend's defaults on the FP32 export), plus top-5, p99 and an Offline throughput figure. One cell
failing is recorded with its error and never stops the others. Every figure is measured in this run, on this host.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgevit._config import tomllib
from edgevit._progress import say
from edgevit.errors import UsageError, reading
from edgevit.history import check_db, open_db, record
from edgevit.schema import Fields

BASELINE_FAMILIES = ("mobilenet", "resnet")
TRAIN_KEYS = {"epochs": (1, 10_000), "batch_size": (1, 1 << 16), "lr": (0.0, 10.0), "limit": (1, 1 << 40),
              "seed": (0, 2 ** 63 - 1)}  # train() keyword: its range


@dataclass(frozen=True)
class SuiteModel:
    model: str
    weights: str = ""  # a checkpoint; with train_missing, trained there when absent
    overrides: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # train() arguments for --train-missing (epochs, limit, lr, ...)
    token_search: bool = False  # its INT8 cells also try smaller inputs (build --token-search; trained weights)
    token_finetune: int = 0  # ... each fine-tuned at its size for this many epochs (build --token-finetune)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    dataset: str
    models: tuple
    targets: tuple
    precisions: tuple
    val_samples: int | None = None
    calibration: str = "default"
    throughput_batch: int = 16
    latency_tolerance: float = 0.25  # flag p50 (relative to the same run's PyTorch eager) worse by more than this
    accuracy_tolerance: float = 0.5  # flag top-1 lower by more than this many points
    history_window: int = 5  # previous runs a cell is compared with
    peers: bool = False  # also time NNCF's one-line default INT8 of each INT8 cell's model (a peer column)
    measure: str = "full"  # build(measure=...): "quick" skips the speed search and the sweeps (CI-sized suites)
    path: str = ""


def load_suite(path: str | os.PathLike) -> Suite:
    p = Path(path)
    if not p.is_file():
        from edgevit._config import shipped_dir

        shipped = shipped_dir("suites", UsageError, checkout="benchmarks/suites") / f"{path}.toml"
        if shipped.is_file():
            p = shipped
        else:
            raise UsageError(f"suite file not found: {path} (pass e.g. benchmarks/suites/quick.toml)")
    with reading(f"suite {p}"):
        raw = tomllib.loads(p.read_text())
    known = set(Suite.__dataclass_fields__) - {"path"}
    unknown = set(raw) - known
    if unknown:
        raise UsageError(f"{p}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    missing = {"name", "dataset", "models", "targets", "precisions"} - set(raw)
    if missing:
        raise UsageError(f"{p}: missing key(s) {sorted(missing)}")
    _check_types(p, raw)
    models = []
    for m in raw.pop("models"):
        if not isinstance(m, dict):
            raise UsageError(f"{p}: 'models' must be [[models]] tables, got {type(m).__name__}")
        _check_types(p, m, SuiteModel, where=f"model {m.get('model', '?')!r}: ")
        bad = set(m) - set(SuiteModel.__dataclass_fields__)
        if bad or "model" not in m:
            may = ", ".join(repr(k) for k in SuiteModel.__dataclass_fields__ if k != "model")
            raise UsageError(f"{p}: each [[models]] needs 'model' and may have {may}; got {sorted(m)}")
        _check_model(p, m)
        models.append(SuiteModel(**m))
    from edgevit.targets import load_target

    for t in raw["targets"]:
        load_target(t)  # an unknown target is an error now, not a failed cell later
    families = {_family(m.model) for m in models}
    if not families & set(BASELINE_FAMILIES):
        raise UsageError(f"{p}: a suite must include a MobileNet or ResNet baseline beside its ViTs")
    return Suite(models=tuple(models), targets=tuple(raw.pop("targets")), precisions=tuple(raw.pop("precisions")),
                 description=raw.pop("description", ""), path=str(p), **raw)


def _check_model(p: Path, m: dict) -> None:
    """A [[models]] table's values: the names one printable line, ``train`` keys with their train() types and
    ranges, ``overrides`` plain scalars (they reach timm as keyword arguments)."""
    f = Fields(lambda field, why: UsageError(f"{p}: [[models]] {field} {why}"))
    f.text(m, "model", "", max_len=200)
    f.text(m, "weights", "", optional=True, max_len=4096)
    train = f.get(m, "train", "", dict, optional=True) or {}
    bad = set(train) - set(TRAIN_KEYS)
    if bad:
        raise UsageError(f"{p}: {m['model']}: unknown 'train' key(s) {sorted(bad)}; known: {sorted(TRAIN_KEYS)}")
    for k, (lo, hi) in TRAIN_KEYS.items():
        if k == "lr":
            f.number(train, k, "train", lo, hi, optional=True, above=True)
        else:
            f.int(train, k, "train", lo, hi, optional=True)
    f.int(m, "token_finetune", "", 0, 100, optional=True)
    if m.get("token_finetune") and not m.get("token_search"):
        raise f.fail("token_finetune", "needs token_search = true")
    for k, v in (f.get(m, "overrides", "", dict, optional=True) or {}).items():
        f.check_text(k, "overrides (a key)", 100)
        if not isinstance(v, (int, float, str, bool)) or isinstance(v, float) and not math.isfinite(v):
            raise f.fail(f"overrides.{k}", f"must be a number, string or boolean, not {v!r}"[:120])


_TOML_TYPES = {"str": str, "int": int, "float": (int, float), "dict": dict, "tuple": list, "bool": bool,
               "int | None": int}


def _check_types(p: Path, raw: dict, cls=None, where: str = "") -> None:
    """Every key of a suite table has its field's type (lists of strings for targets and precisions)."""
    from edgevit.targets import PRECISIONS

    cls = cls or Suite
    for k, v in raw.items():
        f = cls.__dataclass_fields__.get(k)
        if f is None:
            continue
        want = _TOML_TYPES.get(str(f.type))
        if want and (not isinstance(v, want) or isinstance(v, bool) and want is not bool):
            raise UsageError(f"{p}: {where}{k!r} must be {str(f.type).replace('tuple', 'a list')}, "
                             f"not {type(v).__name__}")
        if k in ("targets", "precisions") and (not v or not all(isinstance(x, str) for x in v)):
            raise UsageError(f"{p}: {k!r} must be a non-empty list of names")
        if k == "measure" and v not in ("quick", "full"):
            raise UsageError(f"{p}: 'measure' must be \"quick\" or \"full\", got {v!r}")
        if k == "precisions" and set(v) - set(PRECISIONS):
            raise UsageError(f"{p}: unknown precision(s) {sorted(set(v) - set(PRECISIONS))}; known: {PRECISIONS}")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed" and v <= 0:
            raise UsageError(f"{p}: {where}{k!r} must be positive, got {v}")


def _family(model: str) -> str:
    from edgevit.models import resolve_spec

    return resolve_spec(model).family


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    import onnxruntime
    import openvino
    import torch

    from edgevit import __version__
    from edgevit.runtime.measure import host_info

    return {**host_info(), "edgevit": __version__, "torch": torch.__version__, "openvino": openvino.get_version(),
            "onnxruntime": onnxruntime.__version__, "threads": os.cpu_count()}


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux keeps ``ru_maxrss`` across fork+exec, so a spawned cell would report its
    parent's high-water mark if the parent was bigger; ``VmHWM`` belongs to the address space exec made new."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


CROSSCHECK_TOLERANCE = 0.10


def crosscheck_benchmark_app(bundle: Path, runner, p50: float, throughput: float,
                             batch: int) -> dict:
    """Our SingleStream median and Offline throughput against OpenVINO's benchmark_app on the same IR, same threads
    and precision: each within ``CROSSCHECK_TOLERANCE`` or the check says by how much it is off."""
    from edgevit.backends.openvino.backend import benchmark_app

    threads = int(runner.info.get("threads") or os.cpu_count() or 1)
    prec = runner.info.get("inference_precision", "f32")
    lat = benchmark_app(Path(bundle) / "model.xml", 1, "latency", threads, prec)
    thr = benchmark_app(Path(bundle) / "model.xml", batch, "throughput", threads, prec)
    out = {"latency": lat, "throughput": thr}
    if lat.get("median_ms"):
        out["p50_ratio"] = round(p50 / lat["median_ms"], 3)
    if thr.get("throughput_fps"):
        out["throughput_ratio"] = round(throughput / thr["throughput_fps"], 3)
    out["within_tolerance"] = all(abs(out.get(k, 1.0) - 1) <= CROSSCHECK_TOLERANCE
                                  for k in ("p50_ratio", "throughput_ratio"))
    return out


def run_cell(sm: SuiteModel, target: str, precision: str, suite: Suite, work: Path, profile_layers: bool = True,
             crosscheck: bool = False) -> dict:
    """Build one cell and measure it. Never raises: a failure is a cell with status 'failed' and the error."""
    from edgevit.backends import get_backend
    from edgevit.build import build
    from edgevit.runtime.manifest import BACKEND_DEFAULT, TORCH_EAGER
    from edgevit.runtime.measure import offline_throughput

    cell = {"model": sm.model, "family": _family(sm.model), "target": target, "precision": precision}
    cell_profile = check = offline = None
    t0 = time.perf_counter()
    try:
        if sm.weights and not Path(sm.weights).is_file():
            raise UsageError(f"weights not found: {sm.weights}; train them or run bench with --train-missing")
        r = build(sm.model, target=target, precision=precision, data=suite.dataset, weights=sm.weights or None,
                  out=str(work), calibration=suite.calibration, val_samples=suite.val_samples, keep_failed=True,
                  peers=suite.peers, measure=suite.measure, overrides=sm.overrides,
                  token_search=sm.token_search and precision == "int8", token_finetune=sm.token_finetune)
        m = r.manifest
        cell["bundle"] = str(r.bundle)  # for --remote (not stored in the history)
        v, lat = m.validation, m.latency
        cell["build_seconds"] = round(time.perf_counter() - t0, 1)
        cell["status"] = "passed" if m.status == "ok" else "failed-validation"
        cell["size_bytes"] = sum(f["bytes"] for f in m.files.values())
        from edgevit.backends import LoadSpec

        runner = get_backend(m.backend.name).load(r.bundle, LoadSpec.of_manifest(m))
        cell["executed"] = runner.info.get("executed_precision")
        if "top1" in v:  # measured by the build through the artifact's runtime, on the suite's validation images
            cell.update(top1=v["top1"], top5=v["top5"], top1_drop=v["top1_drop"])
        if "artifact" in lat:
            cell.update(p50=lat["artifact"]["p50"], p90=lat["artifact"]["p90"], p99=lat["artifact"].get("p99"))
            base = lat["baselines"]
            cell["torch_p50"] = base[TORCH_EAGER]["p50"]
            cell["default_p50"] = base[BACKEND_DEFAULT]["p50"]
            cell["throughput"], offline = offline_throughput(  # measure "quick": a third of the time, as latency
                runner, suite.throughput_batch, m.model.input_size, 1.0 if suite.measure == "quick" else 3.0)
            if profile_layers and precision == "int8":  # why an INT8 model is (not) fast: per-layer time
                x1 = np.zeros((1, *m.model.input_size), np.float32)
                cell_profile = runner.profile(x1)
            if crosscheck and m.backend.name == "openvino":
                check = crosscheck_benchmark_app(r.bundle, runner, lat["artifact"]["p50"], cell["throughput"],
                                                 suite.throughput_batch)
        cell["details"] = {"latency": lat, "validation": v, "samples": (r.samples or {}).get("artifact"),
                           "offline": offline, "profile": cell_profile, "benchmark_app": check,
                           "candidates": m.candidates(),
                           "random_weights": not sm.weights,
                           "backend": {"name": m.backend.name, "version": m.backend.version,
                                       "quantizer": m.backend.details.get("quantizer")},
                           "throughput_batch": suite.throughput_batch,
                           "weights": Path(sm.weights).name if sm.weights else "random (accuracy meaningless)"}
    except Exception as e:  # one failing cell never stops the others
        cell.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500],
                    build_seconds=round(time.perf_counter() - t0, 1),
                    details={"traceback": traceback.format_exc(limit=3)})
    cell["peak_rss_mb"] = _peak_rss_mb()
    return cell


def run_cell_isolated(sm: SuiteModel, target: str, precision: str, suite: Suite, work: Path,
                      crosscheck: bool = False) -> dict:
    """``run_cell`` in a fresh process: its peak memory is the cell's own (not the bench's high-water mark so
    far), and a crash in a native library (a segfault, the OOM killer) fails that cell, not the run."""
    from edgevit.child import run_in_child
    from edgevit.errors import ChildDied

    t0 = time.perf_counter()
    try:  # the cell's process dies with bench (even by SIGKILL) and gets bench's SIGTERM at once
        return run_in_child(run_cell, sm, target, precision, suite, work, True, crosscheck)
    except ChildDied as e:
        return {"model": sm.model, "family": _family(sm.model), "target": target, "precision": precision,
                "status": "failed", "error": f"the cell's process died ({e}); a crash in a native library or "
                "out of memory", "build_seconds": round(time.perf_counter() - t0, 1), "details": {}}


def train_missing(suite: Suite) -> None:
    """Train the suite's models whose ``weights`` file does not exist yet, with their recipe, where it points."""
    from edgevit.train import train

    for sm in suite.models:
        if sm.weights and not Path(sm.weights).is_file():
            say(f"bench: {sm.weights} is missing; training {sm.model} on {suite.dataset}")
            r = train(sm.model, suite.dataset, Path(sm.weights).parent, **sm.train, **sm.overrides)
            if r.best_path != Path(sm.weights):
                os.replace(r.best_path, sm.weights)


def _profile_remote(rem, cell: dict, suite: Suite) -> None:
    """Replace a cell's latency and throughput by the device's own (``bench --remote``)."""
    from edgevit.errors import RemoteError

    bundle = cell.get("bundle")
    if cell["status"] == "failed" or not bundle:
        return
    from edgevit.backends import get_backend
    from edgevit.targets import load_target

    try:
        on_device = get_backend(load_target(cell["target"]).backend).capabilities.engine_on_device
        r = rem.profile(Path(bundle), compile_engine=on_device,
                        throughput_batch=suite.throughput_batch)
    except RemoteError as e:
        cell.update(status="failed", error=f"on {rem.host}: {e}")
        return
    lat = r["latency_ms"]
    cell.update(p50=lat["p50"], p90=lat["p90"], p99=lat["p99"], throughput=r["throughput"], executed=r["executed"],
                torch_p50=None, default_p50=None)  # the peers ran on the workstation: not comparable
    cell.setdefault("details", {})["samples"] = lat.pop("samples", None)
    cell["details"]["remote"] = r


def bench(suite_path: str, *, db_path: str = "benchmarks/results/history.sqlite", work: str | None = None,
          train: bool = False, only: str | None = None, remote: str | None = None,
          crosscheck: bool = False) -> tuple[dict, list[dict]]:
    """Run every cell of a suite; append the run to the history database. Returns (run, cells). With ``remote``
    (``user@host``), each bundle is compiled and timed on that device over ssh (see :mod:`edgevit.remote`)."""
    import tempfile

    suite = load_suite(suite_path)
    check_db(db_path)  # before any cell or training: a bad history must not lose the run's measurements
    rem = device = None
    if remote:
        from edgevit.remote import Remote

        rem = Remote(remote)
        device = rem.check()  # an unreachable host is one error now, not a failed cell per model later
        say(f"bench --remote: {remote} is {device['host']['cpu']}" + (f", {device['board']}" if device.get("board")
                                                                       else ""))
    if train:
        train_missing(suite)
    grid = [(sm, t, p) for sm in suite.models for t in suite.targets for p in suite.precisions
            if only is None or only in sm.model]
    if not grid:
        raise UsageError(f"--only {only!r} matches no model of suite {suite.name} "
                         f"({', '.join(sm.model for sm in suite.models)})")
    run = {"run_id": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
           "suite": suite.name, "git_commit": git_commit(), "started": datetime.now(timezone.utc).isoformat(),
           "env": {**environment(), "tolerances": {"latency": suite.latency_tolerance,
                                                   "accuracy": suite.accuracy_tolerance,
                                                   "window": suite.history_window}}}
    if rem:  # the figures are the device's: label the run with it
        run["env"]["remote"] = {"host": remote, "board": device.get("board"), "host_info": device["host"],
                                "versions": device.get("versions")}
    t0 = time.perf_counter()
    cells = []
    from edgevit._progress import duration
    from edgevit.targets import load_target

    runnable = [(sm, t, p) for sm, t, p in grid if p in load_target(t).precisions]
    with tempfile.TemporaryDirectory(prefix="edgevit-bench-", dir=work) as tmp:
        for i, (sm, target, precision) in enumerate(runnable, 1):
            say(f"bench [{i}/{len(runnable)}] {sm.model} → {target} {precision}")
            t_cell = time.perf_counter()
            c = run_cell_isolated(sm, target, precision, suite, Path(tmp), crosscheck=crosscheck)
            if rem:
                _profile_remote(rem, c, suite)
            took = time.perf_counter() - t_cell
            left = (time.perf_counter() - t0) / i * (len(runnable) - i)  # the cells so far, on average
            say(f"bench [{i}/{len(runnable)}] {c['status']}" + (f": {c['error']}" if c.get("error") else
                f", top-1 {c.get('top1')}, p50 {c.get('p50')} ms") + f" ({duration(took)}"
                + (f"; about {duration(left)} for the {len(runnable) - i} cell(s) left)" if i < len(runnable)
                   else ")"))
            cells.append(c)
        if rem:
            rem.close()
    run["seconds"] = round(time.perf_counter() - t0, 1)
    db = open_db(db_path)
    record(db, run, cells)
    db.close()
    return run, cells
