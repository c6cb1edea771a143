"""The INT8 recipe chosen by measurement on this host: a build without ``--calibration`` quantizes every candidate
recipe of its family from one preparation (the calibration images read once), validates each through the accuracy
gate, times those that pass against each other in one interleaved, process-isolated run, and keeps the fastest.

What a search finds is kept in a cache keyed by everything the ranking depends on (backend, this CPU's class and
model, the OpenVINO and NNCF versions, the model and its input size): the next build of the same model here uses it
and says so; a new CPU, a new library version or a new model measures again. ``calibration/_defaults.toml`` holds
the recipes measured on the development machines: a ``--measure quick`` build (which searches nothing) starts from
it, and a search tries its entry first (the winner of a tie)."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from edgevit._progress import say, warn
from edgevit.errors import UsageError, ValidationFailedError

CACHE_FILE = "recipes.json"
# What the recipes mean beyond their files; raised when edgevit changes how a recipe quantizes, so that a choice
# measured before is measured again. 2: NNCF's overflow fix in every layer on hosts without VNNI (overflow_fix "auto").
RECIPES_REVISION = 2


def applies(req) -> tuple[bool, str]:
    """Whether this build searches its recipe, and why not where it does not."""
    if req.precision != "int8":
        return False, f"--precision {req.precision}"
    if req.measure == "quick":
        return False, "--measure quick searches nothing"
    if not req.measure_latency:
        return False, "latency is not measured"
    if req.qat.epochs:
        return False, "quantization-aware training starts from the first recipe"
    if not req.backend.capabilities.speed_search:
        return False, f"{req.backend.name} cannot time its INT8 artifact on this host"
    return True, ""


def candidates(backend: str, family: str, transformer: bool, first: str | None) -> list[str]:
    """The recipes a search tries for this family, the development machines' measured choice (``first``) first."""
    from edgevit._config import tomllib
    from edgevit.quantize import DEFAULTS_FILE, recipes_dir

    with open(recipes_dir() / DEFAULTS_FILE, "rb") as f:
        search = tomllib.load(f).get("search", {})
    names = list(search.get("transformer" if transformer else "other", ["default"]))
    if first in names:
        names.remove(first)
        names.insert(0, first)
    return names


def cache_path() -> Path:
    """``$EDGEVIT_CACHE_DIR/recipes.json`` (default ``$XDG_CACHE_HOME/edgevit``, else ``~/.cache/edgevit``)."""
    root = os.environ.get("EDGEVIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                       Path.home() / ".cache") / "edgevit"
    return Path(root) / CACHE_FILE


def cache_key(req, prep) -> str:
    """Everything the ranking of recipes depends on, as one string."""
    return key_for(req.backend.name, prep.spec.alias, prep.pre.input_size, req.target.batch)


def key_for(backend: str, alias: str, input_size, batch: int) -> str:
    """The cache key of a model (zoo alias or timm name) at an input size (its last two: H, W) and batch on this
    host, with the library versions installed here and the recipes' revision (:data:`RECIPES_REVISION`)."""
    from edgevit.runtime.measure import host_class, host_info, library_versions

    v = library_versions(("openvino", "nncf"))
    size = "x".join(str(s) for s in tuple(input_size)[-2:])  # (H, W), from (H, W) or a manifest's (C, H, W)
    return (f"{backend} | {host_class()} {host_info()['cpu']} | openvino {v['openvino']} nncf {v['nncf']} "
            f"recipes r{RECIPES_REVISION} | {alias} {size} batch {batch}")


def read_cache() -> dict | None:
    """The cache ({} where there is none yet), or None where the file is damaged or not edgevit's: a damaged cache
    costs a search, never a build, and is never overwritten."""
    from edgevit.outputs import loads

    p = cache_path()
    try:
        data = loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        warn(f"{p}: unreadable recipe cache ({type(e).__name__}); measuring, and leaving the file as it is "
             "(delete it to cache again)")
        return None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("recipe"), str)
                                             for v in data.values()):
        warn(f"{p} is not a recipe cache edgevit wrote; measuring, and leaving the file as it is (delete it to "
             "cache again)")
        return None
    return data


def write_cache(entries: dict[str, dict], cache: dict | None) -> None:
    """``cache`` (as read just before) with ``entries`` added or replaced, written whole (never a half-written file)."""
    from edgevit.outputs import made_dirs, write_json

    if cache is None:  # damaged or foreign: left alone
        return
    p = cache_path()
    try:
        with made_dirs(p.parent):
            write_json(p, {**cache, **entries})
    except OSError as e:  # a read-only home costs the next build a search, not this build
        warn(f"could not write the recipe cache {p}: {e.strerror or e}")


