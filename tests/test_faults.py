"""Real faults, caused for real and never monkeypatched: a full disk (a small tmpfs mounted by the test; CI runs as
root), SIGKILL sent to a real build, symlinks planted where edgevit writes, directories named like edgevit's
temporary ones, damaged artifacts. Each gives one line, its exit code and a file system as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_bad_input import cli, snapshot

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "vit-tiny-fmnist"]


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 160 KiB tmpfs of the test's own: writing a model there fills it."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k,mode=0755", "tmpfs", str(d)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); CI runs as root and can")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture()
def logs(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "logs"
    monkeypatch.setenv("EDGEVIT_LOG_DIR", str(d))
    return d


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------- disk full
def test_build_onto_a_full_disk_is_one_line_and_writes_nothing(tiny_disk, logs, capsys):
    rc, _, err = cli(capsys, "build", *TINY, "--precision", "fp32", "--out", tiny_disk)
    line = one_line(err)
    assert rc == 1 and "no space left" in line and str(tiny_disk) in line, line
    assert sorted(os.listdir(tiny_disk)) == [], "no staging directory, no partial file"


def test_train_onto_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(tiny_disk, fmnist_dir, logs, capsys):
    run = tiny_disk / "run"
    rc, _, err = cli(capsys, "train", *TINY, "--data", f"fashion-mnist:{fmnist_dir}", "--epochs", "1",
                     "--limit", "32", "--batch-size", "16", "--out", run)
    line = one_line(err)
    assert rc == 1 and "no space left" in line.lower(), line
    assert sorted(os.listdir(tiny_disk)) == [], "neither the --out it made nor a half-written checkpoint"


# ---------------------------------------------------------------------------------------------- planted names
def test_a_planted_lock_symlink_is_refused_and_nothing_is_created_through_it(tmp_path, logs, capsys):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / ".b.lock").symlink_to(outside / "created-through-the-link")
    rc, _, err = cli(capsys, "build", *TINY, "--precision", "fp32", "--out", out, "--name", "b")
    line = one_line(err)
    assert rc == 2 and ".b.lock is a symlink" in line, line
    assert list(outside.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == [".b.lock"]


def test_a_users_directories_named_like_edgevits_leftovers_are_kept(tmp_path):
    from edgevit.build import build

    out = tmp_path / "out"
    for name in (".b.tmp-abc123", ".b.old-xyz"):  # the user's, whatever the name suggests: no owner record
        (out / name).mkdir(parents=True)
        (out / name / "notes.txt").write_text("mine")
    before = snapshot(out)
    build("vit-tiny-fmnist", precision="fp32", out=str(out), name="b", measure_latency=False,
          overrides=dict(embed_dim=32, depth=1, num_heads=2))
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("b")} == before


# ------------------------------------------------------------------------------------------------- SIGKILL
def _edgevit(args: list, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgevit", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_killed_builds_staging_and_work_directories_are_cleaned_by_the_next_run_and_only_they(tmp_path):
    tmpdir, out = tmp_path / "tmpdir", tmp_path / "out"
    tmpdir.mkdir()
    (tmpdir / "edgevit-mine").mkdir()  # a user's directory with edgevit's prefix: no owner record, kept
    env = {**os.environ, "TMPDIR": str(tmpdir), "EDGEVIT_LOG_DIR": str(tmp_path / "logs")}
    args = ["build", *TINY, "--precision", "fp32", "--measure", "quick", "--out", out, "--name", "b"]
    p = _edgevit(args, env)
    deadline = time.monotonic() + 120
    while not list(out.glob(".b.tmp-*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # a real kill: nothing of edgevit's runs after it
    p.wait()
    p.stdout.close()
    p.stderr.close()
    staged = list(out.glob(".b.tmp-*"))
    work = [d for d in tmpdir.glob("edgevit-*") if d.name != "edgevit-mine"]  # (libraries put files there too)
    assert staged and work, "the kill landed while the build was writing"
    assert all((d / ".edgevit-owner").is_file() for d in staged + work), [(d, list(d.iterdir())) for d in staged + work]

    r = subprocess.run([sys.executable, "-m", "edgevit", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmpdir.glob("edgevit-*")) == ["edgevit-mine"]


def test_a_live_runs_work_directory_is_not_taken_for_a_leftover(tmp_path):
    from edgevit.outputs import clean_stale_work_dirs, temp_dir

    mine = temp_dir(tmp_path, "edgevit-", "work")  # this process is alive
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = temp_dir(tmp_path, "edgevit-", "work")
        rec = (theirs / ".edgevit-owner").read_text().replace(f'"pid": {os.getpid()}', f'"pid": {child.pid}')
        (theirs / ".edgevit-owner").write_text(rec.replace('"start": "', '"start": "x'))  # pid reused: not it
        assert clean_stale_work_dirs(tmp_path) == [theirs]
        assert mine.is_dir()
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------------------------------ damaged artifacts
def test_a_damaged_and_rehashed_artifact_is_a_damaged_bundle_line(int8_bundle, tmp_path, logs, capsys, png):
    import hashlib
    import json
    import shutil

    b = tmp_path / "b"
    shutil.copytree(int8_bundle, b)
    xml = b / "model.xml"
    xml.write_text(xml.read_text()[: len(xml.read_text()) // 2])  # cut in half
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["model.xml"]["sha256"] = hashlib.sha256(xml.read_bytes()).hexdigest()  # and re-hashed
    m["files"]["model.xml"]["bytes"] = xml.stat().st_size
    (b / "manifest.json").write_text(json.dumps(m))
    before = snapshot(tmp_path / "b")
    for cmd in (["verify", b], ["predict", b, png], ["time", b]):
        rc, _, err = cli(capsys, *cmd)
        line = one_line(err)
        assert rc == 1 and line.startswith(f"edgevit: error: damaged bundle {b}"), (cmd, line)
    assert snapshot(tmp_path / "b") == before


def test_an_input_size_that_disagrees_with_the_model_is_a_damaged_bundle_line(int8_bundle, tmp_path, capsys, png):
    import json
    import shutil

    b = tmp_path / "b"
    shutil.copytree(int8_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["model"]["input_size"] = [3, 48, 48]
    m["preprocessing"].update(input_size=[48, 48], resize=max(m["preprocessing"]["resize"], 48))
    (b / "manifest.json").write_text(json.dumps(m))
    rc, _, err = cli(capsys, "predict", b, png)
    assert rc == 1 and one_line(err).startswith(f"edgevit: error: damaged bundle {b}"), err


# ------------------------------------------------------------------------------------------ failure boundary
def test_a_readers_parser_error_is_its_one_error(tmp_path, fmnist_dir, logs, capsys):
    """A 0-byte --calib-data .npy makes numpy raise EOFError: the reader's boundary turns it into its one error."""
    empty = tmp_path / "calib.npy"
    empty.write_bytes(b"")
    rc, _, err = cli(capsys, "build", *TINY, "--precision", "int8", "--data", f"fashion-mnist:{fmnist_dir}",
                     "--calib-data", empty, "--out", tmp_path / "out")
    line = one_line(err)
    assert rc == 2 and f"cannot read --calib-data {empty}" in line and "EOFError" in line, line
    assert not (tmp_path / "out").exists()


