"""Profile bundles on a device from the workstation: plain ``ssh``/``scp`` with the user's own keys and
``~/.ssh/config`` (like a compile-and-profile job on a device farm, with your own device).

For each bundle: copy it to ``~/.cache/edgevit/remote/<run>/`` on the device, run ``edgevit compile`` there when it is
a TensorRT bundle, then ``edgevit time --json`` (its own runtime, on the device), and bring the figures back; the
copy is removed afterwards. The device needs edgevit installed (``EDGEVIT_REMOTE_COMMAND`` says how to call it there,
default ``edgevit``); ``EDGEVIT_SSH_CONFIG`` names another ssh config file (tests use one for a loopback sshd)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path

from edgevit.errors import EdgevitError, UsageError


class RemoteError(EdgevitError):
    """The device cannot be reached, or a command there failed."""


class Remote:
    def __init__(self, host: str, timeout: float = 900.0) -> None:
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise UsageError(f"--remote {host!r}: give a host as ssh takes it (user@host or a ~/.ssh/config alias)")
        self.host, self.timeout = host, timeout
        self.command = shlex.split(os.environ.get("EDGEVIT_REMOTE_COMMAND", "edgevit"))
        cfg = os.environ.get("EDGEVIT_SSH_CONFIG")
        self._opts = (["-F", cfg] if cfg else []) + ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        self.base = f".cache/edgevit/remote/{uuid.uuid4().hex[:12]}"

    def _run(self, argv: list[str], what: str, timeout: float | None = None) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise RemoteError(f"{argv[0]} is not installed here; --remote needs the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{what} on {self.host} did not finish in {timeout or self.timeout:.0f} s") from None
        if p.returncode == 255 and argv[0] in ("ssh", "scp"):
            said = (p.stderr.strip().splitlines() or ["no message"])[-1]
            raise RemoteError(f"cannot reach {self.host} over SSH ({said}); check the host name, that its sshd "
                              "runs, and your keys and ~/.ssh/config (edgevit never asks for a password)")
        if p.returncode:
            said = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["no message"])[-1]
            raise RemoteError(f"{what} failed on {self.host} (exit {p.returncode}): {said}")
        return p.stdout

    def ssh(self, remote_argv: list[str], what: str, timeout: float | None = None) -> str:
        return self._run(["ssh", *self._opts, self.host, "--", shlex.join(remote_argv)], what, timeout)

    def check(self) -> dict:
        """Reach the device and ask its edgevit who it is; one clear error when either fails."""
        self.ssh(["true"], "the connection test", timeout=60)
        out = self.ssh([*self.command, "env", "--json"], "edgevit env (is edgevit installed there?)", timeout=300)
        try:
            return json.loads(out)
        except ValueError:
            raise RemoteError(f"edgevit on {self.host} answered something that is not JSON; is it this version "
                              "of edgevit?") from None

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
        try:
            return json.loads(out)
        except ValueError:
            raise RemoteError(f"edgevit time on {self.host} did not print JSON") from None

    def close(self) -> None:
        try:
            self.ssh(["rm", "-rf", self.base], "removing the work folder", timeout=120)
        except RemoteError:
            pass
