"""Profile bundles on a device from the workstation: plain ``ssh``/``scp`` with the user's own keys and
``~/.ssh/config`` (like a compile-and-profile job on a device farm, with your own device).

For each bundle: copy it to ``~/.cache/edgevit/remote/<run>/`` on the device, run ``edgevit compile`` there when it is
a TensorRT bundle, then ``edgevit time --json`` (its own runtime, on the device), and bring the figures back; the
copy is removed afterwards. The device needs edgevit installed (``EDGEVIT_REMOTE_COMMAND`` says how to call it there,
default ``edgevit``); ``EDGEVIT_SSH_CONFIG`` names another ssh config file (tests use one for a loopback sshd),
``EDGEVIT_REMOTE_DIR`` another work folder on the device."""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from pathlib import Path

from edgevit.errors import RemoteError, UsageError, reading
from edgevit.schema import Fields


class Remote:
    def __init__(self, host: str, timeout: float = 900.0) -> None:
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise UsageError(f"--remote {host!r}: give a host as ssh takes it (user@host or a ~/.ssh/config alias)")
        self.host, self.timeout = host, timeout
        self.command = shlex.split(os.environ.get("EDGEVIT_REMOTE_COMMAND", "edgevit"))
        cfg = os.environ.get("EDGEVIT_SSH_CONFIG")
        self._opts = (["-F", cfg] if cfg else []) + ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        root = os.environ.get("EDGEVIT_REMOTE_DIR", ".cache/edgevit/remote")  # on the device, relative to its ~
        self.base = f"{root.rstrip('/')}/{uuid.uuid4().hex[:12]}"

    def _run(self, argv: list[str], what: str, timeout: float | None = None, remote_timeout: int | None = None) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise RemoteError(f"{argv[0]} is not installed here; --remote needs the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{what} on {self.host} did not finish in {timeout or self.timeout:.0f} s") from None
        if remote_timeout is not None and p.returncode in (124, 137):  # coreutils timeout: it ran out and was ended
            raise RemoteError(f"{what} on {self.host} did not finish in {remote_timeout} s; it was stopped there")
        if p.returncode == 255 and argv[0] in ("ssh", "scp"):
            said = (p.stderr.strip().splitlines() or ["no message"])[-1]
            raise RemoteError(f"cannot reach {self.host} over SSH ({said}); check the host name, that its sshd "
                              "runs, and your keys and ~/.ssh/config (edgevit never asks for a password)")
        if p.returncode:
            said = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["no message"])[-1]
            raise RemoteError(f"{what} failed on {self.host} (exit {p.returncode}): {said}")
        return p.stdout

    def ssh(self, remote_argv: list[str], what: str, timeout: float | None = None) -> str:
        """Run ``remote_argv`` on the device under coreutils ``timeout`` there: when it runs past ``timeout`` the
        device ends it itself (SIGTERM, then SIGKILL 10 s later), so nothing keeps running after we give up. Every
        argument is shell-quoted (``shlex.join``): ssh hands the device's shell one string."""
        t = int(timeout or self.timeout)
        argv = ["timeout", "-k", "10", str(t), *remote_argv]
        out = self._run(["ssh", *self._opts, self.host, "--", shlex.join(argv)], what, t + 30, remote_timeout=t)
        return out

    def check(self) -> dict:
        """Reach the device and ask its edgevit who it is; one clear error when either fails."""
        self.ssh(["true"], "the connection test", timeout=60)
        out = self.ssh([*self.command, "env", "--json"], "edgevit env (is edgevit installed there?)", timeout=300)
        return check_env_answer(self._answer(out, "edgevit env --json"), self.host)

    def _answer(self, out: str, what: str):
        from edgevit.outputs import loads

        with reading(f"what {what} on {self.host} printed as JSON", RemoteError,
                     "is the device's edgevit this version?"):
            return loads(out)

    def profile(self, bundle: Path, compile_engine: bool, throughput_batch: int) -> dict:
        """Copy ``bundle`` to the device, compile it there when asked, time it there; returns its JSON figures."""
        where = f"{self.base}/{bundle.name}"
        self.ssh(["mkdir", "-p", self.base], "creating the work folder")
        try:
            self._run(["scp", *self._opts, "-q", "-r", str(bundle), f"{self.host}:{self.base}/"], "copying the bundle")
            if compile_engine:
                self.ssh([*self.command, "compile", where], "edgevit compile")
            out = self.ssh([*self.command, "time", where, "--json", "--throughput-batch", str(throughput_batch)],
                           "edgevit time")
        finally:
            try:
                self.ssh(["rm", "-rf", where], "removing the copy", timeout=120)
            except RemoteError:
                pass
        return check_time_answer(self._answer(out, "edgevit time --json"), self.host)

    def close(self) -> None:
        try:
            self.ssh(["rm", "-rf", self.base], "removing the work folder", timeout=120)
        except RemoteError:
            pass


def _fields(host: str, what: str) -> Fields:
    return Fields(lambda field, why: RemoteError(f"{what} on {host} answered {field} that {why}; is the device's "
                                                 "edgevit this version?"))


def check_env_answer(d, host: str) -> dict:
    """``edgevit env --json`` from a device: the fields bench reads, typed, names one printable line."""
    f = _fields(host, "edgevit env --json")
    h = f.get(d, "host", "", dict)
    for k in ("cpu", "arch"):
        f.text(h, k, "host", max_len=200)
    f.int(h, "cores", "host", 1, 1 << 16, optional=True)
    isa = f.get(h, "isa", "host", list, optional=True) or []
    for i, x in enumerate(isa):
        f.check_text(x, f"host.isa[{i}]", 40)
    f.text(d, "board", "", optional=True, max_len=200)
    versions = f.get(d, "versions", "", dict, optional=True) or {}
    for k, v in versions.items():
        f.check_text(k, "versions (a key)", 60)
        if v is not None and not isinstance(v, str):
            raise f.fail(f"versions.{k}", f"must be a string, not {type(v).__name__}")
        if v:
            f.check_text(v, f"versions.{k}", 200)
    return d


def check_time_answer(d, host: str) -> dict:
    """``edgevit time --json`` from a device: finite, positive latencies in order, a finite throughput."""
    f = _fields(host, "edgevit time --json")
    lat = f.get(d, "latency_ms", "", dict)
    p50 = f.number(lat, "p50", "latency_ms", 0.0, 1e7, above=True)
    p90 = f.number(lat, "p90", "latency_ms", p50, 1e7)
    f.number(lat, "p99", "latency_ms", p90, 1e7)
    f.number(d, "throughput", "", 0.0, 1e9)
    f.text(d, "executed", "", optional=True, max_len=40)
    samples = f.get(lat, "samples", "latency_ms", list, optional=True) or []
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1e7 for x in samples):
        raise f.fail("latency_ms.samples", "must be finite positive numbers")
    return d
