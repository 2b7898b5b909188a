"""A device over ssh (a Raspberry Pi, a board, Termux's sshd on a phone), through paramiko.

The host key must already be in known_hosts: an unknown key is refused with the command that accepts it, and a
changed key is refused as a possible man-in-the-middle; nothing is ever added to known_hosts automatically.
"""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import paramiko
from edgepack.device_bench.options import BenchOptions
from edgepack.device_bench.records import SampleFiles
from edgepack.device_bench.remote import CommandResult, RemoteTimeout, bench_on_remote

from edgepack.core.errors import BenchError

# Expanded by the device's sh, never built from user input: the user's temporary folder, as mktemp would pick.
REMOTE_TEMP_BASE = '"${TMPDIR:-/tmp}"'
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")


class UnknownHostKey(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(hostname)
        self.key = key


class RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, but keeping the key offered so that the error can show its fingerprint."""

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(hostname, key)


class SshTarget:
    def __init__(self, user: str, host: str, port: int = 22, name: str | None = None):
        self.user, self.host, self.port = user, host, port
        # Records carry the target as the user wrote it, so that filters by target (reports, gates) match it.
        self.name = name or f"ssh://{user}@{host}:{port}"

    def bench(self, model_path: Path, options: BenchOptions, samples: SampleFiles | None = None) -> dict:
        client = self.connect(options)
        try:
            return bench_on_remote(SshShell(client, self.name), model_path, options, REMOTE_TEMP_BASE, samples)
        finally:
            client.close()

    def connect(self, options: BenchOptions) -> paramiko.SSHClient:
        known_hosts = (options.ssh_known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self.check_identity_file(options)
        client = paramiko.SSHClient()
        if known_hosts.is_file():
            client.get_host_keys().load(str(known_hosts))
        client.set_missing_host_key_policy(RefuseUnknownHost())
        timeout = options.connect_timeout_seconds
        try:
            client.connect(
                self.host, self.port, self.user, **login_keys(options),
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            )  # fmt: skip
        except Exception as error:  # paramiko and socket raise many unrelated classes; each is described below
            client.close()
            raise BenchError(f"ssh target {self.name!r}: {self.describe(error, known_hosts, options)}") from error
        return client

    def check_identity_file(self, options: BenchOptions) -> None:
        path = options.ssh_identity_file
        if path is not None and not path.expanduser().is_file():
            what = "is a directory" if path.expanduser().is_dir() else "does not exist"
            raise BenchError(
                f"ssh target {self.name!r}: the identity file {path} (--identity-file, or bench.ssh_identity_file in "
                f"a recipe) {what}; give the private key that logs in to the device"
            )

    def describe(self, error: Exception, known_hosts: Path, options: BenchOptions) -> str:
        if isinstance(error, UnknownHostKey):
            return self.unknown_host_message(error.key, known_hosts)
        if isinstance(error, paramiko.BadHostKeyException):
            name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
            return (
                f"the host key differs from the one in {known_hosts}: refused, as it may be a man-in-the-middle. "
                f"If the device was reinstalled, remove the old key with: ssh-keygen -R {shlex.quote(name)} "
                f"-f {shlex.quote(str(known_hosts))}, then accept the new one"
            )
        if isinstance(error, paramiko.SSHException) and "No authentication methods" in str(error):
            return (
                f"no key to log in as {self.user!r} with: ssh-agent offers none and ~/.ssh holds none; give one with "
                "--identity-file (bench.ssh_identity_file in a recipe) and put its public key on the device"
            )
        if isinstance(error, paramiko.AuthenticationException):
            return self.login_failed_message(error, options)
        if isinstance(error, socket.gaierror):
            return f"cannot resolve the host name {self.host!r} ({error})"
        if isinstance(error, TimeoutError):
            limit = options.connect_timeout_seconds
            return f"no answer from {self.host}:{self.port} within connect_timeout_seconds={limit}"
        if isinstance(error, OSError):  # refused, unreachable network, and paramiko's NoValidConnectionsError
            return f"cannot reach {self.host}:{self.port} ({error}); is the device on and sshd listening on that port?"
        return f"the ssh connection failed: {type(error).__name__}: {error}"

    def unknown_host_message(self, key: paramiko.PKey, known_hosts: Path) -> str:
        port = f"-p {self.port} " if self.port != 22 else ""
        accept = f"ssh-keyscan {port}{shlex.quote(self.host)} >> {shlex.quote(str(known_hosts))}"
        return (
            f"the host key of {self.host}:{self.port} ({key.get_name()} {key.fingerprint}) is not in {known_hosts}, "
            f"so the connection was refused. Check that fingerprint on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then accept it with: {accept}"
        )

    def login_failed_message(self, error: Exception, options: BenchOptions) -> str:
        keys = str(options.ssh_identity_file) if options.ssh_identity_file else "ssh-agent's and ~/.ssh's keys"
        port = f"-p {self.port} " if self.port != 22 else ""
        return (
            f"login as {self.user!r} on {self.host}:{self.port} with {keys} failed ({error}). Put the public key in "
            f"the device's ~/.ssh/authorized_keys (ssh-copy-id -i KEY.pub {port}{self.user}@{self.host}) or give "
            "the right private key (--identity-file, or bench.ssh_identity_file in a recipe)"
        )


def login_keys(options: BenchOptions) -> dict:
    """An identity file given is the only key tried, so that a test or a CI job is not fooled by an agent."""
    if options.ssh_identity_file is None:
        return {}
    return {"key_filename": str(options.ssh_identity_file.expanduser()), "allow_agent": False, "look_for_keys": False}


class SshShell:
    """Commands on an open connection: one channel each; files travel through ``cat`` (no SFTP needed)."""

    def __init__(self, client: paramiko.SSHClient, target: str):
        self.transport = client.get_transport()
        self.target = target

    def run(self, command: str, timeout: float, send: Path | None = None) -> CommandResult:
        exit_code, stdout, stderr = self.run_bytes(command, timeout, send)
        return CommandResult(exit_code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def run_bytes(self, command: str, timeout: float, send: Path | None = None) -> tuple[int, bytes, bytes]:
        try:
            return self.execute(command, timeout, send)
        except TimeoutError as error:
            raise RemoteTimeout(f"{command!r} ran past {timeout} s") from error
        except (paramiko.SSHException, OSError) as error:  # the link dropped, or sshd refused a new channel
            raise BenchError(
                f"ssh target {self.target!r}: the connection failed during {command!r}: {error}"
            ) from error

    def execute(self, command: str, timeout: float, send: Path | None) -> tuple[int, bytes, bytes]:
        channel = self.transport.open_session(timeout=timeout)
        channel.settimeout(timeout)  # a read waiting longer than this raises TimeoutError
        try:
            # sshd hands the command to the user's login shell, which may be fish or zsh; sh runs it everywhere.
            channel.exec_command("sh -c " + shlex.quote(command))
            if send is not None:
                send_file(channel, send)
            stdout = channel.makefile("rb").read()
            stderr = channel.makefile_stderr("rb").read()
            return channel.recv_exit_status(), stdout, stderr
        finally:
            channel.close()

    def upload(self, local: Path, remote: str, timeout: float) -> None:
        result = self.run(f"cat > {shlex.quote(remote)}", timeout, send=Path(local))
        if result.exit_code != 0:
            raise BenchError(f"ssh target {self.target!r}: copying {local} to {remote} failed: {result.stderr.strip()}")

    def read_bytes(self, remote: str, timeout: float) -> bytes | None:
        exit_code, stdout, _ = self.run_bytes(f"cat {shlex.quote(remote)}", timeout)
        return stdout if exit_code == 0 else None


def send_file(channel: paramiko.Channel, path: Path) -> None:
    with path.open("rb") as source:
        while chunk := source.read(1 << 16):
            channel.sendall(chunk)
    channel.shutdown_write()  # end of file for cat
