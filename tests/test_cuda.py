"""Training on NVIDIA GPUs: one GPU, and one process per GPU under PyTorch's own launcher (torchrun) with NCCL.
These run only where torch sees a CUDA GPU; everywhere else they skip, naming why."""

from __future__ import annotations

import json

import pytest

from tests._torchrun import torchrun

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA (torch sees none)")

TINY = dict(epochs=6, batch_size=32, lr=3e-3, embed_dim=32, depth=1, num_heads=2)

# On a GPU, training decodes in worker processes (forkserver), which import this script again: it needs the main
# guard, like any script that runs a torch DataLoader with workers.
RECORD = """
import json, os, sys
import torch, torch.distributed as dist
import importlib
t = importlib.import_module("edgevit.train")
if __name__ == "__main__":
    r = t.train("vit-tiny-fmnist", sys.argv[1], sys.argv[2], epochs=4, batch_size=32, lr=3e-3,
                embed_dim=32, depth=1, num_heads=2)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
        json.dump({"best": r.best_top1, "backend": dist.get_backend() if dist.is_initialized() else None,
                   "device": torch.cuda.current_device()}, f)
"""


ENV = {"EDGEVIT_QUIET": "1", "OMP_NUM_THREADS": "1"}  # and no EDGEVIT_DEVICE: the GPUs


def test_training_on_the_gpu_learns_like_the_cpu_and_its_checkpoint_loads_anywhere(fmnist_dir, tmp_path,
                                                                                  monkeypatch):
    from edgevit.parallel import train_device
    from edgevit.train import train

    data = f"fashion-mnist:{fmnist_dir}"
    monkeypatch.delenv("EDGEVIT_DEVICE", raising=False)
    assert train_device().type == "cuda"
    gpu = train("vit-tiny-fmnist", data, tmp_path / "gpu", **TINY)
    monkeypatch.setenv("EDGEVIT_DEVICE", "cpu")
    assert train_device().type == "cpu"
    cpu = train("vit-tiny-fmnist", data, tmp_path / "cpu", **TINY)
    assert gpu.best_top1 > 30.0, gpu.history  # 10 classes: chance is 10%
    assert abs(gpu.best_top1 - cpu.best_top1) <= 10.0, (gpu.history, cpu.history)  # the same training, within noise
    ck = torch.load(gpu.best_path, weights_only=True)  # no map_location: every tensor was saved on the CPU
    assert all(v.device.type == "cpu" for v in ck["model"].values())
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert ck["edgevit"]["trained_on"]["device"].startswith("cuda:0 (")
    assert ck["edgevit"]["trained_on"]["precision"] == ("bf16 mixed" if bf16 else "fp32")
    monkeypatch.delenv("EDGEVIT_DEVICE")  # --no-amp: on the GPU, in FP32
    no_amp = train("vit-tiny-fmnist", data, tmp_path / "fp32", amp=False, **{**TINY, "epochs": 1})
    ck = torch.load(no_amp.best_path, weights_only=True)
    assert ck["edgevit"]["trained_on"]["device"].startswith("cuda:0 (")
    assert ck["edgevit"]["trained_on"]["precision"] == "fp32"


def test_torchrun_trains_one_process_per_gpu_nccl_with_several(fmnist_dir, tmp_path):
    n = torch.cuda.device_count()
    (tmp_path / "script.py").write_text(RECORD)
    rec = tmp_path / "rec"
    rec.mkdir()
    p = torchrun(n, [tmp_path / "script.py", f"fashion-mnist:{fmnist_dir}", tmp_path / "run", rec], ENV,
                 timeout=600, drop=("EDGEVIT_DEVICE",))
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((rec / f"rank{r}.json").read_text()) for r in range(n)]
    assert [r["device"] for r in ranks] == list(range(n))  # one GPU each
    if n > 1:
        assert {r["backend"] for r in ranks} == {"nccl"}
    ck = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    assert ck["edgevit"]["distributed"]["world_size"] == n
    assert ranks[0]["best"] > 30.0


def test_more_processes_than_gpus_is_one_clear_error(fmnist_dir, tmp_path):
    n = torch.cuda.device_count()
    p = torchrun(n + 1, ["-m", "edgevit", "train", "--model", "vit-tiny-fmnist", "--data",
                         f"fashion-mnist:{fmnist_dir}", "--out", tmp_path / "run", "--epochs", "1", "--batch-size",
                         4 * (n + 1)], ENV, timeout=300, drop=("EDGEVIT_DEVICE",))
    assert p.returncode != 0
    assert f"--nproc_per_node={n} (one process per GPU)" in p.stderr, p.stderr[-3000:]
    assert not (tmp_path / "run" / "best.pt").exists()
