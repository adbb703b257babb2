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
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from typing import Any

from pyflannel.core.lease import LeaseAttrs
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


async def _run(reg: EtcdRegistry, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "put":
        return await _put(reg, cmd)
    if op == "bulk":
        leases, failed = cmd["leases"], []
        for i in range(0, len(leases), 50):
            failed += [r for r in await asyncio.gather(*(_put(reg, c) for c in leases[i:i + 50])) if not r["ok"]]
        return {"ok": not failed, "n": len(leases) - len(failed), "errors": [r["error"] for r in failed[:3]]}
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
