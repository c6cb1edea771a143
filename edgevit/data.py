"""Datasets (Fashion-MNIST IDX files, ImageNet-style folders, synthetic): splits of labelled images, kept as uint8
arrays or file paths and read through :mod:`edgevit.stream`; sampling, hold-outs and calibration subsets.

Images become model input through one :class:`~edgevit.runtime.images.Preprocessing`, the object a bundle records."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.errors import DatasetError, UnknownNameError, reading
from edgevit.runtime.images import IMAGE_EXTENSIONS, Preprocessing
from edgevit.schema import bad_char
from edgevit.stream import ImageStream, Split, path_array

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    spec: str
    classes: list[str]
    train: Split
    val: Split
    description: str = ""
    val_name: str = "val"
    workers: int | None = None  # DataLoader worker processes that decode its images; None: chosen per split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def stream(self, split: Split, pre: Preprocessing) -> ImageStream:
        return ImageStream(split, pre, self.workers)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip or plain) into a numpy array of its declared shape."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with reading(f"IDX file {p}", DatasetError), opener(p, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{p} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DatasetError(f"{p}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{p}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(dtypes[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{p}: IDX header declares {shape} ({expected} bytes) but holds {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; install it with "
        "'sudo apt-get install dataset-fashion-mnist' or pass --data fashion-mnist:DIR"
    )


def load_fashion_mnist(root: str | os.PathLike | None = None) -> Dataset:
    root = Path(root or os.environ.get("EDGEVIT_FASHION_MNIST", FASHION_MNIST_DIR))
    if not root.is_dir():
        raise DatasetError(
            f"Fashion-MNIST not found at {root}; install it with 'sudo apt-get install dataset-fashion-mnist' "
            "or pass --data fashion-mnist:DIR (a folder with the four IDX .gz files)"
        )
    splits = {}
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise DatasetError(f"{root}: {prefix} images {images.shape} do not match labels {labels.shape}")
        splits[split] = Split(labels=labels, arrays=images)
    return Dataset(
        spec=f"fashion-mnist:{root}", classes=list(FASHION_MNIST_CLASSES), train=splits["train"], val=splits["val"],
        description=f"Fashion-MNIST from {root}", val_name="test (t10k)",
    )


def _image_files(root: Path) -> list[str]:
    """Image files under ``root`` (recursively, hidden folders skipped), sorted, as strings."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [os.path.join(d, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(f for f in found if os.path.isfile(f))


