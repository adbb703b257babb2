"""The udp backend (flannel's default, docs/compatibility.md#udp): TUN ``flannel0`` + UDP/8285.

Kernel side, as flannel: ``flannel0`` with ``<our subnet's network address>/32`` (no broadcast
routes), MTU = external MTU - 28, a route for the whole Network via flannel0. Data side: the
compiled ``UdpFastPump`` when it was built, else the pure-Python ``UdpPump`` (``choose_pump``;
``PYFLANNEL_PUMP=c|python`` forces one). Our lease is ``{"PublicIP":…,"PublicIPv6":null}`` with no
BackendType, so udp leases of Go flannel nodes and ours are the same thing.

Two plans per run: the pump's peer table (``PumpPlan``, applied first so forwarding follows a
lease at once) and the kernel state of flannel0 (``DesiredState``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping

from ..core.config import NetworkConfig
from ..core.desired import Address, DesiredState, LinkSpec, Route
from ..core.errors import LocalConfigError
from ..core.host import ExternalInterface, HostFacts
from ..core.lease import Lease, LeaseAttrs
from ..core.plan import Plan, PumpPlan
from . import HostOps, Target
from .base import PlanningBackend, check_keys, int_option, ipv4_only
from .udp_pump import UdpFastPump, UdpPump, choose_pump, offload_wanted

log = logging.getLogger(__name__)

ENCAP_OVERHEAD = 28  # 20 IP + 8 UDP
DEFAULT_PORT = 8285
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32
SOCKET_BUFFER = 4 << 20
TXQUEUELEN = 1000


def plan_udp(network: ipaddress.IPv4Network, own: Lease, tun: str, mtu: int = 1472) -> DesiredState:
    """Pure: flannel0 carries our subnet's network address /32 and routes the whole network. Our
    ICMP net-unreachable comes out of flannel0 from flannel0's own address: without accept_local
    the kernel would drop it as a martian and the sender would never hear why. IPv6 is off on
    flannel0 (set before the device comes up): the udp backend carries IPv4 only, and otherwise the
    kernel sends its own router solicitations and MLD reports into it, which the pump can only
    drop (Go flannel leaves IPv6 on; its proxy drops them silently)."""
    addr = ipaddress.IPv4Interface(f"{own.subnet.network_address}/32")
    return DesiredState(network, links=(LinkSpec(tun, "tun", mtu, txqlen=TXQUEUELEN),),
                        addresses=(Address(tun, addr, network),), routes=frozenset({Route(network, tun)}),
                        sysctls=((f"net/ipv4/conf/{tun}/accept_local", "1"),
                                 (f"net/ipv6/conf/{tun}/disable_ipv6", "1")))


def plan_pump(peers: Mapping[ipaddress.IPv4Network, Lease], port: int) -> PumpPlan:
    """Pure: the pump's rows, every address converted to an int once."""
    return PumpPlan(tuple(sorted((int(sn.network_address), sn.prefixlen, int(le.attrs.public_ip), port)
                                 for sn, le in peers.items())))


class PumpTarget:
    """The running pump as a converger target: swaps in the planned table whole."""

    inline = True  # a table swap: no I/O
    full_check_s = 10.0  # the backstop checks that the pump thread still runs

    def __init__(self, pump: UdpPump | UdpFastPump) -> None:
        self.pump = pump
        self.current = PumpPlan()

    def apply(self, plan: Plan, full: bool) -> int:
        assert isinstance(plan, PumpPlan)
        if full and not self.pump.alive():
            raise RuntimeError("the udp pump thread died (see the error above); flanneld exits so that systemd "
                               "restarts it")
        if plan == self.current:
            return 0
        changed = len(set(plan.routes) ^ set(self.current.routes))
        self.pump.set_plan(plan)
        self.current = plan
        return changed


class UdpBackend(PlanningBackend):
    name = "udp"
    lease_types = ("", "udp")  # flannel's udp leases carry no BackendType

    def __init__(self, ext: ExternalInterface, config: NetworkConfig) -> None:
        super().__init__(ext, config)
        self.port = int_option(config, "Port", DEFAULT_PORT, 1, 65535, "udp")
        self.tun_fd: int | None = None
        self.tun_name = ""
        self.tun_offload = False
        self.sock: socket.socket | None = None
        self.pump: UdpPump | UdpFastPump | None = None

    @classmethod
    def check_config(cls, config: NetworkConfig) -> list[str]:
        int_option(config, "Port", DEFAULT_PORT, 1, 65535, "udp")
        return check_keys(config, ("Port",), "udp") + ipv4_only(config, "udp", " (as Go flannel's)")

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.ext.ext_addr)

    def mtu(self) -> int:
        return self.ext.mtu - ENCAP_OVERHEAD

    async def prepare(self, host: HostOps) -> LeaseAttrs:
        """flannel0 and the UDP socket, before the lease: a busy port fails before we take a subnet."""
        pump_cls, how = choose_pump()  # a bad PYFLANNEL_PUMP fails here, before any kernel change
        self._pump_cls = pump_cls
        log.info("udp pump: %s", how)
        # TUN offloads for the compiled pump (one read or write per TCP super-packet); plain for the
        # pure-Python one
        want = pump_cls is UdpFastPump and offload_wanted()
        self.tun_fd, self.tun_name, refused = await asyncio.to_thread(host.open_tun, want)
        self.tun_offload = refused is None
        if pump_cls is UdpFastPump:
            if not want:
                log.info("udp TUN offloads: off (PYFLANNEL_PUMP_OPTS offload=0); plain TUN")
            elif refused is None:
                log.info("udp TUN offloads: on (IFF_VNET_HDR, TSO4 + checksum)")
            else:
                log.warning("udp TUN offloads: off (%s); plain TUN, one packet per read", refused)
        self.sock = self._open_socket()
        return self.lease_attrs()

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
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

    async def start(self, own: Lease) -> dict[str, Target]:
        assert self.tun_fd is not None and self.sock is not None
        local_ip = int(own.subnet.network_address)
        if self._pump_cls is UdpFastPump:
            self.pump = UdpFastPump(self.tun_fd, self.sock, local_ip, self.mtu(), vnet_hdr=self.tun_offload)
        else:
            self.pump = UdpPump(self.tun_fd, self.sock, local_ip, self.mtu())
        self.pump.start()
        log.info("udp backend ready tun=%s mtu=%d listen=%s:%d", self.tun_name, self.mtu(), self.ext.iface_addr,
                 self.port)
        return {"pump": PumpTarget(self.pump)}

    def plan(self, own: Lease, peers: Mapping[ipaddress.IPv4Network, Lease] | None, facts: HostFacts
             ) -> tuple[Plan, ...]:
        return (plan_pump(peers or {}, self.port), plan_udp(self.network, own, self.tun_name, self.mtu()))

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
