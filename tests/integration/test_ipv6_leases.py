"""Dual-stack leases in a real etcd: Go's key and JSON, the IPv6 subnet inside
IPv6SubnetMin..IPv6SubnetMax, reused on restart (by PublicIP and from subnet.env)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import subprocess
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from pyflannel.core.config import parse_config
from pyflannel.core.errors import AllocationError
from pyflannel.core.lease import LeaseAttrs
from pyflannel.lab.etcd_server import EtcdServer
from pyflannel.store.etcd import EtcdOptions, EtcdRegistry
from pyflannel.store.manager import LeaseManager

SUBNETS = "/atomic.io/network/subnets/"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ctl(server: EtcdServer, *args: str) -> str:
    proc = subprocess.run(["etcdctl", "--endpoints", server.endpoint, "--command-timeout=5s", *args],
                          capture_output=True, text=True, timeout=20, check=False,
                          env=dict(os.environ, ETCDCTL_API="3"))
    assert proc.returncode == 0, f"etcdctl {args}: {proc.stderr}"
    return proc.stdout


def get_json(server: EtcdServer, key: str) -> dict[str, Any]:
    kv = json.loads(ctl(server, "get", key, "-w", "json"))["kvs"][0]
    return {"value": base64.b64decode(kv["value"])}


async def with_registry(server: EtcdServer, body: Callable[[EtcdRegistry], Awaitable[T]]) -> T:
    reg = EtcdRegistry(EtcdOptions(endpoints=(server.endpoint,), prefix="/atomic.io/network"))
    try:
        return await body(reg)
    finally:
        await reg.close()

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
DUAL = parse_config('{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56",'
                    '"IPv6SubnetMin":"2001:cafe:42:10::","IPv6SubnetMax":"2001:cafe:42:1f::","Backend":{"Type":"host-gw"}}')


def hostgw(ip: str, ip6: str) -> LeaseAttrs:
    return LeaseAttrs(A4(ip), A6(ip6), "host-gw")


def test_dual_stack_acquire_writes_gos_key_and_json_and_reuses_both(etcd_server):
    async def body(reg):
        got = await LeaseManager(reg, hostgw("198.18.0.11", "2001:db8::11")).acquire(DUAL)
        lease = got.lease
        assert lease.ipv6_subnet is not None and lease.ipv6_subnet.prefixlen == 64
        assert A6("2001:cafe:42:10::") <= lease.ipv6_subnet.network_address <= A6("2001:cafe:42:1f::")
        key = SUBNETS + f"{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address.compressed}-64"
        assert get_json(etcd_server, key)["value"] == (
            b'{"PublicIP":"198.18.0.11","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}')
        again = await LeaseManager(reg, hostgw("198.18.0.11", "2001:db8::11")).acquire(DUAL)
        assert (again.how, again.lease.subnet, again.lease.ipv6_subnet) == ("reused", lease.subnet, lease.ipv6_subnet)
        return key

    key = run(with_registry(etcd_server, body))
    assert ctl(etcd_server, "get", "--prefix", SUBNETS, "--keys-only").split() == [key]


def test_previous_ipv6_subnet_from_subnet_env_is_asked_for_again(etcd_server):
    async def body(reg):
        mgr = LeaseManager(reg, hostgw("198.18.0.12", "2001:db8::12"), previous_subnet=N4("10.42.77.0/24"),
                           previous_ipv6_subnet=N6("2001:cafe:42:1c::/64"))
        got = await mgr.acquire(DUAL)
        assert (got.how, got.lease.subnet, got.lease.ipv6_subnet) == (
            "previous", N4("10.42.77.0/24"), N6("2001:cafe:42:1c::/64"))

    run(with_registry(etcd_server, body))
    assert ctl(etcd_server, "get", "--prefix", SUBNETS, "--keys-only").split() == [
        SUBNETS + "10.42.77.0-24&2001:cafe:42:1c::-64"]


def test_ipv6_switched_on_keeps_our_ipv4_subnet_and_adds_an_ipv6_one(etcd_server):
    lease_id = ctl(etcd_server, "lease", "grant", "600").split()[1]  # a lease, not a reservation
    ctl(etcd_server, "put", f"--lease={lease_id}", SUBNETS + "10.42.5.0-24",
        '{"PublicIP":"198.18.0.13","PublicIPv6":null}')

    async def body(reg):
        got = await LeaseManager(reg, hostgw("198.18.0.13", "2001:db8::13")).acquire(DUAL)
        assert got.how == "previous" and got.lease.subnet == N4("10.42.5.0/24")
        assert got.lease.ipv6_subnet is not None

    run(with_registry(etcd_server, body))
    keys = ctl(etcd_server, "get", "--prefix", SUBNETS, "--keys-only").split()
    assert len(keys) == 1 and keys[0].startswith(SUBNETS + "10.42.5.0-24&2001:cafe:42:1")


def test_subnet_env_of_before_ipv6_keeps_its_ipv4_subnet(etcd_server):
    async def body(reg):
        mgr = LeaseManager(reg, hostgw("198.18.0.14", "2001:db8::14"), previous_subnet=N4("10.42.66.0/24"))
        got = await mgr.acquire(DUAL)
        assert (got.how, got.lease.subnet) == ("previous", N4("10.42.66.0/24")) and got.lease.ipv6_subnet

    run(with_registry(etcd_server, body))


def test_dual_stack_allocations_never_share_an_ipv6_subnet(etcd_server):
    async def body(reg):
        seen = set()
        for i in range(16):  # the whole IPv6SubnetMin..Max range of 16 /64s
            got = await LeaseManager(reg, hostgw(f"198.18.0.{20 + i}", f"2001:db8::{20 + i}")).acquire(DUAL)
            seen.add(got.lease.ipv6_subnet)
        assert len(seen) == 16
        with pytest.raises(AllocationError, match="out of subnets"):
            await LeaseManager(reg, hostgw("198.18.0.99", "2001:db8::99")).acquire(DUAL)

    run(with_registry(etcd_server, body))


def test_leases_list_shows_both_halves(etcd_server, capsys):
    from pyflannel.cli.ctl_leases import leases_list

    ctl(etcd_server, "put", SUBNETS + "10.42.9.0-24&2001:cafe:42:19::-64",
        '{"PublicIP":"198.18.0.19","PublicIPv6":"2001:db8::19","BackendType":"host-gw"}')

    async def body(reg):
        await leases_list(reg, as_json=True)
        await leases_list(reg, as_json=False)

    run(with_registry(etcd_server, body))
    out = capsys.readouterr().out.splitlines()
    row = json.loads(out[0])["Leases"][0]
    assert (row["IPv6Subnet"], row["PublicIPv6"]) == ("2001:cafe:42:19::/64", "2001:db8::19")
    assert "10.42.9.0/24 2001:cafe:42:19::/64" in out[2] and "198.18.0.19 2001:db8::19" in out[2]


ONLY = parse_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56",'
                    '"IPv6SubnetMin":"2001:cafe:42:10::","IPv6SubnetMax":"2001:cafe:42:1f::","Backend":{"Type":"host-gw"}}')


def v6only(ip6: str) -> LeaseAttrs:
    return LeaseAttrs(A4(0), A6(ip6), "host-gw")


def test_ipv6_only_hosts_each_get_their_own_lease_and_keep_it(etcd_server):
    """Go's key and JSON with IPv4 off; every host publishes PublicIP 0.0.0.0, yet each leases its
    own IPv6 subnet (Go would hand the second host the first one's lease) and finds it again by
    its PublicIPv6; a host whose lease is gone asks for FLANNEL_IPV6_SUBNET again."""
    async def body(reg):
        got = [await LeaseManager(reg, v6only(f"2001:db8::1{i}")).acquire(ONLY) for i in range(3)]
        subnets = [g.lease.ipv6_subnet for g in got]
        assert len(set(subnets)) == 3 and all(g.how == "allocated" for g in got)
        assert all(A6("2001:cafe:42:10::") <= sn.network_address <= A6("2001:cafe:42:1f::") for sn in subnets)
        key = SUBNETS + f"0.0.0.0-0&{subnets[1].network_address.compressed}-64"
        assert get_json(etcd_server, key)["value"] == (
            b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}')
        again = await LeaseManager(reg, v6only("2001:db8::11")).acquire(ONLY)
        assert (again.how, again.lease.ipv6_subnet) == ("reused", subnets[1])
        await reg.delete_lease(again.lease.subnet, None, again.lease.ipv6_subnet)
        back = await LeaseManager(reg, v6only("2001:db8::11"), previous_ipv6_subnet=subnets[1]).acquire(ONLY)
        assert (back.how, back.lease.ipv6_subnet) == ("previous", subnets[1])
        return subnets

    subnets = run(with_registry(etcd_server, body))
    keys = ctl(etcd_server, "get", "--prefix", SUBNETS, "--keys-only").split()
    assert sorted(keys) == sorted(SUBNETS + f"0.0.0.0-0&{sn.network_address.compressed}-64" for sn in subnets)
