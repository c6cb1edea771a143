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
