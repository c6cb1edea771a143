"""``edgevit time A [B ...]``: bundles (and plain OpenVINO ``.xml`` / ``.onnx`` files) timed against each other the
way a build times its candidates: interleaved rounds, each in its own process, each on its own input; with
``profile``, a per-layer table in the shape of ``benchmark_app -pc`` whose total is set beside the p50 of the same
run. Runtime side: no build-side import."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevit.errors import UsageError

if TYPE_CHECKING:
    from edgevit.runtime.manifest import Manifest
    from edgevit.runtime.runner import Runner


class OwnInput:
    """A runner that always runs on its own input, so candidates of different input sizes can be timed in one
    interleaved run (``compare_latency`` hands every candidate the same array). Made again in a timing worker from
    its ``spec()``, like the runner it wraps."""

    def __init__(self, factory, args, x: np.ndarray) -> None:
        self.inner = factory(*args)
        self.x = x
        self.info = getattr(self.inner, "info", {})
        self._spec = (factory, args)

    def __call__(self, _ignored):
        return self.inner(self.x)

    def spec(self) -> tuple:
        return OwnInput, (*self._spec, self.x)


@dataclass
class Item:
    name: str
    path: Path
    runner: Runner
    x: np.ndarray
    manifest: Manifest | None = None  # a bundle's (None: a plain model file)
    record: dict = field(default_factory=dict)


def load_item(path: str | os.PathLike, batch: int | None, threads: int | None) -> Item:
    """A bundle (verified, through its own runtime at its recorded threads) or a plain ``.xml`` / ``.onnx`` file
    (OpenVINO with its defaults; ``threads`` if given)."""
    p = Path(path)
    if p.is_dir():
        from edgevit.runtime.predict import Predictor

        pred = Predictor(p, threads=threads)
        m = pred.manifest
        return Item(p.name, p, pred.runner, np.zeros((batch or m.batch, *m.model.input_size), np.float32), m)
    if p.suffix not in (".xml", ".onnx") or not p.is_file():
        raise UsageError(f"{p}: give a bundle directory or an OpenVINO .xml / .onnx model file")
    from edgevit._registry import get_backend
    from edgevit.errors import BundleError, reading

    with reading(f"{p} as an OpenVINO model", BundleError):
        import openvino as ov

        shape = ov.Core().read_model(str(p)).input(0).get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape]
    if len(dims) != 4 or None in dims[1:]:
        raise UsageError(f"{p}: its input {shape} has no fixed channels, height and width; time its bundle instead")
    x = np.zeros((batch or dims[0] or 1, *dims[1:]), np.float32)
    return Item(p.name, p, get_backend("openvino").load_default(p, threads), x)  # OpenVINO's defaults


def time_items(paths: list, *, batch: int | None = None, threads: int | None = None, duration: float = 2.0,
               profile: bool = False, throughput_batch: int | None = None, hint: str | None = None,
               streams: int | None = None) -> list[dict]:
    """Every item timed in one interleaved, process-isolated run (``duration`` seconds each at least); with
    ``throughput_batch`` its offline throughput too, and with ``profile`` its per-layer table. ``hint``
    ("latency" or "throughput") and ``streams`` set OpenVINO's PERFORMANCE_HINT and NUM_STREAMS for every item
    (the throughput hint also measures images/s, at batch 1 unless ``throughput_batch`` says)."""
    from edgevit.runtime.measure import compare_latency, host_info, offline_throughput

    items = [load_item(p, batch, threads) for p in paths]
    if hint or streams:
        for it in items:
            it.runner = configured(it, hint, streams)
        if hint == "throughput" and not throughput_batch:
            throughput_batch = 1
    names = [i.name for i in items]
    if len(set(names)) < len(names):
        names = [str(i.path) for i in items]
    cands = {}
    for name, it in zip(names, items):
        if not hasattr(it.runner, "spec"):
            raise UsageError(f"{it.path}: its runtime cannot be timed in a separate process here")
        factory, args = it.runner.spec()
        cands[name] = OwnInput(factory, args, it.x)
    timed = compare_latency(cands, items[0].x, min_seconds=duration)
    host = host_info()
    out = []
    for name, it in zip(names, items):
        lat = {k: v for k, v in timed[name].items() if k != "samples"}
        rec = {"item": name, "path": str(it.path), "host": host, "latency_ms": lat,
               "executed": it.runner.info.get("executed_precision"), "backend": it.runner.info.get("backend"),
               "threads": it.runner.info.get("threads"), "batch": int(it.x.shape[0])}
        if hint or streams:  # as the runtime settled it
            rec["config"] = {k: it.runner.info.get(k) for k in ("hint", "streams")}
        if it.manifest is not None:
            rec.update(model=it.manifest.model.alias, precision=it.manifest.precision,
                       target=it.manifest.target_name)
        if throughput_batch:
            rec["throughput"], rec["offline"] = offline_throughput(it.runner, throughput_batch, it.x.shape[1:])
        if profile:
            rec["profile"] = layer_profile(it, lat["p50"])
        out.append(rec)
    return out


def configured(it: Item, hint: str | None, streams: int | None):
    """The item's OpenVINO runner again with the performance hint and stream count asked for (every other setting,
    the thread count included, as it was)."""
    if not hasattr(it.runner, "reconfigured"):
        raise UsageError(f"{it.path}: --hint and --streams are OpenVINO settings; it runs on "
                         f"{it.runner.info.get('backend', 'another runtime')}")
    extra = {}
    if hint:
        extra["PERFORMANCE_HINT"] = hint.upper()
    if streams:
        extra["NUM_STREAMS"] = streams
    return it.runner.reconfigured(extra)


def layer_profile(it: Item, p50: float, seconds: float = 1.0) -> dict:
    """The runtime's per-layer times (median per layer over about ``seconds`` of inferences, 100 to 2,000) at the
    runner's own configuration and thread count, set beside the p50 measured in the same run."""
    if not hasattr(it.runner, "profile"):
        raise UsageError(f"{it.path}: its runtime has no per-layer profiler")
    return beside_p50(it.runner.profile(it.x, runs=profile_runs(p50, seconds)), p50)


