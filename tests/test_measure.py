import time

import numpy as np

from edgevit.measure import compare_latency, host_info, top1, topk


def test_compare_latency_interleaves_and_orders():
    order = []

    def make(name, seconds):
        def fn(x):
            order.append(name)
            time.sleep(seconds)
        return fn

    res = compare_latency({"fast": make("fast", 0.0005), "slow": make("slow", 0.004)}, np.zeros((1, 3)),
                          warmup=1, rounds=3, min_iters=6, min_seconds=0.03)
    assert res["fast"]["p50"] < res["slow"]["p50"]
    assert res["slow"]["p50"] >= 4.0 and res["fast"]["iterations"] >= 6 and res["slow"]["iterations"] >= 6
    assert res["fast"]["p90"] >= res["fast"]["p50"] and res["fast"]["batch"] == 1
    # interleaved: the timed calls alternate in blocks (fast..., slow..., fast..., slow..., ...)
    timed = order[2:]
    blocks = [timed[0]] + [b for a, b in zip(timed, timed[1:]) if a != b]
    assert blocks == ["fast", "slow"] * 3


def test_accuracy_helpers_and_host():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 2])
    assert top1(logits, labels) == 66.67
    assert topk(logits, labels, k=2) == 66.67 and topk(logits, labels, k=3) == 100.0
    h = host_info()
    assert h["cpu"] and h["cores"] >= 1 and isinstance(h["isa"], list)