def _scan_class_dirs(root: Path) -> tuple[list[str], np.ndarray, list[int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for c in classes:  # a class name becomes a label: one printable line (labels.txt, the manifest, the report)
        bad = bad_char(c)
        if bad is not None:
            raise DatasetError(f"class folder {c!r} in {root} holds the control character U+{ord(bad):04X}; a class "
                               "name becomes a label, which must be one printable line: rename the folder")
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = path_array(_image_files(root / c))
        paths.append(files)
        labels += [ci] * len(files)
    return classes, np.concatenate(paths) if paths else np.empty(0, np.bytes_), labels


def load_imagefolder(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """ImageNet-style folder: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, or ``root/<class>/*``
    split deterministically into train and a held-out ``val_fraction``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "validation").is_dir()):
        vdir = root / "val" if (root / "val").is_dir() else root / "validation"
        classes, tp, tl = _scan_class_dirs(root / "train")
        vclasses, vp, vl = _scan_class_dirs(vdir)
        if vclasses != classes:
            raise DatasetError(f"{vdir} has classes {vclasses} but {root / 'train'} has {classes}")
        train, val = Split(np.asarray(tl, np.int64), paths=tp), Split(np.asarray(vl, np.int64), paths=vp)
    else:
        classes, paths, labels = _scan_class_dirs(root)
        if len(paths) < 2:
            raise DatasetError(
                f"no images found in {root}; expected {root}/<class name>/<image files> (or train/ and val/ folders)"
            )
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(paths))
        n_val = max(1, int(round(len(paths) * val_fraction)))
        all_split = Split(np.asarray(labels, np.int64), paths=paths)
        val, train = all_split.subset(np.sort(order[:n_val])), all_split.subset(np.sort(order[n_val:]))
    if len(classes) < 2:
        raise DatasetError(f"{root} has {len(classes)} class folder(s); a classifier needs at least 2")
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(f"{root}: no images found in the train or val split")
    return Dataset(spec=f"imagefolder:{root}", classes=classes, train=train, val=val,
                   description=f"image folder {root}")


def make_synthetic(n_train: int = 512, n_val: int = 128, num_classes: int = 10, size: int = 28,
                   seed: int = 0) -> Dataset:
    """A learnable toy set for smoke tests: class k is a bright centred square whose side grows with k, on noise
    (invariant to the flips and small shifts that training augmentation applies)."""
    rng = np.random.default_rng(seed)
    sides = np.linspace(3, size - 3, num_classes).round().astype(int)

    def make(n: int) -> Split:
        labels = rng.integers(0, num_classes, n)
        imgs = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
        for i, k in enumerate(labels):
            a = (size - sides[k]) // 2
            imgs[i, a:a + sides[k], a:a + sides[k]] = 230
        return Split(labels=labels.astype(np.int64), arrays=imgs)

    return Dataset(spec="synthetic", classes=[f"class{k}" for k in range(num_classes)], train=make(n_train),
                   val=make(n_val), description="synthetic squares (smoke tests only)")


DATASET_KINDS = ("fashion-mnist", "imagefolder", "synthetic")


def from_python(data, classes: list[str] | None = None) -> Dataset:
    """A Dataset from the caller's own data (``edgevit.build(..., data=...)``): ``(images, labels)`` numpy arrays
    (uint8 (N,H,W) or (N,H,W,3)), a map-style ``torch.utils.data.Dataset`` (or any sequence) whose items are
    ``(image, label)``, a ``DataLoader`` (its dataset), or ``{"train": ..., "val": ...}`` of those. One source is
    split 80/20 (seeded) into calibration and validation images. Images are read lazily, in this process."""
    if isinstance(data, dict):
        if set(data) != {"train", "val"}:
            raise DatasetError(f"data as a dict needs exactly 'train' and 'val', got {sorted(data)}")
        train, val = _python_split(data["train"], "data['train']"), _python_split(data["val"], "data['val']")
    else:
        whole = _python_split(data, "data")
        if len(whole) < 2:
            raise DatasetError(f"data holds {len(whole)} image(s); calibration and validation need at least 2")
        order = np.random.default_rng(0).permutation(len(whole))
        n_val = max(1, len(whole) // 5)
        train, val = whole.subset(np.sort(order[n_val:])), whole.subset(np.sort(order[:n_val]))
    n = int(max(train.labels.max(initial=0), val.labels.max(initial=0))) + 1
    src = data["train"] if isinstance(data, dict) else data
    inner = getattr(getattr(src, "dataset", src), "classes", None) if not isinstance(src, tuple) else None
    names = list(classes or inner or [str(i) for i in range(n)])
    if len(names) < n or not all(isinstance(c, str) and c and bad_char(c) is None for c in names):
        raise DatasetError(f"data has labels 0..{n - 1} but {len(names)} class names {names[:5]}...; pass classes= "
                           "with one printable name per label")
    return Dataset(spec=f"python:{type(data).__name__}", classes=names, train=train, val=val, workers=0)


def _python_split(data, what: str) -> Split:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        x, y = data
        y = np.asarray(y)
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
            raise DatasetError(f"{what}: images must be uint8 (N,H,W) or (N,H,W,3), got {x.dtype} {x.shape}")
        if y.shape != (len(x),) or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
            raise DatasetError(f"{what}: labels must be {len(x)} integers >= 0, got {y.dtype} {y.shape}")
        return Split(labels=y.astype(np.int64), arrays=x)
    items = getattr(data, "dataset", data)  # a DataLoader: its dataset, read item by item
    if not hasattr(items, "__getitem__") or not hasattr(items, "__len__"):
        raise DatasetError(f"{what} is a {type(data).__name__}: pass (images, labels) arrays, a map-style torch "
                           "Dataset or DataLoader of (image, label), or a dataset spec string")
    targets = getattr(items, "targets", None)
    if targets is not None and len(targets) == len(items):
        labels = np.asarray([int(t) for t in targets], np.int64)
    else:
        labels = np.asarray([int(items[i][1]) for i in range(len(items))], np.int64)
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"{what}: labels must be integers >= 0")
    return Split(labels=labels, items=items, index=np.arange(len(labels)))


def load_dataset(spec: str, workers: int | None = None) -> Dataset:
    """``fashion-mnist``, ``fashion-mnist:DIR``, ``imagefolder:DIR``, a plain directory, or ``synthetic``. Only the
    file list (or, for Fashion-MNIST, the 28x28 arrays) is read here; images are decoded when a stream reads them,
    by ``workers`` DataLoader processes (None: :func:`default_workers`)."""
    if isinstance(spec, Dataset):  # made by from_python already
        return spec
    if not isinstance(spec, (str, os.PathLike)):  # the caller's own data (the Python API)
        return from_python(spec)
    ds = _load_dataset(str(spec))
    ds.workers = workers
    return ds


def _load_dataset(spec: str) -> Dataset:
    kind, _, arg = spec.partition(":")
    if kind == "fashion-mnist":
        return load_fashion_mnist(arg or None)
    if kind == "imagefolder":
        if not arg:
            raise DatasetError("imagefolder needs a directory: --data imagefolder:DIR")
        return load_imagefolder(arg)
    if kind == "synthetic":
        return make_synthetic()
    if Path(spec).is_dir():
        return load_imagefolder(spec)
    raise UnknownNameError("dataset", spec, DATASET_KINDS, hint="or pass an existing image directory")


def load_unlabelled(spec: str | os.PathLike) -> Split:
    """Images without labels, for calibration (``--calib-data``): a folder of image files (searched recursively,
    e.g. frames saved from the device's camera) or a ``.npy`` of uint8 images (N,H,W) or (N,H,W,3), memory-mapped."""
    p = Path(spec)
    if p.suffix == ".npy" and p.is_file():
        with reading(f"--calib-data {p} as a .npy array", DatasetError, "save it with numpy.save"):
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3) or not len(arr):
            raise DatasetError(f"--calib-data {p}: expected uint8 images (N,H,W) or (N,H,W,3), got {arr.dtype} "
                               f"{tuple(arr.shape)}")
        return Split(labels=np.zeros(len(arr), np.int64), arrays=arr)
    if not p.is_dir():
        raise DatasetError(f"--calib-data {p}: not found; pass a folder of images or a .npy of uint8 images")
    paths = _image_files(p)
    if not paths:
        raise DatasetError(f"--calib-data {p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Split(labels=np.zeros(len(paths), np.int64), paths=paths)


def preprocess_split(split: Split, pre: Preprocessing, desc: str = "preprocess",
                     workers: int | None = None) -> np.ndarray:
    """Resize and crop every image of a (small: calibration, a few samples) split into memory: uint8 NHWC, ready for
    ``pre.normalize`` batch by batch. Anything that grows with the dataset goes through an :class:`ImageStream`."""
    from edgevit._progress import progress

    out = np.empty((len(split), *pre.input_size, 3), dtype=np.uint8)
    stream, at = ImageStream(split, pre, workers), 0
    for x, _ in progress(stream.batches(64), desc=desc, total=-(-len(split) // 64), min_total=30):
        out[at:at + len(x)] = x
        at += len(x)
    return out


HOLDOUT_MAX = 5000


def holdout_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training part and the held-out part of a training split (best-checkpoint selection never
    looks at the dataset's own validation/test split, which ``build`` uses for the reported accuracy)."""
    n_hold = min(HOLDOUT_MAX, max(1, n // 10))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def sample_indices(n_total: int, n: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
    """``n`` distinct indices, drawn at random; class-balanced (round-robin over classes) when labels are given."""
    n = min(n, n_total)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.permutation(n_total)[:n])
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n:
        for pool in per_class:
            if pool and len(picked) < n:
                picked.append(pool.pop())
    return np.sort(np.asarray(picked, dtype=np.int64))


def write_samples(data: str, out: str | os.PathLike, n: int = 10, force: bool = False) -> list[Path]:
    """``n`` images of the dataset's validation/test split, balanced over the classes, as PNGs named
    ``<index>_<label>.png``: real inputs for ``predict`` and the demo (Fashion-MNIST ships as gzip'd IDX)."""
    import re

    from edgevit.outputs import output_dir

    ds = load_dataset(data)
    idx = sample_indices(len(ds.val), n, seed=0, labels=ds.val.labels)
    final = Path(out)
    names = []
    with output_dir(final, "samples", force) as stage:
        for i in idx:
            label = re.sub(r"[^A-Za-z0-9._-]+", "-", ds.classes[int(ds.val.labels[i])]).strip("-") or "class"
            name = f"{int(i):05d}_{label}.png"
            ds.val.image(int(i)).save(stage / name)
            names.append(name)
    return [final / n_ for n_ in names]
