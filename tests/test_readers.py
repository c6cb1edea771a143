"""Property tests of every reader of outside input (Hypothesis, bounded for CI): for any generated input each reader
returns a checked record or raises its one error type, nothing else. Hub configs: tests/test_hub.py; history rows:
tests/test_history_rows.py."""

from __future__ import annotations

import copy
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevit.errors import BundleError, ImageError, TargetError, UsageError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12))
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=4), max_leaves=16)


def _paths(obj, prefix=()):
    """Every key path of a nested dict/list."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value):
    obj = copy.deepcopy(obj)
    if not path:
        return value
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return obj


# ------------------------------------------------------------------------------------------------- manifest
@pytest.fixture(scope="module")
def real_manifest(int8_bundle) -> dict:
    return json.loads((int8_bundle / "manifest.json").read_text())


def test_any_manifest_edit_is_valid_or_one_bundle_error(real_manifest):
    """A real manifest with any one field (or the whole) replaced by any JSON value."""
    from edgevit.runtime.bundle import validate_manifest

    paths = list(_paths(real_manifest))

    @FAST
    @given(st.sampled_from(paths), JSON_VALUES)
    def check(path, value):
        m = _set(real_manifest, path, value)
        try:
            validate_manifest(m)
        except BundleError:
            return

    check()


def test_any_manifest_file_is_read_or_one_bundle_error(int8_bundle, tmp_path_factory):
    """The bytes of manifest.json itself: whatever they are, read_manifest gives a manifest or a BundleError."""
    import shutil

    from edgevit.runtime.bundle import read_manifest

    d = tmp_path_factory.mktemp("m") / "b"
    shutil.copytree(int8_bundle, d)
    original = (d / "manifest.json").read_bytes()
    texts = (st.binary(max_size=64) | st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES)
             | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
             | st.integers(0, len(original)).map(lambda n: original[:n]))

    @FAST
    @given(texts)
    def check(raw):
        (d / "manifest.json").write_bytes(raw)
        try:
            read_manifest(d)
        except BundleError:
            return

    check()


def test_a_manifest_nested_a_thousand_levels_is_one_line(int8_bundle, tmp_path, capsys):
    import shutil

    from tests.test_bad_input import cli

    d = tmp_path / "b"
    shutil.copytree(int8_bundle, d)
    (d / "manifest.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    rc, _, err = cli(capsys, "verify", d)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "nested too deeply" in err, err


# ---------------------------------------------------------------------------------------------- target TOML
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


TOML_VALUES = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=16)
               | st.lists(st.integers(-3, 70000) | st.text(max_size=6), max_size=4))
TARGET_KEYS = ["name", "description", "backend", "device", "precisions", "arch", "host_precision", "threads", "batch",
               "compute_capability", "tensorrt", "dla_cores", "dla_core", "gpu_fallback", "workspace_mb",
               "batch_range", "bogus"]


def test_any_target_toml_is_a_target_or_one_target_error(tmp_path_factory):
    from edgevit.targets import load_target

    base = {"name": "t", "description": "d", "backend": "tensorrt", "device": "GPU", "precisions": ["fp16", "int8"]}
    d = tmp_path_factory.mktemp("targets")

    @FAST
    @given(st.dictionaries(st.sampled_from(TARGET_KEYS), TOML_VALUES, max_size=5), st.booleans())
    def check(edits, keep_base):
        raw = {**(base if keep_base else {}), **edits}
        p = d / "t.toml"
        p.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in raw.items()))
        try:
            t = load_target(str(p))
        except (TargetError, UsageError):  # UnknownNameError (a UsageError) for an unknown backend
            return
        assert "\n" not in t.name + t.description + t.device + t.tensorrt
        assert 1 <= t.batch and 0 <= t.threads

    check()


# ----------------------------------------------------------------------------------------------- suite TOML
def test_any_suite_is_a_suite_or_one_usage_error(tmp_path_factory):
    from edgevit.bench import load_suite

    d = tmp_path_factory.mktemp("suites")
    head = 'name = "s"\ndataset = "synthetic"\ntargets = ["cpu-x86"]\nprecisions = ["fp32"]\n'
    model_keys = st.sampled_from(["model", "weights", "overrides", "train", "extra"])
    train = st.dictionaries(st.sampled_from(["epochs", "batch_size", "lr", "limit", "seed", "x"]), TOML_VALUES,
                            max_size=3)

    def table(entries: dict) -> str:
        lines = ["[[models]]"]
        for k, v in entries.items():
            if isinstance(v, dict):
                v = "{ " + ", ".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()) + " }"
            else:
                v = _toml_value(v)
            lines.append(f"{k} = {v}")
        return "\n".join(lines) + "\n"

    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(model_keys, TOML_VALUES | train, max_size=4),
           st.dictionaries(st.sampled_from(["val_samples", "throughput_batch", "latency_tolerance", "peers"]),
                           TOML_VALUES, max_size=2))
    def check(model, top):
        model.setdefault("model", "vit-tiny-fmnist")
        p = d / "s.toml"
        p.write_text(head + "".join(f"{k} = {_toml_value(v)}\n" for k, v in top.items()) + table(model)
                     + '[[models]]\nmodel = "mobilenetv3-fmnist"\n')
        try:
            s = load_suite(str(p))
        except UsageError:
            return
        for m in s.models:
            assert all(isinstance(v, int) and not isinstance(v, bool) for k, v in m.train.items() if k != "lr")

    check()


def test_a_suite_train_value_of_the_wrong_type_is_one_line(tmp_path, capsys):
    from tests.test_bad_input import cli

    p = tmp_path / "s.toml"
    p.write_text('name = "s"\ndataset = "synthetic"\ntargets = ["cpu-x86"]\nprecisions = ["fp32"]\n'
                 '[[models]]\nmodel = "vit-tiny-fmnist"\ntrain = { epochs = "3" }\n'
                 '[[models]]\nmodel = "mobilenetv3-fmnist"\n')
    rc, _, err = cli(capsys, "bench", "--suite", p, "--db", tmp_path / "h.sqlite")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "train.epochs must be an integer" in err, err
    assert not (tmp_path / "h.sqlite").exists()


# ---------------------------------------------------------------------------------------------- device JSON
def test_any_device_answer_is_checked_or_one_remote_error():
    from edgevit.remote import RemoteError, check_env_answer, check_time_answer

    lat = st.fixed_dictionaries({}, optional={k: SCALARS for k in ("p50", "p90", "p99", "samples")})
    answers = JSON_VALUES | st.fixed_dictionaries({}, optional={"latency_ms": lat | JSON_VALUES,
                                                                "throughput": SCALARS, "executed": SCALARS,
                                                                "host": JSON_VALUES, "board": SCALARS})

    @FAST
    @given(answers)
    def check(d):
        for reader in (check_time_answer, check_env_answer):
            try:
                out = reader(d, "dev")
            except RemoteError:
                continue
            if reader is check_time_answer:
                p = out["latency_ms"]
                assert 0 < p["p50"] <= p["p90"] <= p["p99"] and out["throughput"] >= 0

    check()


# -------------------------------------------------------------------------------------------- image headers
def _image_bytes():
    from PIL import Image

    out = {}
    for fmt, mode in (("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("BMP", "RGB"), ("TIFF", "F"), ("GIF", "P")):
        buf = io.BytesIO()
        Image.new(mode, (9, 7)).save(buf, fmt)
        out[f"{fmt}-{mode}"] = buf.getvalue()
    return out


def test_any_image_file_is_rgb8_or_one_image_error(tmp_path_factory):
    """Real headers of six formats with any bytes changed, cut or appended: load_image gives an 8-bit RGB image or
    an ImageError (never a decoder's own exception or a numpy warning)."""
    import warnings

    from edgevit.runtime.images import load_image

    images = _image_bytes()
    d = tmp_path_factory.mktemp("img")

    @FAST
    @given(st.sampled_from(sorted(images)), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
           st.integers(0, 400), st.binary(max_size=16))
    def check(name, edits, cut, tail):
        raw = bytearray(images[name])
        for at, byte in edits:
            if at < len(raw):
                raw[at] = byte
        p = d / f"x.{name.split('-')[0].lower()}"
        p.write_bytes(bytes(raw[:cut or None]) + tail)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy warnings are failures here
            try:
                img = load_image(p)
            except ImageError:
                return
        assert img.mode == "RGB" and img.size[0] >= 1

    check()


def test_float_images_with_infinite_pixels_are_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from edgevit.runtime.images import load_image

    a = np.zeros((8, 8), np.float32)
    a[0, 0] = np.inf
    p = tmp_path / "inf.tiff"
    Image.fromarray(a, "F").save(p)
    with pytest.raises(ImageError, match="NaN or infinite pixels"):
        load_image(p)
