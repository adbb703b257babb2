"""The udp backend (flannel's default, FLANNEL-COMPAT §4.1): TUN ``flannel0`` + UDP/8285.

Kernel side, as flannel: ``flannel0`` with ``<our subnet's network address>/32`` (no broadcast
routes), MTU = external MTU - 28, a route for the whole Network via flannel0. Data side:
the compiled ``UdpFastPump`` when it was built, else the pure-Python ``UdpPump`` (``choose_pump``;
``PYFLANNEL_PUMP=c|python`` forces one). Our lease is ``{"PublicIP":…,"PublicIPv6":null}`` with no
BackendType, so udp leases of Go flannel nodes and ours are the same thing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping

from ..core.config import NetworkConfig
from ..core.desired import Address, DesiredState, Route
from ..core.errors import LocalConfigError
from ..core.lease import Lease, LeaseAttrs
from ..core.routes import RouteTable, SourceCheck
from ..kernel import netlink
from ..kernel.iface import ExternalInterface
from ..kernel.tun import open_tun, open_tun_offload
from .base import KernelBackend, check_keys, int_option
from .udp_pump import Tables, UdpFastPump, UdpPump, choose_pump, offload_wanted

log = logging.getLogger(__name__)

ENCAP_OVERHEAD = 28  # 20 IP + 8 UDP
DEFAULT_PORT = 8285
SO_RCVBUFFORCE = 33
SOCKET_BUFFER = 4 << 20
TXQUEUELEN = 1000


def plan_udp(network: ipaddress.IPv4Network, own: Lease, tun: str) -> DesiredState:
    """Pure: flannel0 carries our subnet's network address /32 and routes the whole network."""
    addr = ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")
    return DesiredState(network, addresses=(Address(tun, addr, network),), routes=frozenset({Route(network, tun)}))


class UdpBackend(KernelBackend):
    name = "udp"
    lease_types = ("", "udp")  # flannel's udp leases carry no BackendType

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        for warning in self.check_config(config):
            log.warning(warning)
        self.port = int_option(config, "Port", DEFAULT_PORT, 1, 65535, "udp")
        self.tun_fd: int | None = None
        self.tun_name = ""
        self.tun_index = 0
        self.sock: socket.socket | None = None
        self.pump: UdpPump | UdpFastPump | None = None
        self.tun_offload = False

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        int_option(config, "Port", DEFAULT_PORT, 1, 65535, "udp")
        return check_keys(config, ("Port",), "udp")

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.ext.ext_addr)

    def mtu(self) -> int:
        return self.ext.mtu - ENCAP_OVERHEAD

    async def setup(self, lease: Lease) -> None:
        pump_cls, how = choose_pump()  # a bad PYFLANNEL_PUMP fails here, before any kernel change
        self.lease = lease
        self._open_tun(pump_cls)
        link = await asyncio.to_thread(netlink.link_by_name, self.tun_name)
        if link is None:
            raise LocalConfigError(f"TUN device {self.tun_name} vanished right after creation")
        self.tun_index = link.index
        await asyncio.to_thread(self._configure_kernel)
        self.sock = self._open_socket()
        local_ip = int(lease.subnet.network_address)
        log.info("udp pump: %s", how)
        if pump_cls is UdpFastPump:
            self.pump = UdpFastPump(self.tun_fd, self.sock, local_ip, self.mtu(), vnet_hdr=self.tun_offload)
        else:
            self.pump = UdpPump(self.tun_fd, self.sock, local_ip, self.mtu())
        self.pump.start()
        log.info("udp backend ready tun=%s mtu=%d listen=%s:%d", self.tun_name, self.mtu(),
                 self.ext.iface_addr, self.port)

    def _open_tun(self, pump_cls: type[UdpPump] | type[UdpFastPump]) -> None:
        """flannel0: with TUN offloads for the compiled pump (one read or write per TCP super-packet),
        plain for the pure-Python one (and where the kernel refuses offloads)."""
        if pump_cls is not UdpFastPump:
            self.tun_fd, self.tun_name = open_tun("flannel%d")
            return
        if not offload_wanted():
            self.tun_fd, self.tun_name = open_tun("flannel%d")
            log.info("udp TUN offloads: off (PYFLANNEL_PUMP_OPTS offload=0); plain TUN")
            return
        self.tun_fd, self.tun_name, refused = open_tun_offload("flannel%d")
        self.tun_offload = refused is None
        if refused is None:
            log.info("udp TUN offloads: on (IFF_VNET_HDR, TSO4 + checksum)")
        else:
            log.warning("udp TUN offloads: off (%s); plain TUN, one packet per read", refused)

    def _configure_kernel(self) -> None:
        assert self.lease is not None and self.config.network is not None
        netlink.ensure_link_up(self.tun_index, mtu=self.mtu(), txqueuelen=TXQUEUELEN)
        addr = ipaddress.IPv4Interface(f"{self.lease.subnet.network_address}/32")
        netlink.ensure_only_address(self.tun_index, addr, self.config.network)
        netlink.ensure_route(self.config.network, self.tun_index)
        # Our ICMP net-unreachable comes out of flannel0 from flannel0's own address; without
        # accept_local the kernel drops it as a martian and the sender never hears why.
        netlink.set_sysctl(f"net/ipv4/conf/{self.tun_name}/accept_local", "1")

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # 32 = SNDBUFFORCE
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)
            sock.bind((str(self.ext.iface_addr), self.port))
        except OSError as err:
            sock.close()
            raise LocalConfigError(
                f"cannot listen on UDP {self.ext.iface_addr}:{self.port}: {err.strerror} "
                "(another flanneld running? pick another Port in the network config)"
            ) from err
        return sock

    async def apply_peers(self, peers: Mapping[ipaddress.IPv4Network, Lease]) -> None:
        # The pump's table first: forwarding follows the lease at once; the kernel check after.
        routes: RouteTable[tuple[str, int]] = RouteTable(
            (sn, (str(le.attrs.public_ip), self.port)) for sn, le in sorted(peers.items()) if self.accepts(le)
        )
        if self.pump is not None:
            self.pump.set_tables(Tables(routes, SourceCheck.from_routes(routes)))
        await super().apply_peers(peers)

    async def resync(self) -> None:
        if self.pump is not None and not self.pump.alive():
            raise RuntimeError("udp pump thread died")
        await super().resync()

    def desired(self) -> DesiredState:
        assert self.lease is not None and self.config.network is not None
        return plan_udp(self.config.network, self.lease, self.tun_name)

    def peer_routes(self) -> list[tuple[ipaddress.IPv4Network, tuple[str, int]]]:
        return list(self.pump.tables.routes) if self.pump else []

    def stats(self) -> dict[str, int]:
        return dict(self.pump.stats) if self.pump else {}

    async def close(self) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tun_fd is not None:
            os.close(self.tun_fd)  # non-persistent: flannel0 and its route go with it
            self.tun_fd = None
