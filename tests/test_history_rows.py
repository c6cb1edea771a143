"""The benchmark history's one reader: every row checked before the report draws it; a damaged row (a merged or
hand-edited history) is left out with one warning, never a crash and never unescaped HTML."""

from __future__ import annotations

import json
import sqlite3

import pytest

from edgevit.history import SCHEMA, DamagedRow, read_cell, read_run

ENV = {"cpu": "Test CPU", "cores": 2, "isa": ["avx2"], "torch": "2", "openvino": "2026", "onnxruntime": "1"}


def _run(run_id="r1", **kw):
    return {"run_id": run_id, "suite": "quick", "git_commit": "abc", "started": "2026-12-06T07:00:00",
            "seconds": 12.5, "env": json.dumps(ENV), **kw}


def _cell(run_id="r1", model="vit-tiny", **kw):
    return {"run_id": run_id, "model": model, "family": "vit", "target": "cpu-x86", "precision": "int8",
            "status": "passed", "error": None, "top1": 80.0, "top5": 99.0, "top1_drop": 0.1, "p50": 1.0, "p90": 1.1,
            "p99": 1.2, "torch_p50": 2.0, "default_p50": 1.5, "throughput": 900.0, "size_bytes": 1000,
            "build_seconds": 10.0, "peak_rss_mb": 900.0, "executed": "int8",
            "details": json.dumps({"samples": [1.0, 1.1], "weights": "w.pt"}), **kw}


def _history(path, runs, cells):
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for r in runs:
        db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?)", tuple(r.values()))
    for c in cells:
        db.execute(f"INSERT INTO cells VALUES ({','.join('?' * len(c))})", tuple(c.values()))
    db.commit()
    db.close()


def test_a_history_value_carrying_html_is_escaped_or_left_out(tmp_path, capsys):
    from edgevit.report import report

    db = tmp_path / "h.sqlite"
    evil = "<script>alert(1)</script>"
    _history(db, [_run("r1"), _run("r2", seconds=evil), _run("r3", git_commit=evil)],
             [_cell("r1"), _cell("r3", model="vit-tiny"), _cell("r3", model=f"m{evil}"),
              _cell("r3", model="deit", error=evil, status="failed")])
    out, _ = report(str(db), str(tmp_path / "rep"))
    page = (out / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the sort script, ours
    err = capsys.readouterr().err
    assert "left out 1 damaged history row(s)" in err and "seconds" in err


@pytest.mark.parametrize("column, value, pattern", [
    ("seconds", "12 s", "seconds must be an integer or a number"),
    ("seconds", float("nan"), "not a finite number"),
    ("env", "[1, 2]", "env must be a JSON object"),
    ("env", '{"cpu": NaN}', "env is not strict JSON"),
    ("env", '{"cpu": "a\\nb"}', "control character"),
    ("env", '{"isa": "avx2"}', "env.isa must be a list"),
    ("suite", None, "suite must be a string"),
])
def test_damaged_run_rows(column, value, pattern):
    with pytest.raises(DamagedRow, match=pattern):
        read_run(_run(**{column: value}))


@pytest.mark.parametrize("column, value, pattern", [
    ("p50", float("inf"), "not a finite number"),
    ("p50", "fast", "p50 must be an integer or a number"),
    ("details", "[]", "details must be a JSON object"),
    ("details", "{" * 2000, "not strict JSON"),
    ("model", "vit\u2028tiny", "control character U\\+2028"),
])
def test_damaged_cell_rows(column, value, pattern):
    with pytest.raises(DamagedRow, match=pattern):
        read_cell(_cell(**{column: value}))


def test_a_damaged_detail_is_dropped_and_the_cell_kept():
    c = read_cell(_cell(details=json.dumps({"samples": [1, "x"], "profile": {"total_ms": "many"}, "weights": "w"})))
    assert sorted(c["details"]["dropped"]) == ["profile", "samples"] and c["details"]["weights"] == "w"


def test_build_candidates_join_the_accuracy_latency_front(tmp_path):
    """A build's searched candidates (recipes, input sizes) are drawn beside the suite's cells and can be on the
    front; a candidate list that does not fit the schema is dropped with the cell kept."""
    from edgevit.history import read_cell
    from edgevit.report import report

    cands = [{"label": "24 px", "p50_ms": 0.5, "top1": 79.5, "size_bytes": 900, "chosen": False},
             {"label": "recipe plain", "p50_ms": 2.0, "top1": 70.0, "size_bytes": 1000, "chosen": False},
             {"label": "recipe default", "p50_ms": 1.0, "top1": 80.0, "size_bytes": 1000, "chosen": True}]
    db = tmp_path / "h.sqlite"
    _history(db, [_run("r1")], [_cell("r1", details=json.dumps({"samples": [1.0], "weights": "best.pt",
                                                                "candidates": cands}))])
    page = (report(str(db), str(tmp_path / "rep"))[0] / "report.html").read_text()
    assert "other build candidates" in page and "vit-tiny 24 px → vit-tiny int8" in page  # on the front, faster
    assert "recipe plain" not in page  # slower and less accurate than the cell: drawn, not on the front
    bad = read_cell(_cell(details=json.dumps({"candidates": [{"label": "x\ny", "p50_ms": 1, "chosen": True}]})))
    assert bad["details"]["dropped"] == ["candidates"]


def test_any_row_is_a_checked_record_or_damaged():
    """Property: whatever a history holds in any column, the reader returns a row whose numbers are finite and whose
    details are an object, or raises DamagedRow; nothing else."""
    import math

    from hypothesis import given, settings
    from hypothesis import strategies as st

    anything = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
                | st.binary(max_size=6))
    json_text = st.recursive(st.none() | st.floats() | st.integers() | st.text(max_size=5),
                             lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                 st.sampled_from(["samples", "profile", "offline", "latency", "cpu", "isa", "x"]), c,
                                 max_size=3), max_leaves=8).map(lambda v: json.dumps(v))

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(list(_cell())), anything | json_text, st.sampled_from(list(_run())), anything | json_text)
    def check(ccol, cval, rcol, rval):
        for reader, row in ((read_cell, _cell(**{ccol: cval})), (read_run, _run(**{rcol: rval}))):
            try:
                out = reader(row)
            except DamagedRow:
                continue
            nums = [v for v in out.values() if isinstance(v, float)]
            assert all(math.isfinite(v) for v in nums)
            assert isinstance(out.get("details", out.get("env")), dict)

    check()


def test_random_weight_cells_are_never_shown_as_accuracy(tmp_path):
    from edgevit.report import report

    db = tmp_path / "h.sqlite"
    real = json.dumps({"samples": [1.0], "weights": "best.pt"})
    rnd = json.dumps({"samples": [1.0], "random_weights": True, "weights": "random (accuracy meaningless)"})
    _history(db, [_run("r1"), _run("r2", started="2026-12-07T07:00:00")],
             [_cell(r, details=real) for r in ("r1", "r2")]
             + [_cell(r, model="mobilenetv3-fmnist", details=rnd, top1=6.0) for r in ("r1", "r2")])
    out, _ = report(str(db), str(tmp_path / "rep"))
    page = (out / "report.html").read_text()
    assert "1 cell(s) with random weights left out" in page  # the accuracy chart says what it left out
    assert "– (random weights)" in page and ">6.0<" not in page  # the table shows no top-1 for it
    assert "12-07 07:00" in page  # trend axes carry the run's date
