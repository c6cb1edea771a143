"""Every error edgevit raises on purpose. The CLI prints one line per error and exits with its ``exit_code``."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator


class EdgevitError(Exception):
    """Base class: a failure the user can act on; exit code 1."""

    exit_code = 1


class UsageError(EdgevitError):
    """The command was asked for something that does not exist or does not fit; exit code 2."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A model, target, precision, backend or dataset name that edgevit does not know."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str = "") -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        else:
            msg += f"; choose one of: {', '.join(choices)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.name = name
        self.choices = choices


class DatasetError(UsageError):
    """A dataset that is missing, empty or unreadable."""


class ImageError(UsageError):
    """An image file that is missing, empty or not an image."""


class WeightsError(UsageError):
    """Weights that cannot be read or do not fit the model."""


class TargetError(UsageError):
    """A target profile that is malformed or asks for something its backend cannot do."""


class BackendUnavailableError(EdgevitError):
    """The backend a target needs is not installed or cannot run on this host."""


class BundleError(EdgevitError):
    """A bundle that is missing files, tampered with, truncated or of an unknown schema."""


class ValidationFailedError(EdgevitError):
    """A built artifact whose measured accuracy or outputs fail a check."""


class OutputExistsError(UsageError):
    """The output path holds something edgevit did not write."""


class OutputBusyError(EdgevitError):
    """Another edgevit process is writing the same output right now."""


class SourceError(UsageError):
    """A camera, stream, file or directory that cannot be opened."""


class RemoteError(EdgevitError):
    """The device cannot be reached, or a command there failed."""


class CudaError(EdgevitError, RuntimeError):
    """A CUDA runtime call failed; ``code`` is the cudaError_t value."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EngineError(EdgevitError, RuntimeError):
    """A TensorRT engine that fails to run."""


class ToolError(EdgevitError, RuntimeError):
    """An outside tool edgevit runs (OpenVINO's benchmark_app) that failed."""


class MeasurementError(EdgevitError, RuntimeError):
    """A timing worker process that could not start or run its candidate."""


def raise_terminated(signum, _frame) -> None:
    """The SIGTERM handler of the CLI and of its child processes: :class:`Terminated` unwinds like Ctrl-C, so staging
    directories are removed and the demo's outputs finished."""
    raise Terminated(signum)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``systemctl stop``, ``kill``): unwinds exactly like Ctrl-C, so a build removes its staging directory
    and the demo finishes its video and JSON lines; the CLI exits 143."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def reading(what: str, error: type[EdgevitError] = UsageError, fix: str = "", verb: str = "read") -> Iterator[None]:
    """The one boundary of a reader of outside input (a file, a device's answer, a cache): whatever its parser
    raises that is not already ours becomes ``error("cannot read WHAT (Type: message); FIX")``. Not a list of the
    exceptions someone thought of: a reader either returns a checked record or raises its one error."""
    try:
        yield
    except EdgevitError:
        raise
    except Exception as e:
        detail = "it is nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split())[:200]
        raise error(f"cannot {verb} {what} ({type(e).__name__}: {detail})" + (f"; {fix}" if fix else "")) from None


# Signals between edgevit's own parts, caught where they are raised for (never one of the CLI's lines as they are)
class ChildDied(Exception):
    """The child process ended without returning (killed by a signal or crashed)."""

    def __init__(self, exitcode: int | None) -> None:
        how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"it ended with {how}")
        self.exitcode = exitcode


class ChildTimedOut(Exception):
    """The child did not answer within its time limit; it was stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"it did not finish within {seconds:g} s and was stopped")
        self.seconds = seconds


class AccuracyControlTimeout(Exception):
    """Accuracy-aware PTQ did not finish within :data:`edgevit.quantize.AC_TIME_LIMIT_S`."""
