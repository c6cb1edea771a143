"""End to end on the real Fashion-MNIST (Debian's dataset-fashion-mnist): a short training run, an INT8 build for
cpu-x86 measured on 2,000 test images, and predict agreeing with the build's own validation."""

import numpy as np
import pytest

from edgevit.data import FASHION_MNIST_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs 'apt-get install dataset-fashion-mnist'"),
]


def test_train_build_predict_on_fashion_mnist(tmp_path):
    from edgevit.build import build
    from edgevit.data import load_dataset
    from edgevit.runtime.predict import Predictor
    from edgevit.train import train

    run = train("vit-tiny-fmnist", "fashion-mnist", tmp_path / "run", epochs=1, limit=4000, depth=2)
    assert run.best_top1 > 40
    r = build("vit-tiny-fmnist", target="cpu-x86", precision="int8", data="fashion-mnist",
              weights=str(run.best_path), out=str(tmp_path / "build"), val_samples=2000)
    v = r.manifest.data["validation"]
    assert v["samples"] == 2000 and v["split"] == "test (t10k)"
    assert v["reference_top1"] > 50
    assert abs(v["top1_drop"]) <= 3.0, v
    assert r.manifest.data["backend"]["runtime"]["executed_precision"] == "int8"
    ds = load_dataset("fashion-mnist")
    probs = Predictor(r.bundle).probabilities([ds.val.image(i) for i in range(200)])
    acc = float((probs.argmax(1) == ds.val.labels[:200]).mean() * 100)
    assert abs(acc - v["top1"]) < 10  # 200 images vs 2,000: same model, same preprocessing
    assert np.isfinite(probs).all()
