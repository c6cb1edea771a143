"""Datasets (Fashion-MNIST IDX files, ImageNet-style folders, synthetic) and the preprocessing a bundle records.

Images are kept as uint8 and turned into model input by one :class:`Preprocessing`, the same object that is written
into a bundle's manifest, so that ``predict`` and the demo reproduce training and validation input exactly.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgevit.errors import DatasetError, ImageError, UnknownNameError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
INTERPOLATIONS = tuple(_INTERPOLATION)
# The image reader's limits, checked from the header before any pixel is decoded. 120 MP covers 108 MP phone
# photos; a classifier's centre crop has no use for panoramas wider than 20:1, and bounding the aspect ratio bounds
# what the resize to the model's input allocates. EDGEVIT_MAX_IMAGE_PIXELS raises the pixel budget.
MAX_IMAGE_PIXELS = 120_000_000
MAX_ASPECT_RATIO = 20.0
Image.MAX_IMAGE_PIXELS = None  # our own budget below replaces PIL's warning/exception pair


# --------------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocessing:
    """Image → model input: RGB, resize the shorter side to ``resize``, centre-crop ``input_size``, scale to [0, 1],
    normalise with ``mean``/``std``, NCHW float32. Grayscale images are replicated to three channels."""

    input_size: tuple[int, int]
    resize: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channels: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise UnknownNameError("interpolation", self.interpolation, _INTERPOLATION)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            input_size=tuple(d["input_size"]), resize=int(d["resize"]), interpolation=d["interpolation"],
            mean=tuple(d["mean"]), std=tuple(d["std"]), channels=d.get("channels", "RGB"),
            layout=d.get("layout", "NCHW"),
        )

    def resize_crop(self, img: Image.Image) -> np.ndarray:
        """PIL image → uint8 HWC RGB array of ``input_size``."""
        img = to_rgb8(img)
        w, h = img.size
        check_image_size(w, h, "image")
        scale = self.resize / min(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _INTERPOLATION[self.interpolation])
        th, tw = self.input_size
        left, top = (nw - tw) // 2, (nh - th) // 2
        if left < 0 or top < 0:
            raise ImageError(f"image of {w}x{h} cannot be cropped to {tw}x{th} after resizing to {self.resize}")
        if (nw, nh) != (tw, th):
            img = img.crop((left, top, left + tw, top + th))
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC (or HWC) → float32 NCHW (or CHW)."""
        x = batch.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """One PIL image → float32 CHW."""
        return self.normalize(self.resize_crop(img))


def _pixel_budget() -> int:
    raw = os.environ.get("EDGEVIT_MAX_IMAGE_PIXELS")
    if raw is None:
        return MAX_IMAGE_PIXELS
    try:
        v = int(raw)
    except ValueError:
        v = 0
    if v < 1:
        raise ImageError(f"EDGEVIT_MAX_IMAGE_PIXELS must be a positive integer, got {raw!r}")
    return v


def check_image_size(w: int, h: int, what: str) -> None:
    """Refuse an image whose pixels would not fit the budget, from its declared size (before decoding)."""
    budget = _pixel_budget()
    if w < 1 or h < 1:
        raise ImageError(f"{what} declares {w}x{h} pixels; it is damaged")
    if w * h > budget:
        raise ImageError(f"{what} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of {budget / 1e6:.0f} MP; "
                         "downscale it first (or raise EDGEVIT_MAX_IMAGE_PIXELS)")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ImageError(f"{what} is {w}x{h}, an aspect ratio over {MAX_ASPECT_RATIO:.0f}:1 that a classifier's "
                         "centre crop cannot use; crop it first")


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL image → 8-bit RGB, converted as a viewer would show it: 16/32-bit and float images are scaled (not
    clipped) to 8 bits, palette and alpha images are composited over black (a transparent pixel contributes nothing,
    like the black background of Fashion-MNIST-style data), CMYK/YCbCr/LAB converted."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img)
        if img.mode.startswith("I;16"):
            a8 = (a.astype(np.uint32) * 255 + 32767) // 65535  # 65535 → 255, 32768 → 128
        elif img.mode == "I":  # 32-bit integers: PNG 16-bit greyscale in older Pillow; scale by the declared range
            a = a.astype(np.int64)
            top = 255 if a.max(initial=0) <= 255 and a.min(initial=0) >= 0 else 65535
            a8 = np.clip(a, 0, top) * 255 // top
        else:  # float: [0, 1] if it fits there, else its own range
            a = np.nan_to_num(a.astype(np.float64))
            lo, hi = (0.0, 1.0) if a.min(initial=0) >= 0 and a.max(initial=0) <= 1 else (a.min(), a.max())
            a8 = np.round((a - lo) / ((hi - lo) or 1.0) * 255)
        return Image.fromarray(a8.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """The one image reader (predict, demo, datasets, inspect): checks the declared size against the pixel budget
    and aspect bound before decoding, applies the EXIF orientation, returns 8-bit RGB (see :func:`to_rgb8`)."""
    from PIL import ImageOps

    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    if p.stat().st_size == 0:
        raise ImageError(f"image file is empty: {p}")
    try:
        with Image.open(p) as img:
            check_image_size(*img.size, what=f"image {p}")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb8(img)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {p}: {e}; pass a PNG, JPEG or other image file") from None


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass
class Split:
    """Labelled images: either an in-memory uint8 array (N,H,W) / (N,H,W,3) or a list of file paths."""

    labels: np.ndarray
    arrays: np.ndarray | None = None
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        return load_image(self.paths[i])

    def subset(self, indices: Sequence[int]) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split(
            labels=self.labels[idx],
            arrays=None if self.arrays is None else self.arrays[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
        )


@dataclass
class Dataset:
    spec: str
    classes: list[str]
    train: Split
    val: Split
    description: str = ""
    val_name: str = "val"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip or plain) into a numpy array of its declared shape."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {p}: {e}") from None
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


def _scan_class_dirs(root: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                paths.append(f)
                labels.append(ci)
    return classes, paths, labels


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


def load_dataset(spec: str) -> Dataset:
    """``fashion-mnist``, ``fashion-mnist:DIR``, ``imagefolder:DIR``, a plain directory, or ``synthetic``."""
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
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatasetError(f"--calib-data {p}: cannot read it as a .npy array ({e})") from None
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3) or not len(arr):
            raise DatasetError(f"--calib-data {p}: expected uint8 images (N,H,W) or (N,H,W,3), got {arr.dtype} "
                               f"{tuple(arr.shape)}")
        return Split(labels=np.zeros(len(arr), np.int64), arrays=arr)
    if not p.is_dir():
        raise DatasetError(f"--calib-data {p}: not found; pass a folder of images or a .npy of uint8 images")
    paths = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not paths:
        raise DatasetError(f"--calib-data {p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Split(labels=np.zeros(len(paths), np.int64), paths=paths)


def preprocess_split(split: Split, pre: Preprocessing, desc: str = "preprocess") -> np.ndarray:
    """Resize and crop every image of a split: uint8 NHWC, ready for ``pre.normalize`` batch by batch."""
    from edgevit._progress import progress

    out = np.empty((len(split), *pre.input_size, 3), dtype=np.uint8)
    for i in progress(range(len(split)), desc=desc, total=len(split), min_total=2000):
        out[i] = pre.resize_crop(split.image(i))
    return out


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
