"""Progress bars on stderr (tqdm), quiet for short loops and when EDGEVIT_QUIET is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


LOG_INTERVAL_S = 60.0


def progress(it: Iterable[T], desc: str, total: int | None = None, min_total: int = 0, **kw) -> Iterator[T]:
    from tqdm.auto import tqdm

    total = total if total is not None else (len(it) if hasattr(it, "__len__") else None)
    quiet = bool(os.environ.get("EDGEVIT_QUIET")) or (total is not None and total < min_total)
    if not quiet and not sys.stderr.isatty():
        # In a log (nohup, CI) a bar is one endless line: write a plain line once a minute instead.
        return _log_lines(it, desc, total)
    return tqdm(it, desc=desc, total=total, disable=quiet, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


def _log_lines(it: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    import time

    t0 = last = time.perf_counter()
    for i, x in enumerate(it, 1):
        yield x
        now = time.perf_counter()
        if now - last >= LOG_INTERVAL_S and (total is None or i < total):
            last = now
            done = f"{i}/{total} ({100 * i / total:.0f}%)" if total else str(i)
            eta = f", about {(now - t0) / i * (total - i):.0f}s left" if total else ""
            say(f"{desc}: {done} in {now - t0:.0f}s{eta}")


def say(msg: str) -> None:
    """A status line for the user (stderr, so that stdout stays machine-readable)."""
    if not os.environ.get("EDGEVIT_QUIET"):
        print(msg, file=sys.stderr, flush=True)
