"""Images as a model sees them: a checked reader (size and aspect-ratio limits from the header, before any pixel is
decoded; one RGB conversion) and the one :class:`Preprocessing` a bundle records, so that ``predict`` and the demo
reproduce training and validation input exactly."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgevit.errors import ImageError, UnknownNameError

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

    def normalize_tensor(self, batch):
        """:meth:`normalize` for a torch uint8 NHWC batch, on the batch's device: training moves the uint8 batch to
        the GPU (a quarter of the float32 bytes) and normalizes it there instead of on the CPU."""
        import torch

        mean, std = _channel_stats(tuple(self.mean), tuple(self.std), batch.device)
        x = (batch.to(torch.float32) / 255.0 - mean) / std
        return x.permute(0, 3, 1, 2).contiguous()

    def __call__(self, img: Image.Image) -> np.ndarray:
        """One PIL image → float32 CHW."""
        return self.normalize(self.resize_crop(img))


@functools.lru_cache(maxsize=8)
def _channel_stats(mean: tuple, std: tuple, device):
    """``mean`` and ``std`` as float32 tensors on ``device``, made once: not two host-to-device copies every batch."""
    import torch

    return (torch.tensor(mean, dtype=torch.float32, device=device),
            torch.tensor(std, dtype=torch.float32, device=device))


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


def to_rgb8(img: Image.Image, what: str = "the image") -> Image.Image:
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
            a = a.astype(np.float64)
            if not np.isfinite(a).all():
                raise ImageError(f"{what} has NaN or infinite pixels; it cannot be shown or classified, fix or "
                                 "drop it")
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


def check_image_file(path: str | os.PathLike) -> None:
    """What :func:`load_image` checks before decoding (the file, its header, the pixel budget), without decoding: lets
    a command refuse a bad file among thousands before it starts, then decode them a batch at a time."""
    _read_image(Path(path), decode=False)


def load_image(path: str | os.PathLike) -> Image.Image:
    """The one image reader (predict, demo, datasets, inspect): checks the declared size against the pixel budget
    and aspect bound before decoding, applies the EXIF orientation, returns 8-bit RGB (see :func:`to_rgb8`)."""
    return _read_image(Path(path), decode=True)


def _read_image(p: Path, decode: bool) -> Image.Image | None:
    """The file, its header and the pixel budget, then (``decode``) the pixels; whatever the decoder raises is the
    reader's one ImageError (:func:`edgevit.errors.reading`)."""
    from PIL import ImageOps

    from edgevit.errors import reading

    if not p.is_file():
        raise ImageError(f"image not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    if p.stat().st_size == 0:
        raise ImageError(f"image file is empty: {p}")
    with reading(f"image {p}", ImageError, "pass a PNG, JPEG or other image file"), Image.open(p) as img:
        check_image_size(*img.size, what=f"image {p}")
        if not decode:
            return None
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb8(img, f"image {p}")


def as_image(x):
    """A PIL image from what a caller may hand :meth:`edgevit.runtime.predict.Predictor.__call__` (see there);
    ImageError otherwise."""
    if isinstance(x, (str, os.PathLike)):
        return load_image(x)
    if isinstance(x, Image.Image):
        check_image_size(*x.size, what="the image")
        return to_rgb8(x)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or not (x.ndim == 2 or x.ndim == 3 and x.shape[2] in (3, 4)):
            raise ImageError(f"an array image must be uint8 (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, got {x.dtype} "
                             f"{x.shape}")
        check_image_size(x.shape[1], x.shape[0], what="the array image")
        return to_rgb8(Image.fromarray(np.ascontiguousarray(x)))
    raise ImageError(f"cannot classify a {type(x).__name__}: pass a PIL image, a uint8 numpy array or a file path")
