"""The bad-input matrix: every case gives one stderr line without a traceback, its documented exit code, and leaves
the file system as it was (nothing outside the output written, nothing edgevit did not write deleted, no staging
leftovers). The bundle-trust cases are built here as an attacker would build them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgevit.cli import main


def snapshot(root: Path) -> dict:
    """Every entry under ``root``: type, and for files their sha256."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def refused(capsys, root: Path, code: int, pattern: str, *args) -> str:
    """Run the CLI, expect exit ``code`` with one stderr line containing ``pattern``, and ``root`` unchanged."""
    before = snapshot(root)
    rc, out, err = cli(capsys, *args)
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert pattern.lower() in err.lower(), err
    assert snapshot(root) == before
    return err


# ------------------------------------------------------------------------------------------ bundle fixtures
@pytest.fixture()
def bundle(int8_bundle, tmp_path) -> Path:
    """A fresh copy of a real INT8 OpenVINO bundle, to be damaged by the test."""
    d = tmp_path / "b"
    shutil.copytree(int8_bundle, d)
    return d


def edit_manifest(bundle: Path, fn) -> None:
    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def test_valid_bundle_verifies(bundle, capsys):
    rc, out, err = cli(capsys, "verify", bundle)
    assert rc == 0 and "ok" in out


def test_path_traversal_is_refused_before_the_file_is_opened(bundle, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    edit_manifest(bundle, lambda m: m["files"].update({"../secret.txt": {"sha256": digest, "bytes": 11}}))
    err = refused(capsys, tmp_path, 1, "outside the bundle", "verify", bundle)
    assert "11" not in err.replace(str(tmp_path), "")  # the outside file's size is not revealed


@pytest.mark.parametrize("rel", ["/etc/shadow", "./labels.txt", "a//b", "sub/../labels.txt", "..\\x", ""])
def test_unsafe_file_names_are_refused(bundle, tmp_path, capsys, rel):
    edit_manifest(bundle, lambda m: m["files"].update({rel: {"sha256": "0" * 64, "bytes": 1}}))
    refused(capsys, tmp_path, 1, "damaged bundle", "verify", bundle)


def test_empty_file_list_is_refused_by_verify_and_predict(bundle, tmp_path, png, capsys):
    (bundle / "model.bin").write_bytes(b"\0" * 64)
    edit_manifest(bundle, lambda m: m.update(files={}))
    refused(capsys, tmp_path, 1, "lists no files", "verify", bundle)
    refused(capsys, tmp_path, 1, "lists no files", "predict", bundle, png)


def test_dropping_the_weights_from_the_list_is_refused(bundle, tmp_path, capsys):
    edit_manifest(bundle, lambda m: m["files"].pop("model.bin"))
    refused(capsys, tmp_path, 1, "model.bin", "verify", bundle)


def test_symlink_to_an_outside_file_is_refused(bundle, tmp_path, capsys):
    outside = tmp_path / "evil.bin"
    shutil.copyfile(bundle / "model.bin", outside)
    (bundle / "model.bin").unlink()
    (bundle / "model.bin").symlink_to(outside)  # same bytes, so the hash matches: only the link gives it away
    refused(capsys, tmp_path, 1, "symlink", "verify", bundle)


def test_symlinked_directory_inside_the_bundle_is_refused(bundle, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    shutil.move(bundle / "model.bin", tmp_path / "elsewhere" / "model.bin")
    (bundle / "sub").symlink_to(tmp_path / "elsewhere")
    edit_manifest(bundle, lambda m: m["files"].update({"sub/model.bin": m["files"].pop("model.bin")}))
    refused(capsys, tmp_path, 1, "symlink", "verify", bundle)


def test_unlisted_file_in_the_bundle_is_refused(bundle, tmp_path, capsys):
    (bundle / "extra.so").write_bytes(b"\x7fELF")
    refused(capsys, tmp_path, 1, "extra.so", "verify", bundle)


def test_modified_weights_are_refused(bundle, tmp_path, png, capsys):
    data = bytearray((bundle / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.bin").write_bytes(bytes(data))
    refused(capsys, tmp_path, 1, "sha256", "predict", bundle, png)


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m.update(files=[]), "'files' must be an object"),
    (lambda m: m.pop("model"), "'model' is missing"),
    (lambda m: m.update(precision="int4"), "'precision' is 'int4'"),
    (lambda m: m["backend"].update(name="mystery"), "'backend.name' is 'mystery'"),
    (lambda m: m["files"]["labels.txt"].update(bytes=0), "outside 1.."),
    (lambda m: m["files"]["labels.txt"].update(bytes=-5), "outside 1.."),
    (lambda m: m["files"]["labels.txt"].update(sha256="abc"), "not a sha256"),
    (lambda m: m["labels"].pop(), "labels"),
    (lambda m: m["model"].update(num_classes="10"), "must be an integer"),
    (lambda m: m["model"].update(input_size=[3, 100000, 100000]), "input_size"),
    (lambda m: m["preprocessing"].update(std=[0, 1, 1]), "preprocessing.std"),
    (lambda m: m["preprocessing"].update(interpolation="lanczos9"), "interpolation"),
    (lambda m: m["target"].update(threads="many"), "target.threads"),
    (lambda m: m.update(schema_version=99), "schema_version 99"),
    (lambda m: m.update(status="great"), "'status'"),
])
def test_manifest_schema_violations_name_the_field(bundle, tmp_path, capsys, edit, pattern):
    edit_manifest(bundle, edit)
    refused(capsys, tmp_path, 1, pattern, "verify", bundle)


def test_manifest_with_nan_is_not_json(bundle, tmp_path, capsys):
    p = bundle / "manifest.json"
    p.write_text(p.read_text().replace('"top1_drop": ', '"top1_drop": NaN, "x": ', 1))
    refused(capsys, tmp_path, 1, "NaN is not a number JSON allows", "verify", bundle)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", ""])
def test_manifest_that_is_not_an_object(bundle, tmp_path, capsys, text):
    (bundle / "manifest.json").write_text(text)
    refused(capsys, tmp_path, 1, "damaged bundle", "verify", bundle)


def test_labels_file_must_match_the_manifest(bundle, tmp_path, capsys):
    labels = bundle / "labels.txt"
    text = labels.read_text().replace("class0", "pwned", 1) if "class0" in labels.read_text() else "x\n"
    labels.write_text(text)
    edit_manifest(bundle, lambda m: m["files"]["labels.txt"].update(
        sha256=hashlib.sha256(labels.read_bytes()).hexdigest(), bytes=labels.stat().st_size))
    refused(capsys, tmp_path, 1, "labels", "verify", bundle)


def test_tampered_bundle_is_refused_by_inspect(bundle, tmp_path, capsys):
    edit_manifest(bundle, lambda m: m.update(files={}))
    refused(capsys, tmp_path, 1, "lists no files", "inspect", "--model", "vit-tiny-fmnist", "--bundle", bundle,
            "--out", tmp_path / "page")


def test_onnx_external_data_must_be_listed(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    from edgevit.backends import onnx_external_files
    from edgevit.errors import BundleError

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(g), tmp_path / "model.onnx", save_as_external_data=True, location="weights.data",
              size_threshold=0)
    assert onnx_external_files(tmp_path, {"model.onnx": {}}, "model.onnx") == {"weights.data"}
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable ONNX"):
        onnx_external_files(tmp_path, {"model.onnx": {}}, "model.onnx")


# ------------------------------------------------------------------------------------------------------ images
def png_header(path: Path, w: int, h: int) -> Path:
    """A tiny PNG that declares ``w`` x ``h`` pixels (a decompression bomb's header: nothing is decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("w,h,pattern", [(60_000_000, 1, "aspect ratio"), (20_000, 20_000, "megapixels"),
                                         (4000, 100, "aspect ratio")])
def test_image_bombs_are_refused_before_decoding(bundle, tmp_path, capsys, w, h, pattern):
    img = png_header(tmp_path / "bomb.png", w, h)
    refused(capsys, tmp_path, 2, pattern, "predict", bundle, img)


@pytest.mark.parametrize("content,pattern", [(b"", "empty"), (b"not an image at all", "cannot read image")])
def test_unreadable_images(bundle, tmp_path, capsys, content, pattern):
    (tmp_path / "x.png").write_bytes(content)
    refused(capsys, tmp_path, 2, pattern, "predict", bundle, tmp_path / "x.png")


def test_directory_as_image(bundle, tmp_path, capsys):
    (tmp_path / "dir.png").mkdir()
    refused(capsys, tmp_path, 2, "directory", "predict", bundle, tmp_path / "dir.png")


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from edgevit.runtime.images import load_image

    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    grey, white = (np.asarray(load_image(tmp_path / n)) for n in ("grey16.png", "white16.png"))
    assert grey.shape == (8, 8, 3) and int(grey.max()) == 128 and int(white.min()) == 255


def test_alpha_palette_and_exif_orientation(tmp_path):
    from PIL import Image

    from edgevit.runtime.images import load_image

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200  # colour under a fully transparent pixel contributes nothing
    rgba[:2, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_image(tmp_path / "a.png"))
    assert a[0, 0].tolist() == [200, 200, 200] and a[3, 3].tolist() == [0, 0, 0]

    p = Image.fromarray(rgba, "RGBA").convert("P")
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png")).shape == (4, 4, 3)

    img = Image.new("RGB", (6, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (2, 6)


# ------------------------------------------------------------------------------------------- numeric flags
@pytest.mark.parametrize("args", [
    ["build", "--model", "vit-tiny-fmnist", "--input-size", "100000"],
    ["build", "--model", "vit-tiny-fmnist", "--threads", "0"],
    ["build", "--model", "vit-tiny-fmnist", "--max-drop", "nan"],
    ["build", "--model", "vit-tiny-fmnist", "--max-drop", "-1"],
    ["build", "--model", "vit-tiny-fmnist", "--calib-samples", "-5"],
    ["build", "--model", "vit-tiny-fmnist", "--val-samples", "0"],
    ["build", "--model", "vit-tiny-fmnist", "--qat-epochs", "-1"],
    ["build", "--model", "vit-tiny-fmnist", "--qat-lr", "inf"],
    ["train", "--model", "vit-tiny-fmnist", "--data", "synthetic", "--out", "o", "--batch-size", "0"],
    ["train", "--model", "vit-tiny-fmnist", "--data", "synthetic", "--out", "o", "--lr", "-1"],
    ["train", "--model", "vit-tiny-fmnist", "--data", "synthetic", "--out", "o", "--epochs", "x"],
    ["predict", "b", "x.png", "-k", "0"],
    ["demo", "b", "--source", "0", "--max-frames", "0"],
    ["demo", "b", "--source", "0", "--max-fps", "inf"],
    ["inspect", "--model", "vit-tiny-fmnist", "--out", "o", "--images", "0"],
])
def test_numeric_flags_are_checked_up_front(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    refused(capsys, tmp_path, 2, "argument", *args)


# ----------------------------------------------------------------------------------- outputs: ownership
def test_build_never_replaces_a_users_directory(tmp_path, capsys):
    mine = tmp_path / "out" / "mywork"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("notes\n")
    refused(capsys, tmp_path, 2, "--force", "build", "--model", "vit-tiny-fmnist", "--precision", "fp32",
            "--out", tmp_path / "out", "--name", "mywork")


def test_build_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    refused(capsys, tmp_path, 2, "is a file", "build", "--model", "vit-tiny-fmnist", "--precision", "fp32",
            "--out", tmp_path / "out")


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b"])
def test_bundle_names_stay_inside_out(tmp_path, capsys, name):
    refused(capsys, tmp_path, 2, "bundle name", "build", "--model", "vit-tiny-fmnist", "--precision", "fp32",
            "--out", tmp_path / "out", "--name", name)


def test_force_never_replaces_the_working_directory(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("x")
    monkeypatch.chdir(work)
    refused(capsys, tmp_path, 2, "protected", "build", "--model", "vit-tiny-fmnist", "--precision", "fp32",
            "--out", tmp_path, "--name", "work", "--force")


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path, capsys):
    from edgevit.outputs import claim

    with claim(tmp_path / "out" / "b", "bundle"):
        err = refused(capsys, tmp_path, 1, "another edgevit process", "build", "--model", "vit-tiny-fmnist",
                      "--precision", "fp32", "--out", tmp_path / "out", "--name", "b")
    assert "b" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # the lock file is gone with the holder


def test_rebuild_replaces_its_own_bundle(tmp_path):
    """(A killed run's leftovers, made by a real SIGKILL, and the user's look-alikes: tests/test_faults.py.)"""
    from edgevit.build import build
    from edgevit.outputs import umask

    out = tmp_path / "out"
    out.mkdir()
    (out / "b.txt").write_text("mine")  # a user's file beside the bundle: never touched
    first = build("vit-tiny-fmnist", precision="fp32", out=str(out), name="b", measure_latency=False,
                  overrides=dict(embed_dim=32, depth=1, num_heads=2))
    second = build("vit-tiny-fmnist", precision="fp32", out=str(out), name="b", measure_latency=False,
                   overrides=dict(embed_dim=32, depth=1, num_heads=2))
    assert first.bundle == second.bundle
    assert sorted(p.name for p in out.iterdir()) == ["b", "b.txt"]
    assert (out / "b.txt").read_text() == "mine"
    assert (out / "b").stat().st_mode & 0o777 == 0o777 & ~umask()


def test_report_never_replaces_a_users_directory(tmp_path, capsys):
    d = tmp_path / "site"
    d.mkdir()
    (d / "index.html").write_text("my site")
    refused(capsys, tmp_path, 2, "not an edgevit report", "report", "--db", tmp_path / "h.sqlite", "--out", d)


# ------------------------------------------------------------------------------------- numbers: NaN weights
def test_nan_weights_fail_the_build_and_write_nothing(tiny_checkpoint, fmnist_dir, tmp_path, capsys):
    import torch

    ck = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ck["model"]["head.weight"] = torch.full_like(ck["model"]["head.weight"], float("nan"))
    torch.save(ck, tmp_path / "nan.pt")
    refused(capsys, tmp_path, 1, "nan", "build", "--model", "vit-tiny-fmnist", "--precision", "fp32",
            "--weights", tmp_path / "nan.pt", "--data", f"fashion-mnist:{fmnist_dir}", "--out", tmp_path / "out")


def test_strict_json_writer_refuses_nan(tmp_path):
    from edgevit.errors import EdgevitError
    from edgevit.outputs import write_json

    with pytest.raises(EdgevitError, match="non-finite"):
        write_json(tmp_path / "x.json", {"top1": float("nan")})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- history, suites, bench
QUICK = Path(__file__).resolve().parent.parent / "benchmarks" / "suites" / "quick.toml"


@pytest.mark.parametrize("content,pattern", [
    (b"this is not a database, it is my notes", "not an SQLite database"),
    (b"SQLite format 3\x00" + b"\x00" * 200, "damaged SQLite"),
])
@pytest.mark.parametrize("command", ["bench", "report"])
def test_bad_history_files(tmp_path, capsys, content, pattern, command):
    db = tmp_path / "h.sqlite"
    db.write_bytes(content)
    args = ["--suite", QUICK] if command == "bench" else ["--out", tmp_path / "rep"]
    refused(capsys, tmp_path, 2, pattern, command, "--db", db, *args)


def test_foreign_sqlite_database_is_not_a_history(tmp_path, capsys):
    db = tmp_path / "app.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    refused(capsys, tmp_path, 2, "not an edgevit benchmark history", "bench", "--suite", QUICK, "--db", db)
    refused(capsys, tmp_path, 2, "not an edgevit benchmark history", "report", "--db", db, "--out", tmp_path / "r")


def test_empty_history_and_directory_history(tmp_path, capsys):
    (tmp_path / "empty.sqlite").write_bytes(b"")
    refused(capsys, tmp_path, 2, "no benchmark runs", "report", "--db", tmp_path / "empty.sqlite", "--out",
            tmp_path / "r")
    (tmp_path / "dir.sqlite").mkdir()
    refused(capsys, tmp_path, 2, "is a directory", "bench", "--suite", QUICK, "--db", tmp_path / "dir.sqlite")


def test_only_that_matches_nothing(tmp_path, capsys):
    refused(capsys, tmp_path, 2, "matches no model", "bench", "--suite", QUICK, "--db", tmp_path / "h.sqlite",
            "--only", "no-such-model")


@pytest.mark.parametrize("edit,pattern", [
    (lambda t: t.replace('targets = ["cpu-x86"]', 'targets = "cpu-x86"'), "'targets' must be a list"),
    (lambda t: t.replace('model = "mobilenetv3-fmnist"', 'model = "mobilenet-v9000"'), "unknown model"),
    (lambda t: t.replace('targets = ["cpu-x86"]', 'targets = ["cpu-x99"]'), "unknown target"),
    (lambda t: t.replace('name = "quick"', 'name = 5'), "'name' must be str"),
])
def test_bad_suites(tmp_path, capsys, edit, pattern):
    text = QUICK.read_text()
    bad = edit(text)
    assert bad != text, "the edit must change the suite"
    (tmp_path / "s.toml").write_text(bad)
    refused(capsys, tmp_path, 2, pattern, "bench", "--suite", tmp_path / "s.toml", "--db", tmp_path / "h.sqlite")


def test_binary_suite_file(tmp_path, capsys):
    (tmp_path / "s.toml").write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, tmp_path, 2, "cannot read suite", "bench", "--suite", tmp_path / "s.toml")


# ---------------------------------------------------------------------------------------------- train
def test_resume_missing_garbage_and_foreign(tmp_path, capsys):
    import torch

    base = ["train", "--model", "vit-tiny-fmnist", "--data", "synthetic", "--out", tmp_path / "run", "--resume"]
    refused(capsys, tmp_path, 2, "no such file", *base, tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04garbage")
    refused(capsys, tmp_path, 2, "not an edgevit training checkpoint", *base, tmp_path / "garbage.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    refused(capsys, tmp_path, 2, "not an edgevit training checkpoint", *base, tmp_path / "foreign.pt")


def test_train_never_overwrites_a_users_checkpoint_names(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_text("my own file")
    refused(capsys, tmp_path, 2, "not an edgevit checkpoint", "train", "--model", "vit-tiny-fmnist", "--data",
            "synthetic", "--out", tmp_path / "run")
    (tmp_path / "file").write_text("x")
    refused(capsys, tmp_path, 2, "is a file", "train", "--model", "vit-tiny-fmnist", "--data", "synthetic",
            "--out", tmp_path / "file")


# ----------------------------------------------------------------------------------------------- demo
def test_demo_outputs_never_replace_a_users_files(bundle, tmp_path, capsys):
    (tmp_path / "frames").mkdir()
    (tmp_path / "taken.mp4").write_text("my video")
    refused(capsys, tmp_path, 2, "already exists", "demo", bundle, "--source", tmp_path / "frames",
            "--output", tmp_path / "taken.mp4", "--headless")
    refused(capsys, tmp_path, 2, "is a directory", "demo", bundle, "--source", tmp_path / "frames",
            "--jsonl", tmp_path / "frames", "--headless")
    refused(capsys, tmp_path, 2, "is a file", "demo", bundle, "--source", tmp_path / "frames",
            "--jsonl", tmp_path / "taken.mp4" / "x.jsonl", "--headless")


def test_a_report_written_before_the_marker_is_still_ours(tmp_path):
    from edgevit.outputs import owned_by_edgevit

    old = tmp_path / "report"
    old.mkdir()
    for n in ("report.html", "summary.md", "pareto.png"):
        (old / n).write_text("x")
    assert owned_by_edgevit(old, "report")
    (old / "notes.txt").write_text("mine")
    assert not owned_by_edgevit(old, "report")


def test_two_builds_into_the_same_bundle_at_once(tmp_path):
    """Both may finish (one after the other) or one is refused at once; never a traceback, never a leftover."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edgevit", "build", "--model", "vit-tiny-fmnist", "--precision", "fp32",
           "--measure", "quick", "--out", str(tmp_path / "out"), "--name", "same"]
    env = {**os.environ, "EDGEVIT_QUIET": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert "Traceback" not in err
        if rc:
            assert rc == 1 and len(err.strip().splitlines()) == 1 and "another edgevit process" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["same"]
    from edgevit.runtime.bundle import read_manifest

    read_manifest(tmp_path / "out" / "same")
