"""The benchmark history: one SQLite file of runs and their cells, proven to be one before any cell runs, appended
to by ``edgevit bench`` and read by ``edgevit report`` (several files: several hosts, merged)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from edgevit.errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, suite TEXT, git_commit TEXT, started TEXT,
                                 seconds REAL, env TEXT);
CREATE TABLE IF NOT EXISTS cells (run_id TEXT, model TEXT, family TEXT, target TEXT, precision TEXT, status TEXT,
                                  error TEXT, top1 REAL, top5 REAL, top1_drop REAL, p50 REAL, p90 REAL, p99 REAL,
                                  torch_p50 REAL, default_p50 REAL, throughput REAL, size_bytes INTEGER,
                                  build_seconds REAL, peak_rss_mb REAL, executed TEXT, details TEXT);
"""


def open_db(path: str | os.PathLike, create: bool = True) -> sqlite3.Connection:
    """Open the history and prove it is one (checked before any cell runs, so a bad file loses no measurement):
    a missing file is created when ``create``; anything that is not an SQLite file with edgevit's two tables (or an
    empty one) is one error naming the path."""
    from edgevit.errors import DatasetError

    p = Path(path)
    fix = "pass another --db, or move the file away"
    if p.is_dir():
        raise UsageError(f"--db {p} is a directory; pass a file path such as {p / 'history.sqlite'}")
    if not p.exists():
        if not create:
            raise UsageError(f"no benchmark history at {p}; run 'edgevit bench --suite ...' first")
        _check_db_parents(p)
        p.parent.mkdir(parents=True, exist_ok=True)
    elif p.stat().st_size:
        with open(p, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise DatasetError(f"{p} is not an SQLite database, so not an edgevit benchmark history; {fix}")
    try:
        uri = f"file:{p.resolve().as_posix()}?mode={'rwc' if create else 'ro'}"
        db = sqlite3.connect(uri, uri=True)
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("integrity check failed")
        tables = {r[0]: {c[1] for c in db.execute(f"PRAGMA table_info('{r[0]}')")}
                  for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise DatasetError(f"{p} is a damaged SQLite database ({e}); {fix}") from None
    want = {"runs": {"run_id", "suite", "git_commit", "started", "seconds", "env"}, "cells": {"run_id", "model",
            "target", "precision", "status", "p50", "top1", "details"}}
    foreign = set(tables) - set(want)
    wrong = [t for t in want if t in tables and not want[t] <= tables[t]]
    if foreign or wrong:
        db.close()
        raise DatasetError(f"{p} is an SQLite database but not an edgevit benchmark history (tables "
                           f"{', '.join(sorted(tables))}); {fix}")
    if create:
        db.executescript(SCHEMA)
    elif len(tables) < 2:
        db.close()
        raise UsageError(f"{p} holds no benchmark runs yet; run 'edgevit bench --suite ... --db {p}' first")
    return db


def check_db(path: str | os.PathLike) -> None:
    """Fail now, not after the run, if ``path`` cannot take the run (an existing file is opened and checked; a new
    one is created only when the run is recorded)."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        open_db(p).close()
        return
    _check_db_parents(p)


def _check_db_parents(p: Path) -> None:
    from edgevit.outputs import file_in_the_way

    blocker = file_in_the_way(p)
    if blocker:
        raise UsageError(f"--db {p}: {blocker} is a file, not a directory")


def record(db: sqlite3.Connection, run: dict, cells: list[dict]) -> None:
    cols = ["model", "family", "target", "precision", "status", "error", "top1", "top5", "top1_drop", "p50", "p90",
            "p99", "torch_p50", "default_p50", "throughput", "size_bytes", "build_seconds", "peak_rss_mb", "executed"]
    with db:
        db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?)", (run["run_id"], run["suite"], run["git_commit"],
                                                             run["started"], run["seconds"], json.dumps(run["env"])))
        for c in cells:
            db.execute(f"INSERT INTO cells VALUES (?,{','.join('?' * len(cols))},?)",
                       (run["run_id"], *[c.get(k) for k in cols], json.dumps(c.get("details", {}))))


def device_label(env: dict) -> str:
    """The device a run's figures were measured on, as the report names its section."""
    r = env.get("remote")
    if r:
        return f"{r['host']}: {r.get('board') or r.get('host_info', {}).get('cpu', '?')}"
    return f"{env.get('cpu', '?')} ({env.get('arch', '?')}, {env.get('cores', '?')} cores)"


# ----------------------------------------------------------------------------------------------- reading rows
RUN_TEXT = ("run_id", "suite", "git_commit", "started")
CELL_TEXT = ("run_id", "model", "family", "target", "precision", "status")
CELL_NUMBERS = ("top1", "top5", "top1_drop", "p50", "p90", "p99", "torch_p50", "default_p50", "throughput",
                "size_bytes", "build_seconds", "peak_rss_mb")


class DamagedRow(Exception):
    """A history row that does not fit the schema (a merged or hand-edited history); the report leaves it out."""


def _fields(what: str):
    from edgevit.schema import Fields

    return Fields(lambda field, why: DamagedRow(f"{what}: {field} {why}"))


def _json_object(f, row: dict, key: str) -> dict:
    from edgevit.outputs import loads

    raw = row.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise f.fail(key, f"must be JSON text, not {type(raw).__name__}")
    try:
        v = loads(raw)
    except (ValueError, RecursionError) as e:
        raise f.fail(key, f"is not strict JSON ({' '.join(str(e).split())[:80]})") from None
    if not isinstance(v, dict):
        raise f.fail(key, f"must be a JSON object, not {type(v).__name__}")
    return v


def read_run(row: dict) -> dict:
    """A ``runs`` row as the report uses it: one-line texts, finite seconds, ``env`` a JSON object whose fields the
    report shows have their types; DamagedRow otherwise."""
    f = _fields(f"run {str(row.get('run_id'))[:40]!r}")
    for k in RUN_TEXT:
        f.text(row, k, "", max_len=200)
    f.number(row, "seconds", "", 0.0, 1e9)
    env = row["env"] = _json_object(f, row, "env")
    for k in ("cpu", "torch", "openvino", "onnxruntime", "arch"):
        if env.get(k) is not None:
            f.text(env, k, "env", max_len=200)
    if env.get("cores") is not None:
        f.int(env, "cores", "env", 1, 1 << 16)
    for i, x in enumerate(f.get(env, "isa", "env", list, optional=True) or []):
        f.check_text(x, f"env.isa[{i}]", 40)
    remote = f.get(env, "remote", "env", dict, optional=True)
    if remote is not None:
        f.text(remote, "host", "env.remote", max_len=200)
        f.text(remote, "board", "env.remote", optional=True, max_len=200)
        info = f.get(remote, "host_info", "env.remote", dict, optional=True) or {}
        for k in ("cpu", "arch"):
            f.text(info, k, "env.remote.host_info", optional=True, max_len=200)
    return row


def read_cell(row: dict) -> dict:
    """A ``cells`` row: one-line names, finite numbers (or none), ``details`` a JSON object; DamagedRow otherwise.
    Parts of ``details`` the report draws from (the profile, the offline method, the latency samples) are checked
    too; a part that does not fit is dropped and named in ``details["dropped"]``, the cell kept."""
    f = _fields(f"cell {str(row.get('model'))[:40]!r} of run {str(row.get('run_id'))[:40]!r}")
    for k in CELL_TEXT:
        f.text(row, k, "", max_len=200)
    f.text(row, "executed", "", optional=True, max_len=40)
    if row.get("error") is not None:
        f.get(row, "error", "", str)
    for k in CELL_NUMBERS:
        f.number(row, k, "", -1e12, 1e12, optional=True)
    details = row["details"] = _json_object(f, row, "details")
    for part, check in _DETAIL_PARTS.items():
        if part in details:
            try:
                check(_fields(f"details.{part}"), details[part])
            except DamagedRow:
                details.pop(part)
                details.setdefault("dropped", []).append(part)
    return row


def _check_samples(f, v) -> None:
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                          and 0 < x < 1e9 for x in v):
        raise f.fail("samples", "must be a list of finite positive numbers")


def _check_profile(f, v) -> None:
    f.number(v, "total_ms", "", 0.0, 1e9)
    f.text(v, "measured_with", "", max_len=400)
    for k in ("ms_by_precision", "ms_by_type"):
        for name, ms in f.get(v, k, "", dict).items():
            f.check_text(name, k, 100)
            f.number({name: ms}, name, k, 0.0, 1e9)
    for i, r in enumerate(f.get(v, "top_layers", "", list)):
        for k in ("name", "type", "exec", "precision"):
            f.get(r, k, f"top_layers[{i}]", str)
        f.number(r, "ms", f"top_layers[{i}]", 0.0, 1e9)
        f.number(r, "share", f"top_layers[{i}]", 0.0, 1.0)


def _check_offline(f, v) -> None:
    f.get({"offline": v}, "offline", "", dict)
    f.get(v, "method", "", str, optional=True)
    for k in ("requests", "streams"):
        f.int(v, k, "", 0, 1 << 16, optional=True)


def _check_benchmark_app(f, v) -> None:
    for k in ("latency", "throughput"):
        f.get(v, k, "", dict)
    f.number(v["latency"], "median_ms", "latency", 0.0, 1e9, optional=True)
    f.number(v["throughput"], "throughput_fps", "throughput", 0.0, 1e12, optional=True)
    f.number(v, "p50_ratio", "", 0.0, 1e9, optional=True)
    f.number(v, "throughput_ratio", "", 0.0, 1e9, optional=True)
    f.get(v, "within_tolerance", "", bool)


def _check_latency(f, v) -> None:
    for name, b in (f.get(v, "baselines", "", dict, optional=True) or {}).items():
        f.number(b, "p50", f"baselines.{name}", 0.0, 1e9, optional=True, above=True)


def _check_candidates(f, v) -> None:
    if not isinstance(v, list):
        raise f.fail("candidates", "must be a list")
    for i, c in enumerate(v):
        f.text(c, "label", f"candidates[{i}]", max_len=60)
        f.number(c, "p50_ms", f"candidates[{i}]", 0.0, 1e9, above=True)
        f.number(c, "top1", f"candidates[{i}]", 0.0, 100.0, optional=True)
        f.number(c, "size_bytes", f"candidates[{i}]", 0.0, 1e15, optional=True)
        f.get(c, "chosen", f"candidates[{i}]", bool)


_DETAIL_PARTS = {"samples": _check_samples, "profile": _check_profile, "offline": _check_offline,
                 "benchmark_app": _check_benchmark_app, "latency": _check_latency, "candidates": _check_candidates}
