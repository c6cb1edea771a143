"""``--precision best``: every precision the target allows, compiled from one preparation, timed against each other
on this host in interleaved rounds; the fastest that passes the accuracy gate is shipped, with every candidate
recorded in the manifest's ``selection``."""

from __future__ import annotations

import numpy as np

from edgevit._progress import say
from edgevit.errors import UsageError, ValidationFailedError

BEST_ORDER = ("int8", "bf16", "fp16", "fp32")  # the candidates --precision best builds, where the target allows them
BEST_TIE = 0.03  # p50s this close are the same speed: identical reruns must not flip between two candidates
BEST_ALPHA = 0.01


def choose_fastest(lat: dict[str, dict]) -> tuple[str, list[str]]:
    """The candidate ``--precision best`` keeps, and the candidates tied with the fastest. Ties are decided by
    :data:`BEST_ORDER` (lower precision first: the smaller artifact), so that reruns on the same host choose the same
    one where the timing noise would otherwise pick at random (0.369 vs 0.370 ms once flipped int8 and bf16)."""
    tied = tied_with(lat)
    ties = sorted(tied, key=lambda p: BEST_ORDER.index(p) if p in BEST_ORDER else len(BEST_ORDER))
    return ties[0], ties


def tied_with(lat: dict[str, dict]) -> list[str]:
    """The candidates within the noise of the fastest (itself included): p50 within :data:`BEST_TIE`, or not slower
    by a one-sided Mann-Whitney U test at :data:`BEST_ALPHA` on their samples."""
    from scipy.stats import mannwhitneyu

    fastest = min(lat, key=lambda p: lat[p]["p50"])
    best = lat[fastest]

    def tied(p: str) -> bool:
        if p == fastest or lat[p]["p50"] <= best["p50"] * (1 + BEST_TIE):
            return True
        a, b = lat[p].get("samples"), best.get("samples")
        if not a or not b:
            return False
        return float(mannwhitneyu(a, b, alternative="greater").pvalue) >= BEST_ALPHA

    return [p for p in lat if tied(p)]


def build_best(req, inputs: dict):
    """Compile each candidate into the preparation's work directory, drop those that execute as another candidate,
    time the rest against each other, and write the chosen one (with its full latency stage) as the bundle."""
    from edgevit.outputs import claim
    from edgevit.prepare import prepare
    from edgevit.runtime.bundle import bundle_dir
    from edgevit.stages import BuildResult, compile_gated, latency_stage, speed_stage, write_bundle

    cands = [p for p in BEST_ORDER if p in req.target.precisions]
    with claim(req.final, "bundle", req.force), prepare(req.spec, **inputs) as prep:
        built, record = {}, []
        for p in cands:
            say(f"--precision best: building the {p} candidate")
            stage = prep.work / f"candidate-{p}"
            stage.mkdir()
            try:
                built[p] = compile_gated(prep, req, p, stage)
            except (ValidationFailedError, UsageError) as e:
                record.append({"precision": p, "rejected": str(e)})
        if not built:
            raise ValidationFailedError(f"--precision best: no candidate of {', '.join(cands)} could be built: "
                                        + "; ".join(r["rejected"] for r in record))
        _drop_duplicates(built, record)
        chosen, lat, rule, tied = _select(prep, req, {p: c.art for p, c in built.items()})
        for p, c in built.items():
            v = c.art.validation
            record.append({"precision": p, "executed": c.art.runner.info.get("executed_precision"),
                           "latency_ms_p50": lat[p]["p50"], "latency_ms_p90": lat[p]["p90"],
                           "top1": v.get("top1"), "top1_drop": v.get("top1_drop")})
        selection = {"rule": rule, "chosen": chosen, "candidates": record}
        if tied is not None:
            selection["tied_with_fastest"] = tied
        with bundle_dir(req.final, req.force, claimed=True) as stage:
            cand = speed_stage(prep, req, built[chosen].moved_to(stage))
            latency = latency_stage(prep, req, cand)
            manifest = write_bundle(prep, cand, latency, requested_precision="best", selection=selection)
    return BuildResult(req.final, manifest, latency.samples)


def _drop_duplicates(built: dict, record: list) -> None:
    """e.g. bf16 on a CPU without native bf16 runs in fp32: the fp32 candidate again."""
    for p in list(built):
        ran = built[p].art.runner.info.get("executed_precision")
        if ran and ran != p and ran in built and len(built) > 1:
            say(f"--precision best: the {p} candidate executes as {ran} on this host; dropped as a duplicate")
            record.append({"precision": p, "executed": ran, "rejected": f"executes as {ran} on this host "
                           f"(it has no native {p}), the same as the {ran} candidate"})
            del built[p]


def _select(prep, req, arts: dict) -> tuple[str, dict, str, list | None]:
    """(chosen, latency by candidate, the rule, the candidates tied with the fastest or None where not timed)."""
    from edgevit.runtime.measure import compare_latency

    if any(a.runner.info.get("proxy_for") for a in arts.values()):  # the engine runs on the device
        chosen = next(p for p in BEST_ORDER if p in arts)
        say(f"--precision best: {req.target.name} cannot be timed here; by rule, {chosen} (the lowest precision that "
            "passed the gate)")
        return chosen, {p: {"p50": None, "p90": None} for p in arts}, (
            f"remote target: latency cannot be measured on this host, so the documented rule applies: the first of "
            f"{' > '.join(BEST_ORDER)} that passed the accuracy gate"), None
    x = np.zeros((req.target.batch, 3, *prep.pre.input_size), np.float32)
    say(f"--precision best: timing {', '.join(arts)} against each other")
    lat = compare_latency({p: a.runner for p, a in arts.items()}, x)
    chosen, tied = choose_fastest(lat)
    say(f"--precision best: {chosen} is the fastest that passed ({lat[chosen]['p50']:.3f} ms p50)"
        + (f"; tied within the noise with {', '.join(t for t in tied if t != chosen)}" if len(tied) > 1 else ""))
    rule = (f"fastest measured p50 on this host among candidates that passed the accuracy gate; candidates within "
            f"the noise of the fastest (p50 within {BEST_TIE:.0%}, or not slower by a one-sided Mann-Whitney U test "
            f"at p < {BEST_ALPHA}) tie, and the first of {' > '.join(BEST_ORDER)} wins")
    return chosen, lat, rule, tied
