"""The latency stage of a build: the artifact timed side by side with the plain recipes, in the same run.

Every runtime is timed at its own fastest thread count, found in the same interleaved run: a small model often runs
fastest on fewer threads than the host has, and a baseline timed at a thread count that suits it badly (PyTorch's
OpenMP on all cores of a loaded host: 2.2x slower) is no baseline. The baselines are the manifest's explicit keys
(:data:`edgevit.runtime.bundle.BASELINES`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgevit._progress import say
from edgevit.runtime.manifest import BACKEND_DEFAULT, NNCF_DEFAULT, TORCH_EAGER, LatencyRecord

if TYPE_CHECKING:
    from edgevit.backends import Runner


@dataclass
class Latency:
    record: LatencyRecord  # the manifest's latency_ms
    samples: dict | None = None  # raw per-call times (ms) of what was timed, kept out of the manifest
    runner: Runner | None = None  # the artifact's runner at its chosen thread count
    profile: dict | None = None  # per-layer time (--profile)
    chosen: dict = field(default_factory=dict)  # what this stage chose for the backend's record: host precision,
    # threads and the compile config they change (the manifest's ``backend`` takes it over the build's record)
    validation: dict | None = None  # the artifact's validation again, where the host precision chosen was not the
    # one it was first validated at


def fastest_of(timed: dict, name: str, counts: list[int]) -> tuple[int, dict]:
    """The thread count at which candidate ``name`` (timed as ``name@N``) ran fastest, and the sweep's record."""
    from edgevit.runtime.measure import THREADS_TIE, fastest_threads

    p50 = {n: timed[f"{name}@{n}"]["p50"] for n in counts}
    chosen = fastest_threads(p50)
    return chosen, {"chosen": chosen, "p50_ms": {str(n): v for n, v in p50.items()},
                    "rule": f"fastest p50 at the target's batch; within {THREADS_TIE:.0%} of it, fewer threads"}


def measure_build(prep, backend, target, art, stage, precision: str, threads: int | None, calib=None,
                  peers: bool = False, profile: bool = False, accept=None, quick: bool = False,
                  base=None, base_calib=None) -> Latency:
    """Time the artifact in ``stage`` against PyTorch eager, the backend's defaults on the FP32 export and (``peers``)
    NNCF's one-line INT8, each at its fastest thread count, in one interleaved run.

    Where the backend offers host precisions for what stays unquantized (OpenVINO INT8: f32, and bf16 where the CPU
    has it natively), each is timed too; the fastest is kept (within 3% of it, the one validated first) once
    ``accept(host_precision, runner)`` says its accuracy holds, else the next fastest.

    ``quick`` (``--measure quick``): every candidate at one thread count (the target's, else all cores), the first
    host precision only, and a third of the timing: for a first look and CI, not for choosing between close ones.

    ``base`` (the token search's full-size preparation, when the artifact takes a smaller input): the baselines are
    the user's model as given (PyTorch, the backend's defaults, NNCF's one-line INT8 on ``base_calib``), each on
    its own input, so that the ratios say what the whole search bought."""
    from edgevit.backends import LoadSpec
    from edgevit.runtime.measure import (
        THREADS_TIE,
        compare_latency,
        host_info,
        thread_counts,
        torch_runner,
        without_samples,
    )

    runner = art.runner
    lat: dict = {"host": host_info(), "threads": runner.info.get("threads"), "batch": target.batch}
    if runner.info.get("proxy_for"):
        lat["skipped"] = (f"the {runner.info['proxy_for']} engine runs on the device ({target.device}); "
                          "`edgevit compile` of this bundle there builds it and measures its latency")
        return Latency(lat, runner=runner)
    base = base or prep
    x = base.latency_input(target.batch)
    if base is not prep:  # the artifact on its own (smaller) input, the baselines on the full-size one
        from edgevit.runtime.timing import OwnInput

        own_x = prep.latency_input(target.batch)

        def own(r):
            return OwnInput(*r.spec(), own_x)

        calib = base_calib
    else:
        def own(r):
            return r
    counts = thread_counts()[-1:] if quick else thread_counts()
    sweep = not threads and not target.threads and not backend.capabilities.engine_on_device and not quick
    art_counts = counts if sweep else [runner.info.get("threads")]
    torch_counts = [threads] if threads else counts
    hps = backend.host_precisions(precision, target)[:1 if quick else None]
    name = {hp: "artifact" if i == 0 else f"artifact-{hp}" for i, hp in enumerate(hps)}
    cands = {}
    for i, hp in enumerate(hps):
        loaded = LoadSpec(precision, target, {**art.built.details, **({"host_precision": hp} if hp else {})})
        cands.update({f"{name[hp]}@{n}": own(runner if i == 0 and (runner.info.get("threads") == n or not sweep)
                                             else backend.load(stage, loaded, n)) for n in art_counts})
    cands.update({f"torch@{n}": torch_runner(base.net, n) for n in torch_counts})
    plain = cands["default"] = backend.load_default(base.onnx_path, threads)
    peer = backend.peer_int8(base.onnx_path, calib, base.work) if peers and calib is not None else None
    peer_counts = art_counts if peer else []
    cands.update({f"peer@{n}": backend.load_default(peer, n) for n in peer_counts})
    say(f"measuring latency at batch {target.batch}" + (f" (threads {', '.join(map(str, counts))} for the "
                                                        "artifact and PyTorch)" if len(cands) > 3 else "")
        + (f"; host precisions {', '.join(hps)}" if len(hps) > 1 else ""))
    timed = compare_latency(cands, x, desc=f"latency: timing {len(cands)} candidates",
                            **({"min_seconds": 0.7, "min_iters": 20} if quick else {}))
    hp, runner, by_hp, p50, rejected = _host_precision(timed, cands, name, hps, art_counts, accept)
    a_n, a_sweep = by_hp[hp]
    chosen = _chosen(art.built.details, hp, runner.info.get("threads") if sweep else None)
    if len(hps) > 1:
        lat["host_precision_sweep"] = {
            "chosen": hp, "validated_first": hps[0], "p50_ms": p50, "rejected_for_accuracy": rejected,
            "rule": f"fastest p50 of what stays unquantized; within {THREADS_TIE:.0%} of it, {hps[0]}; the accuracy "
                    "gate checks any other"}
    if quick:
        lat["measure"] = "quick: one thread count, the first host precision, a third of the timing"
    if sweep:
        lat["threads"] = runner.info.get("threads")
        lat["threads_sweep"] = a_sweep
    res, baselines = _baselines(timed, cands, backend, plain, f"{name[hp]}@{a_n}", torch_counts, peer_counts)
    if base is not prep:
        lat["baselines_on"] = (f"the full-size model ({base.pre.input_size[-1]} px); the artifact takes "
                               f"{prep.pre.input_size[-1]} px")
    where = "each candidate in its own process" if res["artifact"]["isolated"] else "same process"
    lat.update(artifact=without_samples(res["artifact"]), baselines=baselines,
               method=f"interleaved rounds, {where}, {'same input' if base is prep else 'each on its own input'}; "
                      "wall clock per call",
               p50=res["artifact"]["p50"], p90=res["artifact"]["p90"])
    layers = None
    if profile:
        say("profiling per-layer time (--profile)")
        from edgevit.runtime.timing import beside_p50, profile_runs

        p50 = res["artifact"]["p50"]
        layers = beside_p50(runner.profile(prep.latency_input(target.batch), runs=profile_runs(p50)), p50)
    return Latency(lat, {k: v["samples"] for k, v in res.items()}, runner, layers, chosen)