def test_the_boundary_line_for_any_exception(tmp_path, monkeypatch):
    """The rule itself, on real exceptions of every kind (raised, not described): one line, the stage, a log."""
    from edgevit.errors import BundleError
    from edgevit.failure import report, stage

    monkeypatch.setenv("EDGEVIT_LOG_DIR", str(tmp_path / "logs"))

    def raised(exc_factory):
        try:
            with stage("build"), stage("measuring latency", tmp_path):
                exc_factory()
        except BaseException as e:  # noqa: BLE001 - the point of the test
            return report(e, "build")
        raise AssertionError("nothing raised")

    def deep(n=0):
        return deep(n + 1)

    cases = {
        "RuntimeError": lambda: (_ for _ in ()).throw(RuntimeError("Exception from src/core:\nbad\nthings")),
        "RecursionError": deep,
        "EOFError": lambda: __import__("numpy").load(__import__("io").BytesIO(b"")),
        "ZeroDivisionError": lambda: 1 / 0,
        "KeyError": lambda: {}["x"],
    }
    for name, fn in cases.items():
        line, code = raised(fn)
        assert code == 1 and "\n" not in line, (name, line)
        assert line.startswith("build failed while measuring latency") and name in line, line
        log = Path(line.split("full traceback in ", 1)[1].split(" ", 1)[0])
        assert "Traceback" in log.read_text()
    line, code = raised(lambda: (_ for _ in ()).throw(BundleError("damaged bundle x: y")))
    assert (line, code) == ("damaged bundle x: y", 1)


