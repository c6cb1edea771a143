"""The deployable bundle: one directory with the compiled model, ``manifest.json`` and ``labels.txt``.

This module is the only reader and writer of manifests. A bundle is trusted only after :func:`read_manifest` has
checked, in this order, without opening any file the manifest names before its path is proven safe:

1. the manifest is strict JSON (no NaN/Infinity) of the one schema (:func:`validate_manifest`; its types and the
   typed view readers get, :class:`~edgevit.runtime.manifest.Manifest`, are in :mod:`edgevit.runtime.manifest`):
   every field has the right type and range, names are known (precision, backend, interpolation), sizes are
   positive, labels match the class count;
2. every path in ``files`` is relative, normalised, inside the bundle, and a regular file reached through no
   symlink; the bundle holds no file the manifest does not list (nothing unlisted can be loaded);
3. the files the bundle's backend loads (IR xml + bin, ONNX and its external data, engine, plan) and ``labels.txt``
   are all listed, and ``labels.txt`` says what the manifest's labels say;
4. every file's size and sha256 match.

Anything else is a :class:`~edgevit.errors.BundleError` ("damaged bundle", exit 1) naming the field or file.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path, PurePosixPath

from edgevit.errors import BundleError, reading
from edgevit.outputs import dumps, loads, sha256_file, write_text
from edgevit.runtime.manifest import BASELINES, SECTIONS, Manifest
from edgevit.schema import Fields
from edgevit.targets import PRECISIONS

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.txt"
STATUSES = ("ok", "failed-validation")
MAX_SIDE = 4096  # no bundle's input is larger: the preprocessing of a damaged manifest must not allocate gigabytes
MAX_CLASSES = 1_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}")


def bundle_dir(final: str | os.PathLike, force: bool = False, claimed: bool = False):
    """:func:`edgevit.outputs.output_dir` for a bundle: the finished bundle is read back by :func:`read_manifest`
    (the reader verify and predict use) before it is swapped in."""
    from edgevit.outputs import output_dir

    return output_dir(final, "bundle", force, claimed=claimed, check=read_manifest)


# ------------------------------------------------------------------------------------------------------ schema
def _fail(field: str, why: str) -> BundleError:
    return BundleError(f"damaged bundle: manifest field {field!r} {why}; rebuild the bundle")


_F = Fields(_fail)
_get, _int, _numbers, _choice = _F.get, _F.int, _F.numbers, _F.choice


def validate_manifest(m) -> dict:
    """Check a parsed manifest against the schema; returns it unchanged or raises BundleError naming the field."""
    from edgevit.runtime.images import INTERPOLATIONS

    if not isinstance(m, dict):
        raise BundleError(f"damaged bundle: {MANIFEST} holds {type(m).__name__}, not an object; rebuild the bundle")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{MANIFEST}: schema_version {m.get('schema_version')!r} is not supported (this edgevit "
                          f"reads {SCHEMA_VERSION}); rebuild the bundle with this edgevit")
    _get(m, "edgevit_version", "", str)
    model = _get(m, "model", "", dict)
    for k in ("alias", "timm_name", "family"):
        _get(model, k, "model", str)
    classes = _int(model, "num_classes", "model", 1, MAX_CLASSES)
    size = _get(model, "input_size", "model", list)
    if len(size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE
                                 for s in size):
        raise _fail("model.input_size", f"must be [channels, height, width] of integers 1..{MAX_SIDE}, got {size!r}")
    _get(model, "random_init", "model", bool, optional=True)
    for k in ("weights", "weights_sha256"):
        _get(model, k, "model", str, optional=True)

    pre = _get(m, "preprocessing", "", dict)
    psize = _get(pre, "input_size", "preprocessing", list)
    if psize != size[1:]:
        raise _fail("preprocessing.input_size", f"is {psize!r}, but model.input_size is {size!r}")
    _int(pre, "resize", "preprocessing", min(size[1:]), 2 * MAX_SIDE)
    _choice(pre, "interpolation", "preprocessing", INTERPOLATIONS)
    _numbers(pre, "mean", "preprocessing", 3)
    _numbers(pre, "std", "preprocessing", 3, positive=True)
    _choice(pre, "channels", "preprocessing", ("RGB",), optional=True)
    _choice(pre, "layout", "preprocessing", ("NCHW",), optional=True)

    labels = _get(m, "labels", "", list)
    for i, x in enumerate(labels):
        _F.check_text(x, f"labels[{i}]")
    if len(labels) != classes:
        raise _fail("labels", f"has {len(labels)} labels for model.num_classes {classes}")

    _validate_target_and_backend(m)

    files = _get(m, "files", "", dict)
    if not files:
        raise _fail("files", "lists no files")
    for rel, info in files.items():
        where = f"files[{rel!r}]"
        if not isinstance(info, dict):
            raise _fail(where, f"must be an object with sha256 and bytes, not {type(info).__name__}")
        digest = _get(info, "sha256", where, str)
        if not _HEX64.fullmatch(digest):
            raise _fail(f"{where}.sha256", "is not a sha256 hex digest")
        _int(info, "bytes", where, 1, 1 << 40)

    for k in ("validation", "latency_ms"):
        _get(m, k, "", dict)
    baselines = _get(m["latency_ms"], "baselines", "latency_ms", dict, optional=True) or {}
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise _fail("latency_ms.baselines", f"has {', '.join(map(repr, unknown))}, not one of {', '.join(BASELINES)}")
    for k in ("calibration", "accuracy_gate", "qat", "selection", "recipe_search", "token_search", "latency_budget",
              "provenance", "profile"):
        _get(m, k, "", dict, optional=True)
    check = _get(m, "device_check", "", dict, optional=True)
    if check is not None:
        for k in ("inputs", "reference"):
            if _get(check, k, "device_check", str) not in files:
                raise _fail(f"device_check.{k}", "names a file the manifest does not list")
        _int(check, "samples", "device_check", 1, 1024)
        b = _get(check, "bounds", "device_check", dict)
        for k in ("min_top1_agreement", "max_abs_logit_diff"):
            v = _get(b, k, "device_check.bounds", (int, float))
            if not math.isfinite(v) or v < 0:
                raise _fail(f"device_check.bounds.{k}", f"is {v!r}, not a finite number >= 0")
    unknown = sorted(set(m) - set(SECTIONS))
    if unknown:
        raise _fail(unknown[0], "is not a section this edgevit writes")
    _choice(m, "status", "", STATUSES, optional=True)
    _choice(m, "requested_precision", "", ("best",), optional=True)
    return m


def _validate_target_and_backend(m: dict) -> None:
    """The target profile is a valid Target, allows the precision, and names the manifest's backend."""
    from edgevit._registry import BACKENDS
    from edgevit.targets import Target

    target = _get(m, "target", "", dict)
    for name, f in Target.__dataclass_fields__.items():
        if name in target and name != "path":
            kinds = {"int": int, "str": str, "bool": bool, "tuple": list}.get(str(f.type), object)
            _get(target, name, "target", kinds)
    _get(target, "name", "target", str)
    try:
        Target.from_dict(target)
    except (TypeError, ValueError, Exception) as e:  # TargetError names the field
        raise _fail("target", f"is not a valid target profile ({e})") from None

    precision = _choice(m, "precision", "", PRECISIONS)
    if precision not in target.get("precisions", PRECISIONS):
        raise _fail("precision", f"is {precision!r}, which target {target['name']!r} does not allow")
    backend = _get(m, "backend", "", dict)
    _choice(backend, "name", "backend", tuple(BACKENDS))
    _get(backend, "version", "backend", str)
    if backend["name"] != target.get("backend", backend["name"]):
        raise _fail("backend.name", f"is {backend['name']!r} but the target's backend is {target['backend']!r}")
    _get(backend, "runtime", "backend", dict, optional=True)