def _chosen(details: dict, host_precision: str | None, threads: int | None) -> dict:
    """What the latency stage chose for the manifest's ``backend`` record (over what the build recorded): the host
    precision and the thread count measured fastest, and the compile config they change (what the bundle runs
    with)."""
    chosen, config = {}, dict(details.get("compile_config") or {})
    if host_precision:
        chosen["host_precision"] = config["INFERENCE_PRECISION_HINT"] = host_precision
    if threads:
        chosen["threads"] = threads
        if "INFERENCE_NUM_THREADS" in config:
            config["INFERENCE_NUM_THREADS"] = threads
    if host_precision or threads and config:
        chosen["compile_config"] = config
    return chosen


def _host_precision(timed: dict, cands: dict, name: dict, hps: list, art_counts: list, accept):
    """The host precision kept for what stays unquantized: the fastest (within the tie, the one validated first)
    that ``accept`` lets through, its runner at its fastest thread count, and the sweep's figures: (host precision,
    runner, thread sweep by host precision, p50 by host precision, those rejected for accuracy)."""
    from edgevit.runtime.measure import THREADS_TIE

    by_hp = {hp: fastest_of(timed, name[hp], art_counts) for hp in hps}
    p50 = {hp: timed[f"{name[hp]}@{by_hp[hp][0]}"]["p50"] for hp in hps}
    tied = [hp for hp in hps if p50[hp] <= min(p50.values()) * (1 + THREADS_TIE)]
    order = tied + sorted((hp for hp in hps if hp not in tied), key=p50.get)
    rejected = []
    for hp in order:
        runner = cands[f"{name[hp]}@{by_hp[hp][0]}"]
        runner = getattr(runner, "inner", runner)  # the runner itself, not the wrapper that fed it its own input
        if hp == hps[0] or accept is None or accept(hp, runner):
            break
        rejected.append(hp)
    return hp, runner, by_hp, p50, rejected


def _baselines(timed: dict, cands: dict, backend, plain, artifact: str, torch_counts: list, peer_counts: list):
    """The artifact's timing and the baselines' (each at its fastest thread count) as the manifest records them:
    (timings by key, with raw samples; the manifest's ``baselines``)."""
    from edgevit.runtime.measure import without_samples

    t_n, t_sweep = fastest_of(timed, "torch", torch_counts)
    res = {"artifact": timed[artifact], TORCH_EAGER: timed[f"torch@{t_n}"], BACKEND_DEFAULT: timed["default"]}
    torch_base = {**without_samples(res[TORCH_EAGER]), "executed_precision": "fp32", "threads": t_n}
    if len(torch_counts) > 1:
        torch_base["threads_sweep"] = t_sweep
    baselines = {TORCH_EAGER: torch_base,
                 BACKEND_DEFAULT: {**without_samples(res[BACKEND_DEFAULT]), "backend": backend.name,
                                   "executed_precision": plain.info.get("executed_precision")}}
    if peer_counts:  # the one-line NNCF recipe on the same export and calibration images
        p_n, _ = fastest_of(timed, "peer", peer_counts)
        res[NNCF_DEFAULT] = timed[f"peer@{p_n}"]
        baselines[NNCF_DEFAULT] = {
            **without_samples(res[NNCF_DEFAULT]), "threads": p_n,
            "executed_precision": cands[f"peer@{p_n}"].info.get("executed_precision"),
            "recipe": "nncf.quantize(model, dataset), every option at its default"}
    return res, baselines