def search(prep, req, stage: Path, seed: str | None):
    """The gated INT8 candidate of the fastest recipe, in ``stage`` (its ``req`` carries the recipe), and the
    search's record for the manifest."""
    from edgevit.quantize import load_recipe
    from edgevit.stages import compile_gated

    if prep.qmodel is not None:  # a QAT checkpoint is rebuilt with the quantizers it was trained with
        return compile_gated(prep, req, "int8", stage), {"searched": False,
                                                          "why": "a QAT checkpoint keeps its trained quantizers"}
    key = cache_key(req, prep)
    cache = read_cache()
    hit = (cache or {}).get(key)
    samples = req.calib_samples
    names = candidates(req.backend.name, prep.spec.family, prep.spec.is_transformer, seed)
    if hit and hit["recipe"] in names and req.latency_budget is None:  # a budget weighs accuracy: measure
        rq = replace(req, recipe=load_recipe(hit["recipe"], samples))
        say(f"calibration recipe {hit['recipe']}: measured fastest here by a build of {hit.get('measured_utc', '?')} "
            f"({cache_path()}; {', '.join(f'{n} {ms:.3f} ms' for n, ms in hit.get('p50_ms', {}).items())})")
        return compile_gated(prep, rq, "int8", stage), {"cached": True, "key": key, **hit}
    say(f"calibration recipe: measuring {', '.join(names)} on this host (no measured choice for {key})")
    built, rejected, over = {}, {}, {}
    for name in names:
        rq = replace(req, recipe=load_recipe(name, samples))
        sub = prep.work / f"recipe-{name}"
        sub.mkdir()
        try:
            cand = compile_gated(prep, rq, "int8", sub, fallback=False)  # over budget: left out, not repaired
        except (ValidationFailedError, UsageError) as e:
            rejected[name] = str(e)
            say(f"recipe {name}: {e}")
            continue
        if cand.gate and not cand.gate.passed:
            over[name] = cand.art.validation["top1_drop"]
            rejected[name] = (f"top-1 drop {cand.art.validation['top1_drop']:.2f} points > --max-drop "
                              f"{rq.max_drop:.2f}: left out")
            say(f"recipe {name}: {rejected[name]}")
        else:
            built[name] = cand
    if not built:  # none passes as PTQ alone: the closest to the budget, with the gate's fallbacks (or its error)
        first = min(over, key=over.get) if over else names[0]  # on a tie, the first in order
        say(f"calibration recipe {first}: no recipe passed the gate as PTQ alone; {first} lost least, so the "
            "gate's fallbacks start from it")
        rq = replace(req, recipe=load_recipe(first, samples))
        return compile_gated(prep, rq, "int8", stage), {
            "cached": False, "key": key, "rejected": rejected, "chosen": first, "top1_drop": over,
            "rule": "no candidate passed as PTQ alone: the one that lost least (on a tie, the first in order), with "
                    "the gate's fallbacks"}
    chosen, p50, rule = _fastest(prep, req, {n: c.art for n, c in built.items()}, names)
    record = {"cached": False, "key": key, "chosen": chosen, "rule": rule, "p50_ms": p50,
              "top1_drop": {n: c.art.validation.get("top1_drop") for n, c in built.items()},
              "size_bytes": {n: c.size_bytes() for n, c in built.items()}, "rejected": rejected,
              "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if len(built) > 1:
        write_cache({key: {"recipe": chosen, "p50_ms": p50, "measured_utc": record["measured_utc"]}},
                    read_cache() if cache is not None else None)  # as it is now: another build may have written
    return built[chosen].moved_to(stage), record


def _fastest(prep, req, arts: dict, order: list[str]) -> tuple[str, dict, str]:
    """The fastest candidate timed against the others in one interleaved, process-isolated run; within the noise
    of the fastest, the earliest of ``order``."""
    import numpy as np

    from edgevit.best import BEST_TIE, tied_with
    from edgevit.runtime.measure import compare_latency

    x = np.zeros((req.target.batch, 3, *prep.pre.input_size), np.float32)
    lat = compare_latency({n: a.runner for n, a in arts.items()}, x, desc=f"recipes: timing {len(arts)} candidates")
    p50 = {n: lat[n]["p50"] for n in arts}
    ties = tied_with(lat)
    chosen = next(n for n in order if n in ties)
    budget = req.latency_budget
    if budget is not None and any(p <= budget for p in p50.values()):  # the most accurate within it
        chosen = max((n for n in order if n in arts and p50[n] <= budget),
                     key=lambda n: (arts[n].validation.get("top1") or 0, -p50[n]))
        ties = [chosen]
    say(f"calibration recipe {chosen}: " + ", ".join(f"{n} {p50[n]:.3f} ms" for n in sorted(p50, key=p50.get))
        + (f" (within the noise of the fastest: {', '.join(ties)}; the first in order wins)" if len(ties) > 1 else
           " (the fastest that passed the gate)"))
    rule = (f"fastest p50 on this host among recipes that passed the accuracy gate as PTQ; within {BEST_TIE:.0%} "
            f"of the fastest (or not slower by a one-sided Mann-Whitney U test), the first of {' > '.join(order)}")
    if budget is not None:
        rule = (f"the most accurate recipe whose p50 is within the latency budget of {budget:g} ms" if
                p50[chosen] <= budget else f"none within the latency budget of {budget:g} ms: " + rule)
    return chosen, p50, rule
