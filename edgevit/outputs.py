"""The one writer of everything edgevit puts on disk.

Rules, enforced here and nowhere else:

- edgevit replaces a directory only if it is an edgevit output of the same kind (a bundle with a readable manifest,
  a report or inspect page with edgevit's marker), or an empty directory. Anything else at the path is an
  :class:`OutputExistsError` naming the path and the fix (``--force``, or another ``--out``/``--name``); nothing is
  touched. ``force`` never replaces ``/``, the home directory, the working directory or one of its ancestors.
- A directory output is built in a staging directory beside its final path and swapped in at the end with an atomic
  ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it). A lock per output path, held from the
  claim to the swap, makes a second writer of the same path fail at once with one line instead of racing; staging
  and swap leftovers of a killed run are removed by the next run that takes the lock.
- Outputs get the permissions the umask gives (``mkdtemp`` would make them 0700).
- JSON is written strictly (``allow_nan=False``): a NaN is a bug, never a number in a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgevit.errors import EdgevitError, UsageError

MARKER = ".edgevit.json"  # written into report/inspect directories: proof that edgevit wrote them
_STAGING = re.compile(r"\.(?P<name>.+)\.(tmp|old)-[A-Za-z0-9_]+$")


class OutputExistsError(UsageError):
    """The output path holds something edgevit did not write."""


class OutputBusyError(EdgevitError):
    """Another edgevit process is writing the same output right now."""


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


# ------------------------------------------------------------------------------------------------- ownership
def _is_bundle(d: Path) -> bool:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "schema_version" in m and "edgevit_version" in m


# What report/inspect directories held before they carried the marker: such a directory holding nothing else is
# edgevit's own, so upgrading edgevit does not break a nightly job that rewrites its report.
_LEGACY = {"report": {"report.html", "summary.md", "pareto.png", "trends.png"},
           "inspect": {"index.html", "patch_filters.png", "position_similarity.png", "attention_distance.png",
                       "layer_sqnr.png"}}


def _has_marker(d: Path, kind: str) -> bool:
    try:
        m = json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        names = {p.name for p in d.iterdir()}
        legacy = _LEGACY.get(kind, set())
        return bool(names) and names <= legacy and ("report.html" in names or "index.html" in names) and all(
            (d / n).is_file() and not (d / n).is_symlink() for n in names)
    return isinstance(m, dict) and m.get("kind") == kind


def owned_by_edgevit(path: Path, kind: str) -> bool:
    """Is ``path`` an edgevit output of ``kind`` (or an empty directory) that a new one may replace?"""
    if path.is_symlink() or not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    return _is_bundle(path) if kind == "bundle" else _has_marker(path, kind)


def _protected(path: Path) -> bool:
    """Paths ``--force`` never replaces: the root, the home directory, the working directory and its ancestors."""
    p = path.resolve()
    cwd = Path.cwd().resolve()
    return p == Path(p.anchor) or p == Path.home().resolve() or p == cwd or p in cwd.parents


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a directory (so ``path`` cannot be made), else None."""
    for a in Path(path).parents:
        if a.exists() or a.is_symlink():
            return None if a.is_dir() else a
    return None


def check_output(final: Path, kind: str, force: bool = False) -> None:
    """Refuse ``final`` up front unless edgevit may write it (see the module docstring)."""
    blocker = file_in_the_way(final)
    if blocker:
        raise OutputExistsError(f"{blocker} is a file, not a directory: pass a directory to --out")
    if not (final.exists() or final.is_symlink()):
        return
    what = "a file" if not final.is_dir() or final.is_symlink() else "a directory edgevit did not write"
    if owned_by_edgevit(final, kind):
        return
    if force and not _protected(final):
        return
    listing = ""
    if final.is_dir() and not final.is_symlink():
        names = sorted(p.name for p in final.iterdir())
        listing = f" (it holds {', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
    fix = ("it is protected even with --force: choose another --out/--name" if force else
           "pass --force to replace it, or choose another --out/--name")
    raise OutputExistsError(f"{final} exists and is {what}, not an edgevit {kind}{listing}; {fix}")


