"""Tries edgevit's CLI on bad inputs beyond the test matrix, as a careful user or an attacker would, and prints one
table row per case: exit code, whether stderr held one error line (status lines before it aside) and no traceback,
whether the world outside the case's own output changed, and the line itself.
Usage: python tests/tools/bad_input_battery.py WORKDIR BUNDLE

WORKDIR: an empty directory of the caller's; BUNDLE: a valid OpenVINO bundle (copied, never changed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


def main(work: Path, bundle: Path) -> None:
    w = work
    (w / "logs").mkdir(parents=True, exist_ok=True)
    b = w / "b"
    shutil.copytree(bundle, b)
    png = w / "img.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(png)
    folder = w / "folder"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(folder / c / f"{i}.png")
    one_class = w / "one"
    (one_class / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(one_class / "a" / "0.png")
    esc = w / "esc"
    shutil.copytree(folder, esc)
    (esc / "a").rename(esc / "a\x1b[31mred")
    np.save(w / "f32.npy", np.zeros((4, 8, 8), np.float32))
    np.save(w / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (w / "noimg").mkdir()
    (w / "file").write_text("x")
    (w / "cfgdir").mkdir()
    (w / "cfg_unknown.toml").write_text('colour = "red"\n')
    (w / "cfg_type.toml").write_text("model = 3\n")
    (w / "empty.png").write_bytes(b"")
    (w / "trunc.png").write_bytes(png.read_bytes()[:40])
    Image.new("L", (1, 30000)).save(w / "thin.png")
    (w / "garbage.pt").write_bytes(os.urandom(256))
    def target(name: str, **fields) -> None:  # a target profile with ``fields`` over a valid OpenVINO one
        base = {"name": '"t"', "description": '"d"', "backend": '"openvino"', "device": '"CPU"',
                "precisions": '["fp32"]'}
        (w / f"{name}.toml").write_text("".join(f"{k} = {v}\n" for k, v in {**base, **fields}.items()))

    target("t_slash", name='"a/b"')
    target("t_threads", threads="99999")
    target("t_range", backend='"tensorrt"', device='"GPU"', precisions='["fp16"]', batch_range="[4, 2, 1]")
    (w / "t_bin.toml").write_bytes(os.urandom(64))
    target("t_noprec", precisions="[]")
    target("t_backend", backend='"cuda; rm -rf /"')
    (w / "s_models.toml").write_text('name = "s"\ndataset = "synthetic"\ntargets = ["cpu-x86"]\n'
                                     'precisions = ["fp32"]\nmodels = "vit"\n')
    (w / "s_overrides.toml").write_text('name = "s"\ndataset = "synthetic"\ntargets = ["cpu-x86"]\n'
                                        'precisions = ["fp32"]\n[[models]]\nmodel = "vit-tiny-fmnist"\n'
                                        'overrides = { depth = [1, 2] }\n[[models]]\nmodel = "mobilenetv3-fmnist"\n')
    lab = w / "lab"
    shutil.copytree(bundle, lab)
    m = json.loads((lab / "manifest.json").read_text())
    m["labels"][0] = "T-shirt\u2028top"
    (lab / "labels.txt").write_text("\n".join(m["labels"]) + "\n")
    m["files"]["labels.txt"] = {"sha256": hashlib.sha256((lab / "labels.txt").read_bytes()).hexdigest(),
                                "bytes": (lab / "labels.txt").stat().st_size}
    (lab / "manifest.json").write_text(json.dumps(m))
    linked = w / "linked"
    shutil.copytree(bundle, linked)
    (linked / "manifest.json").rename(w / "outside-manifest.json")
    (linked / "manifest.json").symlink_to(w / "outside-manifest.json")

    out = w / "out"
    model = ["--model", "vit-tiny-fmnist"]
    cases = [
        ("empty model name", ["build", "--model", "", "--precision", "fp32", "--out", out]),
        ("model name with a newline", ["build", "--model", "vit-tiny\n", "--precision", "fp32", "--out", out]),
        ("target name with a slash", ["build", *model, "--target", w / "t_slash.toml", "--out", out]),
        ("target threads = 99999", ["build", *model, "--target", w / "t_threads.toml", "--out", out]),
        ("target batch_range [4, 2, 1]", ["build", *model, "--target", w / "t_range.toml", "--out", out]),
        ("target TOML of random bytes", ["build", *model, "--target", w / "t_bin.toml", "--out", out]),
        ("target precisions = []", ["build", *model, "--target", w / "t_noprec.toml", "--out", out]),
        ("target backend with a shell command", ["build", *model, "--target", w / "t_backend.toml", "--out", out]),
        ("imagefolder with one class", ["build", *model, "--precision", "int8", "--data", one_class, "--out", out]),
        ("class folder with an ANSI escape", ["build", *model, "--precision", "int8", "--data", esc, "--out", out]),
        ("--data that does not exist", ["build", *model, "--precision", "int8", "--data", w / "nope", "--out", out]),
        ("--calib-data float32 .npy", ["build", *model, "--data", folder, "--calib-data", w / "f32.npy",
                                       "--out", out]),
        ("--calib-data pickled object .npy", ["build", *model, "--data", folder, "--calib-data", w / "obj.npy",
                                              "--out", out]),
        ("--calib-data folder without images", ["build", *model, "--data", folder, "--calib-data", w / "noimg",
                                                "--out", out]),
        ("--val-samples 0", ["build", *model, "--data", folder, "--val-samples", "0", "--out", out]),
        ("--input-size -5", ["build", *model, "--precision", "fp32", "--input-size", "-5", "--out", out]),
        ("--threads -1", ["build", *model, "--precision", "fp32", "--threads", "-1", "--out", out]),
        ("--max-drop nan", ["build", *model, "--data", folder, "--max-drop", "nan", "--out", out]),
        ("--out below a file", ["build", *model, "--precision", "fp32", "--out", w / "file" / "x"]),
        ("--name ../x", ["build", *model, "--precision", "fp32", "--out", out, "--name", "../x"]),
        ("--name .hidden", ["build", *model, "--precision", "fp32", "--out", out, "--name", ".hidden"]),
        ("--config that is a directory", ["build", "--config", w / "cfgdir"]),
        ("--config with an unknown key", ["build", "--config", w / "cfg_unknown.toml"]),
        ("--config model = 3", ["build", "--config", w / "cfg_type.toml"]),
        ("--weights hf-hub with a ../ revision", ["build", *model, "--precision", "fp32", "--weights",
                                                  "hf-hub:timm/x@../../etc", "--out", out]),
        ("predict a missing bundle", ["predict", w / "nope", png]),
        ("predict a directory as image", ["predict", b, folder]),
        ("predict a 0-byte image", ["predict", b, w / "empty.png"]),
        ("predict a truncated PNG", ["predict", b, w / "trunc.png"]),
        ("predict a 1x30000 image", ["predict", b, w / "thin.png"]),
        ("verify a manifest that is a symlink", ["verify", linked]),
        ("verify labels with U+2028, re-hashed", ["verify", lab]),
        ("report of a missing history", ["report", "--db", w / "nope.sqlite", "--out", w / "rep"]),
        ("report of a PNG as history", ["report", "--db", png, "--out", w / "rep"]),
        ("bench of a missing suite", ["bench", "--suite", w / "nope.toml", "--db", w / "h.sqlite"]),
        ("suite models = \"vit\"", ["bench", "--suite", w / "s_models.toml", "--db", w / "h.sqlite"]),
        ("suite overrides depth = [1, 2]", ["bench", "--suite", w / "s_overrides.toml", "--db", w / "h.sqlite"]),
        ("demo of a missing source", ["demo", b, "--source", w / "nope.mp4", "--headless"]),
        ("demo --jsonl below a file", ["demo", b, "--source", folder / "a", "--headless", "--jsonl",
                                       w / "file" / "o.jsonl"]),
        ("samples -n -1", ["samples", "--data", folder, "-n", "-1", "--out", w / "samples"]),
        ("train --epochs 0", ["train", *model, "--data", folder, "--epochs", "0", "--out", w / "run"]),
        ("train --resume of random bytes", ["train", *model, "--data", folder, "--resume", w / "garbage.pt",
                                            "--out", w / "run"]),
        ("train --out that is a file", ["train", *model, "--data", folder, "--out", w / "file"]),
        ("time --threads 0", ["time", b, "--threads", "0"]),
    ]
    env = {**os.environ, "EDGEVIT_LOG_DIR": str(w / "logs"), "HF_HUB_OFFLINE": "1"}
    print("| case | exit | one line | world unchanged | stderr |")
    print("|---|---|---|---|---|")
    for name, args in cases:
        before = {k: v for k, v in snapshot(w).items() if not k.startswith(str(w / "logs"))}
        r = subprocess.run([sys.executable, "-m", "edgevit", *map(str, args)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        after = {k: v for k, v in snapshot(w).items() if not k.startswith(str(w / "logs"))}
        lines = [x for x in r.stderr.strip().splitlines() if x.startswith("edgevit")]  # errors, not status lines
        one = len(lines) == 1 and "Traceback" not in r.stderr
        text = (lines[-1] if lines else "(nothing)").replace("|", "\\|")[:220]
        print(f"| {name} | {r.returncode} | {'yes' if one else 'NO'} | {'yes' if before == after else 'NO'} | "
              f"{text} |", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
