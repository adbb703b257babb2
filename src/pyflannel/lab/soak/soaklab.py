"""The soak's lab: ``Lab`` hosts with containers (lab/cluster.py) on a three-member TLS etcd
(lab/etcd_cluster.py), and what the soak reads from it each round: the leases in etcd, each host's
forwarding entries, ``subnet.env``, its iptables rules and its flanneld's resources."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass

from ...core.errors import FlannelError
from ...core.subnetenv import parse_subnet_env
from ...instance import lock_path
from ..cluster import PREFIX, Host, Lab
from ..etcd_cluster import EtcdCluster, build_cluster, make_pki
from ..netns import LabError, in_ns, ns_delete, sh
from .invariants import WG_DEV, actual_kernel

NETWORK = ipaddress.IPv4Network("10.0.0.0/16")
# flanneld's own iptables rules (-ip-masq, the FORWARD accepts): what a flush must bring back
_RULE_TABLES = ("filter", "nat")
# udp: flanneld serves /peers (the pump's own table) here, inside each host's namespace only
HEALTH_PORT = 18471


@dataclass
class SoakLab:
    lab: Lab
    cluster: EtcdCluster
    flags: tuple[str, ...]

    @property
    def backend(self) -> str:
        return self.lab.backend

    @classmethod
    def build(cls, name: str, hosts: int, backend: str, extra: tuple[str, ...] = ()) -> SoakLab:
        """Underlay, the TLS etcd cluster, ``hosts`` hosts running flanneld, docker0 and a container
        each. On failure everything built is removed again."""
        lab = Lab(name=name, hosts_n=hosts, backend=backend)
        lab.down()
        os.makedirs(lab.state_dir, exist_ok=True)
        try:
            pki = os.path.join(lab.state_dir, "pki")
            os.makedirs(pki, exist_ok=True)
            config = json.dumps({"Network": str(NETWORK), "Backend": {"Type": backend}})
            cluster = build_cluster(lab, "tls", make_pki(pki), config)
            health = ("-healthz-ip=127.0.0.1", f"-healthz-port={HEALTH_PORT}") if backend == "udp" else ()
            soak = cls(lab, cluster, (*cluster.client_flags, "-ip-masq", *health, *extra))
            lab.hosts = [lab._host(i) for i in range(1, hosts + 1)]
            lab.save()
            for host in lab.hosts:
                soak.start(host)
            for host in lab.hosts:
                lab.wait_subnet(host, 60)
                lab.docker(host)
            lab.save()
            return soak
        except BaseException:
            lab.down()
            raise

    def down(self) -> None:
        self.lab.down()

    def host(self, index: int) -> Host:
        return next(h for h in self.lab.hosts if h.index == index)

    def start(self, host: Host) -> None:
        self.lab.start_flanneld(host, self.flags)

    def join(self, index: int) -> Host:
        """A new host ``index``: flanneld started, its subnet.env awaited, docker0 and a container."""
        host = self.lab._host(index)
        self.lab.hosts.append(host)
        self.lab.save()
        self.start(host)
        self.lab.wait_subnet(host, 60)
        self.lab.docker(host)
        self.lab.save()
        return host

    def leave(self, host: Host) -> None:
        """Stop the host's flanneld and delete its namespaces (every device, route and entry)."""
        self.lab.stop_flanneld(host, timeout=20)
        self.lab.hosts = [h for h in self.lab.hosts if h.index != host.index]
        ns_delete(host.container_ns)
        ns_delete(host.ns)
        with contextlib.suppress(OSError):
            os.unlink(lock_path(self.lab.subnet_file(host)))
        self.lab.save()

    # ---- reading ---------------------------------------------------------------------------------
    def lease_kvs(self, timeout: float = 2.0) -> list[tuple[str, bytes, int]] | None:
        """(key, value, etcd lease id) of everything under ``subnets/``; None when etcd does not answer."""
        try:
            out = self.cluster.etcdctl("get", "--prefix", f"{PREFIX}/subnets/", "-w", "json", timeout=timeout)
        except LabError:
            return None
        kvs = json.loads(out).get("kvs") or []
        return [(base64.b64decode(kv["key"]).decode(errors="replace"), base64.b64decode(kv.get("value", "")),
                 int(kv.get("lease", 0))) for kv in kvs]

    def subnet_env(self, host: Host) -> str | None:
        with contextlib.suppress(OSError), open(self.lab.subnet_file(host)) as f:
            return f.read()
        return None

    def own_subnet(self, host: Host) -> ipaddress.IPv4Network | None:
        text = self.subnet_env(host)
        if not text:
            return None
        with contextlib.suppress(ValueError, FlannelError):
            return ipaddress.IPv4Interface(parse_subnet_env(text).get("FLANNEL_SUBNET", "")).network
        return None

    def kernel(self, host: Host) -> set[str]:
        """The host's forwarding state as lines (``invariants.actual_kernel``): its routes; vxlan
        its neighbour and FDB entries; udp the pump's table from flanneld's /peers; wireguard the
        device's peers from ``wg show``."""
        ns = host.ns
        routes = sh(["ip", "-n", ns, "-j", "route", "show"], check=False).stdout
        neighs = fdbs = ""
        peers: str | None = ""
        wg: str | None = ""
        if self.backend == "vxlan":
            neighs = sh(["ip", "-n", ns, "-j", "neigh", "show", "dev", "flannel.1"], check=False).stdout
            fdbs = sh(["bridge", "-n", ns, "-j", "fdb", "show", "dev", "flannel.1"], check=False).stdout
        elif self.backend == "udp":
            res = sh(in_ns(ns, "curl", "-sf", "-m", "2", f"http://127.0.0.1:{HEALTH_PORT}/peers"), check=False)
            peers = res.stdout if res.returncode == 0 else None
        elif self.backend == "wireguard":
            try:
                wg = self.lab.wg(host, "show", WG_DEV, "dump")
            except LabError:
                wg = None
        return actual_kernel(self.backend, NETWORK, self.own_subnet(host), routes, neighs, fdbs, peers, wg)

    def rules(self, host: Host) -> set[str]:
        """flanneld's iptables rules on ``host`` (the lines naming a FLANNEL chain)."""
        out: set[str] = set()
        for table in _RULE_TABLES:
            text = sh(in_ns(host.ns, "iptables", "-t", table, "-S"), check=False).stdout
            out |= {f"{table}: {line}" for line in text.splitlines() if "FLANNEL" in line}
        return out

    def proc_stats(self, host: Host) -> tuple[int, int, int, int] | None:
        """(pid, RSS kB, open descriptors, threads) of the host's flanneld, or None."""
        pid = self.lab.flanneld_pid(host)
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None
        if "VmRSS" not in status:  # exiting: a zombie has no memory left to count
            return None
        return pid, int(status["VmRSS"].split()[0]), fds, int(status["Threads"])

    def ready_since(self, host: Host, pid: int) -> float | None:
        """When flanneld ``pid`` on ``host`` became ready (wrote subnet.env after it started), as
        wall time; None while it has not."""
        try:
            with open("/proc/stat") as f:
                boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
            with open(f"/proc/{pid}/stat") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            written = os.stat(self.lab.subnet_file(host)).st_mtime
        except (OSError, ValueError, IndexError, StopIteration):
            return None
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        return written if written >= started - 1 else None

    def nft(self, host: Host, script: str) -> None:
        res = subprocess.run(in_ns(host.ns, "nft", "-f", "-"), input=script, text=True, capture_output=True,
                             timeout=10, check=False)
        if res.returncode != 0:
            raise LabError(f"nft on {host.ns} failed: {res.stderr.strip()}")


__all__ = ["NETWORK", "SoakLab"]
