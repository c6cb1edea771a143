"""The one failure boundary: whatever escapes a command becomes one line on stderr and an exit code.

- An :class:`~edgevit.errors.EdgevitError` is a failure edgevit understood: its message, its exit code.
- An :class:`OSError` is the file system or the OS saying no: the path, the reason, the usual fix.
- Anything else (a RuntimeError from OpenVINO, torch or ONNX Runtime, RecursionError, EOFError, MemoryError, a bug)
  is one line naming the command, the stage it happened in (:func:`stage`), the exception and where its full
  traceback was written (``-v`` also prints it). Where the disk holding a stage's output is full, the line says
  that, whatever the library raised (``ov.save_model`` and ``torch.save`` say "file write failed").

There is no list of exception types someone thought of: the order above is the whole rule."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from edgevit.errors import EdgevitError

_STAGES: list[tuple[str, Path | None]] = []
DURATIONS: dict[str, float] = {}  # seconds of each finished stage of this process's command, in order
_FULL = 1 << 20  # bytes free below which a failure is reported as a full disk
_FIX = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
        errno.EACCES: "check the permissions or write elsewhere", errno.EROFS: "write elsewhere",
        errno.ENOMEM: "close other programs or use fewer/smaller images"}


@contextlib.contextmanager
def stage(name: str, path: str | os.PathLike | None = None) -> Iterator[None]:
    """Name what runs inside the block (and the file or folder it writes), for the failure line; a block that
    finishes adds its seconds to :data:`DURATIONS` (the build's manifest and summary show them)."""
    _STAGES.append((name, Path(path) if path is not None else None))
    t0 = time.perf_counter()
    try:
        yield
        DURATIONS[name] = round(DURATIONS.get(name, 0.0) + time.perf_counter() - t0, 1)
    except BaseException as e:
        if getattr(e, "edgevit_stage", None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                e.edgevit_stage = _STAGES[-1]
        note(e, path)
        raise
    finally:
        _STAGES.pop()


def note(exc: BaseException, where: str | os.PathLike | None) -> None:
    """Record on ``exc`` that the disk holding ``where`` is full right now: called where a write failed, before its
    partial output is removed (which frees the space again), so the failure line can say what really happened."""
    if where is None or getattr(exc, "edgevit_full_disk", None) is not None:
        return
    full = _full_disk(Path(where))
    if full is not None:
        with contextlib.suppress(AttributeError, TypeError):
            exc.edgevit_full_disk = full


def log_dir() -> Path:
    """Where full tracebacks go: ``$EDGEVIT_LOG_DIR``, else ``$XDG_STATE_HOME/edgevit/logs`` (``~/.local/state``)."""
    if os.environ.get("EDGEVIT_LOG_DIR"):
        return Path(os.environ["EDGEVIT_LOG_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgevit" / "logs"


def write_log(exc: BaseException, command: str) -> Path | None:
    """The traceback in a new file (an unpredictable name, created exclusively); None where none can be written."""
    try:
        d = log_dir()
        d.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=time.strftime(f"{command}-%Y%m%d-%H%M%S-"), suffix=".log", dir=d)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.environ.get('EDGEVIT_COMMAND', 'edgevit ' + command)}\n\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return Path(name)
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, RecursionError):
        text = "the input is nested too deeply to read"
    elif isinstance(exc, MemoryError):
        text = "out of memory" + (f" ({text})" if text else "")
    return (text[:300] + " …") if len(text) > 300 else text


def _distributed_peer_lost(exc: BaseException) -> str | None:
    """"R of W" when ``exc`` came out of torch.distributed (a collective) in a torchrun job, else None: under
    torchrun a rank that is killed shows up in every other rank as a gloo/NCCL error in its next collective."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) <= 1:
        return None
    tb = exc.__traceback__
    while tb is not None:
        where = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "torch/distributed/" in where or "torch/nn/parallel/" in where:
            return f"{os.environ.get('RANK', '?')} of {world}"
        tb = tb.tb_next
    # DDP's all-reduce runs in autograd's C++ hooks: no torch.distributed frame, but gloo's or NCCL's own words
    said = type(exc).__name__ == "DistBackendError" or any(w in str(exc) for w in ("gloo", "NCCL", "nccl"))
    return f"{os.environ.get('RANK', '?')} of {world}" if said else None


def _full_disk(where: Path | None) -> Path | None:
    """``where`` (or its nearest existing parent) when the disk holding it has less than 1 MiB left, else None."""
    for p in (where, *(where.parents if where else ())):
        if p is not None and p.exists():
            with contextlib.suppress(OSError):
                if shutil.disk_usage(p).free < _FULL:
                    return p
            return None
    return None


def report(exc: BaseException, command: str, verbose: bool = False) -> tuple[str, int]:
    """The one line for ``exc`` escaping ``command`` and the exit code (see the module docstring)."""
    if isinstance(exc, EdgevitError):
        return " ".join(str(exc).split()), exc.exit_code
    name, where = getattr(exc, "edgevit_stage", None) or (None, None)
    full = getattr(exc, "edgevit_full_disk", None)
    if isinstance(exc, OSError) and exc.errno is not None and full is None:
        path = f" {exc.filename}:" if exc.filename else ""
        fix = _FIX.get(exc.errno, "")
        return f"{path} {exc.strerror or exc}" + (f"; {fix}" if fix else ""), 1
    if full is not None:
        at = f" while {name}" if name and name != command else ""
        return f"{command} failed{at}: no space left on the disk holding {full}; {_FIX[errno.ENOSPC]}", 1
    log = write_log(exc, command)
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    at = f" while {name}" + (f" ({where})" if where else "") if name and name != command else ""
    peer = _distributed_peer_lost(exc)
    if peer:
        at += (f" on rank {peer}: a collective with the other processes failed (another rank stopped or lost its "
               "connection)")
    tail = f"; full traceback in {log}" if log else ""
    fix = " (rerun with -v to print it)" if log and not verbose else ""
    return f"{command} failed{at}: {type(exc).__name__}: {_first_line(exc)}{tail}{fix}", 1
