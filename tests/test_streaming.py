"""Datasets are read lazily through torch's DataLoader: the images a stream yields are the ones the reader makes, in
the order asked for, with or without worker processes; memory does not grow with the number of images; and
data-parallel QAT inside `edgevit build` runs under torchrun with one writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edgevit.data import load_dataset, preprocess_split
from edgevit.runtime.images import Preprocessing, load_image
from edgevit.stream import ImageStream
from tests._torchrun import RECORD_SHARDS, torchrun

from .conftest import TINY_VIT

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, n: int, size: int = 40, seed: int = 0) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from streaming_memory import make_imagefolder
    finally:
        sys.path.pop(0)
    return make_imagefolder(root, n, size=size, classes=4, seed=seed)


def test_stream_yields_the_reader_images_in_order_with_and_without_workers(tmp_path):
    ds = load_dataset(f"imagefolder:{_folder(tmp_path / 'f', 37)}")
    pre = Preprocessing(input_size=(24, 24), resize=28)
    split = ds.train
    expected = np.stack([pre.resize_crop(load_image(split.path(i))) for i in range(len(split))])
    order = np.random.default_rng(3).permutation(len(split))[:20]
    before = signal.getsignal(signal.SIGCHLD)
    for workers in (0, 1):
        stream = ImageStream(split, pre, workers)
        got = [(x, y) for x, y in stream.batches(8)]
        assert [len(x) for x, _ in got] == [8, 8, 8, 8, len(split) - 32]
        assert np.array_equal(np.concatenate([x for x, _ in got]), expected)
        assert np.array_equal(np.concatenate([y for _, y in got]), split.labels)
        x_o = np.concatenate([x for x, _ in stream.batches(6, order)])
        assert np.array_equal(x_o, expected[order])
        # a worker pool leaves the process's SIGCHLD handling as it found it
        assert signal.getsignal(signal.SIGCHLD) == before
    assert np.array_equal(preprocess_split(split, pre, workers=1), expected)


def test_a_bad_image_in_a_stream_is_one_clear_error_from_a_worker(tmp_path):
    d = _folder(tmp_path / "f", 12)
    (d / "class1" / "broken.png").write_bytes(b"not a png")
    ds = load_dataset(f"imagefolder:{d}", workers=1)
    from edgevit.errors import ImageError

    with pytest.raises(ImageError, match="broken.png"):
        for _ in ds.stream(ds.train, Preprocessing((16, 16), 16)).batches(4):
            pass


def _train_allocation_peak(tmp_path: Path, n: int) -> float:
    """Peak Python/numpy allocation (MiB) while one epoch trains on an ImageFolder of ``n`` images."""
    from edgevit.train import train

    data = _folder(tmp_path / f"f{n}", n, seed=n)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        train("vit-tiny-fmnist", f"imagefolder:{data}", tmp_path / f"run{n}", epochs=1, batch_size=64,
              workers=0, **TINY_VIT)
        return (tracemalloc.get_traced_memory()[1] - base) / 2**20
    finally:
        tracemalloc.stop()


def test_training_memory_does_not_grow_with_the_dataset(tmp_path):
    """Four times the images, the same peak: nothing is held per image beyond its path and label (the images used to
    be decoded into one array of the whole split: 3 KiB per image at 32 px, 27 MiB more for 9,000 images). Both
    sizes fill the same batches (a 300+ image hold-out, batches of 256), so only what grows with the data differs."""
    _train_allocation_peak(tmp_path, 64)  # imports and first-use caches, counted by neither figure
    small, large = _train_allocation_peak(tmp_path, 3000), _train_allocation_peak(tmp_path, 12000)
    per_image_kib = (large - small) * 1024 / 9000
    assert per_image_kib < 0.5, (small, large)  # a path and a label, not 3 KiB of pixels


QAT_SCRIPT = RECORD_SHARDS + """
from edgevit.build import QATOptions, build
r = build("vit-tiny-fmnist", precision="int8", data=sys.argv[1], weights=sys.argv[2], out=sys.argv[3],
          qat=QATOptions(epochs=1, samples=256), val_samples=64, calib_samples=32, measure_latency=False)
rank = int(os.environ["RANK"])
with open(os.path.join(sys.argv[4], f"rank{rank}.json"), "w") as f:
    json.dump({"seen": seen, "bundle": str(r.bundle) if r else None}, f)
