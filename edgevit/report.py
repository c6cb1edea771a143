"""``edgevit report``: the benchmark history as a self-contained HTML page and a Markdown summary.

The latest run's table (grouped by model family, the MobileNet/ResNet baselines beside the ViTs), accuracy against
latency with the Pareto front per target, trends per cell across runs, and regressions against the recent history.
Latency is compared as the ratio to the same run's PyTorch eager FP32 of the same model, which cancels most of a
noisy machine's drift; where a cell has no such peer, its raw p50 is used.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from statistics import median

from markupsafe import Markup

from edgevit.errors import UsageError
from edgevit.report_charts import (
    DEFAULT_TOLERANCES,
    FAMILY_ORDER,
    accuracy_latency_chart,
    cell_key,
    random_weights,
    trend_chart,
)
from edgevit.runtime.manifest import NNCF_DEFAULT


def load(db_path: str | os.PathLike | list, suite: str | None = None) -> tuple[list[dict], list[dict]]:
    """Runs (oldest first) and their cells from one history database or several (one per host, say), merged."""
    from edgevit._progress import warn
    from edgevit.history import DamagedRow, open_db, read_cell, read_run

    paths = db_path if isinstance(db_path, (list, tuple)) else [db_path]
    runs, cells, seen = [], [], set()
    for path in paths:
        db = open_db(path, create=False)
        db.row_factory = sqlite3.Row
        q = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "")
        damaged: list[str] = []
        these = []
        for r in db.execute(q, (suite,) if suite else ()):
            try:  # every row through the history's one reader: a damaged row is left out, never drawn
                if r["run_id"] not in seen:
                    these.append(read_run(dict(r)))
            except DamagedRow as e:
                damaged.append(str(e))
        ids = {r["run_id"] for r in these}
        for c in db.execute("SELECT * FROM cells"):
            if c["run_id"] in ids:
                try:
                    cells.append(read_cell(dict(c)))
                except DamagedRow as e:
                    damaged.append(str(e))
        db.close()
        if damaged:
            warn(f"{path}: left out {len(damaged)} damaged history row(s) (first: {damaged[0]})")
        runs += these
        seen |= ids
    if not runs:
        raise UsageError(f"{', '.join(map(str, paths))} has no runs" + (f" of suite {suite!r}" if suite else ""))
    runs.sort(key=lambda r: r["started"])
    return runs, cells


MIN_COMPARABLE = 3  # earlier runs on the same host a cell needs before it can be called a regression
ALPHA = 0.01  # Mann-Whitney U, one-sided: is this run's latency distribution shifted up?


def host_key(env: dict) -> str:
    """What makes two runs' latencies comparable: the same CPU (model and ISA), cores, library versions, device."""
    remote = env.get("remote") or {}
    return json.dumps([env.get("cpu"), sorted(env.get("isa", [])), env.get("cores"), env.get("torch"),
                       env.get("openvino"), env.get("onnxruntime"), remote.get("host"), remote.get("board")])


def _details(c: dict) -> dict:
    """A cell's details: the object :func:`edgevit.history.read_cell` checked (a raw row's JSON text is parsed; text
    that is not a JSON object gives none)."""
    d = c.get("details")
    if isinstance(d, str):
        from edgevit.outputs import loads

        try:
            d = loads(d)
        except (ValueError, RecursionError):
            return {}
    return d if isinstance(d, dict) else {}


def _peer_ratio(c: dict) -> float | None:
    """p50 relative to the same run's peer on the same runtime (the backend's defaults), else PyTorch eager."""
    peer = c.get("default_p50") or c.get("torch_p50")
    return c["p50"] / peer if peer and c.get("p50") else None