# ------------------------------------------------------------------------------------------ bench's cell process
def _spawned_children(pid: int) -> list[int]:
    """The parent's children that run multiprocessing's spawn_main: bench's cell (not its resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = []
    for k in map(int, out):
        try:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            kids.append(k)
    return kids


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # a zombie is dead: only its (dead) parent could reap it
            return True
        time.sleep(0.1)
    return False


def _bench_with_a_running_cell(tmp_path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "EDGEVIT_LOG_DIR": str(tmp_path / "logs")}
    p = _edgevit(["bench", "--suite", "quick", "--only", "vit", "--db", tmp_path / "h.sqlite"], env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        kids = _spawned_children(p.pid)
        if kids:
            time.sleep(1.0)  # into its work
            return p, kids[0]
        time.sleep(0.1)
    p.kill()
    raise AssertionError(f"bench started no cell process: {p.communicate()[1][-500:]}")


def test_sigkill_of_bench_takes_its_cell_process_with_it(tmp_path):
    p, cell = _bench_with_a_running_cell(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    p.stderr.close()
    assert _gone(cell, 10), "the cell process outlived bench"


def test_sigterm_of_bench_stops_its_cell_at_once(tmp_path):
    p, cell = _bench_with_a_running_cell(tmp_path)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "stopped by signal 15" in err, err[-500:]
    assert time.monotonic() - t0 < 15, "bench waited for the cell's build"
    assert _gone(cell, 5)


SCRIPT_WITHOUT_MAIN_GUARD = """import os, sys
with open(sys.argv[1], "a") as f:  # a user's script: top-level work, no `if __name__ == "__main__":`
    f.write("ran\\n")
import numpy as np
from edgevit.child import run_in_child
from edgevit.runtime.measure import compare_latency
from tests.test_faults import Doubler
print("child", run_in_child(os.getpid) != os.getpid())
t = compare_latency({"a": Doubler(), "b": Doubler()}, np.zeros((1, 4), np.float32), warmup=1, min_iters=3,
                    min_seconds=0.05)
print("isolated", all(v["isolated"] for v in t.values()))
"""


class Doubler:
    """A runner that the timing workers can make again (spec) and run: x * 2."""

    info: dict = {"backend": "numpy"}

    def __call__(self, x):
        return x * 2

    def spec(self):
        return Doubler, ()


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """edgevit's child processes (spawn: accuracy-aware PTQ, bench cells, timing workers) must not run the user's
    script again: before, each child re-ran its top-level work (a build inside the build, which then found its own
    output locked; the timing workers failed and fell back to one process)."""
    script, log = tmp_path / "user.py", tmp_path / "ran.txt"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD)
    p = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}"
                                                                      f"{os.environ.get('PYTHONPATH', '')}"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["child", "True", "isolated", "True"], p.stdout + p.stderr[-2000:]
    assert log.read_text() == "ran\n"  # the script's own work ran once, in its own process
