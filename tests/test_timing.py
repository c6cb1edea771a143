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


def test_openvino_counters_cannot_see_layers_under_a_microsecond_and_the_profile_says_how_many(tmp_path):
    """What the profile's bound rests on, checked against OpenVINO itself: a layer's counter is the average of whole
    microseconds (each run's time cut down), and a layer under 1 µs reads 0 and is reported NOT_RUN. A model of 60
    tiny layers shows it; the profile counts those layers and widens its bound by a microsecond each."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    from edgevit.backends.openvino.backend import OVRunner

    par = x = ops.parameter([1, 16], np.float32)
    for _ in range(30):
        x = ops.sin(ops.multiply(x, ops.constant(np.full((1, 16), 1.0001, np.float32))))
    xml = tmp_path / "tiny.xml"
    ov.save_model(ov.Model([x], [par]), str(xml))
    runner = OVRunner(xml, {"INFERENCE_NUM_THREADS": 1})
    prof = runner.profile(np.ones((1, 16), np.float32), runs=300)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1})
    req = compiled.create_infer_request()
    for _ in range(300):
        req.infer({0: np.ones((1, 16), np.float32)})
    counted = [p.real_time.total_seconds() * 1e6 for p in req.profiling_info]
    assert all(us == int(us) for us in counted)  # whole microseconds
    assert prof["below_resolution"] > 0  # layers that ran yet read as not run
    from edgevit.runtime.timing import beside_p50

    out = beside_p50(prof, 0.04)
    steps = out["layers_timed"] + out["below_resolution"]
    assert out["accounted_max_ms"] == round(out["accounted_ms"] + steps * 0.001, 4)
