"""Data-parallel training with PyTorch's own launcher (torch.distributed.run, i.e. torchrun), 2 processes, gloo on
the CPU: disjoint data per rank, one writer, a result that loads, and the accuracy of a 1-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._torchrun import RECORD_SHARDS, torchrun

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = RECORD_SHARDS + """
import importlib
t = importlib.import_module("edgevit.train")
r = t.train("vit-tiny-fmnist", sys.argv[1], sys.argv[2], epochs=6, batch_size=32, lr=3e-3,
            embed_dim=32, depth=1, num_heads=2)
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
    json.dump({"seen": seen, "best": r.best_top1}, f)
"""


@pytest.mark.slow
def test_two_processes_see_disjoint_data_and_match_one_process(fmnist_dir, tmp_path):
    import torch

    (tmp_path / "train_script.py").write_text(SCRIPT)
    data = f"fashion-mnist:{fmnist_dir}"
    # the CPU (gloo) path, also on a machine with GPUs: two processes need not fit its GPU count
    env = {"EDGEVIT_QUIET": "1", "OMP_NUM_THREADS": "1", "EDGEVIT_DEVICE": "cpu"}
    logs = {}
    for n in (1, 2):
        out, rec = tmp_path / f"run{n}", tmp_path / f"rec{n}"
        rec.mkdir()
        p = torchrun(n, [tmp_path / "train_script.py", data, out, rec], env, timeout=900)
        assert p.returncode == 0, p.stderr[-2000:]
        logs[n] = {r: json.loads((rec / f"rank{r}.json").read_text()) for r in range(n)}
        ck = torch.load(out / "best.pt", map_location="cpu", weights_only=True)  # the result loads
        assert ck["edgevit"]["distributed"] == {"world_size": n, "global_batch": 32, "batch_per_process": 32 // n}
    two = logs[2]
    for epoch in range(6):
        a, b = ({tuple(s["idx"]) for s in two[r]["seen"] if s["epoch"] == epoch} for r in (0, 1))
        ia, ib = set(next(iter(a))), set(next(iter(b)))
        assert ia and not ia & ib and len(ia) == len(ib)  # disjoint, equal shares
    one_best, two_best = logs[1][0]["best"], logs[2][0]["best"]
    assert two[1]["best"] == two_best  # every rank returns rank 0's result
    assert abs(one_best - two_best) <= 10.0, (one_best, two_best)  # the same training, within noise
    assert sorted(p.name for p in (tmp_path / "run2").iterdir()) == ["best.pt", "last.pt"]  # one writer


def test_process_group_follows_the_training_device(monkeypatch):
    import torch

    from edgevit.errors import UsageError
    from edgevit.parallel import process_group_backend, train_device

    assert process_group_backend(torch.device("cpu")) == "gloo"
    assert process_group_backend(torch.device("cuda", 0)) == "nccl"
    # a GPU machine (simulated here: two GPUs) with EDGEVIT_DEVICE=cpu trains on the CPU, so its group is gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("EDGEVIT_DEVICE", "cpu")
    assert process_group_backend(train_device()) == "gloo"
    # torchrun with more processes on this machine than it has GPUs: one line naming the fix, before any GPU is used
    monkeypatch.delenv("EDGEVIT_DEVICE")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(UsageError, match=r"started 4 processes on this machine but it has 2 GPU\(s\): pass "
                                         r"--nproc_per_node=2"):
        train_device()


def test_checkpoint_records_where_and_in_what_precision_it_trained(tiny_checkpoint):
    import torch

    from edgevit.parallel import autocast_dtype

    assert autocast_dtype(torch.device("cpu"), amp=True) is None  # the CPU always trains in FP32
    ck = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert ck["edgevit"]["trained_on"] == {"device": "cpu", "precision": "fp32"}


def test_env_names_the_gpus_training_would_use(monkeypatch, capsys):
    from types import SimpleNamespace

    import torch

    from edgevit.cli import main

    assert main(["env"]) == 0
    if not torch.cuda.is_available():
        assert "gpu       none that torch sees: train and QAT run on the CPU" in capsys.readouterr().out
    # a machine with two GPUs, as torch reports them
    props = [SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30),
             SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15 * 2**30)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props[d if isinstance(d, int) else d.index])
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "gpu       cuda:0 NVIDIA H200 (compute 9.0, 141.0 GiB, bf16): train and QAT run here" in out
    assert "gpu       cuda:1 Tesla T4 (compute 7.5, 15.0 GiB): train" in out  # no bf16 before Ampere
    from edgevit.parallel import autocast_dtype

    assert autocast_dtype(torch.device("cuda", 0), amp=True) == torch.bfloat16  # the H200 trains in bf16 mixed
    assert autocast_dtype(torch.device("cuda", 0), amp=False) is None
    assert autocast_dtype(torch.device("cuda", 1), amp=True) is None  # the T4: FP32


KILL_RANK_1 = """
import os, signal, sys, threading
from edgevit.cli import main
if os.environ.get("RANK") == "1":  # a real SIGKILL of rank 1 once training runs
    t = threading.Timer(float(sys.argv[1]), lambda: os.kill(os.getpid(), signal.SIGKILL))
    t.daemon = True
    t.start()
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_killed_rank_is_one_line_on_the_surviving_rank(fmnist_dir, tmp_path):
    (tmp_path / "kill.py").write_text(KILL_RANK_1)
    env = {"OMP_NUM_THREADS": "1", "EDGEVIT_DEVICE": "cpu", "EDGEVIT_LOG_DIR": str(tmp_path / "logs")}
    p = torchrun(2, [tmp_path / "kill.py", "12", "train", "--model", "vit-tiny-fmnist", "-q", "--data",
                     f"fashion-mnist:{fmnist_dir}", "--epochs", "200", "--out", tmp_path / "run"], env, timeout=600)
    ours = [line for line in p.stderr.splitlines() if line.startswith("edgevit:")]
    assert p.returncode != 0 and len(ours) == 1, p.stderr[-3000:]
    # rank 0 meets the dead peer in its next all-reduce (gloo), unless torchrun's SIGTERM reaches it first
    assert ("on rank 0 of 2: a collective with the other processes failed" in ours[0]
            and "full traceback in" in ours[0]) or ours == ["edgevit: stopped by signal 15"], ours
