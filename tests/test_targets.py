import os
from pathlib import Path

import pytest

from edgevit.errors import TargetError, UnknownNameError, UsageError
from edgevit.quantize import load_recipe
from edgevit.targets import list_targets, load_target


def test_shipped_profiles_load_and_this_host_runs_cpu_x86():
    assert {"cpu-x86", "cpu-onnxruntime"} <= set(list_targets())
    t = load_target("cpu-x86")
    assert t.backend == "openvino" and "int8" in t.precisions and t.host_precision == "auto"
    from edgevit.backends import host_support

    ok, why = host_support(t)
    assert ok, why


def test_user_profile_path_and_strict_keys(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('name = "mine"\ndescription = "d"\nbackend = "onnxruntime"\ndevice = "CPU"\n'
                    'precisions = ["fp32"]\nthreads = 1\n')
    assert load_target(str(good)).threads == 1
    bad = tmp_path / "typo.toml"
    bad.write_text(good.read_text() + "thread = 2\n")
    with pytest.raises(TargetError, match="unknown key 'thread'; did you mean 'threads'"):
        load_target(str(bad))
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text(good.read_text().replace("threads = 1", 'threads = "two"'))
    with pytest.raises(TargetError, match="threads must be int"):
        load_target(str(wrong_type))
    other = tmp_path / "backend.toml"
    other.write_text(good.read_text().replace("onnxruntime", "openvin"))
    with pytest.raises(UnknownNameError, match="did you mean"):
        load_target(str(other))


def test_recipes():
    r = load_recipe()
    assert r.samples == 300 and r.preset == "mixed"
    assert load_recipe("fast", samples=10).samples == 10
    with pytest.raises(UnknownNameError, match="did you mean 'fast'"):
        load_recipe("fats")
    with pytest.raises(UsageError, match="at least 1"):
        load_recipe(samples=0)
    assert r.model_type == "auto" and r.nncf_transformer(True) and not r.nncf_transformer(False)
    plain = load_recipe("plain")
    assert plain.model_type == "default" and not plain.nncf_transformer(True)


def test_plain_recipe_quantizes_what_the_transformer_type_keeps_in_higher_precision(tmp_path):
    """model_type = "default" is NNCF's plain call: more of a ViT is quantized (LayerNorm inputs, residual Adds,
    Softmax paths) than with the transformer model type."""
    import numpy as np
    import openvino as ov
    import torch

    from edgevit.export import export_onnx
    from edgevit.models import create_model, resolve_spec
    from edgevit.quantize import nncf_quantize

    torch.manual_seed(0)
    net = create_model(resolve_spec("vit-tiny-fmnist"), num_classes=10, embed_dim=32, depth=1, num_heads=2)
    onnx_path = export_onnx(net, (32, 32), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)

    def fake_quantizes(recipe):
        q = nncf_quantize(ov.convert_model(str(onnx_path)), calib, load_recipe(recipe, samples=16), True)
        return sum(op.get_type_name() == "FakeQuantize" for op in q.get_ordered_ops())

    assert fake_quantizes("plain") > fake_quantizes("default")


@pytest.mark.parametrize("model,want", [
    ("NVIDIA Jetson AGX Orin Developer Kit", "jetson-orin"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
    ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
    ("NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
])
def test_auto_detects_the_jetson_board_from_its_device_tree(tmp_path, model, want):
    from edgevit.detect import detect_target

    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    name, why = detect_target(tmp_path)
    assert name == want and model in why
    load_target(name)  # every answer is a shipped profile


def test_auto_refuses_a_jetson_without_a_profile_and_falls_back_to_the_cpu(tmp_path):
    from edgevit.detect import detect_target
    from edgevit.errors import TargetError

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 1, BOARD: t186ref\n")
    with pytest.raises(TargetError, match="no profile for"):
        detect_target(tmp_path)
    name, why = detect_target(tmp_path / "empty")  # an ordinary host: its CPU, with the reason
    assert name in ("cpu-x86", "cpu-onnxruntime") and "no Jetson board" in why


def test_recipe_optional_float_reads_from_toml(tmp_path):
    """``smooth_quant_alpha = 0.5`` (a ``float | None`` field) loads; a string there is one error naming the key."""
    p = tmp_path / "sq.toml"
    p.write_text("smooth_quant_alpha = 0.5\nmodel_type = \"transformer\"\n")
    assert load_recipe(str(p)).smooth_quant_alpha == 0.5
    p.write_text("smooth_quant_alpha = 1\n")
    assert load_recipe(str(p)).smooth_quant_alpha == 1.0
    p.write_text("smooth_quant_alpha = \"high\"\n")
    with pytest.raises(UsageError, match="smooth_quant_alpha must be float"):
        load_recipe(str(p))
    assert load_recipe("transformer-nosq").smooth_quant_alpha == -1.0


def test_default_recipe_is_the_measured_one_for_backend_cpu_and_family(tmp_path, monkeypatch):
    """A build without --calibration gets calibration/_defaults.toml's entry for its backend, its host's class of
    CPU and the model's family, and 'default' where there is none; _defaults is no recipe of its own."""
    import edgevit.quantize as q
    import edgevit.runtime.measure as measure
    from edgevit.errors import UnknownNameError

    for name in ("default", "plain", "fast"):
        (tmp_path / f"{name}.toml").write_text((q.recipes_dir() / f"{name}.toml").read_text())
    (tmp_path / "_defaults.toml").write_text('[openvino.avx2]\nvit = "fast"\n[openvino.avx512_vnni]\nvit = "plain"\n')
    monkeypatch.setattr(q, "recipes_dir", lambda: tmp_path)
    monkeypatch.setattr(measure, "host_class", lambda: "avx2")
    assert q.default_recipe("openvino", "vit")[0] == "fast"
    monkeypatch.setattr(measure, "host_class", lambda: "avx512_vnni")
    name, why = q.default_recipe("openvino", "vit")
    assert name == "plain" and "measured" in why
    assert q.default_recipe("openvino", "maxvit")[0] == "default"
    assert q.default_recipe("tensorrt", "vit")[0] == "default"
    with pytest.raises(UnknownNameError):
        q.load_recipe("_defaults")


def test_host_class_follows_the_isa_cap(monkeypatch):
    from edgevit.runtime.measure import HOST_CLASSES, host_class

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    found = host_class()
    assert found in HOST_CLASSES
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert host_class() == ("avx2" if found in ("amx", "avx512_vnni", "avx2") else found)


def test_auto_in_docker_reads_the_board_from_edgevit_board_or_the_gpu(tmp_path, monkeypatch):
    """Docker masks the device tree: EDGEVIT_BOARD names the board; without it the GPU's SM count and memory (read
    through cuda-python: the stand-in, in a process of its own) tell the Orins apart."""
    import subprocess
    import sys

    from edgevit.detect import board_from_gpu, detect_target

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    monkeypatch.setenv("EDGEVIT_BOARD", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit")
    assert detect_target(tmp_path) == ("jetson-orin-nx", "EDGEVIT_BOARD says 'NVIDIA Jetson Orin NX Engineering "
                                                          "Reference Developer Kit'")
    monkeypatch.delenv("EDGEVIT_BOARD")
    standins = Path(__file__).resolve().parent / "standins"
    code = ("import pathlib; from edgevit.detect import detect_target; "
            f"print(detect_target(pathlib.Path({str(tmp_path)!r}))[0])")
    for sms, gib, want in ((16, 61.4, "jetson-orin"), (8, 7.4, "jetson-orin-nano"), (8, 15.3, "jetson-orin-nx")):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(standins), "STANDIN_CUDA_SMS": str(sms),
                                "STANDIN_CUDA_GIB": str(gib)})
        assert r.stdout.strip() == want, r.stderr
    assert board_from_gpu("7.2", 6, 7.4) == "jetson-xavier-nx" and board_from_gpu("9.0", 132, 80) is None
