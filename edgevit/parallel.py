"""How training takes part in data-parallel runs under PyTorch's own launcher (torchrun, DDP): the process group,
this process's device and its share of the data, mixed precision on GPUs, and rank 0's results for every rank.
``train`` and QAT share it."""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgevit.errors import UsageError

if TYPE_CHECKING:
    import torch


def shard_indices(n: int, epoch: int, rank: int = 0, world: int = 1, seed: int = 0) -> np.ndarray:
    """This rank's training images for ``epoch``, from torch's ``DistributedSampler``: one permutation of the ``n``
    images, the same on every rank (seeded by ``seed`` and the epoch), cut into ``world`` disjoint equal parts (the
    few left over are skipped this epoch: ``drop_last``), so every rank takes the same number of steps."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), np.int64, count=len(sampler))


def _join(device) -> tuple[int, int]:
    """(rank, world size) under PyTorch's own launcher (``torchrun``: WORLD_SIZE, RANK, MASTER_ADDR... set by it);
    (0, 1) otherwise. The process group follows where this process trains: NCCL on a GPU, gloo on the CPU (also on
    a GPU machine with ``EDGEVIT_DEVICE=cpu``, where NCCL would refuse the CPU tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        # A build's rank 0 exports, calibrates and validates PTQ before QAT starts while the other ranks wait in
        # DDP's first collective: allow it longer than torch's default 30 minutes.
        minutes = float(os.environ.get("EDGEVIT_DIST_TIMEOUT_MIN", "180"))
        dist.init_process_group(process_group_backend(device), device_id=device if device.type == "cuda" else None,
                                timeout=datetime.timedelta(minutes=minutes))
    rank = dist.get_rank()
    if rank:
        os.environ["EDGEVIT_QUIET"] = "1"  # one rank speaks, one rank writes
    return rank, world


def process_group_backend(device) -> str:
    """torch.distributed's backend for processes that train on ``device``."""
    return "nccl" if device.type == "cuda" else "gloo"


def train_device():
    """Where training runs: this process's GPU under torchrun (LOCAL_RANK), the first GPU alone, else the CPU.
    ``EDGEVIT_DEVICE=cpu`` keeps it on the CPU. More processes on this machine than it has GPUs is one clear error
    (NCCL would otherwise fail on a duplicate GPU or torch on an invalid device ordinal)."""
    import torch

    if os.environ.get("EDGEVIT_DEVICE", "").lower() == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if index >= gpus:
        procs = os.environ.get("LOCAL_WORLD_SIZE", str(index + 1))
        raise UsageError(f"torchrun started {procs} processes on this machine but it has {gpus} GPU(s): pass "
                         f"--nproc_per_node={gpus} (one process per GPU), or set EDGEVIT_DEVICE=cpu to train on the "
                         "CPU")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cuda_devices() -> list[dict]:
    """The GPUs torch sees (where ``train`` and QAT run): name, compute capability, memory, bf16; empty without CUDA
    (a CPU build of torch, no driver, or no GPU)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1), "bf16": _native_bf16(p)})
    return out


def _native_bf16(props) -> bool:
    """bf16 tensor cores: compute capability 8.0 and later (Ampere, Ada, Hopper, Jetson Orin), not Volta/Turing/
    Xavier, where torch would emulate it slower than FP32."""
    return props.major >= 8


def autocast_dtype(device, amp: bool):
    """bf16 mixed precision where training runs on a GPU that has it (Ampere and later, Jetson Orin): the forward pass
    in bf16, the weights, gradients and optimizer in FP32, no loss scaling needed. None (FP32) on the CPU, on older
    GPUs and with ``amp=False``."""
    import torch

    if amp and device.type == "cuda" and _native_bf16(torch.cuda.get_device_properties(device)):
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class Parallel:
    """How this process takes part in training: its rank among ``world`` processes, its share of the global batch,
    and its device."""

    rank: int
    world: int
    local_batch: int
    device: torch.device

    def steps_per_epoch(self, n: int) -> int:
        """Steps of one epoch over ``n`` images: each rank's equal shard (:func:`shard_indices`) in local batches."""
        return math.ceil((n // self.world) / self.local_batch)


def parallel_plan(batch_size: int, seed: int, what: str) -> Parallel:
    """Join the process group under torchrun (or train alone), check that the global ``batch_size`` divides among
    the processes, and seed: the same initial model on every rank (DDP also broadcasts rank 0's), augmentation that
    differs per rank."""
    import torch

    device = train_device()
    rank, world = _join(device)
    if batch_size % world:
        raise UsageError(f"{what} {batch_size} is the global batch: it must divide among the {world} processes")
    torch.manual_seed(seed)
    np.random.seed(seed + rank)
    return Parallel(rank, world, batch_size // world, device)


def data_parallel(model, device, world: int):
    """``model`` wrapped for data-parallel training (DDP) when several processes train, else as it is."""
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def decode_workers_for(device, workers: int | None) -> int | None:
    """``workers`` as asked; on a GPU where none was asked, decode workers for in-memory arrays too: a GPU trains
    faster than one process decodes and resizes (vit-tiny at 224 px from 28 px Fashion-MNIST on an H200: 455
    images/s without workers, 819 with 8). The cores are shared among torchrun's processes on this machine."""
    if workers is not None or device.type != "cuda":
        return workers
    from edgevit.stream import decode_workers

    return decode_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def device_name(device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)``: where training ran, as the checkpoint records it."""
    import torch

    if device.type != "cuda":
        return "cpu"
    return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"


def from_rank0(world: int, *values):
    """Rank 0's values on every rank, once rank 0 has written the last checkpoint (one process: as they are)."""
    if world <= 1:
        return values
    import torch.distributed as dist

    dist.barrier()
    shared = list(values)
    dist.broadcast_object_list(shared, src=0)
    return shared
