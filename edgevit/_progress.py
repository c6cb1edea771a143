"""Progress bars on stderr (tqdm), quiet for short loops and when EDGEVIT_QUIET is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(it: Iterable[T], desc: str, total: int | None = None, min_total: int = 0, **kw) -> Iterator[T]:
    from tqdm.auto import tqdm

    total = total if total is not None else (len(it) if hasattr(it, "__len__") else None)
    # Bars only on a terminal: in logs and CI the status lines from say() carry the progress.
    disable = (bool(os.environ.get("EDGEVIT_QUIET")) or not sys.stderr.isatty()
               or (total is not None and total < min_total))
    return tqdm(it, desc=desc, total=total, disable=disable, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


def say(msg: str) -> None:
    """A status line for the user (stderr, so that stdout stays machine-readable)."""
    if not os.environ.get("EDGEVIT_QUIET"):
        print(msg, file=sys.stderr, flush=True)
