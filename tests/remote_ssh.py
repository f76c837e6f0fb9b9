"""A throwaway OpenSSH server on a loopback port, for NNI's remote training service in tests.

Usage::

    with loopback_sshd(tmp_path / "ssh") as sshd:
        machine = sshd.machine(python_path="/path/to/venv/bin")   # one machineList entry

The server gets its own host key, its own client key (``sshKeyFile`` of the machine entries,
so ``~/.ssh`` is never read or written), listens on 127.0.0.1 only, takes the current user by
that key alone (root: ``PermitRootLogin prohibit-password``) and is stopped by its pid when the
block ends, whatever happened inside it.

Sessions get a private ``HOME`` inside the directory: NNI's worker side writes its trial keeper
and the trials' output under ``~/nni-experiments`` and bash reads ``~/.bashrc``, so the test
neither leaves files in the real home nor depends on what its ``.bashrc`` says. They also get
``PIP_NO_INDEX=1``: NNI 3.0's remote worker runs ``python -m pip install nni --upgrade`` on every
machine at start, and with the index off pip finds nni installed and contacts nothing (the tests
send traffic to loopback addresses only).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Environment of every SSH session (``SetEnv``); HOME is added per server.
SESSION_ENV = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def sshd_path() -> str | None:
    """The OpenSSH server binary (``/usr/sbin`` is often not on a user's PATH), or None."""
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    return str(Path(found).resolve()) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nni-prune-tuners-test",
                    "-f", str(path)], check=True, capture_output=True)


@dataclass(frozen=True)
class Sshd:
    port: int
    pid: int
    user: str
    client_key: Path
    home: Path
    log: Path

    def machine(self, *, python_path: str) -> dict[str, Any]:
        """A ``machineList`` entry (NNI v2 config) for this server."""
        return {"host": "127.0.0.1", "port": self.port, "user": self.user,
                "sshKeyFile": str(self.client_key), "pythonPath": python_path}


def sshd_config(directory: Path, *, port: int, user: str, home: Path) -> str:
    """sshd_config text: loopback only, this user only, by the throwaway key only."""
    env = " ".join(f"{key}={value}" for key, value in {"HOME": str(home), **SESSION_ENV}.items())
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {directory / 'host_key'}",
        f"PidFile {directory / 'sshd.pid'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "Subsystem sftp internal-sftp",
        f"SetEnv {env}",
        "",
    ])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"sshd not listening on 127.0.0.1:{port} after {timeout}s: {log.read_text()}")


@contextmanager
def loopback_sshd(directory: Path, *, timeout: float = 120.0) -> Iterator[Sshd]:
    """Start sshd (foreground, ``-D``) on a free loopback port; stop it by its pid at the end.

    ``timeout`` only guards against an sshd that never listens: a busy machine may be slow.
    """
    binary = sshd_path()
    if binary is None:
        raise FileNotFoundError("sshd not found: apt-get install openssh-server")
    directory.mkdir(parents=True, exist_ok=True)
    home = directory / "home"
    home.mkdir(exist_ok=True)
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    shutil.copyfile(directory / "client_key.pub", directory / "authorized_keys")
    user = getpass.getuser()
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(sshd_config(directory, port=port, user=user, home=home))
    if os.geteuid() == 0:
        # privilege separation directory, which sshd needs and a fresh container lacks
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = directory / "sshd.log"
    subprocess.run([binary, "-t", "-f", str(config)], check=True, capture_output=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, log, timeout)
        yield Sshd(port=port, pid=process.pid, user=user, client_key=directory / "client_key",
                   home=home, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
