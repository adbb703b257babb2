"""Lab variants for the benchmarks: many lightweight hosts, and a two-host path built by hand.

Why a separate module: the benchmark needs shapes of the lab that the demo and the tests do not.

- ``LightLab.up_base`` + ``add_hosts``: the underlay and etcd first, then hosts added in batches,
  each just a host namespace running flanneld (no docker0, no container), so 100 hosts fit on a
  2-core machine; ``add_host``/``remove_host`` for cold starts on a fresh namespace.
- ``LightLab.up_hand``: two hosts with containers exactly as ``Lab.up`` lays them out (docker0
  from ``mk-docker-opts``), but no etcd and no flanneld: the overlay is a kernel VXLAN device,
  neighbour, FDB entry and route per peer typed in with ``ip``/``bridge``, as flannel's vxlan
  backend would program them. This is the reference the vxlan and host-gw figures are divided by.

Everything lives in namespaces named ``NAME-…`` and is removed by ``Lab.down``; the root namespace
gets nothing.
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import dataclass

from ..core.subnetenv import render_subnet_env, subnet_env_for
from .cluster import Host, Lab
from .kube_lab import node_name as kube_node_name
from .netns import LabError, in_ns, ns_delete, sh

HAND_NETWORK = ipaddress.IPv4Network("10.0.0.0/16")
HAND_VNI = 1
HAND_PORT = 8472  # the kernel's default, what flannel gets with Port=0
VXLAN_OVERHEAD = 50


def hand_subnet(index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.0.{index}.0/24")


def hand_mac(index: int) -> str:
    return f"02:fa:00:00:00:{index:02x}"


@dataclass
class LightLab(Lab):
    """A ``Lab`` whose hosts are added (and removed) one by one; see the module docstring."""

    restarted: int = 0  # flanneld processes started again by ``add_hosts`` (exited before subnet.env)

    def up_base(self, config: str) -> None:
        """The underlay and etcd with ``config`` written, no hosts yet."""
        self.down()
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            self._underlay()
            self._kube(nodes=0) if self.kube else self._etcd()
            self.put_config(config)
            self.hosts = []
            self.save()
        except BaseException:
            self.down()
            raise

    def add_host(self, index: int, extra: tuple[str, ...] = (), start: bool = True) -> Host:
        """A fresh host namespace ``NAME-h<index>`` (flanneld started unless ``start`` is false)."""
        host = self._host(index)
        if self.kube and self.kube_api is not None:  # its Node, as the node IPAM controller would make it
            self.kube_api.create_node(kube_node_name(index), f"10.15.{index}.0/24")
        self.hosts.append(host)
        self.save()
        if start:
            self.start_flanneld(host, extra)
        return host

    def add_hosts(self, count: int, extra: tuple[str, ...] = (), wait: float = 120.0, batch: int = 10,
                  restarts: int = 3) -> list[Host]:
        """``count`` more hosts, started ``batch`` at a time; returns once each wrote subnet.env.
        A flanneld that exited before writing it is started again, up to ``restarts`` times, as
        systemd's ``Restart=on-failure`` would (Go flannel exits when another host took the subnet
        it picked at the same moment); ``self.restarted`` counts those restarts."""
        first = max((h.index for h in self.hosts), default=0) + 1
        new: list[Host] = []
        for start in range(first, first + count, batch):
            group = [self.add_host(i, extra) for i in range(start, min(start + batch, first + count))]
            deadline = time.monotonic() + wait
            for host in group:
                for attempt in range(restarts + 1):
                    try:
                        self.wait_subnet(host, max(1.0, deadline - time.monotonic()))
                        break
                    except LabError:
                        if attempt == restarts or self.flanneld_pid(host) is not None:
                            raise
                        self.restarted += 1
                        self.start_flanneld(host, extra)
            new += group
        return new

    def remove_host(self, host: Host) -> None:
        """Stop its flanneld and delete its namespace (and with it every device, route and entry)."""
        self.stop_flanneld(host)
        ns_delete(host.ns)
        self.hosts = [h for h in self.hosts if h.ns != host.ns]
        # the kernel frees a deleted namespace (and the veth peer in the switch) asynchronously
        deadline = time.monotonic() + 10.0
        while sh(["ip", "-n", self.underlay_ns, "link", "show", f"h{host.index}"], check=False).returncode == 0:
            if time.monotonic() > deadline:
                raise LabError(f"port h{host.index} of {host.ns} is still on the underlay switch 10s after the "
                               "namespace was deleted")
            time.sleep(0.05)
        for name in ("subnet.env", "flanneld.pid"):
            path = os.path.join(self.host_dir(host), name)
            if os.path.exists(path):
                os.unlink(path)
        self.save()

    # ---- the hand-built reference path --------------------------------------------------------------
    def up_hand(self, underlay_mtu: int = 1500) -> None:
        """Two hosts with containers and a hand-configured kernel VXLAN overlay between them."""
        self.down()
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            self._underlay()
            self.hosts = [self._host(1), self._host(2)]
            for host in self.hosts:
                env = subnet_env_for(HAND_NETWORK, hand_subnet(host.index), underlay_mtu - VXLAN_OVERHEAD, False)
                with open(self.subnet_file(host), "w") as f:
                    f.write(render_subnet_env(env))
                host.subnet = str(env.subnet)
            for host in self.hosts:
                peers = [h for h in self.hosts if h is not host]
                self._hand_vxlan(host, peers, underlay_mtu - VXLAN_OVERHEAD)
                self.docker(host)
            self.save()
        except BaseException:
            self.down()
            raise

    def _hand_vxlan(self, host: Host, peers: list[Host], mtu: int) -> None:
        """What flannel's vxlan backend programs, typed in by hand (docs/compatibility.md#vxlan)."""
        ns, dev = host.ns, f"flannel.{HAND_VNI}"
        ip = ["ip", "-n", ns]
        sh([*ip, "link", "add", dev, "address", hand_mac(host.index), "type", "vxlan", "id", str(HAND_VNI),
            "local", host.ip, "dev", "eth0", "dstport", str(HAND_PORT), "nolearning"])
        sh([*ip, "link", "set", dev, "mtu", str(mtu), "up"])
        sh([*ip, "addr", "add", f"{hand_subnet(host.index).network_address}/32", "dev", dev])
        for peer in peers:
            sn = hand_subnet(peer.index)
            gw = str(sn.network_address)
            sh([*ip, "neigh", "replace", gw, "lladdr", hand_mac(peer.index), "dev", dev, "nud", "permanent"])
            sh(in_ns(ns, "bridge", "fdb", "replace", hand_mac(peer.index), "dev", dev, "dst", peer.ip, "self",
                     "permanent"))
            sh([*ip, "route", "replace", str(sn), "via", gw, "dev", dev, "onlink"])

    def check_hand(self) -> None:
        """Raise unless both containers reach each other over the hand-built overlay."""
        h1, h2 = self.hosts
        ok, out = self.ping(h1, h2, count=2)
        if not ok:
            raise LabError(f"the hand-configured vxlan path {h1.container_ip} -> {h2.container_ip} does not "
                           f"work:\n{out}")


__all__ = ["HAND_NETWORK", "LightLab", "hand_mac", "hand_subnet"]
