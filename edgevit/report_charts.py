"""The report's charts: accuracy vs latency with the Pareto front per target, and each cell's trend, as inline SVG
(text kept as text)."""

from __future__ import annotations

import io
import math
from statistics import median

FAMILY_ORDER = ("vit", "hybrid", "maxvit", "other", "mobilenet", "resnet")
DEFAULT_TOLERANCES = {"latency": 0.25, "accuracy": 0.5, "window": 5}  # what a regression is, unless the suite says


def cell_key(c: dict) -> tuple:
    return c["model"], c["target"], c["precision"]


def _details(c: dict) -> dict:
    """A cell's details as :func:`edgevit.history.read_cell` checked them (none where there is no object)."""
    d = c.get("details")
    return d if isinstance(d, dict) else {}


def random_weights(c: dict) -> bool:
    """Was the cell built from random weights? Then its top-1 means nothing and is never drawn as accuracy."""
    d = _details(c)
    return bool(d.get("random_weights")) or str(d.get("weights", "")).startswith("random")


def build_candidates(c: dict) -> list[dict]:
    """The candidates the cell's build measured with an accuracy (``details.candidates``, as history checked it)."""
    return [k for k in _details(c).get("candidates") or [] if k.get("top1") is not None and k.get("p50_ms")]


def _svg(fig) -> str:
    """The figure as SVG text (crisp at any zoom, its labels searchable), text kept as text."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline in the page: no XML prolog or doctype


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def accuracy_latency_chart(latest: list[dict]) -> str | None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in latest if c.get("p50") and c.get("top1") is not None]
    latest = [c for c in measured if not random_weights(c)]  # a random model's top-1 is no accuracy
    targets = sorted({c["target"] for c in latest})
    if not targets:
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(7.5 * len(targets), 5.0), squeeze=False)
    markers = {"fp32": "o", "bf16": "s", "fp16": "D", "int8": "^"}
    # One colour per model and one marker per precision, explained in legends: labels beside every point overlap
    # as soon as two cells land close together, which they do (fp32 and bf16 on a host without bf16, say).
    models = sorted({c["model"] for c in latest}, key=lambda m: (
        next((FAMILY_ORDER.index(c["family"]) for c in latest if c["model"] == m and c["family"] in FAMILY_ORDER),
             3), m))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    for ax, t in zip(axes[0], targets):
        pts = [(c["p50"], c["top1"], f"{c['model']} {c['precision']}", c) for c in latest
               if c["target"] == t and c.get("p50") and c.get("top1") is not None]
        for x, y, _, c in pts:
            base = c["family"] in ("mobilenet", "resnet")
            ax.scatter(x, y, marker=markers.get(c["precision"], "o"), s=70, linewidths=1.5, zorder=3,
                       facecolor="white" if base else colors[c["model"]],
                       edgecolor=colors[c["model"]] if base else "black")
        # what each build's recipe and token searches measured (timed against each other inside the build)
        cands = [(k["p50_ms"], k["top1"], f"{c['model']} {k['label']}", c) for *_, c in pts
                 for k in build_candidates(c) if not k["chosen"]]
        for x, y, _, c in cands:
            ax.scatter(x, y, marker="x", s=40, linewidths=1.2, zorder=2, color=colors[c["model"]], alpha=0.8)
        front = pareto([(x, y, label) for x, y, label, _ in pts + cands])
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:red", zorder=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        lo, hi = ax.get_xlim()
        every = hi / lo < 3  # less than a factor of 3 wide: no 2 or 5 might fall inside, so label every minor tick
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(  # else 2 and 5 between decades: no collisions
            lambda v, _, every=every: f"{v:g}" if every or round(v / 10 ** math.floor(math.log10(v)), 6) in (2.0, 5.0)
            else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("latency p50 at batch 1 (ms, log scale)")
        ax.set_ylabel("top-1 (%)")
        left_out = sum(1 for c in measured if c["target"] == t and random_weights(c))
        ax.set_title(f"{t}: accuracy vs latency (filled: transformers, hollow: CNN baselines)"
                     + (f"\n{left_out} cell(s) with random weights left out: their top-1 means nothing"
                        if left_out else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        from matplotlib.lines import Line2D

        shown = {c["model"] for *_, c in pts}
        handles = [Line2D([], [], ls="", marker="o", markersize=8, color=colors[m], label=m)
                   for m in models if m in shown]
        handles += [Line2D([], [], ls="", marker=markers.get(p, "o"), markersize=8, color="gray", label=p)
                    for p in markers if any(c["precision"] == p for *_, c in pts)]
        if cands:
            handles.append(Line2D([], [], ls="", marker="x", markersize=7, color="gray",
                                  label="other build candidates (recipes, input sizes)"))
        handles.append(Line2D([], [], ls="--", color="tab:red", label="Pareto front: " + " → ".join(
            p[2] for p in front)))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def trend_chart(runs: list[dict], cells: list[dict], flagged: dict[str, set[str]],
                tolerances: dict | None = None) -> str | None:
    """Small multiples, one per cell; ``flagged`` maps a cell to the metrics flagged in it (latency, accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tol = {**DEFAULT_TOLERANCES, **(tolerances or runs[-1]["env"].get("tolerances") or {})}
    order = {r["run_id"]: i for i, r in enumerate(runs)}
    keys = sorted({cell_key(c) for c in cells})
    if len(runs) < 2 or not keys:
        return None
    keys = keys[:24]
    cols = 4
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        series = sorted((order[c["run_id"]], c.get("p50"), c.get("top1")) for c in cells
                        if cell_key(c) == k and c["status"] == "passed")
        xs = [s[0] for s in series]
        ys = [s[1] for s in series if s[1]]
        kinds = flagged.get(" ".join(k), set())
        ax.plot(xs, [s[1] for s in series], "o-", color="tab:red" if "latency" in kinds else "tab:blue")
        if len(ys) >= 2:  # where the latest run would be flagged: the median of the runs before it, plus the tolerance
            limit = median(ys[:-1][-int(tol["window"]):]) * (1 + tol["latency"])
            ax.axhline(limit, color="tab:red", lw=0.8, ls="--")
            ys.append(limit)
        # from zero, so that a 2 % wobble does not fill the panel like a 2x slowdown would
        ax.set_ylim(0, max(ys, default=1) * 1.15)
        ax.set_xlim(-0.3, len(runs) - 0.7)
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, [f"{str(runs[i]['started'])[5:16].replace('T', ' ')}\n{runs[i]['git_commit'][:7]}"
                              for i in ticks], fontsize=8, rotation=30, ha="right")
        ax.set_title(" ".join(k), fontsize=10)
        ax.set_ylabel("p50 ms", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        real = [c for c in cells if cell_key(c) == k and c["status"] == "passed" and not random_weights(c)]
        if real:  # accuracy only of real weights: a random model's top-1 is no accuracy
            acc = ax.twinx()
            acc_series = sorted((order[c["run_id"]], c.get("top1")) for c in real)
            accs = [v for _, v in acc_series if v is not None]
            acc.plot([x for x, _ in acc_series], [v for _, v in acc_series], "s:", markersize=3,
                     color="tab:red" if "accuracy" in kinds else "tab:green")
            if accs:
                acc.set_ylim(min(accs) - 2, max(accs) + 2)
            acc.tick_params(labelsize=8, colors="tab:green")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("trend per cell across runs on this host (date and time of the run, commit): p50 latency (blue; red "
                 "when flagged), the effect-size threshold (red dashes),\ntop-1 % of cells with real weights (green, "
                 "right axis; red when flagged; cells with random weights have none)", fontsize=10)
    fig.tight_layout()
    return _svg(fig)
