"""Immutable route table and ingress source check for the udp backend's packet pump.

Why it is shaped like this:

- The pump looks a route up for every packet and the set of peers changes rarely, so a table is
  built once from the current leases and swapped in whole (one attribute assignment, atomic for
  the pump's loop); nothing here is ever mutated after ``__init__``.
- ``RouteTable.lookup`` is a longest-prefix match done as one dict probe per distinct prefix
  length, longest first: ``levels[i] = (mask, {network_int: value})``. A flannel network gives
  every node the same prefix length, so a lookup is normally one ``&`` and one ``dict.get``.
  Flannel's C proxy takes the *first* matching entry of an unordered array; with overlapping
  prefixes (which flannel's allocator never produces) we pick the most specific one instead.
- Addresses are host-order ints, as ``pyflannel.core.packet.ipv4_dst`` returns them, so no
  ``ipaddress`` object is created per packet.
- ``SourceCheck`` is the ingress filter flannel lacks: a datagram is accepted only if its outer
  source is a current peer's PublicIP and the inner source lies in one of that peer's subnets.
  It is a dict ``public_ip -> ((net, mask), ...)``; a peer normally has one subnet, so a check is
  one ``dict.get`` and one comparison.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["RouteTable", "SourceCheck"]

V = TypeVar("V")

_ALL_ONES = 0xFFFFFFFF


def _mask(prefixlen: int) -> int:
    return (_ALL_ONES << (32 - prefixlen)) & _ALL_ONES


def _check_network(net: object) -> ipaddress.IPv4Network:
    if not isinstance(net, ipaddress.IPv4Network):
        raise TypeError(f"expected an IPv4Network, got {type(net).__name__}: {net!r}")
    return net


class RouteTable(Generic[V]):
    """Longest-prefix-match table from IPv4 subnets to values (a peer's ``(ip, port)``).

    Built from ``(network, value)`` pairs; a network given twice keeps its last value (as the
    C proxy's ``set_route`` does). Values must not be None, since None means "no route".
    """

    __slots__ = ("_entries", "_levels")

    def __init__(self, entries: Iterable[tuple[ipaddress.IPv4Network, V]] = ()) -> None:
        table: dict[ipaddress.IPv4Network, V] = {}
        for net, value in entries:
            if value is None:
                raise ValueError(f"route {net} has value None")
            table[_check_network(net)] = value
        by_len: dict[int, dict[int, V]] = {}
        for net, value in table.items():
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = value
        self._entries = table
        self._levels: tuple[tuple[int, dict[int, V]], ...] = tuple(
            (_mask(plen), by_len[plen]) for plen in sorted(by_len, reverse=True)
        )

    def lookup(self, addr: int) -> V | None:
        """Value of the most specific network containing host-order ``addr``, or None."""
        for mask, nets in self._levels:
            value = nets.get(addr & mask)
            if value is not None:
                return value
        return None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[ipaddress.IPv4Network, V]]:
        return iter(self._entries.items())

    def __contains__(self, net: object) -> bool:
        return net in self._entries

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RouteTable):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]  # equal by content, values may be unhashable

    def __repr__(self) -> str:
        inner = ", ".join(f"{net}: {value!r}" for net, value in self._entries.items())
        return f"RouteTable({{{inner}}})"


class SourceCheck:
    """Ingress filter: is ``inner_src`` inside a subnet of the peer whose PublicIP is ``outer_src``?

    Built from a mapping ``public_ip (host-order int) -> subnets``. Immutable; swap in a new one
    whenever the peer set changes (``from_routes`` derives it from the current ``RouteTable``).
    """

    __slots__ = ("_peers",)

    def __init__(self, peers: Mapping[int, Iterable[ipaddress.IPv4Network]]) -> None:
        built: dict[int, tuple[tuple[int, int], ...]] = {}
        for public_ip, nets in peers.items():
            pairs = {(int(net.network_address), _mask(net.prefixlen)) for net in map(_check_network, nets)}
            if pairs:
                built[int(public_ip)] = tuple(sorted(pairs))
        self._peers = built

    @classmethod
    def from_routes(cls, table: RouteTable[Any]) -> SourceCheck:
        """Derive the check from a route table whose values are ``(public_ip_str, port)``."""
        peers: dict[int, list[ipaddress.IPv4Network]] = {}
        for net, value in table:
            peers.setdefault(int(ipaddress.IPv4Address(value[0])), []).append(net)
        return cls(peers)

    def allowed(self, outer_src_ip: int, inner_src: int) -> bool:
        """True only if ``outer_src_ip`` is a peer's PublicIP and ``inner_src`` is in its subnets."""
        nets = self._peers.get(outer_src_ip)
        if nets is None:
            return False
        for net, mask in nets:  # noqa: SIM110 - a plain loop beats any() + generator here
            if inner_src & mask == net:
                return True
        return False

    def is_peer(self, outer_src_ip: int) -> bool:
        """Is ``outer_src_ip`` a peer's PublicIP (why ``allowed`` said no: a stranger, or a peer
        whose inner source lies outside its subnets)?"""
        return outer_src_ip in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def rows(self) -> list[tuple[int, int, int]]:
        """``(peer ip, network, mask)`` per allowed subnet, host-order ints (the compiled pump's form)."""
        return [(ip, net, mask) for ip, nets in self._peers.items() for net, mask in nets]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceCheck):
            return NotImplemented
        return self._peers == other._peers

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        def fmt(ip: int, nets: tuple[tuple[int, int], ...]) -> str:
            subnets = ", ".join(f"{ipaddress.IPv4Address(n)}/{m.bit_count()}" for n, m in nets)
            return f"{ipaddress.IPv4Address(ip)}: [{subnets}]"

        return f"SourceCheck({{{', '.join(fmt(ip, nets) for ip, nets in self._peers.items())}}})"
