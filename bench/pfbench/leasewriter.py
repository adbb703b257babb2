"""Writes synthetic leases to the lab's etcd, one JSON command per stdin line, one JSON reply each.

Run by the benchmark inside the lab's etcd namespace (``ip netns exec NAME-etcd python
leasewriter.py ENDPOINT PREFIX``), so it reaches 198.18.0.2 without the root namespace ever
getting a route to the lab. It goes through pyflannel's own ``EtcdRegistry``, so the keys and the
JSON are exactly flanneld's. Commands:

    {"op": "put", "subnet": "10.0.7.0/24", "public_ip": "198.18.0.250", "type": "host-gw",
     "data": null, "ttl": null}                -> {"ok": true, "t0": <monotonic before>, "t1": <after>}
    {"op": "bulk", "leases": [<put without op>, ...]}              -> {"ok": true, "n": 1000}
    {"op": "del", "subnet": "10.0.7.0/24"}                         -> {"ok": true}
    {"op": "list"}                                                 -> {"ok": true, "subnets": [...]}
    {"op": "burst", "leases": [<put without op>, ...], "ttl": 3600, "concurrency": 128}
                                                   -> {"ok": true, "n": 5000, "t0": ..., "t1": ...}
    {"op": "unburst", "subnets": ["10.0.7.0/24", ...], "concurrency": 128}
                                                   -> {"ok": true, "n": 5000, "t0": ..., "t1": ...}

``burst`` and ``unburst`` are for many leases at once, as fast as etcd takes them: one etcd lease
(TTL) shared by all the keys, then one plain PUT (or DELETE) per key with ``concurrency`` of them
in flight, so every lease is still its own revision and its own watch event, as when many hosts
join or leave at once. ``t0`` is taken before the first request, ``t1`` after the last reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from typing import Any

from pyflannel.core.lease import LeaseAttrs, render_lease_attrs
from pyflannel.store.etcd import EtcdOptions, EtcdRegistry


async def _put(reg: EtcdRegistry, cmd: dict[str, Any]) -> dict[str, Any]:
    subnet = ipaddress.IPv4Network(cmd["subnet"])
    attrs = LeaseAttrs(ipaddress.IPv4Address(cmd["public_ip"]), None, cmd.get("type", ""), cmd.get("data"))
    t0 = time.monotonic()
    lease = await reg.create_lease(subnet, attrs, cmd.get("ttl"))
    t1 = time.monotonic()
    if lease is None:
        return {"ok": False, "error": f"{subnet} is already leased"}
    return {"ok": True, "t0": t0, "t1": t1}


async def _pool(count: int, concurrency: int, one: Any) -> None:
    """``await one(i)`` for i in 0..count-1, ``concurrency`` at a time (one task per slot)."""
    it = iter(range(count))

    async def slot() -> None:
        for i in it:
            await one(i)

    await asyncio.gather(*(slot() for _ in range(max(1, min(concurrency, count)))))


async def _burst(reg: EtcdRegistry, cmd: dict[str, Any]) -> dict[str, Any]:
    client = await reg.connect()
    kv = await reg._kv()
    ttl = cmd.get("ttl")
    lease_id = (await client.lease.grant(int(ttl))).ID if ttl else 0
    items = [(reg.lease_key(ipaddress.IPv4Network(c["subnet"])).encode(),
              render_lease_attrs(LeaseAttrs(ipaddress.IPv4Address(c["public_ip"]), None, c.get("type", ""),
                                            c.get("data")))) for c in cmd["leases"]]

    async def one(i: int) -> None:
        await kv.put(items[i][0], items[i][1], lease=lease_id)

    t0 = time.monotonic()
    await _pool(len(items), int(cmd.get("concurrency", 128)), one)
    return {"ok": True, "n": len(items), "t0": t0, "t1": time.monotonic()}


async def _unburst(reg: EtcdRegistry, cmd: dict[str, Any]) -> dict[str, Any]:
    kv = await reg._kv()
    keys = [reg.lease_key(ipaddress.IPv4Network(s)).encode() for s in cmd["subnets"]]
    deleted = 0

    async def one(i: int) -> None:
        nonlocal deleted
        resp = await kv.delete(keys[i])
        deleted += resp.deleted

    t0 = time.monotonic()
    await _pool(len(keys), int(cmd.get("concurrency", 128)), one)
    return {"ok": deleted == len(keys), "n": deleted, "t0": t0, "t1": time.monotonic(),
            **({} if deleted == len(keys) else {"error": f"only {deleted} of {len(keys)} keys existed"})}


async def _run(reg: EtcdRegistry, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "put":
        return await _put(reg, cmd)
    if op == "bulk":
        leases, failed = cmd["leases"], []
        for i in range(0, len(leases), 50):
            failed += [r for r in await asyncio.gather(*(_put(reg, c) for c in leases[i:i + 50])) if not r["ok"]]
        return {"ok": not failed, "n": len(leases) - len(failed), "errors": [r["error"] for r in failed[:3]]}
    if op == "burst":
        return await _burst(reg, cmd)
    if op == "unburst":
        return await _unburst(reg, cmd)
    if op == "del":
        return {"ok": await reg.delete_lease(ipaddress.IPv4Network(cmd["subnet"]))}
    if op == "list":
        snap = await reg.list_leases()
        return {"ok": True, "subnets": [str(le.subnet) for le in snap.leases]}
    return {"ok": False, "error": f"unknown op {op!r}"}


def main() -> int:
    endpoint, prefix = sys.argv[1], sys.argv[2]
    loop = asyncio.new_event_loop()
    reg = EtcdRegistry(EtcdOptions(endpoints=(endpoint,), prefix=prefix))
    loop.run_until_complete(reg.connect())
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = loop.run_until_complete(_run(reg, json.loads(line)))
            except Exception as err:  # reported to the benchmark, which stops with it
                reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            print(json.dumps(reply), flush=True)
    finally:
        loop.run_until_complete(reg.close())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