def _host_spell(c: dict, past: list[dict], tolerance: float) -> bool:
    """Did the whole host slow down rather than the artifact? The peers are timed in the same interleaved rounds
    (separate processes), so a slow spell of the machine slows them alike: then the artifact's ratio to its peer
    stays where it was. Measured here: two such spells doubled a cell's p50 and its peer's together."""
    now = _peer_ratio(c)
    before = [r for r in (_peer_ratio(h) for h in past) if r]
    return bool(now and before) and now <= median(before) * (1 + tolerance)


def regressions(runs: list[dict], cells: list[dict], tolerances: dict | None = None) -> list[dict]:
    """Cells of the latest run that are slower, less accurate or broken than on the earlier runs of the same suite on
    the same host (:func:`host_key`), the last ``window`` of them, and only once there are ``MIN_COMPARABLE``.

    Latency: a one-sided Mann-Whitney U test of this run's raw per-call samples against the earlier runs' pooled
    samples (p < ``ALPHA``) *and* a median at least ``latency`` tolerance above the median of the earlier medians: a
    shift that is both real and large enough to matter, unless the same run's peer slowed alike (a slow spell of the
    host, :func:`_host_spell`). Accuracy of random weights is never compared. Every latest
    cell gets ``comparable``: how many earlier runs it was compared with."""
    from scipy.stats import mannwhitneyu

    tol = {**DEFAULT_TOLERANCES, **(tolerances or runs[-1]["env"].get("tolerances") or {})}
    latest = runs[-1]
    key = host_key(latest["env"])
    previous = [r["run_id"] for r in runs[:-1] if r["suite"] == latest["suite"]
                and host_key(r["env"]) == key][-max(int(tol["window"]), MIN_COMPARABLE):]
    found = []
    for c in (c for c in cells if c["run_id"] == latest["run_id"]):
        hist = [h for h in cells if h["run_id"] in previous and cell_key(h) == cell_key(c)]
        ok_hist = [h for h in hist if h["status"] == "passed"]
        c["comparable"] = len(ok_hist)
        name = " ".join(cell_key(c))
        if hist and c["status"] != "passed" and ok_hist:
            found.append({"cell": name, "kind": "status", "message": f"{c['status']} (was passed): {c.get('error')}"})
            continue
        if c["status"] != "passed" or len(ok_hist) < MIN_COMPARABLE:
            continue
        now = _details(c).get("samples")
        past = [h for h in ok_hist if _details(h).get("samples") and h.get("p50")]
        if now and c.get("p50") and len(past) >= MIN_COMPARABLE:
            pooled = [t for h in past for t in _details(h)["samples"]]
            base = median(h["p50"] for h in past)
            p = float(mannwhitneyu(now, pooled, alternative="greater").pvalue)
            if p < ALPHA and c["p50"] > base * (1 + tol["latency"]) and not _host_spell(c, past, tol["latency"]):
                found.append({"cell": name, "kind": "latency", "message": f"p50 {c['p50']:.3f} ms vs median "
                              f"{base:.3f} ms of {len(past)} earlier runs on this host "
                              f"(+{(c['p50'] / base - 1) * 100:.0f}%, tolerance {tol['latency'] * 100:.0f}%; "
                              f"Mann-Whitney U p = {p:.1g} on {len(now)} vs {len(pooled)} calls)"})
        if _details(c).get("random_weights") or str(_details(c).get("weights", "")).startswith("random"):
            continue  # the accuracy of random weights means nothing
        accs = [h["top1"] for h in ok_hist if h.get("top1") is not None]
        if c.get("top1") is not None and len(accs) >= MIN_COMPARABLE and c["top1"] < median(accs) - tol["accuracy"]:
            found.append({"cell": name, "kind": "accuracy", "message": f"top-1 {c['top1']:.2f}% vs median "
                          f"{median(accs):.2f}% of {len(accs)} earlier runs (tolerance {tol['accuracy']} points)"})
    return found


