"""A split of labelled images, and streaming it: its images decoded, resized and cropped on demand in batches by torch's
``DataLoader`` (worker processes for image files), so memory does not grow with the dataset."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from edgevit.errors import EdgevitError
from edgevit.runtime.images import load_image

if TYPE_CHECKING:
    from edgevit.runtime.images import Preprocessing


@dataclass
class Split:
    """Labelled images: either an in-memory uint8 array (N,H,W) / (N,H,W,3) or file paths. Paths are one numpy array
    of file-system bytes (about 100 bytes an image, no Python object per file: an index of a million images stays
    small, and DataLoader workers share it instead of copying it on every reference-count change)."""

    labels: np.ndarray
    arrays: np.ndarray | None = None
    paths: np.ndarray | None = None
    items: object = None  # a caller's dataset (item i: an image, or (image, label)), read at ``index``
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.paths is not None and not (isinstance(self.paths, np.ndarray) and self.paths.dtype.kind == "S"):
            self.paths = path_array(self.paths)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.fsdecode(self.paths[i])

    def image(self, i: int) -> Image.Image:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        if self.items is not None:
            return item_image(self.items[int(self.index[i])])
        return load_image(self.path(i))

    def subset(self, indices: Sequence[int]) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split(
            labels=self.labels[idx],
            arrays=None if self.arrays is None else self.arrays[idx],
            paths=None if self.paths is None else self.paths[idx],
            items=self.items, index=None if self.index is None else self.index[idx],
        )


def item_image(item) -> Image.Image:
    """The image of a caller's dataset item (``image`` or ``(image, label)``): a PIL image, a uint8 array (H, W[, C])
    or a uint8 tensor (C, H, W), or a file path. edgevit applies the model's preprocessing itself, so a float
    (already normalised) tensor is refused rather than guessed at."""
    from edgevit.errors import DatasetError
    from edgevit.runtime.images import as_image

    x = item[0] if isinstance(item, (tuple, list)) else item
    if type(x).__module__.startswith("torch"):
        if getattr(x, "dtype", None) is None or str(x.dtype) != "torch.uint8" or x.ndim not in (2, 3):
            raise DatasetError(f"a dataset item is a {getattr(x, 'dtype', type(x).__name__)} tensor of shape "
                               f"{tuple(getattr(x, 'shape', ()))}; give raw images (PIL, uint8 arrays, or uint8 "
                               "CHW tensors, e.g. torchvision's PILToTensor): edgevit applies the model's "
                               "preprocessing itself")
        x = x.numpy() if x.ndim == 2 else x.permute(1, 2, 0).numpy()
        x = x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x
    return as_image(x)


def path_array(paths) -> np.ndarray:
    """File paths as a numpy array of their file-system bytes."""
    return np.asarray([os.fsencode(p) for p in paths], dtype=np.bytes_)


class _Decoded:
    """A map-style dataset for torch's DataLoader: item ``i`` of a split, decoded, resized and cropped (uint8 HWC)
    with its label."""

    def __init__(self, split: Split, pre: Preprocessing):
        self.split, self.pre = split, pre

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray | _Failed, int]:
        try:
            return self.pre.resize_crop(self.split.image(i)), int(self.split.labels[i])
        except EdgevitError as e:  # raised again, as it is, in the reading process (not as a worker traceback)
            return _Failed(type(e), str(e)), -1


@dataclass(frozen=True)
class _Failed:
    error: type
    message: str


def _collate(items: list[tuple[np.ndarray | _Failed, int]]) -> tuple[np.ndarray, np.ndarray] | _Failed:
    failed = next((x for x, _ in items if isinstance(x, _Failed)), None)
    if failed is not None:
        return failed
    return np.stack([x for x, _ in items]), np.asarray([y for _, y in items], np.int64)


def default_workers(split: Split) -> int:
    """Files are decoded by worker processes (:func:`decode_workers`); in-memory arrays (Fashion-MNIST, .npy) in the
    calling process, where a resize costs less than handing the image between processes."""
    if split.arrays is not None:
        return 0
    return decode_workers()


def decode_workers(processes: int = 1) -> int:
    """Decode workers for each of ``processes`` training processes on this machine: its cores but one per process,
    shared out, at most 8 and at least 1 each."""
    return max(1, min(8, (os.cpu_count() or 2) // max(1, processes) - 1))


class ImageStream:
    """The images of a split as the model sees them (resized and cropped, uint8 NHWC), decoded on demand in batches
    by a torch ``DataLoader``: nothing beyond the batches in flight is held, so memory does not grow with the
    dataset. Passes read the images again (a validation set of a few thousand images costs seconds)."""

    def __init__(self, split: Split, pre: Preprocessing, workers: int | None = None):
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 or more")
        self.split, self.pre = split, pre
        self.workers = default_workers(split) if workers is None else workers

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    def batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 NHWC images, int64 labels) batches in ``order`` (default: the split's order)."""
        from torch.utils.data import DataLoader

        n_batches = -(-len(self if order is None else order) // batch_size)
        workers = min(self.workers, n_batches)
        loader = DataLoader(_Decoded(self.split, self.pre), batch_size=batch_size, collate_fn=_collate,
                            sampler=None if order is None else [int(i) for i in order], num_workers=workers,
                            prefetch_factor=4 if workers else None,
                            multiprocessing_context=_worker_context() if workers else None)
        before = signal.getsignal(signal.SIGCHLD)
        try:
            for batch in loader:
                if isinstance(batch, _Failed):
                    raise batch.error(batch.message)
                yield batch
        finally:
            if workers:
                _restore_sigchld(before)


def _worker_context():
    """Decode workers come from a fork server, not from this process. A build holds OpenVINO's thread pools in this
    process (it validates artifacts here), and forking it while they run crashed it now and then (segmentation
    faults seen in the test suite). The server imports torch and the reader once, so workers still start fast."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "PIL.Image", "edgevit.stream"])
    return ctx


def _restore_sigchld(handler) -> None:
    """Put back the SIGCHLD handler a multi-worker DataLoader replaced. torch installs its worker watchdog once per
    process and never removes it; left in place, it ran on every later child exit (a subprocess, torchrun's
    workers) and crashed this process with a segmentation fault after a build that had read image files. torch
    reinstalls it for the next multi-worker loader once its flag says it is gone."""
    from torch.utils.data._utils import signal_handling

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, handler)
        signal_handling._SIGCHLD_handler_set = False


def u8_batches(images: np.ndarray | ImageStream, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 NHWC batches of preprocessed images held in memory or streamed."""
    if isinstance(images, ImageStream):
        for x, _ in images.batches(batch_size):
            yield x
    else:
        for s in range(0, len(images), batch_size):
            yield images[s:s + batch_size]


def run_batches(fn: Callable[[np.ndarray], np.ndarray], images_u8, pre, batch_size: int = 100,
                desc: str = "validate") -> np.ndarray:
    """Logits of ``fn`` over uint8 NHWC images (an array, or an :class:`ImageStream` that decodes
    them batch by batch), normalised batch by batch."""
    from edgevit._progress import progress
    from edgevit.runtime._malloc import pass_buffers_unpooled
    from edgevit.runtime.measure import require_finite

    n = len(images_u8)
    out = None
    done = 0
    with pass_buffers_unpooled():  # batch buffers never fragment the heap (see edgevit.runtime._malloc)
        for x in progress(u8_batches(images_u8, batch_size), desc=desc, total=-(-n // batch_size), min_total=5):
            logits = np.asarray(fn(pre.normalize(x)))
            if out is None:  # one array for every image's logits, made once: nothing small is left between batches
                out = np.empty((n, *logits.shape[1:]), np.float32)
            out[done:done + len(logits)] = logits
            done += len(logits)
            del logits  # the runtime's own output buffer goes now, not with the next batch
    if out is None or done != n:
        raise ValueError(f"{desc}: the stream gave {done} of {n} images")
    return require_finite(out, desc)
