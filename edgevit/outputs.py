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
- Every temporary file and directory is created here, under an unpredictable name with ``O_CREAT|O_EXCL`` (so a
  planted symlink is never followed) and, for directories, an owner record (:data:`OWNER`) naming the process and the
  output it was made for. Leftovers are recognised by that record, never by their name: a directory edgevit did not
  make is never removed, whatever it is called. The lock file is opened with ``O_NOFOLLOW``.
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
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgevit import failure
from edgevit.errors import EdgevitError, OutputBusyError, OutputExistsError

MARKER = ".edgevit.json"  # written into report/inspect directories: proof that edgevit wrote them
OWNER = ".edgevit-owner"  # written into every temporary directory edgevit makes: who made it, for what
_STAGING = re.compile(r"\.(?P<name>.+)\.(tmp|old)-[A-Za-z0-9_]+$")
WORK_PREFIX = "edgevit-"  # edgevit's work directories under $TMPDIR


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


# ------------------------------------------------------------------------------------------ temporary things
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _record(purpose: str) -> dict:
    pid = os.getpid()
    return {"by": "edgevit", "for": purpose, "pid": pid, "start": _start_time(pid), "boot": _boot_id()}


def temp_dir(parent: str | os.PathLike, prefix: str, purpose: str) -> Path:
    """A new directory under ``parent`` with an unpredictable name (``mkdtemp``: ``O_EXCL``, mode 0700) holding an
    owner record; the caller removes it (or :func:`_remove_leftovers` / :func:`clean_stale_work_dirs` does, later)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        (d / OWNER).write_text(json.dumps(_record(purpose)) + "\n")
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return d


def owner_of(d: Path) -> dict | None:
    """The owner record edgevit wrote into ``d``, or None (not a directory, a symlink, no or another record)."""
    if d.is_symlink() or not d.is_dir():
        return None
    rec = d / OWNER
    try:
        if rec.is_symlink() or not rec.is_file() or rec.stat().st_size > 4096:
            return None
        m = json.loads(rec.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("by") == "edgevit" and isinstance(m.get("pid"), int) else None


def _alive(rec: dict) -> bool:
    """Is the process that wrote ``rec`` still running? (Another boot's process is not; a reused pid is not.)"""
    if rec.get("boot") and rec.get("boot") != _boot_id():
        return False
    pid = rec["pid"]
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not rec.get("start") or _start_time(pid) == rec["start"]


@contextlib.contextmanager
def work_dir(prefix: str = WORK_PREFIX) -> Iterator[Path]:
    """A private work directory under ``$TMPDIR`` for as long as the ``with`` block; first removes the work
    directories that killed edgevit runs left there (only those holding edgevit's owner record of a dead process)."""
    clean_stale_work_dirs()
    d = temp_dir(tempfile.gettempdir(), prefix, "work")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def clean_stale_work_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove ``$TMPDIR/edgevit-*`` directories whose owner record names a process that is gone."""
    removed = []
    root = Path(root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for d in root.iterdir():
            if not d.name.startswith(WORK_PREFIX):
                continue
            rec = owner_of(d)
            if rec and rec.get("for") == "work" and not _alive(rec):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def temp_file_beside(final: str | os.PathLike, suffix: str = "") -> Path:
    """An empty file beside ``final`` under an unpredictable name (``mkstemp``: ``O_CREAT|O_EXCL``, so no planted
    symlink is followed), with the permissions the umask gives; rename it onto ``final`` when it is complete."""
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".partial{suffix}", dir=final.parent)
    os.close(fd)
    _chmod_default(Path(name), directory=False)
    return Path(name)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a :func:`temp_file_beside` path to write; renamed onto ``final`` if the block ends well, removed
    otherwise (a full disk leaves no half-written file)."""
    tmp = temp_file_beside(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as e:
        failure.note(e, tmp)  # a full disk is seen before the partial file is removed (which frees the space)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
        try:  # never through a symlink (a planted one would make us create or lock a file elsewhere)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise OutputExistsError(f"{lock} is a symlink, not edgevit's lock file; remove it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutputExistsError(f"{lock} is not a regular file, so not edgevit's lock file; remove it")
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
    """Staging and swap directories of an earlier run into ``final`` that was killed (only called under the lock):
    those holding edgevit's owner record made for ``final``; a directory named alike without it is the user's."""
    for p in final.parent.iterdir():
        m = _STAGING.fullmatch(p.name)
        if m and m["name"] == final.name:
            rec = owner_of(p)
            if rec and rec.get("for") == final.name:
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
    old = temp_dir(final.parent, f".{final.name}.old-", final.name)
    os.replace(final, old / "x")
    os.replace(stage, final)
    shutil.rmtree(old)


@contextlib.contextmanager
def output_dir(final: str | os.PathLike, kind: str, force: bool = False,
               claimed: bool = False, check=None) -> Iterator[Path]:
    """Claim ``final`` (checked, locked), yield a staging directory beside it, swap it in on success.

    On any error (Ctrl-C and SIGTERM included) the staging directory is removed and ``final`` is left untouched.
    ``claimed``: the caller already holds the lock (:func:`claim`) and ran the check. ``check(stage)``: read the
    finished output back before it is swapped in (a bundle: :func:`edgevit.runtime.bundle.bundle_dir`)."""
    final = Path(final)
    with contextlib.ExitStack() as stack:
        if not claimed:
            stack.enter_context(claim(final, kind, force))
        stage = temp_dir(final.parent, f".{final.name}.tmp-", final.name)
        try:
            _chmod_default(stage, directory=True)
            yield stage
            (stage / OWNER).unlink(missing_ok=True)  # the output itself carries no temporary-directory record
            if kind != "bundle":
                write_json(stage / MARKER, {"kind": kind})
            if check is not None:  # read back by the reader its users use, before anyone is told "ok"
                check(stage)
            check_output(final, kind, force)  # still ours? (anything else appearing meanwhile is refused)
            _commit(stage, final)
        except BaseException as e:
            failure.note(e, stage)
            shutil.rmtree(stage, ignore_errors=True)
            raise


@contextlib.contextmanager
def claim(final: str | os.PathLike, kind: str, force: bool = False) -> Iterator[Path]:
    """Check and lock ``final`` for the whole of a long job, before any work starts."""
    final = Path(final)
    check_output(final, kind, force)
    with made_dirs(final.parent), output_lock(final):
        _remove_leftovers(final)
        check_output(final, kind, force)
        yield final


@contextlib.contextmanager
def made_dirs(path: str | os.PathLike) -> Iterator[Path]:
    """``mkdir -p path`` for the ``with`` block; if the block fails, the directories it made are removed again
    where they are still empty (a failed job leaves no empty ``--out`` behind)."""
    path = Path(path)
    created = [a for a in (path, *path.parents) if not (a.exists() or a.is_symlink())]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputExistsError(f"{file_in_the_way(path / 'x') or path} is a file, not a directory: pass a "
                                "directory to --out") from None
    try:
        yield path
    except BaseException:
        for a in created:
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
    with atomic_file(path) as tmp:
        tmp.write_text(text)


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