# ------------------------------------------------------------------------------------------------------- tables
COLUMNS = [("model", "model"), ("target", "target"), ("precision", "precision"), ("status", "status"),
           ("weights", "weights"),
           ("top1", "top-1 %"), ("top5", "top-5 %"), ("top1_drop", "drop vs FP32"), ("p50", "p50 ms"),
           ("p90", "p90 ms"), ("p99", "p99 ms"), ("x_torch", "× torch eager"), ("x_default", "× backend default"),
           ("x_peer", "× NNCF default int8"),
           ("throughput", "img/s (offline)"), ("size_mb", "size MB"), ("build_seconds", "build s"),
           ("peak_rss_mb", "peak RSS MB"), ("executed", "executed"), ("comparable", "runs compared")]


def _row(c: dict) -> dict:
    r = dict(c)
    r["x_torch"] = round(c["torch_p50"] / c["p50"], 2) if c.get("p50") and c.get("torch_p50") else None
    r["x_default"] = round(c["default_p50"] / c["p50"], 2) if c.get("p50") and c.get("default_p50") else None
    peer = (((_details(c).get("latency") or {}).get("baselines") or {}).get(NNCF_DEFAULT) or {}).get("p50")
    r["x_peer"] = round(peer / c["p50"], 2) if c.get("p50") and peer else None
    r["peer_p50"] = peer
    r["weights"] = _details(c).get("weights", "?")
    r["size_mb"] = round(c["size_bytes"] / 1e6, 2) if c.get("size_bytes") else None
    return r


def _grouped(latest: list[dict]) -> list[dict]:
    return sorted((_row(c) for c in latest), key=lambda c: (
        FAMILY_ORDER.index(c["family"]) if c["family"] in FAMILY_ORDER else 3, c["model"], c["target"],
        c["precision"]))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 else (f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}")
    return str(v)


def _cell_text(c: dict, key: str) -> str:
    if key in ("top1", "top5", "top1_drop") and c.get(key) is not None and random_weights(c):
        return "– (random weights)"  # a random model's top-1 is no accuracy
    if key == "status" and c.get("error"):  # why it failed, where the reader looks (the full text in the history)
        return f"{c['status']}: {c['error'][:100]}"
    return _fmt(c.get(key))


def _host_line(env: dict) -> str:
    r = env.get("remote")
    if r:
        h = r.get("host_info", {})
        return (f"the device {r['host']} ({r.get('board') or h.get('cpu')}, {h.get('arch')}): built on the workstation "
                f"({env.get('cpu')}), compiled and timed on the device over ssh")
    return (f"{env.get('cpu')} ({env.get('cores')} cores, ISA {','.join(env.get('isa', [])) or '?'}); torch "
            f"{env.get('torch')}, OpenVINO {env.get('openvino')}, ONNX Runtime {env.get('onnxruntime')}")


