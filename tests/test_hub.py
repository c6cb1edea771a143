"""Pretrained weights from the Hugging Face Hub, tested against a local cache the test builds in the Hub's own layout
(models--OWNER--NAME/refs/main, snapshots/<commit>/...) with HF_HUB_OFFLINE=1: nothing is downloaded."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_VIT

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "timm/vit_tiny_patch16_224.test_tiny"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding REPO: a tiny ViT's safetensors (1000 ImageNet classes, 32 px) and its config.json."""
    from safetensors.torch import save_file

    from edgevit.models import create_model, resolve_spec

    cache = tmp_path / "hub"
    snap = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(COMMIT)
    net = create_model(resolve_spec("vit-tiny"), num_classes=1000, input_size=32, **TINY_VIT)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 1000,
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9,
                           "interpolation": "bicubic"}}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return snap


def test_build_from_cached_hub_weights_records_revision_labels_and_preprocessing(hub_cache, tmp_path):
    from edgevit.build import build
    from edgevit.models import sha256_file

    r = build("vit-tiny", weights=f"hf-hub:{REPO}", precision="fp32", input_size=32, out=str(tmp_path / "out"),
              measure_latency=False, overrides=TINY_VIT)
    m = r.manifest.data["model"]
    assert m["weights"] == f"hf-hub:{REPO}@{COMMIT}" and not m["random_init"]
    assert m["weights_sha256"] == sha256_file(hub_cache / "model.safetensors")
    labels = r.manifest.data["labels"]
    assert len(labels) == 1000 and labels[0] == "tench"  # ImageNet's names, for a 1k classifier
    pre = r.manifest.data["preprocessing"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["interpolation"] == "bicubic"  # the weights' own config


def test_finetune_from_hub_weights_replaces_the_head_and_resamples_positions(hub_cache, fmnist_dir, tmp_path):
    """Pretrained at 32 px with 1000 classes; fine-tuned at the alias's 224 px on a 10-class set."""
    import torch

    from edgevit.train import train

    r = train("vit-tiny", f"fashion-mnist:{fmnist_dir}", tmp_path / "run", epochs=1, batch_size=64, limit=128,
              weights=f"hf-hub:{REPO}", **TINY_VIT)
    ck = torch.load(r.best_path, map_location="cpu", weights_only=True)
    assert ck["model"]["head.weight"].shape[0] == 10  # a new head for the 10 classes
    assert ck["model"]["pos_embed"].shape[1] == 1 + (224 // 16) ** 2  # 2x2 grid resampled to 14x14
    assert ck["edgevit"]["initial_weights"] == f"hf-hub:{REPO}@{COMMIT}"


def test_missing_model_offline_is_one_clear_error(hub_cache, tmp_path, capsys):
    from edgevit.cli import main

    rc = main(["build", "--model", "vit-tiny", "--precision", "fp32", "--weights", "hf-hub:timm/not_cached_model",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "not in the local Hugging Face cache" in err and "hf download timm/not_cached_model" in err
    assert not (tmp_path / "o").exists()


def test_pretrained_weights_for_another_architecture_are_refused(hub_cache, tmp_path):
    from edgevit.build import build
    from edgevit.errors import WeightsError

    with pytest.raises(WeightsError, match="holds weights for vit_tiny_patch16_224"):
        build("deit_tiny_patch16_224", weights=f"hf-hub:{REPO}", precision="fp32", out=str(tmp_path),
              measure_latency=False)


@pytest.mark.parametrize("config, pattern", [
    ([1, 2], "must be an object"),
    ({"num_classes": "ten"}, "num_classes must be an integer"),
    ({"pretrained_cfg": {"crop_pct": 0}}, "crop_pct is 0"),
    ({"pretrained_cfg": {"std": [0, 0, 0]}}, "std must be 3 finite positive numbers"),
    ({"pretrained_cfg": {"mean": [0.5, 0.5]}}, "mean must be 3 finite"),
    ({"num_classes": 2, "label_names": ["a", "b\nc"]}, "control character U+000A"),
    ({"architecture": "vit; rm -rf /"}, "not a timm model name"),
    ("{", "cannot read"),
])
def test_a_bad_cached_config_is_one_error_before_any_work(hub_cache, tmp_path, capsys, config, pattern):
    from edgevit.cli import main

    (hub_cache / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    rc = main(["build", "--model", "vit-tiny", "--precision", "fp32", "--weights", f"hf-hub:{REPO}",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert pattern in err and "config.json" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("repo", ["timm/..", "timm/../x", "../timm", "timm", "timm/a/b", "timm/a\nb", "timm/a@x\ny",
                                  "timm/a--b"])
def test_bad_repository_ids_are_refused_before_the_hub_is_asked(hub_cache, tmp_path, capsys, repo):
    from edgevit.cli import main

    rc = main(["build", "--model", "vit-tiny", "--precision", "fp32", "--weights", f"hf-hub:{repo}",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "hf-hub:OWNER/NAME" in err, err


def test_a_repository_cached_with_only_pytorch_model_bin_is_found(hub_cache, tmp_path):
    import torch
    from safetensors.torch import load_file

    from edgevit.hub import resolve

    torch.save(load_file(str(hub_cache / "model.safetensors")), hub_cache / "pytorch_model.bin")
    (hub_cache / "model.safetensors").unlink()
    w = resolve(f"hf-hub:{REPO}")
    assert w.path.name == "pytorch_model.bin" and w.revision == COMMIT


def test_any_config_is_a_checked_record_or_one_weights_error():
    """Property: for any JSON value, check_config returns it (every field it uses then has the right type and range)
    or raises WeightsError; nothing else escapes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from edgevit.errors import WeightsError
    from edgevit.hub import check_config

    scalars = st.none() | st.booleans() | st.integers(-10, 2000) | st.floats(allow_nan=True) | st.text(max_size=8)
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                        max_size=4), max_leaves=12)
    keys = st.sampled_from(["mean", "std", "crop_pct", "interpolation", "input_size", "label_names"])
    pretrained = st.dictionaries(keys, values | st.lists(st.floats(-2, 2), min_size=2, max_size=4), max_size=4)
    configs = values | st.fixed_dictionaries({}, optional={
        "architecture": values | st.just("vit_tiny_patch16_224"), "num_classes": values | st.integers(1, 5),
        "label_names": values | st.lists(st.text(max_size=4), max_size=5), "pretrained_cfg": pretrained | values})

    @settings(max_examples=300, deadline=None)
    @given(configs)
    def check(cfg):
        try:
            out = check_config(cfg, "timm/x")
        except WeightsError:
            return
        pre = out.get("pretrained_cfg") or {}
        assert "crop_pct" not in pre or 0 < pre["crop_pct"] <= 1
        assert "std" not in pre or all(s > 0 for s in pre["std"])

    check()


def test_without_network_the_cache_answers_at_once(hub_cache, monkeypatch):
    """Not declared offline, but the Hub cannot be reached (a closed port of the test's own): the cached repository
    is used without huggingface_hub's retries, and a missing one is one WeightsError naming `hf download`."""
    import socket

    import huggingface_hub.constants as c

    from edgevit.errors import WeightsError
    from edgevit.hub import resolve

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{port}")
    w = resolve(f"hf-hub:{REPO}")
    assert w.revision == COMMIT and w.config["architecture"] == "vit_tiny_patch16_224"
    with pytest.raises(WeightsError, match="cannot be reached; download it where there is internet: hf download"):
        resolve("hf-hub:timm/not_cached_model")
