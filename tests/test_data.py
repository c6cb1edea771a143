import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from edgevit.data import FASHION_MNIST_CLASSES, load_dataset, read_idx, sample_indices
from edgevit.errors import DatasetError, ImageError, UnknownNameError
from edgevit.runtime.images import Preprocessing, load_image

from .conftest import write_idx


def test_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    # uncompressed and int32 big-endian
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + struct.pack(">3i", 1, -2, 70000)
    (tmp_path / "b").write_bytes(raw)
    assert read_idx(tmp_path / "b").tolist() == [1, -2, 70000]


def test_idx_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01x")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "bad")
    header = bytes([0, 0, 8, 1]) + struct.pack(">I", 10)
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(header + b"\x00" * 4)
    with pytest.raises(DatasetError, match="declares"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_loader(fmnist_dir):
    ds = load_dataset(f"fashion-mnist:{fmnist_dir}")
    assert ds.classes == FASHION_MNIST_CLASSES
    assert len(ds.train) == 600 and len(ds.val) == 200
    assert ds.train.image(0).size == (28, 28)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist.*fashion-mnist:DIR"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nope'}")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset(f"fashion-mnist:{tmp_path}")  # exists but empty


def _folder(root, classes=("cat", "dog"), n=4):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(root / c / f"{i}.jpg")


def test_imagefolder_with_and_without_val(tmp_path):
    _folder(tmp_path / "a" / "train")
    _folder(tmp_path / "a" / "val", n=2)
    ds = load_dataset(f"imagefolder:{tmp_path / 'a'}")
    assert ds.classes == ["cat", "dog"] and len(ds.train) == 8 and len(ds.val) == 4
    _folder(tmp_path / "b", n=10)
    ds = load_dataset(str(tmp_path / "b"))  # a plain directory works too
    assert len(ds.train) + len(ds.val) == 20 and len(ds.val) == 2
    assert set(ds.train.paths).isdisjoint(ds.val.paths)
    assert ds.val.image(0).mode == "RGB"


def test_imagefolder_empty_and_unknown_spec(tmp_path):
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(UnknownNameError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")


def test_preprocessing_gray_to_rgb_resize_crop_normalize():
    pre = Preprocessing(input_size=(32, 32), resize=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = Image.fromarray(np.full((28, 28), 255, np.uint8))  # grayscale
    x = pre(img)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, 2.0, atol=1e-6)  # (1 - 0.5) / 0.25 on all three channels
    # non-square: shorter side to 36, centre crop 32
    pre2 = Preprocessing(input_size=(32, 32), resize=36)
    wide = Image.new("RGB", (72, 36), (0, 0, 0))
    assert pre2.resize_crop(wide).shape == (32, 32, 3)
    assert Preprocessing.from_dict(pre2.to_dict()) == pre2


def test_bad_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_balanced_sampling():
    labels = np.repeat(np.arange(5), 20)
    idx = sample_indices(len(labels), 10, seed=0, labels=labels)
    assert len(set(idx)) == 10
    assert np.bincount(labels[idx], minlength=5).tolist() == [2] * 5


def test_progress_in_a_log_writes_plain_lines(monkeypatch, capsys):
    """Under nohup or CI stderr is no terminal: long loops say where they are in whole lines, not a bar."""
    from edgevit import _progress

    monkeypatch.delenv("EDGEVIT_QUIET", raising=False)
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    assert list(_progress.progress(range(4), desc="epoch 1/2")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("epoch 1/2: 1/4 (25%) in ") and lines[0].endswith("to the end of epoch 1/2")
    assert len(lines) == 3 and "\r" not in "".join(lines)  # the last step is not announced: the caller reports it
    monkeypatch.setenv("EDGEVIT_QUIET", "1")
    assert list(_progress.progress(range(4), desc="x")) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""


def test_training_normalizes_tensors_exactly_as_the_deployed_preprocessing():
    import torch

    from edgevit.models import data_config, resolve_spec

    pre = data_config(resolve_spec("vit-tiny"))
    x = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pre.normalize_tensor(torch.from_numpy(x)).numpy(), pre.normalize(x))
