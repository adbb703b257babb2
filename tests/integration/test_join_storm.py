"""30 hosts join at once: 30 processes run flanneld's acquisition against one real etcd,
released together by a barrier, into a network of 62 subnets so that races really happen.
Every one gets a distinct subnet, none fails, none needs more than 10 attempts (Go flannel
exits on a lost race, docs/compatibility.md#lease-acquisition)."""

from __future__ import annotations

import asyncio
import ipaddress
import multiprocessing as mp

from pyflannel.core.config import parse_config
from pyflannel.core.errors import StoreUnavailable
from pyflannel.core.lease import LeaseAttrs
from pyflannel.store.etcd import EtcdOptions, EtcdRegistry
from pyflannel.store.manager import RACE_RETRIES, LeaseManager

HOSTS = 30
CONFIG = '{"Network": "10.0.0.0/19", "SubnetLen": 25}'  # 62 subnets for 30 hosts: real races


def join(endpoint: str, index: int, barrier, results) -> None:  # runs in a child process
    async def go() -> tuple[str, int]:
        registry = EtcdRegistry(EtcdOptions(endpoints=(endpoint,), prefix="/storm/network"))
        try:
            await registry.connect()
            await registry.list_leases()  # warm the channel so the barrier releases real contention
            barrier.wait()
            manager = LeaseManager(registry, LeaseAttrs(ipaddress.IPv4Address(f"198.18.1.{index + 1}")))
            for _ in range(20):  # as flanneld: an etcd call that times out on a loaded machine is retried
                try:
                    got = await manager.acquire(parse_config(CONFIG))
                    return str(got.lease.subnet), got.attempts
                except StoreUnavailable:
                    await asyncio.sleep(0.5)
            raise StoreUnavailable("etcd kept failing")
        finally:
            await registry.close()

    try:
        results.put((index, *asyncio.run(go())))
    except Exception as err:  # reported, and the test fails on it
        results.put((index, f"ERROR {type(err).__name__}: {err}", -1))


def test_thirty_hosts_join_at_once(etcd_server) -> None:
    async def put_config() -> None:
        registry = EtcdRegistry(EtcdOptions(endpoints=(etcd_server.endpoint,), prefix="/storm/network"))
        await registry.put_config(CONFIG.encode())
        await registry.close()

    asyncio.run(put_config())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(HOSTS, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=join, args=(etcd_server.endpoint, i, barrier, results)) for i in range(HOSTS)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [g for g in got if g[2] < 0]
    assert errors == []
    subnets = [g[1] for g in got]
    assert len(set(subnets)) == HOSTS, "every host has its own subnet"
    assert max(g[2] for g in got) <= RACE_RETRIES
    print("attempts per host:", sorted(g[2] for g in got))
