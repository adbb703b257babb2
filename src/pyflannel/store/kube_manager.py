"""Lease policy in kube mode: our subnet is our node's podCIDR, never chosen by us.

acquire: wait for our Node object and its podCIDRs (saying what to do while waiting), check each
family the network needs is there and lies in Network (IPv6Network), publish our annotations with a
patch on ``nodes/status`` (kubenode.lease_annotations); there is nothing to renew.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging

from ..core import kubenode
from ..core.allocate import NO_IPV4
from ..core.backoff import LogOnce
from ..core.config import NetworkConfig
from ..core.errors import AllocationError, StoreDataError, StoreUnavailable
from ..core.lease import Lease, LeaseAttrs
from .kube import KubeRegistry
from .manager import AcquireResult

log = logging.getLogger(__name__)
POLL_S = 3.0  # Go flannel polls its node every 3 s


class KubeLeaseManager:
    def __init__(self, registry: KubeRegistry, attrs: LeaseAttrs, *, poll_s: float = POLL_S) -> None:
        self.registry = registry
        self.attrs = attrs
        self.poll_s = poll_s

    async def acquire(self, config: NetworkConfig) -> AcquireResult:
        reg, once = self.registry, LogOnce(log)
        attempts = 0
        while True:
            attempts += 1
            node = await reg.get_node()
            if node is None:
                once.error("node %r not found in the API server %s: is NODE_NAME right? waiting for it",
                           reg.node, reg.endpoints)
            else:
                try:
                    v4, v6 = kubenode.pod_cidrs(node)
                except StoreDataError as err:
                    raise AllocationError(f"node {reg.node!r}: {err}; fix the node's spec.podCIDRs") from err
                if v4 is None and v6 is None:
                    once.error("node %r pod cidr not assigned: start the controller manager with "
                               "--allocate-node-cidrs --cluster-cidr=%s (or set spec.podCIDR); waiting for it",
                               reg.node, _cluster_cidr(config))
                else:
                    lease = self._lease(config, node, v4, v6)
                    if kubenode.annotations(node) | kubenode.lease_annotations(self.attrs, reg.prefix) != \
                            kubenode.annotations(node):
                        await reg.publish(self.attrs)
                    return AcquireResult(lease, attempts, "podCIDR")
            await asyncio.sleep(self.poll_s)

    def _lease(self, config: NetworkConfig, node: dict[str, object], v4: ipaddress.IPv4Network | None,
               v6: ipaddress.IPv6Network | None) -> Lease:
        """Our lease from our node's podCIDRs, as Go's AcquireLease: the IPv4 one if IPv4 is on, the
        IPv6 one if IPv6 is on (IPv6-only: Go's 0.0.0.0/0 IPv4 half). A family the network needs
        and the node lacks, or a CIDR outside its network, is an AllocationError naming the fix."""
        name, path = self.registry.node, self.registry.config_key
        cidrs = kubenode.pod_cidr_list(node)
        if config.enable_ipv4:
            if v4 is None:
                raise AllocationError(_missing(name, cidrs, "IPv4", f"the flannel Network {config.network}", config))
            if config.network is not None and not v4.subnet_of(config.network):
                raise AllocationError(f"node {name!r} podCIDR {v4} is outside the flannel Network "
                                      f"{config.network} (-net-config-path {path}): make "
                                      "--cluster-cidr of the controller manager and Network the same")
        ipv6_subnet = None
        # a backend that carries IPv6 (its lease has a PublicIPv6) needs the IPv6 podCIDR
        if config.enable_ipv6 and config.ipv6_network is not None and \
                (self.attrs.public_ipv6 is not None or v6 is not None):
            if v6 is None:
                raise AllocationError(_missing(name, cidrs, "IPv6", f"the flannel IPv6Network {config.ipv6_network}",
                                               config))
            if not v6.subnet_of(config.ipv6_network):
                raise AllocationError(f"node {name!r} IPv6 podCIDR {v6} is outside the flannel IPv6Network "
                                      f"{config.ipv6_network} (-net-config-path {path}): make the IPv6 "
                                      "--cluster-cidr of the controller manager and IPv6Network the same")
            ipv6_subnet = v6
        # the admin's public-ip(v6)-overwrite annotations replace what we publish, as in Go
        overwrite = kubenode.public_ip_overwrite(node, self.registry.prefix)
        if overwrite is not None and config.enable_ipv4:
            self.attrs = dataclasses.replace(self.attrs, public_ip=overwrite)
        overwrite6 = kubenode.public_ipv6_overwrite(node, self.registry.prefix)
        if overwrite6 is not None and self.attrs.public_ipv6 is not None:
            self.attrs = dataclasses.replace(self.attrs, public_ipv6=overwrite6)
        return Lease(v4 if config.enable_ipv4 and v4 is not None else NO_IPV4, self.attrs, ipv6_subnet)

    async def complete(self) -> None:
        """NetworkUnavailable=False on our node (``-set-node-network-unavailable``), retried."""
        once = LogOnce(log)
        while True:
            try:
                await self.registry.mark_network_available()
                once.ok("node %s marked NetworkUnavailable=False", self.registry.node)
                return
            except StoreUnavailable as err:
                once.error("cannot set NetworkUnavailable=False on node %s, retrying: %s", self.registry.node, err)
            await asyncio.sleep(self.poll_s)

    async def renew(self, lease: Lease) -> Lease | None:
        return lease  # a podCIDR does not expire

    async def recreate(self, subnet: object, ipv6_subnet: object = None) -> Lease | None:
        """Our Node was deleted: wait, then publish again on the node of that name, if it has the
        same podCIDRs (``subnet``: Go's 0.0.0.0/0 on an IPv6-only network)."""
        await asyncio.sleep(self.poll_s)
        node = await self.registry.get_node()
        if node is None:
            return None
        try:
            v4, v6 = kubenode.pod_cidrs(node)
        except StoreDataError:
            return None
        if (subnet != NO_IPV4 and v4 != subnet) or (ipv6_subnet is not None and v6 != ipv6_subnet):
            return None
        await self.registry.publish(self.attrs)
        return Lease(subnet, self.attrs, ipv6_subnet)  # type: ignore[arg-type]


def _cluster_cidr(config: NetworkConfig) -> str:
    """The controller manager's --cluster-cidr for this network (dual stack: both, comma-separated)."""
    nets = [str(n) for n, on in ((config.network, config.enable_ipv4), (config.ipv6_network, config.enable_ipv6))
            if on and n is not None]
    return ",".join(nets)


def _missing(node: str, cidrs: list[str], family: str, network: str, config: NetworkConfig) -> str:
    other = "set EnableIPv6 false" if family == "IPv6" else "make the network IPv6-only (EnableIPv4 false)"
    return (f"node {node!r} has no {family} podCIDR (spec.podCIDRs {cidrs}), which {network} needs: "
            f"start the controller manager with --allocate-node-cidrs --cluster-cidr={_cluster_cidr(config)} "
            f"(one CIDR per family) and register the node again (its podCIDRs cannot change once set), or "
            f"{other} in net-conf.json")
