"""The device runtime, checked without a GPU: what a board installs (resolved per platform by pip itself), which
Python it needs (vermin, and a real older interpreter), that it imports nothing from the build side, and how
`compile`, `time` and `predict` behave against TensorRT's and cuda-python's real behaviour (tests/standins)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgevit._boundary import BUILD_PYTHON, BUILD_SIDE, CPU_RUNTIMES, RUNTIME_MODULES, RUNTIME_PYTHON
from edgevit._config import tomllib
from tests.conftest import TINY_VIT

ROOT = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).resolve().parent / "standins"
RUN_LEAN = Path(__file__).resolve().parent / "tools" / "run_lean.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# ------------------------------------------------------------------------------------------------ packaging
def _requirements(extras: list[str], env: dict) -> list[str]:
    """The requirement strings pip would act on for ``edgevit[extras]`` in ``env`` (markers evaluated there)."""
    from packaging.requirements import Requirement

    reqs = [*PYPROJECT["dependencies"], *(r for e in extras for r in PYPROJECT["optional-dependencies"][e])]
    out = []
    for text in reqs:
        r = Requirement(text)
        if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in extras or [""]):
            out.append(f"{r.name}{r.specifier}")
    return out


# (python, machine, pip platform tags, extras, expected majors): JetPack 5 = Ubuntu 20.04 (glibc 2.31), Python 3.8,
# CUDA 11.4; JetPack 6 = Ubuntu 22.04 (glibc 2.35), Python 3.10, CUDA 12.2/12.6; x86 hosts with CUDA 12 and 13
# drivers.
PLATFORMS = {
    "jetpack5-aarch64-cp38": ("3.8", "aarch64", "manylinux_2_31_aarch64", ["jetson"], {"cuda-python": 11}),
    "jetpack6-aarch64-cp310": ("3.10", "aarch64", "manylinux_2_35_aarch64", ["jetson"], {"cuda-python": 12}),
    "x86-cu12-cp311": ("3.11", "x86_64", "manylinux_2_28_x86_64", ["tensorrt-cu12"],
                       {"cuda-python": 12, "tensorrt-cu12": None}),
    "x86-cu13-cp312": ("3.12", "x86_64", "manylinux_2_28_x86_64", ["tensorrt-cu13"],
                       {"cuda-python": 13, "tensorrt-cu13": None}),
}


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_pip_resolves_each_device_platform_to_the_right_cuda_major(name, tmp_path):
    """pip itself picks the versions (--dry-run --report, for the platform's Python and wheel tags)."""
    py, machine, tag, extras, majors = PLATFORMS[name]
    env = {"python_version": py, "python_full_version": f"{py}.0", "platform_machine": machine,
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    reqs = _requirements(extras, env)
    names = {re.split(r"[<>=!~ ;]", r)[0] for r in reqs}
    assert not names & set(BUILD_SIDE) and not names & set(CPU_RUNTIMES), reqs  # a board gets the runtime only
    assert ("tomli" in names) == (tuple(map(int, py.split("."))) < (3, 11))
    report = tmp_path / "report.json"
    arch_tags = [f"--platform={t}" for t in (tag, f"manylinux2014_{machine}", f"manylinux_2_17_{machine}")]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet", "--ignore-installed",
           "--disable-pip-version-check", "--report", str(report), "--target", str(tmp_path / "t"),
           f"--python-version={py}", *arch_tags, *reqs]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PIP_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    picked = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    for dist, major in majors.items():
        assert dist in picked, (dist, picked)
        if major is not None:
            assert int(picked[dist].split(".")[0]) == major, (dist, picked[dist])
    if machine == "aarch64":  # JetPack's TensorRT bindings are built against numpy 1.x
        assert int(picked["numpy"].split(".")[0]) == 1
        assert "tensorrt" not in picked and not any(d.startswith("tensorrt") for d in picked)
    if "tensorrt-cu12" in picked:  # the CUDA 12 wheels, never the CUDA 13 metapackage `tensorrt` now means
        assert int(picked["tensorrt-cu12"].split(".")[0]) in (10, 11)


def test_requires_python_admits_every_jetpack_the_readme_names():
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(PYPROJECT["requires-python"])
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "targets-and-devices.md").read_text()
    for jetpack, py in (("JetPack 5", "3.8"), ("JetPack 6", "3.10")):
        assert jetpack in readme
        assert spec.contains(py), f"requires-python {spec} refuses {jetpack}'s Python {py}"
    assert ".".join(map(str, RUNTIME_PYTHON)) == "3.8"


# ------------------------------------------------------------------------------------------- minimum versions
def _module_file(name: str) -> Path:
    rel = Path(*name.split("."))
    return ROOT / (f"{rel}/__init__.py" if (ROOT / rel).is_dir() else f"{rel}.py")


