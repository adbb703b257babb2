"""Tests for pyflannel.core.routes: longest-prefix match and the ingress source check."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.routes import RouteTable, SourceCheck


def ip(s: str) -> int:
    return int(IPv4Address(s))


def net(s: str) -> IPv4Network:
    return IPv4Network(s)


PEER_A = ("192.168.0.11", 8285)
PEER_B = ("192.168.0.12", 8285)
PEER_C = ("192.168.0.13", 8285)


# --- RouteTable -----------------------------------------------------------------------------


def test_basic_lookup() -> None:
    t = RouteTable([(net("10.5.34.0/24"), PEER_A), (net("10.5.35.0/24"), PEER_B)])
    assert t.lookup(ip("10.5.34.7")) == PEER_A
    assert t.lookup(ip("10.5.35.255")) == PEER_B
    assert t.lookup(ip("10.5.36.1")) is None
    assert t.lookup(0) is None


def test_longest_prefix_wins_regardless_of_order() -> None:
    entries = [
        (net("0.0.0.0/0"), PEER_C),
        (net("10.5.0.0/16"), PEER_A),
        (net("10.5.34.0/24"), PEER_B),
        (net("10.5.34.9/32"), ("192.168.0.14", 1)),
    ]
    for order in (entries, entries[::-1]):
        t = RouteTable(order)
        assert t.lookup(ip("10.5.34.9")) == ("192.168.0.14", 1)
        assert t.lookup(ip("10.5.34.8")) == PEER_B
        assert t.lookup(ip("10.5.99.1")) == PEER_A
        assert t.lookup(ip("8.8.8.8")) == PEER_C


def test_empty_table() -> None:
    t: RouteTable[tuple[str, int]] = RouteTable([])
    assert len(t) == 0 and list(t) == [] and t.lookup(ip("10.0.0.1")) is None
    assert t == RouteTable()


def test_duplicate_network_last_wins() -> None:
    t = RouteTable([(net("10.5.34.0/24"), PEER_A), (net("10.5.34.0/24"), PEER_B)])
    assert len(t) == 1
    assert t.lookup(ip("10.5.34.1")) == PEER_B
    assert list(t) == [(net("10.5.34.0/24"), PEER_B)]


def test_container_protocol_and_equality() -> None:
    entries = [(net("10.5.34.0/24"), PEER_A), (net("10.5.35.0/24"), PEER_B)]
    t = RouteTable(entries)
    assert len(t) == 2
    assert sorted(t) == sorted(entries)
    assert net("10.5.34.0/24") in t and net("10.5.36.0/24") not in t
    assert t == RouteTable(entries[::-1])
    assert t != RouteTable(entries[:1])
    assert t != RouteTable([(net("10.5.34.0/24"), PEER_A), (net("10.5.35.0/24"), PEER_C)])
    assert t != "not a table"
    assert "10.5.34.0/24" in repr(t)


def test_rejects_bad_entries() -> None:
    with pytest.raises(ValueError):
        RouteTable([(net("10.5.34.0/24"), None)])
    with pytest.raises(TypeError):
        RouteTable([("10.5.34.0/24", PEER_A)])  # type: ignore[list-item]


def test_one_level_per_distinct_prefix_length() -> None:
    t = RouteTable(
        [(net(f"10.5.{i}.0/24"), PEER_A) for i in range(200)]
        + [(net("10.6.0.0/16"), PEER_B), (net("10.7.0.0/16"), PEER_C)]
    )
    assert [mask for mask, _ in t._levels] == [0xFFFFFF00, 0xFFFF0000]


prefixes = st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32)).map(
    lambda p: IPv4Network((p[0] & ((0xFFFFFFFF << (32 - p[1])) & 0xFFFFFFFF), p[1]))
)
# Networks drawn from a small space so that they overlap often.
clustered = st.tuples(st.integers(0, 15), st.integers(22, 32), st.integers(0, 7)).map(
    lambda p: (
        IPv4Network(((0x0A050000 | p[0] << 6) & ((0xFFFFFFFF << (32 - p[1])) & 0xFFFFFFFF), p[1]))
        if p[2]
        else IPv4Network((0x0A000000, 8 + p[2]))
    )
)


def brute_force(entries: list[tuple[IPv4Network, int]], addr: int) -> int | None:
    table = dict(entries)  # last wins
    best: tuple[int, int] | None = None
    for n, v in table.items():
        if IPv4Address(addr) in n and (best is None or n.prefixlen > best[0]):
            best = (n.prefixlen, v)
    return None if best is None else best[1]


@given(
    st.lists(st.tuples(st.one_of(prefixes, clustered), st.integers(0, 1000)), max_size=30),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=20),
    st.lists(st.integers(0, 0x3FF), max_size=20),
)
def test_lpm_matches_brute_force(
    entries: list[tuple[IPv4Network, int]], addrs: list[int], near: list[int]
) -> None:
    t = RouteTable(entries)
    probes = addrs + [0x0A050000 | k for k in near] + [int(n.network_address) for n, _ in entries]
    probes += [int(n.broadcast_address) for n, _ in entries]
    for a in probes:
        assert t.lookup(a) == brute_force(entries, a)
    assert len(t) == len(dict(entries))


# --- SourceCheck ----------------------------------------------------------------------------


def test_source_check_cases() -> None:
    sc = SourceCheck(
        {
            ip("192.168.0.11"): (net("10.5.34.0/24"),),
            ip("192.168.0.12"): (net("10.5.35.0/24"), net("10.6.0.0/16")),
            ip("192.168.0.13"): (),
        }
    )
    assert sc.allowed(ip("192.168.0.11"), ip("10.5.34.2"))
    assert not sc.allowed(ip("192.168.0.11"), ip("10.5.35.2"))  # another peer's pods
    assert sc.allowed(ip("192.168.0.12"), ip("10.5.35.2"))
    assert sc.allowed(ip("192.168.0.12"), ip("10.6.200.1"))
    assert not sc.allowed(ip("192.168.0.12"), ip("10.7.0.1"))
    assert not sc.allowed(ip("192.168.0.13"), ip("10.5.34.2"))  # peer without subnets
    assert not sc.allowed(ip("192.168.0.99"), ip("10.5.34.2"))  # not a peer
    assert not sc.allowed(ip("10.5.34.2"), ip("10.5.34.2"))
    assert len(sc) == 2
    assert "192.168.0.12" in repr(sc) and "10.6.0.0/16" in repr(sc)


def test_source_check_empty() -> None:
    sc = SourceCheck({})
    assert not sc.allowed(ip("192.168.0.11"), ip("10.5.34.2"))
    assert sc == SourceCheck({1: ()})


def test_source_check_from_routes() -> None:
    t = RouteTable(
        [(net("10.5.34.0/24"), PEER_A), (net("10.5.35.0/24"), PEER_B), (net("10.5.36.0/24"), PEER_A)]
    )
    sc = SourceCheck.from_routes(t)
    assert sc == SourceCheck(
        {
            ip("192.168.0.11"): [net("10.5.36.0/24"), net("10.5.34.0/24")],
            ip("192.168.0.12"): [net("10.5.35.0/24")],
        }
    )
    assert sc.allowed(ip("192.168.0.11"), ip("10.5.36.9"))
    assert not sc.allowed(ip("192.168.0.12"), ip("10.5.36.9"))
    assert sc != "x"


def test_source_check_rejects_non_networks() -> None:
    with pytest.raises(TypeError):
        SourceCheck({1: ["10.5.34.0/24"]})  # type: ignore[list-item]


@given(
    st.dictionaries(st.integers(0, 7), st.lists(st.one_of(prefixes, clustered), max_size=4), max_size=6),
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 0xFFFFFFFF)), max_size=20),
)
def test_source_check_matches_brute_force(
    peers: dict[int, list[IPv4Network]], probes: list[tuple[int, int]]
) -> None:
    sc = SourceCheck(peers)
    for nets in peers.values():
        probes += [(o, int(n.network_address)) for o in peers for n in nets]
    for outer, inner in probes:
        expected = any(IPv4Address(inner) in n for n in peers.get(outer, ()))
        assert sc.allowed(outer, inner) == expected
