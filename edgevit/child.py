"""One function run in a fresh process (``spawn``) that lives and dies with its parent: bench's cells, each with a
peak memory of its own and a crash of its own.

- If the parent dies, even by SIGKILL, the child is killed by the kernel (Linux ``PR_SET_PDEATHSIG``; elsewhere it
  notices its parent is gone within a second) instead of holding its gigabyte forever.
- If the parent is interrupted (Ctrl-C, SIGTERM: :class:`~edgevit.errors.Terminated`), the child gets SIGTERM at
  once, then SIGKILL after ``grace`` seconds; the parent does not wait for the child's work to finish.
- A child that dies without answering (a segfault, the OOM killer) is :class:`ChildDied` with its exit code."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

from edgevit.errors import ChildDied, ChildTimedOut

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child: be killed when ``parent`` dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)
    if not sys.platform.startswith("linux"):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def not_rerunning_main():
    """Around ``start()`` of a ``spawn`` process: the child does not run the parent's ``__main__`` script again.
    spawn imports it anew in every child (so that what it defines unpickles there); edgevit's children run only
    edgevit's own functions, and a user's script without an ``if __name__ == "__main__":`` guard would start its
    whole work again in each child (a build inside a build, which then finds its own output locked)."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__} if main else {}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__.update(saved)


def _main(conn, parent: int, fn, args, kwargs) -> None:
    die_with_parent(parent)
    from edgevit.errors import raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)  # unwinds like Ctrl-C: the child's own staging folders are removed
    try:
        result = (True, fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
        result = (False, e)
    try:
        conn.send(result)
    except Exception as e:  # an exception that does not pickle: its text does
        conn.send((False, RuntimeError(f"{type(result[1]).__name__}: {result[1]}" if not result[0] else str(e))))
    conn.close()


def run_in_child(fn, *args, grace: float = 10.0, timeout: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh spawned process; its return value, or its exception raised here. With
    ``timeout`` (seconds), a child that has not answered by then is stopped and :class:`ChildTimedOut` raised."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_main, args=(send, os.getpid(), fn, args, kwargs))
    with not_rerunning_main():
        proc.start()
    send.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not receive.poll(0.2):
            if deadline is not None and time.monotonic() > deadline:
                raise ChildTimedOut(timeout)
            if not proc.is_alive():
                if receive.poll(0):  # answered just before it ended
                    break
                raise ChildDied(proc.exitcode)
        try:
            ok, value = receive.recv()
        except EOFError:
            proc.join()
            raise ChildDied(proc.exitcode) from None
        proc.join()
    except BaseException:
        if proc.is_alive():  # interrupted or out of time here: stop the child now, not after its work
            proc.terminate()
            proc.join(grace)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise
    finally:
        receive.close()
    if ok:
        return value
    raise value