def profile_runs(p50_ms: float, seconds: float = 1.0) -> int:
    """How many profiled inferences make about ``seconds`` at this p50 (100 at least, 2,000 at most): a 40 µs model
    profiled 100 times would be 4 ms of samples, too few to hold still on a shared host."""
    return int(min(max(seconds * 1000 / max(p50_ms, 1e-3), 100), 2000))


def beside_p50(prof: dict, p50: float) -> dict:
    """A runtime's per-layer profile with the p50 of the same run beside it: the per-layer medians plus the time a
    call spends in no layer (where the runtime measures it) against the p50."""
    prof["p50_ms"] = p50
    accounted = prof["total_ms"] + (prof.get("outside_layers_ms") or 0.0)
    prof["accounted_ms"] = round(accounted, 4)
    prof["total_vs_p50"] = round(accounted / p50, 3) if p50 else None
    if prof.get("resolution_ms"):  # each layer's count truncated (those under one step read 0): up to a step each
        steps = prof["layers_timed"] + prof.get("below_resolution", 0)
        prof["accounted_max_ms"] = round(accounted + steps * prof["resolution_ms"], 4)
    prof["excluded"] = ("the runtime's dispatch between layers" if "outside_layers_ms" in prof else
                        "the Python call, the input and output copies, the runtime's dispatch between layers")
    return prof


def table(records: list[dict], profile_rows: int = 15) -> str:
    """The text ``edgevit time`` prints."""
    lines = [f"{'item':36} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9}  ran"]
    for r in records:
        lat = r["latency_ms"]
        thr = f"{r['throughput']:.0f}" if r.get("throughput") is not None else "–"
        lines.append(f"{r['item'][:36]:36} {lat['p50']:9.4f} {lat['p90']:9.4f} {lat['p99']:9.4f} {thr:>9}  "
                     f"{r.get('executed') or '?'} on {r.get('threads')} thread(s), batch {r['batch']}"
                     + "".join(f", {k} {v}" for k, v in r.get("config", {}).items()))
    host = records[0]["host"]
    lines.append(f"timed interleaved, each in its own process, on {host['cpu']} ({host['cores']} cores)")
    if len(records) > 1:
        base = records[0]["latency_ms"]["p50"]
        lines.append("p50 relative to the first: " + ", ".join(
            f"{r['item']} {base / r['latency_ms']['p50']:.2f}x" for r in records[1:]))
    for r in records:
        if r.get("profile"):
            lines += ["", profile_table(r["item"], r["profile"], profile_rows)]
    return "\n".join(lines)


def profile_table(name: str, prof: dict, rows: int = 15) -> str:
    """A per-layer profile as ``benchmark_app -pc`` shows one (what ``time --profile`` and ``build --profile``
    print)."""
    stat = prof.get("statistic", "mean")
    lines = [f"{name}: per-layer profile ({prof['measured_with']}; {stat} per layer)",
             f"{'layer':40} {'type':16} {'kernel':28} {'precision':9} {stat + ' ms':>9} {'share':>6}"]
    for row in prof["top_layers"][:rows]:
        lines.append(f"{row['name'][:40]:40} {row['type'][:16]:16} {row['exec'][:28]:28} {row['precision']:9} "
                     f"{row['ms']:9.4f} {row['share'] * 100:5.1f}%")
    rest = prof["layers_timed"] - min(rows, len(prof["top_layers"]))
    if rest > 0:
        lines.append(f"... and {rest} more layer(s)")
    lines.append(f"total of the per-layer {stat}s {prof['total_ms']:.4f} ms")
    if prof.get("outside_layers_ms") is not None:
        lines.append(f"  + in no layer {prof['outside_layers_ms']:.4f} ms ({prof['outside_layers']})")
    if prof.get("p50_ms"):
        lines.append(f"  = {prof['accounted_ms']:.4f} ms against the p50 of the same run {prof['p50_ms']:.4f} ms "
                     f"(ratio {prof['total_vs_p50']}); in neither: {prof['excluded']}")
    if prof.get("accounted_max_ms") and prof.get("p50_ms") and \
            prof["accounted_max_ms"] - prof["accounted_ms"] > 0.05 * prof["p50_ms"]:
        below = prof.get("below_resolution", 0)
        lines.append(f"  the counters count whole steps of {prof['resolution_ms'] * 1000:g} µs per layer, each run's "
                     "time cut down to a whole step"
                     + (f"; {below} more layer(s) ran under one step on average and read as not run" if below else "")
                     + f": the {prof['layers_timed'] + below} layers may together take up to "
                     f"{prof['accounted_max_ms']:.4f} ms; a model this small is timed better as a whole than by its "
                     "layers")
    return "\n".join(lines)
