"""A pass of 200 batch buffers (1-20 MiB, random sizes) with small per-batch results kept, as a validation pass
makes them; prints how much glibc's main heap grew. ``on``: inside edgevit.runtime._malloc.pass_buffers_unpooled."""
import contextlib
import ctypes
import json
import sys

import numpy as np

from edgevit.runtime._malloc import pass_buffers_unpooled


class MI2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MI2

def fake_pass(n):
    keep = []
    rng = np.random.default_rng(0)
    for _i in range(n):
        size = int(rng.integers(1, 20)) << 20  # a batch buffer of 1-20 MiB
        buf = np.ones(size, np.uint8)
        keep.append(np.zeros(int(rng.integers(1000, 4000)), np.float32))  # per-batch results kept (small)
        del buf
    return keep

big = np.ones(32 << 20, np.uint8)
del big  # glibc's dynamic mmap threshold is now 32 MiB, as in a long run
base = libc.mallinfo2().arena
ctx = pass_buffers_unpooled() if sys.argv[1] == "on" else contextlib.nullcontext()
with ctx:
    kept = fake_pass(200)
    peak_heap = libc.mallinfo2().arena
print(json.dumps({"mode": sys.argv[1], "heap_growth_mib": (peak_heap - base) / 2**20}))