"""


@pytest.mark.slow
def test_qat_inside_build_runs_data_parallel_under_torchrun(fmnist_dir, tiny_checkpoint, tmp_path):
    (tmp_path / "qat.py").write_text(QAT_SCRIPT)
    out, rec = tmp_path / "out", tmp_path / "rec"
    rec.mkdir()
    p = torchrun(2, [tmp_path / "qat.py", f"fashion-mnist:{fmnist_dir}", tiny_checkpoint, out, rec],
                 {"EDGEVIT_QUIET": "1", "OMP_NUM_THREADS": "1"}, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (json.loads((rec / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["bundle"] and r1["bundle"] is None  # rank 0 builds; the follower returns nothing
    a, b = set(r0["seen"][0]["idx"]), set(r1["seen"][0]["idx"])
    assert a and len(a) == len(b) and not a & b  # each rank trained its own half of the epoch
    assert sorted(x.name for x in out.iterdir()) == ["vit-tiny-fmnist-cpu-x86-int8",
                                                     "vit-tiny-fmnist-cpu-x86-int8.qat.pt"]
    m = json.loads((out / "vit-tiny-fmnist-cpu-x86-int8" / "manifest.json").read_text())
    assert m["qat"]["epochs"] == 1 and m["status"] == "ok"
    assert m["qat"]["history"][-1]["epoch"] == 1


def test_build_under_torchrun_without_qat_is_refused(monkeypatch, fmnist_dir, tmp_path):
    from edgevit.build import build
    from edgevit.errors import UsageError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="--qat-epochs"):
        build("vit-tiny-fmnist", data=f"fashion-mnist:{fmnist_dir}", out=str(tmp_path), overrides=TINY_VIT)
    assert not list(tmp_path.iterdir())


def test_decode_workers_share_the_cores_among_training_processes(monkeypatch):
    from edgevit import stream

    monkeypatch.setattr(stream.os, "cpu_count", lambda: 16)
    assert [stream.decode_workers(p) for p in (1, 2, 4, 8, 32)] == [8, 7, 3, 1, 1]
    monkeypatch.setattr(stream.os, "cpu_count", lambda: 2)
    assert stream.decode_workers() == 1


def test_a_validation_pass_keeps_only_per_image_logits_not_batches_or_runtime_outputs():
    """run_batches (the FP32 reference, every artifact's validation, bench's accuracy) over a stream of 50 batches:
    when the stream makes each next batch, no earlier input batch and no runtime output is still alive, and the
    result is one (N, classes) array. Checked by what is kept (weak references), not by timing or RSS."""
    import gc
    import weakref

    from edgevit.stream import run_batches

    classes, batch, batches = 7, 20, 50
    alive_inputs: list[weakref.ref] = []
    alive_outputs: list[weakref.ref] = []
    seen_alive: list[int] = []

    class Stream:
        def __len__(self) -> int:
            return batch * batches

        def batches(self, size: int):
            for i in range(batches):
                gc.collect()
                seen_alive.append(sum(r() is not None for r in alive_inputs + alive_outputs))
                x = np.full((size, 4, 4, 3), i % 255, np.uint8)
                alive_inputs.append(weakref.ref(x))
                yield x, np.zeros(size, np.int64)

    class Out(np.ndarray):  # a runtime's own output buffer (weak-referenceable)
        pass

    def fn(x: np.ndarray) -> np.ndarray:
        out = np.tile(x.reshape(len(x), -1)[:, :1], (1, classes)).astype(np.float32).view(Out)
        alive_outputs.append(weakref.ref(out))
        return out

    from edgevit.stream import ImageStream

    s = Stream()
    s.__class__ = type("S", (Stream, ImageStream), {})  # u8_batches streams ImageStream-like objects
    pre = Preprocessing((4, 4), 4)
    logits = run_batches(fn, s, pre, batch_size=batch)
    assert logits.shape == (batch * batches, classes) and logits.dtype == np.float32
    assert max(seen_alive) <= 1, seen_alive  # at most the batch being handed over, never a growing list


def test_a_pass_keeps_batch_buffers_out_of_the_heap():
    """The mechanism behind flat validation memory (edgevit.runtime._malloc), checked by what glibc's heap keeps: 200
    batch buffers of 1-20 MiB grow the heap by tens of MiB once the dynamic mmap threshold has risen, and by next to
    nothing inside pass_buffers_unpooled. Both run in fresh processes; the first shows the probe can see it."""
    import json
    import sys
    from pathlib import Path

    from edgevit.runtime._malloc import _glibc

    if _glibc() is None:
        pytest.skip("not glibc: the mechanism does nothing there")
    root = Path(__file__).resolve().parents[1]
    growth = {}
    for mode in ("off", "on"):
        r = subprocess.run([sys.executable, str(root / "tests" / "tools" / "heap_pass.py"), mode], cwd=root,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
        assert r.returncode == 0, r.stderr
        growth[mode] = json.loads(r.stdout)["heap_growth_mib"]
    assert growth["off"] > 16, growth  # the fragmentation the mechanism exists for
    assert growth["on"] < 8, growth
