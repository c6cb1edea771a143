"""--json on build, verify and targets; provenance in the manifest; labels and preprocessing inside the ONNX."""

from __future__ import annotations

import json

from edgevit.cli import main


def test_build_json_and_provenance_and_verify_json(fmnist_dir, tiny_checkpoint, tmp_path, capsys):
    rc = main(["build", "--model", "vit-tiny-fmnist", "--target", "cpu-onnxruntime", "--precision", "fp32",
               "--data", f"fashion-mnist:{fmnist_dir}", "--weights", str(tiny_checkpoint), "--val-samples", "20",
               "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0
    r = json.loads(out)  # stdout is exactly one JSON object; the summary went to stderr
    assert "accuracy" in err and r["manifest"]["validation"]["samples"] == 20
    prov = r["manifest"]["provenance"]
    assert prov["versions"]["torch"] and prov["versions"]["onnxruntime"] and prov["created_utc"].endswith("+00:00")
    assert "--json" in prov["command"]

    import onnx

    meta = {p.key: p.value for p in onnx.load(r["bundle"] + "/model.onnx").metadata_props}
    assert json.loads(meta["edgevit.labels"]) == r["manifest"]["labels"]
    assert json.loads(meta["edgevit.preprocessing"]) == r["manifest"]["preprocessing"]

    assert main(["verify", r["bundle"], "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["ok"] and v["files_verified"] == len(r["manifest"]["files"])


def test_targets_json(capsys):
    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {t["name"]: t for t in rows}
    assert by["cpu-x86"]["backend"] == "openvino" and "runs_here" in by["jetson-orin"]
