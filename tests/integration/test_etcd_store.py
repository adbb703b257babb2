"""EtcdRegistry, LeaseManager and watch_leases against a real etcd (docs/compatibility.md#etcd-keys to #watch).

Each test gets a fresh etcd from the ``etcd_server`` fixture. Async code runs under
``asyncio.run`` with an overall timeout, and every wait is bounded, so a failure never hangs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import AllocationError, StoreUnavailable
from pyflannel.core.events import Changes, PeerTable, Snapshot, WatchLost
from pyflannel.core.lease import LeaseAttrs, render_lease_attrs
from pyflannel.lab.etcd_server import EtcdServer, free_port
from pyflannel.store.etcd import EtcdOptions, EtcdRegistry
from pyflannel.store.manager import RACE_RETRIES, LeaseManager, watch_leases

T = TypeVar("T")
N4 = ipaddress.IPv4Network
A4 = ipaddress.IPv4Address
PREFIX = "/atomic.io/network"
SUBNETS = PREFIX + "/subnets/"
CONFIG16 = parse_config('{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}')


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ctl(server: EtcdServer, *args: str) -> str:
    proc = subprocess.run(
        ["etcdctl", "--endpoints", server.endpoint, "--command-timeout=5s", *args],
        capture_output=True, text=True, timeout=20, check=False, env=dict(os.environ, ETCDCTL_API="3"),
    )
    assert proc.returncode == 0, f"etcdctl {args}: {proc.stderr}"
    return proc.stdout


async def actl(server: EtcdServer, *args: str) -> str:
    return await asyncio.to_thread(ctl, server, *args)


def get_json(server: EtcdServer, key: str) -> dict[str, Any]:
    """The key as etcd has it: value (bytes), lease id (0 = none), revisions."""
    out = json.loads(ctl(server, "get", key, "-w", "json"))
    assert out.get("kvs"), f"{key} is not in etcd"
    kv = out["kvs"][0]
    return {"value": base64.b64decode(kv["value"]), "lease": int(kv.get("lease", 0)),
            "mod_revision": int(kv["mod_revision"]), "revision": int(out["header"]["revision"])}


def registry(server: EtcdServer) -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(endpoints=(server.endpoint,), prefix=PREFIX))


def attrs(ip: str, **kw: Any) -> LeaseAttrs:
    return LeaseAttrs(A4(ip), **kw)


class Watcher:
    """Runs ``watch_leases`` in a task, applies everything to a PeerTable and queues it."""

    def __init__(self, reg: EtcdRegistry) -> None:
        self.queue: asyncio.Queue[Snapshot | Changes] = asyncio.Queue()
        self.table = PeerTable()
        self.items: list[Snapshot | Changes] = []
        self.gen = watch_leases(reg, retry_delay=0.2)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.gen:
            self.table.apply(item)
            self.items.append(item)
            await self.queue.put(item)

    async def until(self, pred: Callable[[Snapshot | Changes], bool], timeout: float = 10.0) -> Snapshot | Changes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no matching watch item within {timeout}s; got {self.items!r}")
            if self.task.done():
                self.task.result()
                raise AssertionError("the watcher ended")
            try:
                item = await asyncio.wait_for(self.queue.get(), min(remaining, 0.5))
            except TimeoutError:
                continue
            if pred(item):
                return item

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.gen.aclose()


async def with_registry(server: EtcdServer, body: Callable[[EtcdRegistry], Awaitable[T]]) -> T:
    reg = registry(server)
    try:
        return await body(reg)
    finally:
        await reg.close()


def puts_of(item: Snapshot | Changes) -> set[N4]:
    return {le.subnet for le in item.puts} if isinstance(item, Changes) else set()


def deletes_of(item: Snapshot | Changes) -> set[N4]:
    return set(item.deletes) if isinstance(item, Changes) else set()


# --- config ------------------------------------------------------------------------------------


def test_put_and_get_config(etcd_server):
    text = b'{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":1}}'

    async def body(reg: EtcdRegistry) -> None:
        assert reg.config_key == PREFIX + "/config"
        assert await reg.get_config() is None
        await reg.put_config(text)
        assert await reg.get_config() == text
        assert parse_config(await reg.get_config() or b"").backend_type == "vxlan"

    run(with_registry(etcd_server, body))
    assert get_json(etcd_server, PREFIX + "/config")["value"] == text
    # written by someone else (etcdctl), read back unchanged
    ctl(etcd_server, "put", PREFIX + "/config", '{"Network":"10.5.0.0/16"}')
    assert run(with_registry(etcd_server, lambda reg: reg.get_config())) == b'{"Network":"10.5.0.0/16"}'


def test_prefix_is_cleaned_like_path_join(etcd_server):
    reg = EtcdRegistry(EtcdOptions(endpoints=(etcd_server.endpoint,), prefix="/atomic.io//network/"))
    assert reg.config_key == PREFIX + "/config"
    assert reg.lease_key(N4("10.0.3.0/24")) == SUBNETS + "10.0.3.0-24"


# --- acquire / renew ---------------------------------------------------------------------------


def test_acquire_writes_flannels_json_with_a_24h_lease(etcd_server):
    mine = attrs("198.18.0.11")

    async def body(reg: EtcdRegistry):
        got = await LeaseManager(reg, mine).acquire(CONFIG16)
        ttl = await reg.time_to_live(got.lease.lease_id)
        return got, ttl

    got, ttl = run(with_registry(etcd_server, body))
    assert got.how == "allocated"
    assert got.attempts == 1
    sn = got.lease.subnet
    assert re.fullmatch(r"10\.0\.(\d+)\.0/24", str(sn))
    assert 1 <= int(str(sn).split(".")[2]) <= 255
    key = SUBNETS + f"{sn.network_address}-24"
    kv = get_json(etcd_server, key)
    assert kv["value"] == b'{"PublicIP":"198.18.0.11","PublicIPv6":null}'
    assert kv["lease"] == got.lease.lease_id != 0
    assert 86400 - 60 <= ttl <= 86400
    out = ctl(etcd_server, "lease", "timetolive", f"{got.lease.lease_id:x}")
    m = re.search(r"granted with TTL\((\d+)s\), remaining\((\d+)s\)", out)
    assert m and m.group(1) == "86400" and int(m.group(2)) > 86400 - 60, out
    assert got.lease.expiration is not None and abs(got.lease.expiration - (time.time() + 86400)) < 60


def test_acquire_writes_vxlan_json(etcd_server):
    mine = attrs("192.168.64.3", backend_type="vxlan", backend_data={"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})

    async def body(reg: EtcdRegistry):
        return await LeaseManager(reg, mine).acquire(CONFIG16)

    got = run(with_registry(etcd_server, body))
    kv = get_json(etcd_server, SUBNETS + f"{got.lease.subnet.network_address}-24")
    assert kv["value"] == (b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
                           b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')


def test_acquire_again_with_same_public_ip_reuses_the_subnet(etcd_server):
    async def body(reg: EtcdRegistry):
        first = await LeaseManager(reg, attrs("198.18.0.11")).acquire(CONFIG16)
        # another host, then "us" again after a restart, now with a backend type
        other = await LeaseManager(reg, attrs("198.18.0.12")).acquire(CONFIG16)
        again = await LeaseManager(reg, attrs("198.18.0.11", backend_type="host-gw")).acquire(CONFIG16)
        old_ttl = await reg.time_to_live(first.lease.lease_id)
        snap = await reg.list_leases()
        return first, other, again, old_ttl, snap

    first, other, again, old_ttl, snap = run(with_registry(etcd_server, body))
    assert again.how == "reused"
    assert again.lease.subnet == first.lease.subnet != other.lease.subnet
    assert again.lease.lease_id != first.lease.lease_id
    assert old_ttl == -1  # pyflannel revokes the lease it moved away from
    assert len(snap.leases) == 2
    kv = get_json(etcd_server, SUBNETS + f"{first.lease.subnet.network_address}-24")
    assert kv["value"] == b'{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}'
    assert kv["lease"] == again.lease.lease_id


def test_previous_subnet_honoured_when_free(etcd_server):
    prev = N4("10.0.77.0/24")

    async def body(reg: EtcdRegistry):
        return await LeaseManager(reg, attrs("198.18.0.11"), previous_subnet=prev).acquire(CONFIG16)

    got = run(with_registry(etcd_server, body))
    assert got.how == "previous"
    assert got.lease.subnet == prev
    assert get_json(etcd_server, SUBNETS + "10.0.77.0-24")["lease"] == got.lease.lease_id


def test_previous_subnet_ignored_when_taken_or_incompatible(etcd_server):
    prev = N4("10.0.77.0/24")

    async def body(reg: EtcdRegistry):
        holder = await LeaseManager(reg, attrs("198.18.0.99"), previous_subnet=prev).acquire(CONFIG16)
        taken = await LeaseManager(reg, attrs("198.18.0.11"), previous_subnet=prev).acquire(CONFIG16)
        outside = await LeaseManager(reg, attrs("198.18.0.12"), previous_subnet=N4("10.1.77.0/24")).acquire(CONFIG16)
        wrong_len = await LeaseManager(reg, attrs("198.18.0.13"), previous_subnet=N4("10.0.78.0/25")).acquire(CONFIG16)
        return holder, taken, outside, wrong_len

    holder, taken, outside, wrong_len = run(with_registry(etcd_server, body))
    assert holder.lease.subnet == prev
    assert taken.how == "allocated" and taken.lease.subnet != prev
    assert outside.how == "allocated" and outside.lease.subnet.subnet_of(N4("10.0.0.0/16"))
    assert wrong_len.how == "allocated" and wrong_len.lease.subnet.prefixlen == 24
    assert get_json(etcd_server, SUBNETS + "10.0.77.0-24")["value"] == b'{"PublicIP":"198.18.0.99","PublicIPv6":null}'


def test_previous_subnet_whose_key_holds_garbage_is_written_back(etcd_server):
    """Our key overwritten with garbage while flanneld was down (the chaos soak, seed 1 on vxlan):
    the restart takes its subnet.env's subnet back over the garbage, not a new subnet beside a
    garbage key that would hold the old one for good (garbage elsewhere stays taken:
    test_garbage_valued_keys_count_as_taken)."""
    prev = N4("10.0.77.0/24")
    ctl(etcd_server, "put", SUBNETS + "10.0.77.0-24", "soak garbage {not json")

    async def body(reg: EtcdRegistry):
        return await LeaseManager(reg, attrs("198.18.0.11"), previous_subnet=prev).acquire(CONFIG16)

    mine = run(with_registry(etcd_server, body))
    assert (mine.how, mine.lease.subnet) == ("previous", prev)
    kv = get_json(etcd_server, SUBNETS + "10.0.77.0-24")
    assert kv["value"] == b'{"PublicIP":"198.18.0.11","PublicIPv6":null}' and kv["lease"] == mine.lease.lease_id != 0


def test_renew_gives_new_lease_same_key_and_value(etcd_server):
    mine = attrs("198.18.0.11", backend_type="host-gw")

    async def body(reg: EtcdRegistry):
        mgr = LeaseManager(reg, mine)
        got = await mgr.acquire(CONFIG16)
        before = await asyncio.to_thread(get_json, etcd_server, reg.lease_key(got.lease.subnet))
        renewed = await mgr.renew(got.lease)
        assert renewed is not None
        ttl = await reg.time_to_live(renewed.lease_id)
        renewed2 = await mgr.renew(renewed)
        # somebody else changes our key: the renewal refuses to overwrite it
        await actl(etcd_server, "put", reg.lease_key(got.lease.subnet), '{"PublicIP":"198.18.0.66","PublicIPv6":null}')
        stale = await mgr.renew(renewed2) if renewed2 is not None else "missing"
        return got, before, renewed, ttl, renewed2, stale

    got, before, renewed, ttl, renewed2, stale = run(with_registry(etcd_server, body))
    assert renewed.subnet == got.lease.subnet
    assert renewed.lease_id not in (0, got.lease.lease_id)
    assert renewed.attrs == mine
    assert renewed.mod_revision > got.lease.mod_revision
    assert 86400 - 60 <= ttl <= 86400
    assert renewed2 is not None and renewed2.lease_id != renewed.lease_id
    assert before["value"] == b'{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}'
    assert stale is None


def test_twenty_concurrent_acquirers_get_distinct_subnets(etcd_server):
    # 31 candidates for 20 hosts: races are certain, and each must be retried, not fatal
    config = parse_config('{"Network":"10.0.0.0/19","SubnetLen":24}')
    assert config.subnets_ipv4() == 31

    async def body():
        regs = [registry(etcd_server) for _ in range(20)]
        try:
            for reg in regs:
                await reg.connect()
            mgrs = [LeaseManager(reg, attrs(f"198.18.1.{i + 1}")) for i, reg in enumerate(regs)]
            results = await asyncio.gather(*(m.acquire(config) for m in mgrs), return_exceptions=True)
            snap = await regs[0].list_leases()
            return results, snap
        finally:
            for reg in regs:
                await reg.close()

    results, snap = run(body(), timeout=90)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    subnets = [r.lease.subnet for r in results]
    assert len(set(subnets)) == 20
    assert all(1 <= r.attempts <= RACE_RETRIES for r in results)
    by_ip = {le.attrs.public_ip: le.subnet for le in snap.leases}
    assert len(snap.leases) == 20
    for i, r in enumerate(results):
        assert by_ip[A4(f"198.18.1.{i + 1}")] == r.lease.subnet


def test_reservation_is_taken_by_its_host_and_stays_a_reservation(etcd_server):
    key = SUBNETS + "10.0.42.0-24"
    ctl(etcd_server, "put", key, '{"PublicIP":"198.18.0.11","PublicIPv6":null}')

    async def body(reg: EtcdRegistry):
        other = await LeaseManager(reg, attrs("198.18.0.12")).acquire(CONFIG16)
        mgr = LeaseManager(reg, attrs("198.18.0.11", backend_type="host-gw"))
        got = await mgr.acquire(CONFIG16)
        renewed = await mgr.renew(got.lease)
        again = await LeaseManager(reg, attrs("198.18.0.11", backend_type="host-gw")).acquire(CONFIG16)
        snap = await reg.list_leases()
        return other, got, renewed, again, snap

    other, got, renewed, again, snap = run(with_registry(etcd_server, body))
    assert other.lease.subnet != N4("10.0.42.0/24")
    assert got.how == "reservation"
    assert got.lease.subnet == N4("10.0.42.0/24")
    assert got.lease.lease_id == 0 and got.lease.is_reservation
    assert renewed == got.lease
    assert again.how == "reservation" and again.lease.subnet == N4("10.0.42.0/24")
    kv = get_json(etcd_server, key)
    assert kv["lease"] == 0
    assert kv["value"] == b'{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}'
    [mine] = [le for le in snap.leases if le.subnet == N4("10.0.42.0/24")]
    assert mine.lease_id == 0


def test_reservation_written_by_registry_without_ttl(etcd_server):
    async def body(reg: EtcdRegistry):
        res = await reg.create_lease(N4("10.0.43.0/24"), attrs("198.18.0.21"), None)
        assert res is not None and res.lease_id == 0
        assert await reg.create_lease(N4("10.0.43.0/24"), attrs("198.18.0.22"), None) is None  # create-if-absent
        return await LeaseManager(reg, attrs("198.18.0.21")).acquire(CONFIG16)

    got = run(with_registry(etcd_server, body))
    assert got.how == "reservation" and got.lease.subnet == N4("10.0.43.0/24")
    assert get_json(etcd_server, SUBNETS + "10.0.43.0-24")["lease"] == 0


def test_out_of_subnets(etcd_server):
    config = parse_config('{"Network":"10.10.0.0/28","SubnetLen":30}')
    assert config.subnets_ipv4() == 3

    async def body(reg: EtcdRegistry):
        got = [await LeaseManager(reg, attrs(f"198.18.2.{i}")).acquire(config) for i in range(1, 4)]
        with pytest.raises(AllocationError) as info:
            await LeaseManager(reg, attrs("198.18.2.4")).acquire(config)
        return got, str(info.value)

    got, msg = run(with_registry(etcd_server, body))
    assert {g.lease.subnet for g in got} == {N4("10.10.0.4/30"), N4("10.10.0.8/30"), N4("10.10.0.12/30")}
    assert "10.10.0.0/28" in msg and "3" in msg


def test_garbage_valued_keys_count_as_taken(etcd_server):
    config = parse_config('{"Network":"10.10.0.0/28","SubnetLen":30}')
    ctl(etcd_server, "put", SUBNETS + "10.10.0.4-30", "garbage")
    ctl(etcd_server, "put", SUBNETS + "10.10.0.8-30", '{"PublicIP":"not an ip"}')
    ctl(etcd_server, "put", SUBNETS + "not-a-subnet", '{"PublicIP":"198.18.0.11","PublicIPv6":null}')

    async def body(reg: EtcdRegistry):
        return await LeaseManager(reg, attrs("198.18.0.11")).acquire(config)

    got = run(with_registry(etcd_server, body))
    assert got.lease.subnet == N4("10.10.0.12/30")


# --- listing and garbage -----------------------------------------------------------------------


def test_list_leases_reports_garbage_as_bad_leases(etcd_server):
    good = '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}'
    ctl(etcd_server, "put", SUBNETS + "10.0.1.0-24", good)
    ctl(etcd_server, "put", SUBNETS + "10.0.2.0-24", "{not json")
    ctl(etcd_server, "put", SUBNETS + "nonsense", good)
    ctl(etcd_server, "put", SUBNETS + "10.0.3.1-24", good)  # host bits: not flannel's key
    ctl(etcd_server, "put", PREFIX + "/subnetsX/10.0.4.0-24", good)  # outside the subnets/ prefix
    ctl(etcd_server, "put", PREFIX + "/config", '{"Network":"10.0.0.0/16"}')

    snap = run(with_registry(etcd_server, lambda reg: reg.list_leases()))
    assert [le.subnet for le in snap.leases] == [N4("10.0.1.0/24")]
    assert snap.leases[0].attrs == attrs("198.18.0.11", backend_type="host-gw")
    assert snap.leases[0].lease_id == 0
    bad = {b.key: b for b in snap.bad}
    assert set(bad) == {SUBNETS + "10.0.2.0-24", SUBNETS + "nonsense", SUBNETS + "10.0.3.1-24"}
    assert bad[SUBNETS + "10.0.2.0-24"].subnet == N4("10.0.2.0/24")
    assert bad[SUBNETS + "nonsense"].subnet is None
    assert snap.revision == get_json(etcd_server, PREFIX + "/config")["revision"]


def test_deeply_nested_value_is_a_bad_lease(etcd_server):
    ctl(etcd_server, "put", SUBNETS + "10.0.9.0-24", "[" * 3000)
    snap = run(with_registry(etcd_server, lambda reg: reg.list_leases()))
    assert [b.subnet for b in snap.bad] == [N4("10.0.9.0/24")]


# --- watching ----------------------------------------------------------------------------------


def test_watch_snapshot_then_put_delete_and_expiry(etcd_server):
    async def body(reg: EtcdRegistry) -> None:
        await actl(etcd_server, "put", SUBNETS + "10.0.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null}')
        w = Watcher(reg)
        try:
            first = await w.until(lambda _: True)
            assert isinstance(first, Snapshot)
            assert [le.subnet for le in first.leases] == [N4("10.0.1.0/24")]

            await actl(etcd_server, "put", SUBNETS + "10.0.2.0-24",
                       '{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"host-gw"}')
            ch = await w.until(lambda i: N4("10.0.2.0/24") in puts_of(i))
            assert isinstance(ch, Changes)
            [put] = ch.puts
            assert put.attrs == attrs("198.18.0.2", backend_type="host-gw")
            assert put.mod_revision == ch.revision

            await actl(etcd_server, "del", SUBNETS + "10.0.1.0-24")
            ch = await w.until(lambda i: N4("10.0.1.0/24") in deletes_of(i))
            assert isinstance(ch, Changes) and ch.puts == ()

            # a TTL expiry is a delete too
            lease = await reg.create_lease(N4("10.0.3.0/24"), attrs("198.18.0.3"), 2)
            assert lease is not None and lease.lease_id != 0
            await w.until(lambda i: N4("10.0.3.0/24") in puts_of(i))
            await w.until(lambda i: N4("10.0.3.0/24") in deletes_of(i), timeout=10)
            assert set(w.table.leases) == {N4("10.0.2.0/24")}
            assert all(isinstance(i, Changes) for i in w.items[1:])  # no re-list was needed
        finally:
            await w.close()

    run(with_registry(etcd_server, body))


def test_watch_renewal_is_a_put_and_no_change(etcd_server):
    async def body(reg: EtcdRegistry) -> None:
        mgr = LeaseManager(reg, attrs("198.18.0.11"))
        got = await mgr.acquire(CONFIG16)
        w = Watcher(reg)
        try:
            await w.until(lambda i: isinstance(i, Snapshot))
            renewed = await mgr.renew(got.lease)
            assert renewed is not None
            ch = await w.until(lambda i: got.lease.subnet in puts_of(i))
            assert isinstance(ch, Changes)
            assert not PeerTable(dict(w.table.leases)).apply(ch)
            assert w.table.leases[got.lease.subnet].lease_id == renewed.lease_id
            assert not deletes_of(ch)
        finally:
            await w.close()

    run(with_registry(etcd_server, body))


def test_watch_garbage_is_bad_lease_never_a_delete(etcd_server):
    good = '{"PublicIP":"198.18.0.1","PublicIPv6":null}'

    async def body(reg: EtcdRegistry) -> None:
        await actl(etcd_server, "put", SUBNETS + "10.0.1.0-24", good)
        await actl(etcd_server, "put", SUBNETS + "10.0.2.0-24", good.replace(".1", ".2"))
        w = Watcher(reg)
        try:
            await w.until(lambda i: isinstance(i, Snapshot))
            await actl(etcd_server, "put", SUBNETS + "10.0.1.0-24", "garbage!")
            ch = await w.until(lambda i: bool(i.bad))
            assert isinstance(ch, Changes)
            assert [b.subnet for b in ch.bad] == [N4("10.0.1.0/24")]
            assert not ch.deletes and not ch.puts

            await actl(etcd_server, "put", SUBNETS + "junk-key", good)
            ch = await w.until(lambda i: bool(i.bad))
            assert [(b.key, b.subnet) for b in ch.bad] == [(SUBNETS + "junk-key", None)]
            assert not ch.deletes and not ch.puts

            await actl(etcd_server, "del", SUBNETS + "junk-key")
            await actl(etcd_server, "put", SUBNETS + "10.0.5.0-24", good.replace(".1", ".5"))  # a marker
            await w.until(lambda i: N4("10.0.5.0/24") in puts_of(i))
            assert set(w.table.leases) == {N4("10.0.1.0/24"), N4("10.0.2.0/24"), N4("10.0.5.0/24")}
            assert w.table.leases[N4("10.0.1.0/24")].attrs.public_ip == A4("198.18.0.1")  # last good lease
            assert not any(deletes_of(i) for i in w.items)
        finally:
            await w.close()
        # a fresh snapshot with the garbage still there keeps the last good lease as well
        snap = await reg.list_leases()
        assert [b.subnet for b in snap.bad] == [N4("10.0.1.0/24")]
        assert not w.table.apply(snap)
        assert N4("10.0.1.0/24") in w.table.leases

    run(with_registry(etcd_server, body))


def test_put_then_delete_in_one_watch_response_ends_deleted(etcd_server):
    async def body(reg: EtcdRegistry) -> None:
        snap = await reg.list_leases()
        table = PeerTable()
        table.apply(snap)
        # both happen before the watch starts, so etcd sends them in one catch-up response
        await actl(etcd_server, "put", SUBNETS + "10.0.1.0-24", '{"PublicIP":"198.18.0.1","PublicIPv6":null}')
        await actl(etcd_server, "del", SUBNETS + "10.0.1.0-24")
        gen = reg.watch_leases(snap.revision + 1)
        try:
            item = await asyncio.wait_for(gen.__anext__(), 10)
        finally:
            await gen.aclose()
        assert isinstance(item, Changes)
        table.apply(item)
        assert N4("10.0.1.0/24") not in table.leases

    run(with_registry(etcd_server, body))


def test_watch_relists_after_compaction(etcd_server):
    good = '{"PublicIP":"198.18.0.%d","PublicIPv6":null}'

    async def body(reg: EtcdRegistry) -> None:
        await actl(etcd_server, "put", SUBNETS + "10.0.1.0-24", good % 1)
        await actl(etcd_server, "put", SUBNETS + "10.0.2.0-24", good % 2)
        gen = watch_leases(reg, retry_delay=0.2)
        try:
            first = await asyncio.wait_for(gen.__anext__(), 10)
            assert isinstance(first, Snapshot)
            # the generator is parked after the snapshot; history moves on and is compacted away
            await actl(etcd_server, "del", SUBNETS + "10.0.1.0-24")
            await actl(etcd_server, "put", SUBNETS + "10.0.3.0-24", good % 3)
            await actl(etcd_server, "put", SUBNETS + "10.0.2.0-24", good % 22)
            rev = (await asyncio.to_thread(get_json, etcd_server, SUBNETS + "10.0.2.0-24"))["revision"]
            assert rev > first.revision + 1
            await actl(etcd_server, "compact", str(rev))
            fresh = await asyncio.wait_for(gen.__anext__(), 10)
            assert isinstance(fresh, Snapshot), fresh
            assert fresh.revision >= rev
            assert {le.subnet: le.attrs.public_ip for le in fresh.leases} == {
                N4("10.0.2.0/24"): A4("198.18.0.22"),
                N4("10.0.3.0/24"): A4("198.18.0.3"),
            }
            table = PeerTable()
            table.apply(first)
            assert table.apply(fresh)
            assert set(table.leases) == {N4("10.0.2.0/24"), N4("10.0.3.0/24")}
            # and the watch carries on after the re-list
            await actl(etcd_server, "put", SUBNETS + "10.0.4.0-24", good % 4)
            nxt = await asyncio.wait_for(gen.__anext__(), 10)
            assert N4("10.0.4.0/24") in puts_of(nxt)
        finally:
            await gen.aclose()

    run(with_registry(etcd_server, body))


def test_registry_watch_from_compacted_revision_reports_watch_lost(etcd_server):
    async def body(reg: EtcdRegistry) -> None:
        for i in range(3):
            await actl(etcd_server, "put", SUBNETS + f"10.0.{i + 1}.0-24", '{"PublicIP":"1.1.1.1"}')
        snap = await reg.list_leases()
        await actl(etcd_server, "compact", str(snap.revision))
        gen = reg.watch_leases(2)
        try:
            item = await asyncio.wait_for(gen.__anext__(), 10)
        finally:
            await gen.aclose()
        assert isinstance(item, WatchLost)
        assert str(snap.revision) in item.reason

    run(with_registry(etcd_server, body))


def test_watch_resumes_after_etcd_restart(etcd_server):
    good = '{"PublicIP":"198.18.0.%d","PublicIPv6":null}'

    async def body(reg: EtcdRegistry) -> None:
        await actl(etcd_server, "put", SUBNETS + "10.0.1.0-24", good % 1)
        w = Watcher(reg)
        try:
            await w.until(lambda i: isinstance(i, Snapshot))
            await actl(etcd_server, "put", SUBNETS + "10.0.2.0-24", good % 2)
            await w.until(lambda i: N4("10.0.2.0/24") in puts_of(i))

            await asyncio.to_thread(etcd_server.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(etcd_server.start)
            await actl(etcd_server, "put", SUBNETS + "10.0.3.0-24", good % 3)
            await w.until(
                lambda i: N4("10.0.3.0/24") in puts_of(i)
                or (isinstance(i, Snapshot) and N4("10.0.3.0/24") in {le.subnet for le in i.leases}),
                timeout=20,
            )
            # the outage deleted nobody
            assert set(w.table.leases) == {N4("10.0.1.0/24"), N4("10.0.2.0/24"), N4("10.0.3.0/24")}
            assert not any(deletes_of(i) for i in w.items)
            # the registry's unary calls work again too
            assert len((await reg.list_leases()).leases) == 3
        finally:
            await w.close()

    run(with_registry(etcd_server, body), timeout=90)


# --- unreachable -------------------------------------------------------------------------------


def test_unreachable_endpoint_raises_store_unavailable_naming_it():
    endpoint = f"http://127.0.0.1:{free_port()}"

    async def body() -> None:
        reg = EtcdRegistry(EtcdOptions(endpoints=(endpoint,), prefix=PREFIX))
        try:
            for call in (reg.get_config, reg.list_leases,
                         lambda: LeaseManager(reg, attrs("198.18.0.11")).acquire(CONFIG16)):
                # a deadline: not StoreUnavailable within 6 s is a TimeoutError, and fails
                with pytest.raises(StoreUnavailable) as info:
                    await asyncio.wait_for(call(), 6)
                assert endpoint in str(info.value)
        finally:
            await reg.close()

    run(body(), timeout=40)


def test_config_helpers_types():
    # the module-level config used above is what the tests think it is
    assert isinstance(CONFIG16, NetworkConfig)
    assert CONFIG16.subnet_len == 24 and CONFIG16.subnets_ipv4() == 255
    assert render_lease_attrs(attrs("198.18.0.11")) == b'{"PublicIP":"198.18.0.11","PublicIPv6":null}'
