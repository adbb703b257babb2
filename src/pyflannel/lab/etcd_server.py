"""A real etcd server (Debian's etcd-server) for the lab and the tests, started and stopped here."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.errors import LocalConfigError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        raise LocalConfigError("etcd is not installed: run `make setup` (apt-get install etcd-server)")
    return path


@dataclass
class EtcdServer:
    data_dir: str
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    netns: str | None = None
    extra_args: Sequence[str] = ()
    log_path: str | None = None
    name: str = "default"
    cluster: str = ""  # --initial-cluster of a multi-member cluster; empty: this member alone
    tls: tuple[str, str, str] | None = None  # (cert, key, ca): https with client certificates required
    user: str = ""  # "name:password" for etcdctl once auth is enabled
    enable_v2: bool = False  # also serve the v2 API (/v2/keys), as `ETCDCTL_API=2 etcdctl mk` needs
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.client_port:
            self.client_port = free_port(self.host) if self.netns is None else 2379
        if not self.peer_port:
            self.peer_port = free_port(self.host) if self.netns is None else 2380

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        cmd = [
            etcd_binary(), "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-cluster", self.cluster or f"{self.name}=http://{self.host}:{self.peer_port}",
            *(["--enable-v2=true"] if self.enable_v2 else []),
            *self.extra_args,
        ]
        if self.tls:
            cert, key, ca = self.tls
            cmd += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"]
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + cmd

    def etcdctl_args(self) -> list[str]:
        args = ["etcdctl", "--endpoints", self.endpoint]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--cacert", ca, "--cert", cert, "--key", key]
        if self.user:
            args += ["--user", self.user]
        return args

    def etcdctl_v2(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The v2 etcdctl (``ETCDCTL_API=2``: ``mk``, ``get``, ``ls``, ``--ttl``), as old guides use it."""
        cmd = ["etcdctl", "--endpoints", self.endpoint, *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, ETCDCTL_API="2"))

    def start(self, timeout: float = 15.0, wait: bool = True) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        log_path = self.log_path or os.path.join(os.path.dirname(self.data_dir.rstrip("/")), "etcd.log")
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see its log next to {self.data_dir}")
            if self._health():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become ready at {self.endpoint} within {timeout:g}s")

    def _health(self) -> bool:
        cmd = [*self.etcdctl_args(), "--command-timeout=1s", "endpoint", "health"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(cmd, capture_output=True, env=env, check=False).returncode == 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
