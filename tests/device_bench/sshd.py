"""A real OpenSSH server for the tests: on 127.0.0.1 only, a free port, keys made here, stopped afterwards."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    port: int
    user: str
    folder: Path
    identity: Path  # a key the server accepts
    stranger: Path  # a key it does not
    known_hosts: Path  # holds the server's real host key
    process: subprocess.Popen

    @property
    def target(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def make_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, host_key: Path, authorized_keys: Path) -> Path:
    config = folder / "sshd_config"
    lines = [
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        f"PidFile {folder / 'sshd.pid'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",  # the tests run as root in CI; keys only
        "StrictModes no",  # the keys live in a pytest temp folder, not a home with sshd's expected modes
        "UsePAM no",
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def wait_until_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()}")


def start_sshd(folder: Path) -> SshServer:
    host_key, identity, stranger = (make_key(folder / name) for name in ("host_key", "user_key", "stranger_key"))
    authorized_keys = folder / "authorized_keys"
    authorized_keys.write_text(identity.with_suffix(".pub").read_text())
    config = write_config(folder, host_key, authorized_keys)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder, as its service would make
    port, log = free_port(), folder / "sshd.log"
    command = [str(SSHD), "-D", "-e", "-f", str(config), "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    wait_until_listening(port, process, log)
    known_hosts = folder / "known_hosts"
    key_type, key = host_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    return SshServer(port, getpass.getuser(), folder, identity, stranger, known_hosts, process)
