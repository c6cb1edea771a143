"""What the torchrun tests share: the launch (PyTorch's own launcher, --standalone, a test-owned script) and the
prelude of a rank script that records the indices of the shard each rank trains on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A rank script starts with this: `seen` collects every shard_indices call (epoch, rank, world, indices).
RECORD_SHARDS = """
import json, os, sys
import edgevit.parallel as parallel

seen = []
_real_shard_indices = parallel.shard_indices
def _recording(n, epoch, rank=0, world=1, seed=0):
    idx = _real_shard_indices(n, epoch, rank, world, seed)
    seen.append({"epoch": epoch, "rank": rank, "world": world, "idx": idx.tolist()})
    return idx
parallel.shard_indices = _recording
"""


def torchrun(nproc: int, script: list, env: dict, timeout: float, drop: tuple = ()) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N <script...>`` with ``env`` over this
    process's environment less ``drop`` (the checkout importable), its output captured."""
    full = {**{k: v for k, v in os.environ.items() if k not in drop},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *map(str, script)],
                          capture_output=True, text=True, env=full, timeout=timeout)
