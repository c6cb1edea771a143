"""The deployable bundle: one directory with the compiled model, ``manifest.json`` and ``labels.txt``.

Written into a temporary sibling directory and renamed when complete; every file's sha256 is in the manifest and is
verified on load, so a tampered or truncated bundle is refused."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgevit.errors import BundleError
from edgevit.models import sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("schema_version", "edgevit_version", "model", "preprocessing", "labels", "target", "precision",
                 "backend", "files", "validation", "calibration", "latency_ms")


@contextmanager
def staging_dir(final: Path):
    """A temporary directory beside ``final``; on success it replaces ``final`` (an older bundle of the same name is
    swapped out only once the new one is complete); on any error it is removed and ``final`` is left untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(bundle_dir: Path, manifest: dict) -> dict:
    """Add checksums of the listed files and write ``manifest.json`` (via a temporary file)."""
    files = {}
    for rel in manifest.pop("_files"):
        p = bundle_dir / rel
        if not p.is_file():
            raise BundleError(f"bundle file {rel} was not written")
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest["files"] = files
    manifest["schema_version"] = SCHEMA_VERSION
    return update_manifest(bundle_dir, manifest)


def update_manifest(bundle_dir: Path, manifest: dict) -> dict:
    """(Re)write ``manifest.json`` atomically; the manifest is not among the checksummed files."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"internal error: manifest lacks {missing}")
    tmp = Path(bundle_dir) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, Path(bundle_dir) / MANIFEST)
    return manifest


def read_manifest(bundle_dir: str | os.PathLike, verify: bool = True) -> dict:
    """Load and check a bundle's manifest; with ``verify`` every file's size and sha256 must match."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise BundleError(f"bundle not found: {d} (pass the directory that 'edgevit build' wrote)")
    mp = d / MANIFEST
    if not mp.is_file():
        raise BundleError(f"{d} is not an edgevit bundle: {MANIFEST} is missing")
    try:
        m = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mp} is not valid JSON ({e}); the bundle is damaged, rebuild it") from None
    if m.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{mp}: schema_version {m.get('schema_version')!r} is not supported "
                          f"(this edgevit reads {SCHEMA_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise BundleError(f"{mp} lacks {', '.join(missing)}; the bundle is damaged, rebuild it")
    if verify:
        for rel, info in m["files"].items():
            p = d / rel
            if not p.is_file():
                raise BundleError(f"bundle {d.name}: {rel} is missing; rebuild the bundle")
            size = p.stat().st_size
            if size != info["bytes"]:
                how = "truncated" if size < info["bytes"] else "modified"
                raise BundleError(f"bundle {d.name}: {rel} is {size} bytes, manifest says {info['bytes']} ({how}); "
                                  "rebuild the bundle")
            if sha256_file(p) != info["sha256"]:
                raise BundleError(f"bundle {d.name}: {rel} does not match its sha256 in the manifest (modified "
                                  "after the build); rebuild the bundle")
    return m
