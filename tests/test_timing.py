"""``edgevit time A B --profile``: bundles and plain model files timed against each other in one interleaved,
process-isolated run, and a per-layer table set beside the p50 of the same run."""

from __future__ import annotations

import json

from tests.test_bad_input import cli


def test_time_a_bundle_beside_a_plain_ir_with_profiles(int8_bundle, capsys):
    rc, out, err = cli(capsys, "time", int8_bundle, int8_bundle / "model.xml", "--profile", "--duration", "0.5",
                       "--json")
    assert rc == 0, err
    recs = json.loads(out)
    assert [r["item"] for r in recs] == [int8_bundle.name, "model.xml"]
    for r in recs:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["isolated"] is True  # each in its own process
        prof = r["profile"]
        assert prof["statistic"] == "median" and prof["top_layers"] and prof["p50_ms"] == lat["p50"]
        assert prof["accounted_ms"] == round(prof["total_ms"] + prof["outside_layers_ms"], 4)
        assert prof["outside_layers_ms"] > 0  # a call costs something besides its layers
        assert prof["total_vs_p50"] == round(prof["accounted_ms"] / lat["p50"], 3)
        assert prof["accounted_max_ms"] >= prof["accounted_ms"]
        assert abs(sum(x["share"] for x in prof["top_layers"]) - 1) < 0.02 or prof["layers_timed"] > 15
    assert recs[0]["model"] == "vit-tiny-fmnist" and recs[0]["threads"] >= 1
    from edgevit.runtime.timing import table

    text = table(recs)  # what the command prints without --json
    assert "timed interleaved, each in its own process" in text and "relative to the first" in text
    assert "median ms" in text and "total of the per-layer medians" in text and "+ in no layer" in text
    assert "against the p50 of the same run" in text


def test_time_refuses_what_it_cannot_time(int8_bundle, tmp_path, capsys):
    (tmp_path / "x.txt").write_text("no")
    rc, _, err = cli(capsys, "time", int8_bundle, tmp_path / "x.txt")
    assert rc == 2 and "give a bundle directory or an OpenVINO .xml / .onnx model file" in err


def test_time_with_openvino_hint_and_streams(int8_bundle, capsys):
    rc, out, err = cli(capsys, "time", int8_bundle, "--hint", "throughput", "--streams", "2", "--threads", "2",
                       "--duration", "0.2",
                       "--throughput-batch", "2", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["config"] == {"hint": "throughput", "streams": 2}  # as the compiled model reports it (one per thread)
    assert r["throughput"] > 0 and r["offline"]["batch"] == 2
    rc, out, err = cli(capsys, "time", int8_bundle, "--hint", "latency", "--duration", "0.2", "--json")
    assert rc == 0, err and json.loads(out)["config"]["hint"] == "latency"
    rc, _, err = cli(capsys, "time", int8_bundle, "--streams", "0")
    assert rc == 2 and "--streams" in err
