"""Which leases may reach the kernel: the shape rules a subnet key must meet against the network
config, applied to every store event before the peer table sees it.

A key someone wrote by hand (or an attacker) for a /25 inside host A's /24, or a /23 around it,
would otherwise be programmed on every host and pull half of A's containers towards the writer.
Go flannel programs such keys; pyflannel skips them, one warning per key (``store.manager.log_bad``).

The rules: a lease is exactly ``SubnetLen`` long, aligned (the key parser already refuses host
bits) and inside ``Network``. Two aligned subnets of one length are either the same subnet or
disjoint, so with these rules no lease can overlap another one's subnet partly. The same subnet
under a second key is still possible: a key names an IPv4 and, optionally, an IPv6 subnet
(``10.0.5.0-24`` and ``10.0.5.0-24&fd00:99::-64`` are two keys for one IPv4 subnet;
``10.0.99.0-24&fd00:5::-64`` takes another host's IPv6 subnet). ``screen_held`` refuses a key
for a subnet that another key holds (the peer table's, found per subnet: O(size of the event)),
and a deleted key removes a peer only if it is the key that holds the subnet.

In kube mode (``any_len``) the length rule is off: a subnet is a node's podCIDR, whose length is
the controller manager's ``--node-cidr-mask-size`` (``-ipv6``), not SubnetLen or IPv6SubnetLen (Go
flannel ignores them there too), and the node IPAM controller hands out disjoint podCIDRs. Inside
``Network`` (``IPv6Network``) still holds.

On an IPv6-only network (EnableIPv4 false) the same rules hold for the IPv6 subnet (IPv6SubnetLen,
inside IPv6Network), the IPv4 half must be Go's ``0.0.0.0-0`` and the lease must name a PublicIPv6.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .allocate import NO_IPV4
from .config import NetworkConfig
from .events import BadLease, Changes, PeerTable, Snapshot
from .lease import Lease


def subnet_problem(subnet: ipaddress.IPv4Network, config: NetworkConfig, *, any_len: bool = False) -> str | None:
    """Why a lease for ``subnet`` cannot belong to a host of this network, or None."""
    network = config.network
    if network is None:
        return None
    if subnet.prefixlen != config.subnet_len and not any_len:
        return (f"{subnet} is a /{subnet.prefixlen}, but every lease of {network} is a /{config.subnet_len} "
                "(SubnetLen): it would overlap other hosts' subnets")
    if not subnet.subnet_of(network):
        return f"{subnet} is outside the network {network}"
    return None


def ipv6_problem(lease: Lease, config: NetworkConfig, *, any_len: bool = False) -> str | None:
    """Why the IPv6 half of a dual-stack peer's lease cannot be programmed, or None (also when it
    has none: a lease whose IPv6 half did not decode says why in ``attrs.ipv6_problem``)."""
    net6, sn6 = config.ipv6_network, lease.ipv6_subnet
    if not config.enable_ipv6 or net6 is None:
        return None
    if lease.attrs.ipv6_problem:
        return lease.attrs.ipv6_problem
    if sn6 is None:
        return None
    if sn6.prefixlen != config.ipv6_subnet_len and not any_len:
        return f"its IPv6 subnet {sn6} is not a /{config.ipv6_subnet_len} (IPv6SubnetLen)"
    if not sn6.subnet_of(net6):
        return f"its IPv6 subnet {sn6} is outside the IPv6 network {net6}"
    return None


def ipv6_only_problem(lease: Lease, config: NetworkConfig, *, any_len: bool = False) -> str | None:
    """Why a lease cannot be a host's of an IPv6-only network (EnableIPv4 false), or None. Its key
    is Go's ``0.0.0.0-0&<IPv6 subnet>``: there is no IPv4 half to fall back on, so an unusable IPv6
    half makes the whole lease bad."""
    if lease.subnet != NO_IPV4:
        return f"it names the IPv4 subnet {lease.subnet}, but this network is IPv6-only (EnableIPv4 false)"
    if lease.ipv6_subnet is None:
        return "it names no IPv6 subnet, but this network is IPv6-only (EnableIPv4 false)"
    problem = ipv6_problem(lease, config, any_len=any_len)
    if problem is None and lease.attrs.public_ipv6 is None:
        problem = "it has no PublicIPv6: no host can be reached for it"
    return problem


def _drop_ipv6(lease: Lease, config: NetworkConfig, prefix: str, warnings: list[str] | None,
               any_len: bool) -> Lease:
    problem = ipv6_problem(lease, config, any_len=any_len)
    if problem is None:
        return lease
    if warnings is not None:
        warnings.append(f"lease {prefix + lease.key}: {problem}; using only its IPv4 part {lease.subnet}")
    return dataclasses.replace(lease, attrs=dataclasses.replace(lease.attrs, public_ipv6=None, backend_v6_data=None),
                               ipv6_subnet=None)


def screen(event: Snapshot | Changes, config: NetworkConfig, prefix: str = "",
           warnings: list[str] | None = None, *, any_len: bool = False) -> Snapshot | Changes:
    """``event`` with every lease that breaks a shape rule moved to ``bad`` (O(size of event)),
    named by its full key (``prefix`` + subnet key, as the store names bad keys). Deletes pass:
    deleting a key that was never accepted changes nothing. A dual-stack lease whose IPv6 half is
    unusable keeps its IPv4 half (the reason goes to ``warnings``)."""
    leases = event.leases if isinstance(event, Snapshot) else event.puts
    misfits: list[BadLease] = []
    kept: list[Lease] = []
    changed = False
    for lease in leases:
        if not config.enable_ipv4:
            problem = ipv6_only_problem(lease, config, any_len=any_len)
            if problem is None:
                kept.append(lease)
            else:
                misfits.append(BadLease(prefix + lease.key, problem, lease.ident))
            continue
        if config.enable_ipv6 and (lease.ipv6_subnet is not None or lease.attrs.ipv6_problem):
            fixed = _drop_ipv6(lease, config, prefix, warnings, any_len)
            changed, lease = changed or fixed is not lease, fixed
        problem = subnet_problem(lease.subnet, config, any_len=any_len)
        if problem is None and lease.attrs.public_ip.is_unspecified:
            problem = "its host has no IPv4 PublicIP (an IPv6-only host): pyflannel routes IPv4 only"
        if problem is None:
            kept.append(lease)
        else:
            misfits.append(BadLease(prefix + lease.key, problem))
    if not misfits and not changed:
        return event
    bad = event.bad + tuple(misfits)
    if isinstance(event, Snapshot):
        return Snapshot(tuple(kept), event.revision, bad)
    return Changes(tuple(kept), event.deletes, event.revision, bad, event.deleted_keys)


def _taken(sn: object, holder: str, prefix: str) -> str:
    return (f"{sn} is already held by {prefix}{holder}: a second key for it would take that host's traffic "
            "(Go flannel would program it)")


class _Claims:
    """Which key holds each IPv4 and IPv6 subnet, as the leases of one event are accepted."""

    def __init__(self, holder: object) -> None:
        self.holder = holder  # subnet -> the key holding it before this event ("" if none)
        self.claimed: dict[object, str] = {}

    def problem(self, le: Lease, prefix: str) -> str | None:
        # 0.0.0.0/0: no IPv4 subnet at all (Go's key of an IPv6-only lease, 0.0.0.0-0&<IPv6 subnet>)
        for sn in (le.subnet if le.subnet.prefixlen else None, le.ipv6_subnet):
            if sn is None:
                continue
            holder = self.claimed.get(sn) or self.holder(sn)  # type: ignore[operator]
            if holder and holder != le.key:
                return _taken(sn, holder, prefix)
        self.claimed[le.subnet] = le.key
        if le.ipv6_subnet is not None:
            self.claimed[le.ipv6_subnet] = le.key
        return None


def screen_held(event: Snapshot | Changes, table: PeerTable, prefix: str = "", prefer: str = ""
                ) -> Snapshot | Changes:
    """``event`` with every lease whose IPv4 or IPv6 subnet is held by another key moved to ``bad``
    (named by ``prefix`` + its key), and deletes of keys that hold nothing dropped. The holder is
    the key in ``table`` (the peer table before this event); in a snapshot the key ``prefer`` (our
    own lease's), then the key ``table`` holds, then the oldest key (etcd's create revision) keeps
    the subnet. O(size of the event)."""
    held, by6 = table.leases, table.by_ipv6
    if isinstance(event, Snapshot):
        def rank(le: Lease) -> tuple[int, int]:
            now = held.get(le.ident)
            first = 0 if le.key == prefer else 1 if now is not None and now.key == le.key else 2
            return first, le.create_revision or 1 << 62

        claims = _Claims(lambda sn: "")
        lost = {id(le): why for le in sorted(event.leases, key=rank) if (why := claims.problem(le, prefix))}
        if not lost:
            return event
        return Snapshot(tuple(le for le in event.leases if id(le) not in lost), event.revision,
                        event.bad + tuple(BadLease(prefix + le.key, lost[id(le)]) for le in event.leases
                                          if id(le) in lost))
    deletes, deleted_keys, keys = [], [], event.deleted_keys
    for i, sn in enumerate(event.deletes):
        now = held.get(sn)
        if i < len(keys) and now is not None and now.key != keys[i]:
            continue  # a key that never held the subnet went away: its holder stays
        deletes.append(sn)
        deleted_keys += keys[i:i + 1]
    gone = set(deletes)

    def holder(sn: object) -> str:
        sn4 = by6.get(sn) if isinstance(sn, ipaddress.IPv6Network) else sn
        now = held.get(sn4) if sn4 is not None and sn4 not in gone else None  # type: ignore[arg-type]
        return now.key if now is not None else ""

    claims = _Claims(holder)
    kept, misfits = [], []
    for le in event.puts:
        why = claims.problem(le, prefix)
        if why is None:
            kept.append(le)
        else:
            misfits.append(BadLease(prefix + le.key, why))
    if not misfits and len(deletes) == len(event.deletes):
        return event
    return Changes(tuple(kept), tuple(deletes), event.revision, event.bad + tuple(misfits), tuple(deleted_keys))
