"""flanneld on the lab's hosts: its command line (the article's flags, a Go or packaged flanneld
instead of ours, kube mode's), wireguard's private /run/wireguard, starting, stopping and finding
the process, and waiting for its subnet.env. ``Lab`` (lab/cluster.py, which builds the namespaces
and the underlay) has these as its own methods through ``FlanneldHosts``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from ..core.subnetenv import parse_subnet_env
from . import goflannel, kube_lab
from .netns import LabError, in_ns, sh

PREFIX = "/atomic.io/network"
# wireguard-go's control sockets live in /run/wireguard, which network namespaces share: each host's
# flanneld (and the wireguard-go it starts) runs in a private mount namespace with its own folder on
# /run/wireguard; a restart binds the same folder again, so the socket of the running device is kept
_PRIVATE_RUN_WG = 'mkdir -p /run/wireguard "$0" && mount --bind "$0" /run/wireguard && exec "$@"'


def venv_tool(name: str) -> list[str]:
    """Our console script from the running venv, or ``python -m`` as a fallback."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    module = {"flanneld": "flanneld", "mk-docker-opts": "mk_docker_opts"}[name]
    return [sys.executable, "-m", f"pyflannel.cli.{module}"]


@dataclass
class Host:
    index: int
    ns: str
    container_ns: str
    ip: str
    subnet: str = ""  # FLANNEL_SUBNET, e.g. 10.0.53.1/24
    container_ip: str = ""
    docker_opts: str = ""
    go: bool = False  # runs Go flannel's flanneld, not ours
    container_ip6: str = ""  # dual stack (lab/ipv6.py)


class FlanneldHosts:
    """The flanneld half of ``Lab``; it reads the lab's ``name``, ``backend``, ``kube``,
    ``host_extra``, ``host_command``, ``state_dir``, ``etcd_endpoint``, ``net_conf_path``,
    ``host_dir``, ``subnet_file`` and ``log_file``."""

    def flanneld_command(self, host: Host, extra: tuple[str, ...] = (), *, prefix: str = PREFIX,
                         subnet_file: str | None = None) -> list[str]:
        """The article's flags: FLANNEL_ETCD_ENDPOINTS and FLANNEL_ETCD_PREFIX from
        /etc/sysconfig/flanneld, then the host's own ``host_extra`` and ``extra``. ``prefix`` and
        ``subnet_file``: another network's flanneld on the same host (default: the lab's network
        and the host's subnet.env). A ``go`` host runs Go flannel's flanneld with the same flags, a
        host in ``host_command`` that command. In kube mode the store flags are the API server's
        and ``NODE_NAME`` names the host's Node."""
        if self.kube:
            return in_ns(host.ns, *self.host_wrapper(host), "env", f"NODE_NAME={kube_lab.node_name(host.index)}",
                         *self.flanneld_binary(host), *kube_lab.flanneld_args(self.state_dir, self.net_conf_path),
                         f"--subnet-file={subnet_file or self.subnet_file(host)}",
                         *self.host_extra.get(host.index, ()), *extra)
        return in_ns(host.ns, *self.host_wrapper(host), *self.flanneld_binary(host),
                     f"-etcd-endpoints={self.etcd_endpoint}", f"-etcd-prefix={prefix}",
                     f"--subnet-file={subnet_file or self.subnet_file(host)}", *self.host_extra.get(host.index, ()),
                     *extra)

    def wg_dir(self, host: Host) -> str:
        return os.path.join(self.host_dir(host), "wireguard")

    def host_wrapper(self, host: Host) -> list[str]:
        """For wireguard: run in a private mount namespace with this host's own /run/wireguard and
        key file (``WIREGUARD_KEY_FILE``)."""
        if self.backend != "wireguard" or host.go:
            return []
        key = os.path.join(self.host_dir(host), "wgkey")
        return ["env", f"WIREGUARD_KEY_FILE={key}", "unshare", "-m", "--propagation", "private", "sh", "-c",
                _PRIVATE_RUN_WG, self.wg_dir(host)]

    def wg(self, host: Host, *args: str, check: bool = True) -> str:
        """``wg ARGS`` as seen on ``host`` (its network namespace and its own /run/wireguard)."""
        cmd = in_ns(host.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", _PRIVATE_RUN_WG,
                    self.wg_dir(host), "wg", *args)
        return sh(cmd, check=check).stdout

    def flanneld_binary(self, host: Host) -> list[str]:
        if host.index in self.host_command:
            return list(self.host_command[host.index])
        if not host.go:
            return venv_tool("flanneld")
        path = goflannel.binary()
        if path is None:
            raise LabError(goflannel.missing())
        return [path]

    def start_flanneld(self, host: Host, extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
                       subnet_file: str | None = None, prefix: str = PREFIX) -> subprocess.Popen[bytes]:
        cmd = self.flanneld_command(host, extra, prefix=prefix, subnet_file=subnet_file)
        with open(self.log_file(host), "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=None if env is None else dict(os.environ, **env))
        with open(os.path.join(self.host_dir(host), "flanneld.pid"), "w") as f:
            f.write(str(proc.pid))
        return proc

    def flanneld_pid(self, host: Host) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.host_dir(host), "flanneld.pid")) as f:
                pid = int(f.read())
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    return pid
        return None

    def stop_flanneld(self, host: Host, sig: int = 15, timeout: float = 10.0) -> None:
        pid = self.flanneld_pid(host)
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while self.flanneld_pid(host) is not None:
            if time.monotonic() > deadline:
                raise LabError(f"flanneld on {host.ns} did not exit within {timeout:g}s")
            time.sleep(0.05)

    def wait_subnet(self, host: Host, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        path = self.subnet_file(host)
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    values = parse_subnet_env(f.read(), source=path)
                host.subnet = values.get("FLANNEL_SUBNET", "") or values.get("FLANNEL_IPV6_SUBNET", "")
                if host.subnet:
                    return host.subnet
            if self.flanneld_pid(host) is None:
                break
            time.sleep(0.1)
        raise LabError(f"flanneld on {host.ns} wrote no {path} within {timeout:g}s; its log "
                       f"{self.log_file(host)} ends with:\n{self.log_tail(host)}")

    def log_tail(self, host: Host, lines: int = 15) -> str:
        with contextlib.suppress(OSError), open(self.log_file(host)) as f:
            return "".join(f.readlines()[-lines:])
        return "(no log)"
