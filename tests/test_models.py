import importlib

import numpy as np
import pytest
import torch

from edgevit.errors import UnknownNameError, WeightsError
from edgevit.models import ZOO, create_model, data_config, load_weights, read_state_dict, resolve_spec

from .conftest import TINY_VIT

FMNIST = [a for a in ZOO if a.endswith("-fmnist")]


def test_zoo_covers_every_family():
    families = {s.family for s in ZOO.values()}
    assert {"vit", "hybrid", "maxvit", "mobilenet", "resnet"} <= families
    for alias in ("vit-tiny", "vit-small", "hybrid-tiny", "maxvit-pico", "maxvit-nano", "mobilenetv3-large",
                  "resnet18", "resnet50", *FMNIST):
        assert alias in ZOO
    assert ZOO["hybrid-tiny"].timm_name == "vit_tiny_r_s16_p8_224"


@pytest.mark.parametrize("alias", FMNIST)
def test_fmnist_variants_build_and_run_at_their_size(alias):
    spec = ZOO[alias]
    m = create_model(spec)
    size = spec.input_size
    with torch.no_grad():
        y = m(torch.zeros(2, 3, size, size))
    assert y.shape == (2, 10)
    pre = data_config(spec)
    assert pre.input_size == (size, size) and pre.resize == size


def test_any_timm_name_resolves_and_unknown_suggests():
    spec = resolve_spec("deit_tiny_patch16_224")
    assert spec.family == "vit" and spec.input_size == 224
    with pytest.raises(UnknownNameError, match="did you mean 'vit-tiny'"):
        resolve_spec("vit-tinny")


def _tiny(**kw):
    return create_model(ZOO["vit-tiny-fmnist"], **{**TINY_VIT, **kw})


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "timm", "edgevit"])
def test_weights_formats_load(tmp_path, fmt):
    src = _tiny()
    sd = src.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        p = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    else:
        p = tmp_path / "w.pt"
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3} if fmt == "timm" else \
            {"model": sd, "edgevit": {"model": "vit-tiny-fmnist"}} if fmt == "edgevit" else sd
        torch.save(obj, p)
    dst = _tiny()
    assert not torch.equal(dst.head.weight, src.head.weight)
    meta = load_weights(dst, p)
    for k, v in sd.items():
        assert torch.equal(dst.state_dict()[k], v), k
    if fmt == "edgevit":
        assert meta["edgevit"]["model"] == "vit-tiny-fmnist"


def test_position_embeddings_are_resampled_bicubic(tmp_path):
    src = _tiny()  # 32 px / 8 px patches: 4x4 grid + class token
    with torch.no_grad():
        src.pos_embed.normal_()
    p = tmp_path / "w.pt"
    torch.save(src.state_dict(), p)
    dst = _tiny(img_size=64)  # 8x8 grid
    load_weights(dst, p)
    assert dst.pos_embed.shape == (1, 65, 32)
    torch.testing.assert_close(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # class token untouched
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(1, 64, 32)
    torch.testing.assert_close(dst.pos_embed[:, 1:], want, atol=1e-5, rtol=1e-5)
    # and the resampled model still runs at the new size
    assert dst(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_wrong_class_count_names_both_shapes(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_tiny(num_classes=5).state_dict(), p)
    with pytest.raises(WeightsError, match=r"\(5, 32\).*5 classes.*\(10, 32\).*10 classes"):
        load_weights(_tiny(), p)


def test_wrong_architecture_is_refused(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(create_model(ZOO["resnet18-fmnist"]).state_dict(), p)
    with pytest.raises(WeightsError, match="does not match this architecture"):
        load_weights(_tiny(), p)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_not_executed(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil()}, p)
    with pytest.raises(WeightsError, match="tensor-only"):
        read_state_dict(p)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_empty_or_garbage_weights(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(WeightsError):
        read_state_dict(p)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_preprocessing_for_imagenet_models_comes_from_timm():
    pre = data_config(ZOO["vit-tiny"])
    assert pre.input_size == (224, 224)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.interpolation == "bicubic"
    assert pre.resize == round(224 / 0.9)
    assert np.isclose(data_config(ZOO["resnet18"]).mean[0], 0.485)


def test_training_checkpoints_and_resume(fmnist_dir, tmp_path, monkeypatch):
    T = importlib.import_module("edgevit.train")  # the module (edgevit.train is the function)

    data = f"fashion-mnist:{fmnist_dir}"
    calls = {"n": 0}
    real_eval = T.evaluate_torch

    def interrupted_after_first_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_eval(*a, **kw)

    monkeypatch.setattr(T, "evaluate_torch", interrupted_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        T.train("vit-tiny-fmnist", data, tmp_path, epochs=2, batch_size=64, **TINY_VIT)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and len(ck["history"]) == 1
    monkeypatch.setattr(T, "evaluate_torch", real_eval)
    r = T.train("vit-tiny-fmnist", data, tmp_path, epochs=2, batch_size=64, resume=str(tmp_path / "last.pt"),
                **TINY_VIT)
    assert [h["epoch"] for h in r.history] == [1, 2]
    assert r.history[0] == ck["history"][0]
    best = torch.load(r.best_path, weights_only=True)
    assert best["edgevit"]["classes"][1] == "Trouser" and best["edgevit"]["model_overrides"] == TINY_VIT
    with pytest.raises(Exception, match="same --epochs"):
        T.train("vit-tiny-fmnist", data, tmp_path, epochs=3, batch_size=64, resume=str(tmp_path / "last.pt"),
                **TINY_VIT)
