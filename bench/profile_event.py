"""What one lease event costs one running flanneld, apart from what it spends anyway (issue 12).

    .venv/bin/python bench/profile_event.py [--peers 99] [--events 100] [--backend host-gw|vxlan]

Lab ``pfb-prof``: etcd, one host running flanneld and ``--peers`` synthetic peer leases; once every
route is in its kernel it is left alone for ``--idle`` seconds (its idle CPU rate), then a lease
for a host that does not exist is PUT and DELETEd ``--events`` times, each time waiting (netlink
events in the host's namespace) until the route has appeared and gone again. flanneld's CPU
(utime+stime of every thread, /proc) during the events minus its idle rate over the same time,
divided by the events (a PUT and a DELETE are two), is the per-event cost; the idle rate is what
the periodic work costs (the store probe, the full kernel check, the rule checks). Per thread too.

Never part of ``make test``; hold the shared lock (``flock /tmp/pfl-e2e.lock ...``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GHOSTS = ("10.0.250.0/24", "10.0.251.0/24", "10.15.250.0/24")  # the last: vxlan with many peers
def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (name, utime+stime seconds) of every live thread."""
    from pfbench.common import CLK_TCK

    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def per_thread(a: dict[int, tuple[str, float]], b: dict[int, tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for tid, (name, cpu) in b.items():
        key = "main (event loop)" if tid == min(b) else name
        out[key] = out.get(key, 0.0) + cpu - a.get(tid, (name, 0.0))[1]
    return out


def peers_for(backend: str, n: int) -> list[dict]:
    from pfbench.controlplane import synthetic_peers

    if backend == "vxlan":
        return synthetic_peers(n)
    # host-gw: the peers' public IPs must be on the host's segment (198.18.0.0/24; hosts from .11)
    return [{"subnet": f"10.0.{100 + i}.0/24", "public_ip": f"198.18.0.{100 + i}", "type": "host-gw", "data": None,
             "ttl": 3600} for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("host-gw", "vxlan"), default="host-gw")
    ap.add_argument("--peers", type=int, default=99)
    ap.add_argument("--events", type=int, default=100, help="PUT+DELETE cycles (two events each)")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle window")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between an event's end and the next")
    args = ap.parse_args()

    from pfbench.common import LeaseWriter, guarded, log, rss_mb, teardown
    from pfbench.controlplane import COLD_CONFIG, CONV_CONFIG
    from pfbench.nlwatch import RTMGRP_IPV4_ROUTE, Watcher

    from pyflannel.lab.bench_hosts import LightLab

    if args.backend == "host-gw" and not 0 <= args.peers <= 140:
        ap.error("host-gw: at most 140 peers (their public IPs share the lab's /24)")
    config = COLD_CONFIG if args.backend == "vxlan" else CONV_CONFIG
    lab = LightLab(name="pfb-prof", backend=args.backend)
    with guarded():
        lab.up_base(config)
        writer = LeaseWriter(lab)
        try:
            peers = peers_for(args.backend, args.peers)
            writer.call(op="bulk", leases=peers, timeout=300.0)
            host = lab.add_hosts(1)[0]
            pid = lab.flanneld_pid(host)
            assert pid is not None
            taken = {p["subnet"] for p in peers} | {str(ipaddress.IPv4Interface(host.subnet).network)}
            ghost = next(sn for sn in GHOSTS if sn not in taken)
            with Watcher([host.ns], RTMGRP_IPV4_ROUTE) as watch:
                wait_settled(lab, host, args.peers)
                time.sleep(3.0)
                t0, c0 = time.monotonic(), thread_cpu(pid)
                time.sleep(args.idle)
                t1, c1 = time.monotonic(), thread_cpu(pid)
                idle = per_thread(c0, c1)
                rate = sum(idle.values()) / (t1 - t0)
                t2, c2 = time.monotonic(), thread_cpu(pid)
                for _ in range(args.events):
                    for op in ("put", "del"):
                        cmd = {"subnet": ghost}
                        if op == "put":
                            cmd |= {"public_ip": "198.18.0.250", "type": args.backend, "ttl": None,
                                    "data": {"VNI": 1, "VtepMAC": "02:bb:ff:00:00:01"} if args.backend == "vxlan"
                                    else None}
                        writer.call(op=op, **cmd)
                        wait_route(watch, host.ns, ghost, op == "put")
                        time.sleep(args.gap)
                t3, c3 = time.monotonic(), thread_cpu(pid)
                time.sleep(2.0)
                rss = rss_mb(pid)
            busy = per_thread(c2, c3)
            n = 2 * args.events
            gross = sum(busy.values())
            base = rate * (t3 - t2)
            log(f"{args.backend}, {args.peers} peers: idle {rate * 100:.2f} % of a core; {n} events in "
                f"{t3 - t2:.1f} s: gross {gross * 1000 / n:.2f} ms/event, idle share {base * 1000 / n:.2f}, "
                f"net {(gross - base) * 1000 / n:.2f} ms/event; RSS {rss:.1f} MB after the events")
            for name in sorted(busy, key=lambda k: -busy[k]):
                net = busy[name] - idle.get(name, 0.0) / (t1 - t0) * (t3 - t2)
                log(f"  thread {name:20s} gross {busy[name] * 1000 / n:6.3f} ms/event, net {net * 1000 / n:6.3f}")
        finally:
            writer.close()
            teardown()
    return 0


def wait_settled(lab: object, host: object, peers: int, cap: float = 120.0) -> None:
    from pfbench.controlplane import _count_routes

    deadline = time.monotonic() + cap
    while _count_routes(host.ns) < peers:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise SystemExit(f"flanneld did not program {peers} routes within {cap:g}s")
        time.sleep(0.2)


def wait_route(watch: object, ns: str, subnet: str, added: bool, cap: float = 10.0) -> None:
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        events, _ = watch.poll(0.2)  # type: ignore[attr-defined]
        if any(ev.kind == "route" and ev.dst == subnet and ev.added == added for ev in events):
            return
    raise SystemExit(f"route {subnet} was not {'added' if added else 'removed'} within {cap:g}s")



if __name__ == "__main__":
    sys.exit(main())