# ----------------------------------------------------------------------------------------------------- locking
@contextlib.contextmanager
def output_lock(final: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``final`` (a ``.NAME.lock`` file beside it, removed on release)."""
    lock = final.with_name(f".{final.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"another edgevit process is writing {final} right now; wait for it to finish or "
                                  "choose another --out/--name") from None
        try:  # the previous holder may have unlinked the file we opened: then lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _remove_leftovers(final: Path) -> None:
    """Staging and swap directories of an earlier run into ``final`` that was killed (only called under the lock)."""
    for p in final.parent.iterdir():
        m = _STAGING.fullmatch(p.name)
        if m and m["name"] == final.name and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the kernel or libc lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(stage: Path, final: Path) -> None:
    if final.is_symlink() or final.is_file():
        final.unlink()  # only reached with --force (check_output ran under the same lock)
    if not final.exists():
        os.replace(stage, final)
        return
    if _exchange(stage, final):
        shutil.rmtree(stage)  # now holds the old output
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old / "x")
    os.replace(stage, final)
    shutil.rmtree(old)


@contextlib.contextmanager
def output_dir(final: str | os.PathLike, kind: str, force: bool = False,
               claimed: bool = False) -> Iterator[Path]:
    """Claim ``final`` (checked, locked), yield a staging directory beside it, swap it in on success.

    On any error (Ctrl-C and SIGTERM included) the staging directory is removed and ``final`` is left untouched.
    ``claimed``: the caller already holds the lock (:func:`claim`) and ran the check."""
    final = Path(final)
    with contextlib.ExitStack() as stack:
        if not claimed:
            stack.enter_context(claim(final, kind, force))
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            _chmod_default(stage, directory=True)
            yield stage
            if kind != "bundle":
                write_json(stage / MARKER, {"kind": kind})
            check_output(final, kind, force)  # still ours? (anything else appearing meanwhile is refused)
            _commit(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


@contextlib.contextmanager
def claim(final: str | os.PathLike, kind: str, force: bool = False) -> Iterator[Path]:
    """Check and lock ``final`` for the whole of a long job, before any work starts."""
    final = Path(final)
    check_output(final, kind, force)
    created = [a for a in (final.parent, *final.parent.parents) if not a.exists()]
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputExistsError(f"{final.parent} is a file, not a directory: pass a directory to --out") from None
    try:
        with output_lock(final):
            _remove_leftovers(final)
            check_output(final, kind, force)
            yield final
    except BaseException:
        for a in created:  # a failed job leaves no empty --out directories it made
            with contextlib.suppress(OSError):
                a.rmdir()
        raise


# ------------------------------------------------------------------------------------------------------- files
def check_output_file(path: str | os.PathLike, what: str, force: bool = False) -> Path:
    """A single output file (video, JSON lines): refuse a directory, and an existing file unless ``force``."""
    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"{what} {p} is a directory; pass a file path")
    blocker = file_in_the_way(p)
    if blocker:
        raise OutputExistsError(f"{what} {p}: {blocker} is a file, not a directory")
    if (p.exists() or p.is_symlink()) and not force:
        raise OutputExistsError(f"{what} {p} already exists; pass --force to replace it, or choose another path")
    return p


def dumps(obj, indent: int | None = None) -> str:
    """Strict JSON: NaN and infinities are refused, never written."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as e:
        raise EdgevitError(f"internal error: refusing to write a non-finite number as JSON ({e})") from None


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """Strict JSON, written to a temporary name and renamed."""
    write_text(path, dumps(obj, indent=indent) + "\n")


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def loads(text: str):
    """Strict JSON reading: ``NaN``/``Infinity`` are refused."""
    return json.loads(text, parse_constant=_reject_constant)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)
