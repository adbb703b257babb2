"""Lease policy in kube mode: our subnet is our node's podCIDR, never chosen by us.

acquire: wait for our Node object and its podCIDR (saying what to do while waiting), check it lies
in Network, publish our annotations with a patch on ``nodes/status``; there is nothing to renew.
"""

from __future__ import annotations

import asyncio
import logging

from ..core import kubenode
from ..core.backoff import LogOnce
from ..core.config import NetworkConfig
from ..core.errors import AllocationError, StoreUnavailable
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
                subnet = kubenode.pod_cidr(node)
                if subnet is None:
                    once.error("node %r pod cidr not assigned: start the controller manager with "
                               "--allocate-node-cidrs --cluster-cidr=%s (or set spec.podCIDR); waiting for it",
                               reg.node, config.network)
                else:
                    if config.network is not None and not subnet.subnet_of(config.network):
                        raise AllocationError(f"node {reg.node!r} podCIDR {subnet} is outside the flannel Network "
                                              f"{config.network} (-net-config-path {reg.config_key}): make "
                                              "--cluster-cidr of the controller manager and Network the same")
                    overwrite = kubenode.public_ip_overwrite(node, reg.prefix)
                    if overwrite is not None:
                        self.attrs = LeaseAttrs(overwrite, self.attrs.public_ipv6, self.attrs.backend_type,
                                                self.attrs.backend_data, self.attrs.backend_v6_data)
                    if kubenode.annotations(node) | kubenode.lease_annotations(self.attrs, reg.prefix) != \
                            kubenode.annotations(node):
                        await reg.publish(self.attrs)
                    return AcquireResult(Lease(subnet, self.attrs), attempts, "podCIDR")
            await asyncio.sleep(self.poll_s)

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
        """Our Node was deleted: wait, then publish again on the node of that name (IPv4 only:
        ``ipv6_subnet`` is part of the manager protocol and always None in kube mode)."""
        await asyncio.sleep(self.poll_s)
        node = await self.registry.get_node()
        if node is None or kubenode.pod_cidr(node) != subnet:
            return None
        await self.registry.publish(self.attrs)
        return Lease(subnet, self.attrs)  # type: ignore[arg-type]
