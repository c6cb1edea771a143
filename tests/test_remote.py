"""``bench --remote``: profile on a device over plain ssh/scp. The device here is an sshd the test starts on
127.0.0.1 (Debian's openssh-server), with its own host key and the test's own client key, and the remote side runs
cpu-x86 cells with the same edgevit."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
QUICK = Path(__file__).resolve().parent.parent / "benchmarks" / "suites" / "quick.toml"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ssh_config(d: Path, alias: str, port: int) -> None:
    with open(d / "ssh_config", "a") as f:
        f.write(f"""Host {alias}
  HostName 127.0.0.1
  Port {port}
  User {getpass.getuser()}
  IdentityFile {d / 'id'}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
""")


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """An sshd on 127.0.0.1 and an ssh config naming it ``edgevit-device``; ``edgevit-down`` is a closed port."""
    if not (os.path.isfile(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen")):
        pytest.skip("openssh-server is not installed (apt-get install openssh-server); .ci/run installs it")
    d = tmp_path_factory.mktemp("device")
    for key in ("hostkey", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'hostkey'}
AuthorizedKeysFile {d / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
PidFile {d / 'sshd.pid'}
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.terminate()
        pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
    _ssh_config(d, "edgevit-device", port)
    _ssh_config(d, "edgevit-down", _free_port())
    env = {"EDGEVIT_SSH_CONFIG": str(d / "ssh_config"), "EDGEVIT_REMOTE_DIR": str(d / "remote-work"),
           "EDGEVIT_REMOTE_COMMAND": f"{sys.executable} -m edgevit"}  # the same edgevit, as the device's
    yield env
    proc.terminate()
    proc.wait(timeout=10)


def test_bench_remote_times_on_the_device_and_report_merges_hosts(device, tmp_path, monkeypatch):
    import sqlite3

    from edgevit.bench import bench
    from edgevit.report import report

    for k, v in device.items():
        monkeypatch.setenv(k, v)
    local_db, remote_db = tmp_path / "local.sqlite", tmp_path / "device.sqlite"
    suite = tmp_path / "int8.toml"  # the quick suite's INT8 cells only: what the device compiles and times
    suite.write_text(QUICK.read_text().replace('precisions = ["fp32", "int8"]', 'precisions = ["int8"]'))
    assert suite.read_text() != QUICK.read_text()
    bench(str(suite), db_path=str(local_db), only="vit")
    run, cells = bench(str(suite), db_path=str(remote_db), only="vit", remote="edgevit-device")
    assert run["env"]["remote"]["host"] == "edgevit-device"
    assert [c["status"] for c in cells] == ["passed"], [c.get("error") for c in cells]
    for c in cells:
        r = c["details"]["remote"]
        assert r["latency_ms"]["p50"] == c["p50"] > 0 and c["throughput"] == r["throughput"] > 0
        assert c["torch_p50"] is None  # the workstation's peers are not the device's
    stored = sqlite3.connect(remote_db).execute("SELECT env FROM runs").fetchone()[0]
    assert "edgevit-device" in stored
    out, found = report([str(local_db), str(remote_db)], str(tmp_path / "rep"))
    page = (out / "report.html").read_text()
    assert page.count('<h2 class="device">') == 2 and "edgevit-device" in page
    assert found == []
    work = Path(device["EDGEVIT_REMOTE_DIR"])  # the test's own folder on the device (a loopback one: here)
    assert not work.exists() or list(work.iterdir()) == []  # the copies on the device were removed


def test_unreachable_device_is_one_line_before_any_cell(device, tmp_path, capsys, monkeypatch):
    from edgevit.cli import main

    for k, v in device.items():
        monkeypatch.setenv(k, v)
    rc = main(["bench", "--suite", str(QUICK), "--db", str(tmp_path / "h.sqlite"), "--remote", "edgevit-down"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "cannot reach edgevit-down over SSH" in err
    assert not (tmp_path / "h.sqlite").exists()  # nothing ran, nothing was recorded


def test_remote_host_argument_is_checked():
    from edgevit.errors import UsageError
    from edgevit.remote import Remote

    for bad in ("", "-oProxyCommand=x", "user@host name"):
        with pytest.raises(UsageError):
            Remote(bad)


FAKE_DEVICE = """import json, sys, time
mode, command = sys.argv[1], sys.argv[2]
if command != "time":
    sys.exit(1)
if mode == "empty":
    print("{}")
elif mode == "list":
    print("[1, 2]")
elif mode == "nan":
    print('{"latency_ms": {"p50": NaN, "p90": 1, "p99": 1}, "throughput": 1}')
elif mode == "disorder":
    print(json.dumps({"latency_ms": {"p50": 5, "p90": 1, "p99": 1}, "throughput": 1}))
elif mode == "hang":
    time.sleep(600)  # MARKER-edgevit-hang
"""


@pytest.mark.parametrize("mode, pattern", [
    ("empty", "latency_ms that is missing"),
    ("list", "must be an object, not list"),
    ("nan", "NaN is not a number JSON allows"),
    ("disorder", "latency_ms.p90 that is 1"),
])
def test_a_device_answering_the_wrong_shape_is_one_remote_error(device, tmp_path, monkeypatch, mode, pattern):
    """A real sshd whose device-side edgevit misbehaves; its answer is refused before anything records it."""
    from edgevit.remote import Remote, RemoteError

    script = tmp_path / "fake_edgevit.py"
    script.write_text(FAKE_DEVICE)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    monkeypatch.setenv("EDGEVIT_SSH_CONFIG", device["EDGEVIT_SSH_CONFIG"])
    monkeypatch.setenv("EDGEVIT_REMOTE_DIR", str(tmp_path / "remote-work"))
    monkeypatch.setenv("EDGEVIT_REMOTE_COMMAND", f"{sys.executable} {script} {mode}")
    rem = Remote("edgevit-device")
    with pytest.raises(RemoteError, match=pattern.replace(".", r"\.").replace("(", r"\(")):
        rem.profile(tmp_path / "b", compile_engine=False, throughput_batch=4)
    rem.close()
    assert list((tmp_path / "remote-work").iterdir()) == []


def test_a_remote_timeout_stops_the_command_on_the_device_too(device, tmp_path, monkeypatch):
    from edgevit.remote import Remote, RemoteError

    script = tmp_path / "fake_edgevit.py"
    script.write_text(FAKE_DEVICE)
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("EDGEVIT_SSH_CONFIG", device["EDGEVIT_SSH_CONFIG"])
    monkeypatch.setenv("EDGEVIT_REMOTE_DIR", str(tmp_path / "remote-work"))
    monkeypatch.setenv("EDGEVIT_REMOTE_COMMAND", f"{sys.executable} {script} hang")
    rem = Remote("edgevit-device", timeout=3)
    with pytest.raises(RemoteError, match="did not finish in 3 s; it was stopped there"):
        rem.profile(tmp_path / "b", compile_engine=False, throughput_batch=4)
    rem.close()
    running = subprocess.run(["pgrep", "-f", f"{script} hang"], capture_output=True, text=True)
    assert running.stdout.strip() == "", "the device-side command outlived the timeout"