@pytest.mark.parametrize("files,floor", [("runtime", RUNTIME_PYTHON), ("all", BUILD_PYTHON)])
def test_vermin_finds_nothing_newer_than_the_floor(files, floor):
    """Minimum-version analysis of the source: the runtime modules against Python 3.8, the package against its
    build floor (3.10): `import tomllib` (3.11) or `types.UnionType` (3.10) in a runtime module fails here."""
    pytest.importorskip("vermin", reason="pip install 'edgevit[dev]' brings vermin")
    paths = [str(_module_file(m)) for m in RUNTIME_MODULES] if files == "runtime" else [str(ROOT / "edgevit")]
    target = ".".join(map(str, floor))
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if files == "runtime":  # annotations stay strings (vermin then rightly ignores `list[int]` in them)
        lazy = [p for p in paths if re.search(r"^\s*(def|class) ", Path(p).read_text(), re.M)
                and "from __future__ import annotations" not in Path(p).read_text()]
        assert not lazy, f"{lazy}: add `from __future__ import annotations` (3.8 evaluates annotations)"
    r = subprocess.run([vermin, "--no-tips", "--violations",
                        f"--target={target}-", "--backport", "typing", *paths], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


# ------------------------------------------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def orin_bundle(fmnist_dir, tmp_path_factory) -> Path:
    """A TensorRT bundle for Jetson Orin as a workstation writes it (Q/DQ ONNX, plan, check images)."""
    from edgevit.build import build

    out = tmp_path_factory.mktemp("orin")
    return build("vit-tiny-fmnist", target="jetson-orin", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
                 out=str(out), calibration="fast", val_samples=40, overrides=TINY_VIT).bundle


@pytest.fixture(scope="module")
def ort_bundle(fmnist_dir, tmp_path_factory) -> Path:
    from edgevit.build import build

    out = tmp_path_factory.mktemp("ort")
    return build("vit-tiny-fmnist", target="cpu-onnxruntime", precision="int8", data=f"fashion-mnist:{fmnist_dir}",
                 out=str(out), calibration="fast", val_samples=40, overrides=TINY_VIT).bundle


def _copy(bundle: Path, tmp_path: Path, name: str = "b") -> Path:
    dest = tmp_path / name
    shutil.copytree(bundle, dest)
    return dest


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _lean(args: list[str], tmp_path: Path, python: str = sys.executable, block=BUILD_SIDE + CPU_RUNTIMES,
          **env) -> subprocess.CompletedProcess:
    """edgevit ARGS as a board runs it: build-side imports by edgevit blocked, TensorRT and cuda-python stand-ins
    on the path, its own home and temporary folders."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDINS), str(ROOT)]), "HOME": str(home),
            "TMPDIR": str(home), "EDGEVIT_TEST_BLOCKED_LOG": str(tmp_path / "blocked.log"),
            "EDGEVIT_TEST_MODULES_LOG": str(tmp_path / "modules.log"), "EDGEVIT_QUIET": "1", **env}
    return subprocess.run([python, str(RUN_LEAN), ",".join(block), *args], capture_output=True, text=True,
                          env=full, timeout=300)


def _blocked(tmp_path: Path) -> list[str]:
    f = tmp_path / "blocked.log"
    return f.read_text().splitlines() if f.exists() else []


# ------------------------------------------------------------------------------ the runtime, build side blocked
def test_runtime_commands_import_nothing_from_the_build_side(orin_bundle, tmp_path, png):
    b = _copy(orin_bundle, tmp_path)
    r = _lean(["verify", str(b)], tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    r = _lean(["compile", str(b)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "top-1 agreement" in r.stdout
    r = _lean(["time", str(b), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)  # TensorRT's warnings went to stderr, not into the JSON
    assert t["backend"] == "tensorrt" and t["latency_ms"]["p50"] > 0
    assert "[TensorRT]" in r.stderr
    r = _lean(["predict", str(b), str(png)], tmp_path)
    assert r.returncode == 0 and str(png) in r.stdout, r.stderr
    r = _lean(["demo", str(b), "--source", str(png), "--headless", "--max-frames", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _lean(["env", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tensorrt_engine"]["available"]
    # env probes torch's GPUs where torch is installed, and falls back to CUDA's runtime: the only blocked try
    assert set(_blocked(tmp_path)) <= {"edgevit.parallel imported torch"}, _blocked(tmp_path)
    used = set((tmp_path / "modules.log").read_text().split())
    assert used <= set(RUNTIME_MODULES), sorted(used - set(RUNTIME_MODULES))


def test_a_cpu_bundle_runs_with_only_its_own_runtime(ort_bundle, tmp_path, png):
    b = _copy(ort_bundle, tmp_path)
    r = _lean(["predict", str(b), str(png)], tmp_path, block=BUILD_SIDE + ("openvino",))
    assert r.returncode == 0, r.stderr
    r = _lean(["time", str(b), "--json"], tmp_path, block=BUILD_SIDE + ("openvino",))
    assert r.returncode == 0 and json.loads(r.stdout)["backend"] == "onnxruntime", r.stderr
    assert _blocked(tmp_path) == []
    r = _lean(["predict", str(b), str(png)], tmp_path)  # no ONNX Runtime: one line naming the extra
    assert r.returncode == 1 and "edgevit[cpu]" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_build_commands_on_a_board_say_what_to_install(tmp_path):
    r = _lean(["build", "--model", "vit-tiny-fmnist", "--data", "synthetic", "--out", str(tmp_path / "o")], tmp_path)
    assert r.returncode == 1, r.stderr
    assert "pip install 'edgevit[build]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- compile against TensorRT's behaviour
def test_compile_refuses_a_bad_engine_and_writes_nothing(orin_bundle, tmp_path):
    b = _copy(orin_bundle, tmp_path)
    before = _tree(b)
    r = _lean(["compile", str(b)], tmp_path, STANDIN_TRT_ENGINE="broken")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("edgevit: error: the engine fails its check on the bundle's 16 validation images")
    assert "nothing written" in line
    assert _tree(b) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b")) == []  # no staging left


def test_compile_records_the_check_and_predict_refuses_an_unvalidated_engine(orin_bundle, tmp_path, png):
    b = _copy(orin_bundle, tmp_path)
    assert _lean(["compile", str(b)], tmp_path).returncode == 0
    m = json.loads((b / "manifest.json").read_text())
    e = m["backend"]["engine"]
    assert e["status"] == "validated" and e["check"]["passed"] and e["check"]["samples"] == 16
    assert e["sm_count"] == 16 and e["memory_gib"] > 0  # tells an AGX Orin from an Orin NX/Nano without a tree
    assert {"check_inputs.npy", "check_reference.npy", "model.engine"} <= set(m["files"])
    del e["check"]
    (b / "manifest.json").write_text(json.dumps(m))
    r = _lean(["predict", str(b), str(png)], tmp_path)
    assert r.returncode == 1 and "never validated" in r.stderr, r.stderr


def test_an_engine_is_refused_on_another_board_of_the_same_family(orin_bundle, tmp_path, png):
    b = _copy(orin_bundle, tmp_path)
    assert _lean(["compile", str(b)], tmp_path).returncode == 0
    r = _lean(["predict", str(b), str(png)], tmp_path, STANDIN_CUDA_SMS="8", STANDIN_CUDA_GIB="7.4")
    assert r.returncode == 1 and "8 SMs" in r.stderr and "edgevit compile" in r.stderr, r.stderr


def test_cuda13_bindings_on_a_cuda12_driver_name_the_fix(orin_bundle, tmp_path):
    b = _copy(orin_bundle, tmp_path)
    r = _lean(["compile", str(b)], tmp_path, STANDIN_CUDA_DRIVER="12060", STANDIN_CUDA_RUNTIME="13000")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "driver supports CUDA 12.6" in r.stderr and "cuda-python>=12,<13" in r.stderr


def test_a_timing_cache_that_comes_back_none_builds_without_one(orin_bundle, tmp_path):
    b = _copy(orin_bundle, tmp_path)
    r = _lean(["compile", str(b)], tmp_path, STANDIN_TRT_TIMING_CACHE="none")
    assert r.returncode == 0, r.stderr
    assert "no usable timing cache" in r.stderr and not (b / "timing.cache").exists()


def test_throughput_is_reported_at_the_batch_the_engine_ran(orin_bundle, tmp_path):
    b = _copy(orin_bundle, tmp_path)
    assert _lean(["compile", str(b)], tmp_path).returncode == 0
    r = _lean(["time", str(b), "--json", "--throughput-batch", "64"], tmp_path)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    top = json.loads((b / "manifest.json").read_text())["backend"]["plan"]["optimization_profile"]["input"]["max"][0]
    assert t["throughput_batch"] == top < 64 and t["offline"]["requested_batch"] == 64


# ------------------------------------------------------------------------------------ a real older interpreter
def _old_pythons() -> list[str]:
    """Interpreters older than 3.11 to run the runtime under: EDGEVIT_OLD_PYTHONS (set by .ci/run), else the
    ones this machine has."""
    named = [p for p in os.environ.get("EDGEVIT_OLD_PYTHONS", "").split(os.pathsep) if p]
    if named:
        return named
    found = []
    for v in ("3.8", "3.9", "3.10"):
        exe = shutil.which(f"python{v}")
        cands = [exe] if exe else []
        cands += sorted(str(p) for p in Path("/root/.pyenv/versions").glob(f"{v}.*/bin/python{v}"))
        for c in cands:
            if c and subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0:
                found.append(c)
                break
    return found


@pytest.mark.parametrize("python", _old_pythons() or [None])
def test_the_runtime_runs_under_a_python_older_than_3_11(python, orin_bundle, ort_bundle, tmp_path, png):
    """pip install of the package (not editable, runtime dependencies only) into a fresh venv of a real older
    interpreter, then verify, predict, time, env on a CPU bundle and compile/time on a TensorRT bundle (stand-ins)."""
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("no Python older than 3.11 found: .ci/run must provide one (EDGEVIT_OLD_PYTHONS)")
        pytest.skip("no Python older than 3.11 on this machine (set EDGEVIT_OLD_PYTHONS)")
    venv = tmp_path / "venv"
    pip_env = {**os.environ, "PIP_CACHE_DIR": str(tmp_path / "pipcache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip_env.pop("PYTHONPATH", None)
    # pip from a wheel (Debian's python3.9 has no ensurepip wheels; pyenv's do): the same bootstrap for every one
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    wheels = tmp_path / "pip-wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), "pip<25"],
                   check=True, timeout=300, env=pip_env)
    (wheel,) = wheels.glob("pip-*.whl")
    py = str(venv / "bin" / "python")
    subprocess.run([py, f"{wheel}/pip", "install", "-q", str(wheel)], check=True, timeout=300, env=pip_env)
    src = tmp_path / "src"  # a copy: pip's build writes into the source tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "tests", "reports", "results", "*.egg-info",
                                                            "build", "__pycache__", ".ci", ".hypothesis"))
    r = subprocess.run([py, "-m", "pip", "install", "-q", str(src), "onnxruntime>=1.16"], capture_output=True,
                       text=True, env=pip_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, env=pip_env).stdout.lower()
    assert not any(f"{m}==" in freeze for m in ("torch", "nncf", "timm", "openvino", "onnx=")), freeze
    version = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2] < (3, 11))"], capture_output=True,
                             text=True).stdout.strip()
    assert version == "True"
    # the suites ship in the wheel: --suite quick anywhere
    shipped = subprocess.run([py, "-c", "import edgevit, pathlib; d = pathlib.Path(edgevit.__file__).parent; print("
                              "sorted(p.name for p in (d / '_suites').glob('*.toml')))"], capture_output=True,
                             text=True, cwd=tmp_path, env=pip_env).stdout
    assert "quick.toml" in shipped, shipped
    edgevit = str(venv / "bin" / "edgevit")
    env = {**pip_env, "HOME": str(tmp_path), "EDGEVIT_QUIET": "1", "PYTHONPATH": str(STANDINS)}
    cpu = _copy(ort_bundle, tmp_path, "cpu")
    trt = _copy(orin_bundle, tmp_path, "trt")
    for args, want in ((["verify", str(cpu)], "ok"), (["predict", str(cpu), str(png)], str(png)),
                       (["time", str(cpu), "--json"], '"p50"'), (["env"], "versions"),
                       (["compile", str(trt)], "top-1 agreement"), (["time", str(trt), "--json"], '"tensorrt"'),
                       (["build", "--model", "vit-tiny"], "")):
        r = subprocess.run([edgevit, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        if args[0] == "build":  # the build side is not installed: one line naming the extra (or the Python floor)
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "edgevit" in r.stderr
            continue
        assert r.returncode == 0, (args, r.stderr[-2000:])
        assert want in r.stdout, (args, r.stdout[-500:])
        if args[-1] == "--json":
            json.loads(r.stdout)


# ------------------------------------------------------------------------------------------ images and docs
@pytest.mark.parametrize("dockerfile,release,python", [("Dockerfile.jetson", "r36", "3.10"),
                                                       ("Dockerfile.jetson-jp5", "r35", "3.8")])
def test_jetson_images_install_the_runtime_over_jetpacks_tensorrt_and_opencv(dockerfile, release, python):
    """No Docker engine here: the image files are read. Each installs only the [jetson] runtime into a venv that
    sees JetPack's TensorRT and GStreamer OpenCV, and never PyPI's OpenCV or torch, which would shadow them."""
    text = (ROOT / dockerfile).read_text()
    assert re.search(rf"^FROM nvcr\.io/nvidia/l4t-jetpack:{release}\.", text, re.M)
    assert "--system-site-packages" in text and '".[jetson]"' in text and "GStreamer" in text
    installs = " ".join(re.findall(r"pip3? install[^\n]*", text))
    assert not re.search(r"opencv|torch|nncf|openvino|\[build\]|\[demo\]", installs), installs
    assert "--runtime nvidia" in text and "EDGEVIT_BOARD" in text
    readme = (ROOT / "docs" / "targets-and-devices.md").read_text()  # the device page the README links
    assert dockerfile in readme and "--runtime nvidia -e EDGEVIT_BOARD" in readme
    assert f"| {python} |" in readme