# ------------------------------------------------------------------------------------------------------- paths
def safe_member(bundle: Path, rel: str) -> Path:
    """``bundle/rel`` if ``rel`` is a relative, normalised path inside the bundle reached through no symlink and
    naming a regular file; BundleError otherwise. Nothing is opened."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise BundleError(f"damaged bundle: file name {rel!r} is not a plain relative path; rebuild the bundle")
    pp = PurePosixPath(rel)
    if pp.is_absolute() or str(pp) != rel or any(part in ("..", ".", "") for part in pp.parts):
        raise BundleError(f"damaged bundle: {rel!r} points outside the bundle or is not normalised; refusing it "
                          "(rebuild the bundle)")
    p = bundle
    for i, part in enumerate(pp.parts):
        p = p / part
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise BundleError(f"bundle {bundle.name}: {rel} is missing; rebuild the bundle") from None
        if stat.S_ISLNK(st.st_mode):
            raise BundleError(f"damaged bundle: {rel} is (or passes through) a symlink; bundles hold only regular "
                              "files, rebuild the bundle")
        last = i == len(pp.parts) - 1
        if last and not stat.S_ISREG(st.st_mode):
            raise BundleError(f"damaged bundle: {rel} is not a regular file; rebuild the bundle")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise BundleError(f"damaged bundle: {rel} is not inside a directory of the bundle; rebuild the bundle")
    return p


def _unlisted(bundle: Path, listed: set[str]) -> list[str]:
    found = []
    for root, dirs, names in os.walk(bundle):
        for n in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = PurePosixPath(os.path.relpath(os.path.join(root, n), bundle)).as_posix()
            if rel != MANIFEST and rel not in listed:
                found.append(rel)
    return sorted(found)


# ---------------------------------------------------------------------------------------------------- read/write
def read_manifest(bundle_dir: str | os.PathLike, verify: bool = True) -> Manifest:
    """Load a bundle's manifest and prove the bundle is what it says (see the module docstring); ``verify=False``
    skips only the checksums."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise BundleError(f"bundle not found: {d} (pass the directory that 'edgevit build' wrote)")
    d = d.resolve()
    mp = d / MANIFEST
    if mp.is_symlink() or not mp.is_file():
        raise BundleError(f"{d} is not an edgevit bundle: {MANIFEST} is missing (or not a regular file)")
    with reading(f"{mp}: damaged bundle", BundleError, "rebuild the bundle"):
        m = loads(mp.read_text())
        validate_manifest(m)
    m = Manifest(m)
    listed = set(m.files)
    for rel in sorted(listed):
        safe_member(d, rel)
    extra = _unlisted(d, listed)
    if extra:
        raise BundleError(f"damaged bundle: {d.name} holds {', '.join(extra[:3])}, which its manifest does not list; "
                          "rebuild the bundle (or remove what was added)")
    from edgevit._registry import get_backend

    need = {LABELS, *get_backend(m.backend.name).required_files(d, m)}
    missing = sorted(need - listed)
    if missing:
        raise BundleError(f"damaged bundle: the runtime loads {', '.join(missing)}, which the manifest does not list; "
                          "rebuild the bundle")
    if verify:
        for rel, info in sorted(m.files.items()):
            p = d / rel
            size = p.stat().st_size
            if size != info["bytes"]:
                how = "truncated" if size < info["bytes"] else "modified"
                raise BundleError(f"bundle {d.name}: {rel} is {size} bytes, manifest says {info['bytes']} ({how}); "
                                  "rebuild the bundle")
            if sha256_file(p) != info["sha256"]:
                raise BundleError(f"bundle {d.name}: {rel} does not match its sha256 in the manifest (modified "
                                  "after the build); rebuild the bundle")
    try:
        text = (d / LABELS).read_text()
    except UnicodeDecodeError:
        raise BundleError(f"damaged bundle: {LABELS} is not UTF-8 text; rebuild the bundle") from None
    if text.splitlines() != m.labels:
        raise BundleError(f"damaged bundle: {LABELS} does not match the manifest's labels; rebuild the bundle")
    return m


def write_manifest(bundle_dir: Path, listed, **sections) -> Manifest:
    """The one builder of a manifest: the build's ``sections`` (each one of :data:`SECTIONS`), this edgevit's
    version, the schema version and the sizes and checksums of the ``listed`` files (relative paths), written as
    ``manifest.json`` after :func:`validate_manifest`."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise TypeError(f"write_manifest: not manifest sections: {', '.join(unknown)}")
    from edgevit import __version__

    manifest = {"edgevit_version": __version__, **sections}
    files = {}
    for rel in sorted(set(listed)):
        p = bundle_dir / rel
        if p.is_symlink() or not p.is_file():
            raise BundleError(f"internal error: bundle file {rel} was not written")
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest["files"] = files
    manifest["schema_version"] = SCHEMA_VERSION
    return update_manifest(bundle_dir, manifest)


def update_manifest(bundle_dir: Path, manifest: dict) -> Manifest:
    """(Re)write ``manifest.json`` atomically as strict JSON, after checking it against the schema."""
    validate_manifest(manifest)
    write_text(Path(bundle_dir) / MANIFEST, dumps(manifest, indent=2) + "\n")
    return Manifest(manifest)