def markdown(sections: list[dict]) -> str:
    lines = [f"# edgevit benchmark: suite {sections[0]['runs'][-1]['suite']}"]
    for sec in sections:
        runs, latest, found = sec["runs"], sec["latest"], sec["found"]
        run = runs[-1]
        lines += ["", f"## {sec['device']}" if len(sections) > 1 else "",
                  f"run {run['run_id']}, commit {run['git_commit']}, {run['started']}, {run['seconds']} s on "
                  f"{_host_line(run['env'])}. Every figure measured in this run on this host; '× torch eager' > 1 "
                  "means faster than PyTorch eager FP32 of the same model.", "",
                  "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for c in _grouped(latest):
            lines.append("| " + " | ".join(_cell_text(c, k) for k, _ in COLUMNS) + " |")
        multi = len(sections) > 1
        lines += ["", f"{'###' if multi else '##'} Regressions against the previous runs"
                      f"{' on this device' if multi else ''}: {len(found)}"]
        lines += [f"- **{f['cell']}** ({f['kind']}): {f['message']}" for f in found] or ["- none"]
    return "\n".join(lines) + "\n"


def _section_view(sec: dict) -> dict:
    """One device's part of the page as plain values; the template escapes every one of them."""
    rows, family = [], None
    for c in _grouped(sec["latest"]):
        label = None
        if c["family"] != family:
            family = c["family"]
            label = family + (" (baseline)" if family in ("mobilenet", "resnet") else "")
        rows.append({"family_label": label, "bad": c["status"] != "passed", "error": c.get("error"),
                     "link": f'{sec["cells_dir"]}/{cell_file(c)}',
                     "cells": [{"sort": _sort_value(c.get(k)), "text": _cell_text(c, k),
                                "link": k in ("model", "status")} for k, _ in COLUMNS]})
    return {"device": sec["device"], "run": sec["runs"][-1], "n_runs": len(sec["runs"]), "found": sec["found"],
            "host": _host_line(sec["runs"][-1]["env"]), "rows": rows, "checks": _checks(sec["latest"]),
            "charts": [(title, Markup(svg)) for title, svg in sec["charts"].items() if svg],  # our own matplotlib SVG
            "profiles": _profiles(sec["latest"])}


def cell_file(c: dict) -> str:
    """The file name of a cell's record in the report's cells/ folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(cell_key(c))) + ".json"


def _sort_value(v) -> str:
    """What a column sorts by: numbers as numbers (zero-padded), text as text, missing last."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:020.6f}" if v >= 0 else f"-{-v:019.6f}"
    return "~" if v is None else str(v)


SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.style.cursor = 'pointer';
    th.addEventListener('click', function () {
      var body = table.tBodies[0], asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; h.classList.remove('asc', 'desc'); });
      th.dataset.dir = asc ? 'asc' : 'desc'; th.classList.add(asc ? 'asc' : 'desc');
      var rows = Array.from(body.rows).filter(function (r) { return !r.classList.contains('fam'); });
      body.querySelectorAll('tr.fam').forEach(function (r) { r.remove(); });  /* groups end once sorted */
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v || '', y = b.cells[col].dataset.v || '';
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _profiles(latest: list[dict], top: int = 10) -> list[dict]:
    """A per-layer table for every cell with a profile (bench profiles each INT8 cell): where its time goes."""
    out = []
    for c in sorted(latest, key=cell_key):
        prof = _details(c).get("profile")
        if prof:
            out.append({"cell": " ".join(cell_key(c)), "total_ms": prof["total_ms"],
                        "measured_with": prof["measured_with"], "rows": prof["top_layers"][:top],
                        "by": ", ".join(f"{k} {v:.3f} ms" for k, v in prof["ms_by_precision"].items()),
                        "types": ", ".join(f"{k} {v:.3f}" for k, v in list(prof["ms_by_type"].items())[:5])})
    return out


def _checks(latest: list[dict]) -> list[str]:
    """How each cell's Offline figure was measured and, with ``bench --crosscheck``, benchmark_app's figures."""
    lines = []
    for c in sorted(latest, key=cell_key):
        d = _details(c)
        off, chk = d.get("offline") or {}, d.get("benchmark_app")
        text = f"{' '.join(cell_key(c))}: offline {c.get('throughput')} img/s ({off.get('method', '?')}"
        text += f", {off['requests']} requests, {off['streams']} streams)" if "requests" in off else ")"
        if chk:
            text += (f"; benchmark_app: median {chk['latency'].get('median_ms')} ms (ours / theirs "
                     f"{chk.get('p50_ratio')}), {chk['throughput'].get('throughput_fps')} FPS (ours / theirs "
                     f"{chk.get('throughput_ratio')}), {'within' if chk['within_tolerance'] else 'OUTSIDE'} 10%")
        lines.append(text)
    return lines


def html_page(sections: list[dict]) -> str:
    """The report page, from ``templates/report.html`` with autoescaping: no value from the history reaches the page
    unescaped (only our own SVG charts and the sort script are marked safe)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html").render(
        suite=sections[0]["runs"][-1]["suite"], headed=len(sections) > 1, headers=[h for _, h in COLUMNS],
        sections=[_section_view(sec) for sec in sections], sort_js=Markup(SORT_JS))


RESULT_FIELDS = ("device", "run_id", "git_commit", "model", "family", "target", "precision", "status", "error",
                 "top1", "top5", "top1_drop", "p50", "p90", "p99", "torch_p50", "default_p50", "peer_p50",
                 "throughput",
                 "size_bytes", "build_seconds", "peak_rss_mb", "executed", "comparable")


def _write_results(stage: Path, sections: list[dict]) -> None:
    """``results.csv`` and ``results.json``: the latest run's cells of every device, one row each."""
    import csv

    from edgevit.outputs import write_json

    rows = []
    for sec in sections:
        commit = sec["runs"][-1]["git_commit"]
        for c in _grouped(sec["latest"]):
            rows.append({k: (sec["device"] if k == "device" else commit if k == "git_commit" else c.get(k))
                         for k in RESULT_FIELDS})
    with open(stage / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        w.writerows(rows)
    write_json(stage / "results.json", rows)


def report(db_path: str | list = "benchmarks/results/history.sqlite", out: str = "benchmarks/results/report",
           *, suite: str | None = None, force: bool = False) -> tuple[Path, list[dict]]:
    """Write ``report.html`` and ``summary.md`` into ``out`` (atomically; ``out`` is replaced only if it is an edgevit
    report or empty, unless ``force``). Returns (out, regressions)."""
    from edgevit.outputs import check_output, output_dir, write_json

    check_output(Path(out), "report", force)

    runs, cells = load(db_path, suite)
    if suite is None:  # the latest run's suite
        runs = [r for r in runs if r["suite"] == runs[-1]["suite"]]
        ids = {r["run_id"] for r in runs}
        cells = [c for c in cells if c["run_id"] in ids]
    from edgevit.history import device_label

    devices: dict[str, list[dict]] = {}
    for r in runs:  # a section per device, the most recently measured first; each compared only with itself
        devices.setdefault(device_label(r["env"]), []).append(r)
    sections, found = [], []
    for label, druns in sorted(devices.items(), key=lambda kv: kv[1][-1]["started"], reverse=True):
        ids = {r["run_id"] for r in druns}
        dcells = [c for c in cells if c["run_id"] in ids]
        latest = [c for c in dcells if c["run_id"] == druns[-1]["run_id"]]
        dfound = regressions(druns, dcells)
        flagged: dict[str, set[str]] = {}
        for f in dfound:
            flagged.setdefault(f["cell"], set()).add(f["kind"])
        if len(devices) > 1:
            dfound = [{**f, "cell": f"{f['cell']} on {label}"} for f in dfound]
        charts = {"Accuracy vs latency, Pareto front per target": accuracy_latency_chart(latest),
                  "Trends": trend_chart(druns, dcells, flagged)}
        sections.append({"device": label, "runs": druns, "latest": latest, "found": dfound, "charts": charts,
                         "cells_dir": "cells" if not sections else f"cells-{len(sections) + 1}"})
        found += dfound
    final = Path(out)
    with output_dir(final, "report", force) as stage:
        (stage / "report.html").write_text(html_page(sections))
        (stage / "summary.md").write_text(markdown(sections))
        _write_results(stage, sections)
        for i, sec in enumerate(sections):
            cdir = stage / sec["cells_dir"]
            cdir.mkdir()
            for c in sec["latest"]:
                write_json(cdir / cell_file(c), {k: v for k, v in c.items() if k != "details"}
                           | {"details": _details(c)})
            for title, svg in sec["charts"].items():
                if svg:
                    stem = "pareto" if title.startswith("Acc") else "trends"
                    (stage / (f"{stem}.svg" if i == 0 else f"{stem}-{i + 1}.svg")).write_text(svg)
    return final, found
