"""What backends may ask of this host before the lease (``backend.HostOps``), and the facts the
converger gathers for planning. The daemon hands a ``KernelHost`` to ``Backend.prepare``, so
backends never import the kernel layer."""

from __future__ import annotations

from collections.abc import Iterable

from ..core.desired import IPAddr, LinkSpec
from ..core.errors import KernelError, LocalConfigError
from . import netlink, tun, wireguard
from .hostpeers import HostPeers
from .reconciler import Reconciler, incompatibilities, link_kind_attrs


class KernelHost:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._peers: HostPeers | None = None
        self._claims: set[str] = set()

    def claim_device(self, name: str, owner: str, fix: str) -> None:
        """Own device ``name`` in this network namespace for the life of the process (``owner``
        names us to the others): a second flanneld (another network) asking for the same device
        stops with ``fix`` instead of the two of them deleting each other's entries on it."""
        if self._peers is None:
            self._peers = HostPeers()
        holder = self._peers.hold(f"device-{name}", owner)
        if holder is not None:
            self._claims.discard(name)
            raise LocalConfigError(f"{name} is already used on this host by the flanneld of {holder}: {fix}")
        self._claims.add(name)

    def release(self) -> None:
        """Give up our device claims (the process exiting does the same)."""
        if self._peers is not None:
            for name in self._claims:
                self._peers.release(f"device-{name}")
        self._claims.clear()

    def existing_mac(self, spec: LinkSpec) -> str | None:
        """The MAC of a compatible device left by our previous run (its peers already know it)."""
        with netlink.session(f"look up device {spec.name}") as ipr:
            found = ipr.link_lookup(ifname=spec.name)
            if not found:
                return None
            msg = ipr.get_links(found[0])[0]
        kind, attrs = link_kind_attrs(msg)
        if kind == spec.kind and not incompatibilities(spec, kind, attrs):
            return str(msg.get("address"))
        return None

    def ensure_link(self, spec: LinkSpec) -> str:
        """Create (or fix) the device now; its MAC."""
        with netlink.session(f"set up device {spec.name}") as ipr:
            return self.reconciler.ensure_link(ipr, spec).mac

    def set_sysctl(self, path: str, value: str) -> None:
        netlink.set_sysctl(path, value)

    def open_tun(self, offload: bool) -> tuple[int, str, str | None]:
        """flannel0: (fd, name, why offloads are off or None)."""
        if not offload:
            fd, name = tun.open_tun("flannel%d")
            return fd, name, "not asked for"
        return tun.open_tun_offload("flannel%d")

    def wg_key(self, path: str) -> str:
        """Our WireGuard public key, from the private key file (made when missing)."""
        return wireguard.load_key(path)

    def wg_device(self, name: str, mtu: int) -> str:
        """The WireGuard device (kept, the kernel's, or wireguard-go's): its link kind."""
        return wireguard.ensure_device(name, mtu)

    def wg_target(self, name: str, public_key: str) -> wireguard.WgTarget:
        return wireguard.WgTarget(name, public_key)


class OnlinkCache:
    """Which peer PublicIPs (and PublicIPv6s) are directly connected (no gateway on the way): one
    ``ip route get`` per new address, remembered until ``forget`` (the full kernel check)."""

    def __init__(self) -> None:
        self._known: dict[IPAddr, bool] = {}

    def forget(self) -> None:
        self._known.clear()

    def onlink(self, ips: Iterable[IPAddr]) -> frozenset[IPAddr]:
        out = set()
        for ip in ips:
            hit = self._known.get(ip)
            if hit is None:
                try:
                    hit = netlink.route_gateway(ip) is None
                except KernelError:
                    hit = False
                self._known[ip] = hit
            if hit:
                out.add(ip)
        return frozenset(out)
