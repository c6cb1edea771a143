"""Progress bars and status lines on stderr, and how much of the libraries' own output the user sees.

Verbosity (``edgevit -q``/``-v``, or EDGEVIT_QUIET=1 / EDGEVIT_VERBOSE=1): quiet prints only results and errors;
the default prints edgevit's status lines and progress, and keeps NNCF's, OpenVINO's and torch's progress bars, info
and warnings to themselves (they are not the user's business: edgevit reports what they did); verbose passes them on
to stderr."""

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
            eta = f", about {duration((now - t0) / i * (total - i))} to the end of {desc}" if total else ""
            say(f"{desc}: {done} in {duration(now - t0)}{eta}")


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def verbose() -> bool:
    return bool(os.environ.get("EDGEVIT_VERBOSE")) and not os.environ.get("EDGEVIT_QUIET")


def set_verbosity(level: int) -> None:
    """-1 quiet, 0 default, 1 verbose: for this process and the processes it starts."""
    os.environ.pop("EDGEVIT_QUIET", None)
    os.environ.pop("EDGEVIT_VERBOSE", None)
    if level < 0:
        os.environ["EDGEVIT_QUIET"] = "1"
    elif level > 0:
        os.environ["EDGEVIT_VERBOSE"] = "1"


def library_output():
    """A context for calls into a library that writes progress bars and logs of its own (NNCF's rich bars go to
    stdout, which is kept for results): shown on stderr when verbose, dropped otherwise; its loggers follow."""
    import contextlib
    import logging

    show = verbose()
    for name in ("nncf", "torch", "torchao", "openvino", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.INFO if show else logging.ERROR)
    if show:
        return contextlib.redirect_stdout(sys.stderr)
    import warnings

    stack = contextlib.ExitStack()
    sink = stack.enter_context(open(os.devnull, "w"))
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")  # inside catch_warnings: undone when the context exits
    return stack


def say(msg: str) -> None:
    """A status line for the user (stderr, so that stdout stays machine-readable)."""
    if not os.environ.get("EDGEVIT_QUIET"):
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """Something the user must know even with -q (data left out, results that mean less than they seem)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)
