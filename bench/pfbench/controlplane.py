"""Control-plane figures: convergence with N hosts, cold start with 1000 peers, an idle flanneld.

(a) Convergence, lab ``pfb-conv`` (host-gw: a route per peer, no TUN or VXLAN device per host).
    Hosts are added in batches up to each N; after the cluster settles, a synthetic lease for a
    host that does not exist is PUT into etcd, and one netlink socket per host namespace timestamps
    the moment its route appears. Per PUT: p50, p99 and max over the N hosts of (route seen - PUT
    issued). The lease is then deleted (waiting for every route to go) before the next PUT.
(b) Cold start, lab ``pfb-cold`` (vxlan): 1000 synthetic vxlan leases (distinct subnets, VtepMACs,
    PublicIPs from 198.19.0.0/16, never sent to) are written first; then a fresh host namespace's
    flanneld is started and timed until all 1000 routes, neighbours and FDB entries are in its
    kernel (netlink events, checked by a dump at the end). Each run uses a new namespace and
    removes the previous host's lease, so every run starts from nothing.
(c) Idle: the last cold-started flanneld is left alone; its CPU (utime+stime over wall time, % of
    one core) and RSS over consecutive windows.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import time
from dataclasses import dataclass, field

from pyflannel.lab.bench_hosts import LightLab
from pyflannel.lab.cluster import Host
from pyflannel.lab.netns import in_ns, sh

from .common import BenchError, Figure, LeaseWriter, cpu_seconds, log, percentile, rss_mb
from .nlwatch import RTMGRP_IPV4_ROUTE, RTMGRP_NEIGH, Event, Watcher

CONV_CONFIG = json.dumps({"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}})
COLD_NETWORK = ipaddress.IPv4Network("10.0.0.0/12")
COLD_CONFIG = json.dumps({"Network": str(COLD_NETWORK), "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
GHOST_IP = "198.18.0.250"  # the public IP of the synthetic host-gw peer: on the segment, nobody there


@dataclass
class Results:
    figures: dict[tuple[str, int], Figure] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def add(self, metric: str, hosts: int, value: float, unit: str, capped: bool = False) -> None:
        fig = self.figures.setdefault((metric, hosts), Figure())
        fig.add(value)
        fig.capped = fig.capped or capped
        self.units[metric] = unit

    def rows(self) -> list[dict]:
        return [{"metric": m, "hosts": n, **f.summary(), "unit": self.units[m], **({"capped": True} if f.capped
                                                                                     else {})}
                for (m, n), f in self.figures.items()]


# ---- (a) convergence ------------------------------------------------------------------------------
def convergence(res: Results, sizes: list[int], rounds: int, cap_s: float, notes: list[str]) -> None:
    lab = LightLab(name="pfb-conv")
    lab.up_base(CONV_CONFIG)
    writer = LeaseWriter(lab)
    try:
        for n in sizes:
            t0 = time.monotonic()
            log(f"convergence: starting hosts {len(lab.hosts) + 1}..{n}")
            lab.add_hosts(n - len(lab.hosts))
            _settle(lab, n - 1, cap_s=120.0, notes=notes)
            log(f"convergence: {n} hosts up and settled in {time.monotonic() - t0:.0f} s")
            _converge_rounds(lab, writer, res, rounds, cap_s, notes)
    finally:
        writer.close()


def _count_routes(ns: str) -> int:
    return len(sh(["ip", "-n", ns, "-4", "route", "show", "proto", "151"], check=False).stdout.splitlines())


def _settle(lab: LightLab, peers: int, cap_s: float, notes: list[str]) -> None:
    """Wait until every host has a route to every other host, then let the CPU calm down."""
    deadline = time.monotonic() + cap_s
    pending = list(lab.hosts)
    while pending and time.monotonic() < deadline:
        pending = [h for h in pending if _count_routes(h.ns) < peers]
        if pending:
            time.sleep(0.5)
    if pending:
        notes.append(f"convergence: {len(pending)} of {len(lab.hosts)} hosts still lacked routes to all peers "
                     f"after {cap_s:g}s of settling; measured anyway")
    time.sleep(3.0)


def _free_subnet(lab: LightLab, taken: set[str]) -> str:
    used = {str(ipaddress.IPv4Interface(h.subnet).network) for h in lab.hosts} | taken
    for third in range(255, 0, -1):
        sn = f"10.0.{third}.0/24"
        if sn not in used:
            return sn
    raise BenchError("no free /24 left in 10.0.0.0/16 for a synthetic lease")


def _converge_rounds(lab: LightLab, writer: LeaseWriter, res: Results, rounds: int, cap_s: float,
                     notes: list[str]) -> None:
    n = len(lab.hosts)
    pids = [lab.flanneld_pid(h) for h in lab.hosts]
    taken: set[str] = set()
    with Watcher([h.ns for h in lab.hosts], RTMGRP_IPV4_ROUTE) as watch:
        watch.register(writer.stdout, "writer")
        for r in range(rounds):
            subnet = _free_subnet(lab, taken)
            taken.add(subnet)
            cpu0 = sum(cpu_seconds(p) for p in pids)
            writer.send(op="put", subnet=subnet, public_ip=GHOST_IP, type="host-gw", ttl=None)
            t_put, seen = _wait_routes(watch, writer, subnet, n, True, cap_s)
            cpu1 = sum(cpu_seconds(p) for p in pids)
            lat = [(seen.get(h.ns, t_put + cap_s) - t_put) * 1000 for h in lab.hosts]
            capped = len(seen) < n
            if capped:
                notes.append(f"convergence N={n}: {n - len(seen)} hosts had no route for {subnet} after the "
                             f"{cap_s:g}s cap; counted as {cap_s:g}s (a lower bound)")
            for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
                res.add(f"convergence_{name}_ms", n, percentile(lat, q), "ms", capped)
            res.add("convergence_cpu_ms_per_host", n, (cpu1 - cpu0) * 1000 / n, "ms", capped)
            log(f"convergence N={n} round {r + 1}/{rounds}: p50 {percentile(lat, 50):.0f} ms, p99 "
                f"{percentile(lat, 99):.0f} ms, max {max(lat):.0f} ms, flanneld CPU "
                f"{(cpu1 - cpu0) * 1000 / n:.1f} ms/host")
            writer.send(op="del", subnet=subnet)
            _, gone = _wait_routes(watch, writer, subnet, n, False, cap_s)
            if len(gone) < n:
                notes.append(f"convergence N={n}: {n - len(gone)} hosts kept the route to deleted {subnet}")
            time.sleep(0.5)


def _wait_routes(watch: Watcher, writer: LeaseWriter, subnet: str, n: int, added: bool, cap_s: float
                 ) -> tuple[float, dict[str, float]]:
    """Until the writer has answered and ``n`` namespaces saw the route to ``subnet`` added (or
    removed); returns the writer's PUT time and the first time each namespace saw it."""
    t_put: float | None = None
    seen: dict[str, float] = {}
    deadline = time.monotonic() + cap_s
    while (t_put is None or len(seen) < n) and time.monotonic() < deadline:
        events, others = watch.poll(0.2)
        for ev in events:
            if ev.kind == "route" and ev.dst == subnet and ev.added == added:
                seen.setdefault(ev.ns, ev.when)
        if "writer" in others:
            t_put = float(writer.read(5.0).get("t0", 0.0))
    if t_put is None:
        raise BenchError(f"the lease writer did not answer the PUT of {subnet} within {cap_s:g}s")
    return t_put, seen


# ---- (b) cold start and (c) idle --------------------------------------------------------------------
def synthetic_peers(count: int) -> list[dict]:
    subnets = COLD_NETWORK.subnets(new_prefix=24)
    next(subnets)  # 10.0.0.0/24 is below SubnetMin
    out = []
    for i in range(count):
        sn = next(subnets)
        mac = f"02:bb:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
        pip = str(ipaddress.IPv4Address("198.19.0.1") + i)
        out.append({"subnet": str(sn), "public_ip": pip, "type": "vxlan", "data": {"VNI": 1, "VtepMAC": mac},
                    "ttl": 3600})
    return out


@dataclass
class Expected:
    routes: set[str]
    neighs: set[tuple[str, str]]
    fdbs: set[tuple[str, str]]

    @classmethod
    def of(cls, peers: list[dict]) -> Expected:
        return cls({p["subnet"] for p in peers},
                   {(str(ipaddress.IPv4Network(p["subnet"]).network_address), p["data"]["VtepMAC"]) for p in peers},
                   {(p["data"]["VtepMAC"], p["public_ip"]) for p in peers})

    def match(self, ev: Event) -> tuple[str, object] | None:
        if not ev.added:
            return None
        if ev.kind == "route" and ev.dst in self.routes:
            return "route", ev.dst
        if ev.kind == "neigh" and (ev.dst, ev.mac) in self.neighs:
            return "neigh", (ev.dst, ev.mac)
        if ev.kind == "fdb" and (ev.mac, ev.dst) in self.fdbs:
            return "fdb", (ev.mac, ev.dst)
        return None


def dump_counts(ns: str, peers: Expected) -> dict[str, int]:
    """What the kernel holds, counted by a dump (the cross-check of the events)."""
    routes = {line.split()[0] for line in sh(["ip", "-n", ns, "-4", "route", "show", "proto", "151"],
                                             check=False).stdout.splitlines() if line.strip()}
    neighs = sh(["ip", "-n", ns, "neigh", "show", "dev", "flannel.1", "nud", "permanent"], check=False).stdout
    fdbs = sh(in_ns(ns, "bridge", "fdb", "show", "dev", "flannel.1"), check=False).stdout
    return {"route": len(routes & peers.routes),
            "neigh": sum(1 for line in neighs.splitlines() if tuple(line.split()[0:3:2]) in peers.neighs),
            "fdb": sum(1 for line in fdbs.splitlines() if "dst" in line.split()
                       and (line.split()[0], line.split()[line.split().index("dst") + 1]) in peers.fdbs)}


def coldstart(res: Results, peers_n: int, runs: int, cap_s: float, idle_windows: int, idle_s: float,
              notes: list[str]) -> None:
    lab = LightLab(name="pfb-cold")
    lab.up_base(COLD_CONFIG)
    writer = LeaseWriter(lab)
    try:
        peers = synthetic_peers(peers_n)
        t0 = time.monotonic()
        writer.call(op="bulk", leases=peers, timeout=300.0)
        log(f"cold start: wrote {peers_n} synthetic vxlan leases in {time.monotonic() - t0:.1f} s")
        expected = Expected.of(peers)
        host = None
        for r in range(runs):
            if host is not None:
                _retire(lab, writer, host)
            host = lab.add_host(r + 1, start=False)  # a new namespace and address every run
            _cold_run(lab, host, expected, res, peers_n, cap_s, notes, r, runs)
        assert host is not None
        idle(lab, host, res, peers_n, idle_windows, idle_s)
    finally:
        writer.close()


def _retire(lab: LightLab, writer: LeaseWriter, host: Host) -> None:
    with open(lab.subnet_file(host)) as f:
        subnet = next(line.split("=", 1)[1].strip() for line in f if line.startswith("FLANNEL_SUBNET="))
    lab.remove_host(host)
    writer.call(op="del", subnet=str(ipaddress.IPv4Interface(subnet).network))


def _cold_run(lab: LightLab, host: Host, expected: Expected, res: Results, peers_n: int, cap_s: float,
              notes: list[str], r: int, runs: int) -> None:
    got: dict[str, set[object]] = {"route": set(), "neigh": set(), "fdb": set()}
    subnet_file = lab.subnet_file(host)
    ready = done = math.nan
    with Watcher([host.ns], RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH) as watch:
        t0 = time.monotonic()
        proc = lab.start_flanneld(host)
        deadline = t0 + cap_s
        while time.monotonic() < deadline:
            events, _ = watch.poll(0.05)
            for ev in events:
                hit = expected.match(ev)
                if hit:
                    got[hit[0]].add(hit[1])
            if math.isnan(ready) and os.path.exists(subnet_file):
                ready = time.monotonic() - t0
            if all(len(v) >= peers_n for v in got.values()):
                done = time.monotonic() - t0
                break
            if watch.overflows and time.monotonic() - t0 > 1.0:  # events were lost: count by dump instead
                counts = dump_counts(host.ns, expected)
                if all(c >= peers_n for c in counts.values()):
                    done = time.monotonic() - t0
                    break
            if proc.poll() is not None:
                raise BenchError(f"flanneld on {host.ns} exited ({proc.returncode}) during the cold start:\n"
                                 f"{lab.log_tail(host)}")
        pid = proc.pid
        rss, hwm = rss_mb(pid), rss_mb(pid, "VmHWM")
    counts = dump_counts(host.ns, expected)
    capped = math.isnan(done)
    if capped:
        done = cap_s
        notes.append(f"cold start run {r + 1}: not all {peers_n} peers were programmed after the {cap_s:g}s cap "
                     f"(kernel holds routes/neighbours/FDB {counts['route']}/{counts['neigh']}/{counts['fdb']}); "
                     f"counted as {cap_s:g}s (a lower bound)")
    elif min(counts.values()) < peers_n:
        notes.append(f"cold start run {r + 1}: events said complete but a dump finds {counts}")
    if watch.overflows:
        notes.append(f"cold start run {r + 1}: the netlink socket overflowed {watch.overflows}x; completion was "
                     "taken from dumps")
    res.add("coldstart_s", peers_n, done, "s", capped)
    res.add("coldstart_ready_s", peers_n, ready, "s")
    res.add("coldstart_rss_mb", peers_n, rss, "MB")
    res.add("coldstart_peak_rss_mb", peers_n, hwm, "MB")
    log(f"cold start run {r + 1}/{runs}: subnet.env after {ready:.2f} s, all {peers_n} peers programmed after "
        f"{done:.2f} s{' (CAPPED)' if capped else ''}; RSS {rss:.1f} MB (peak {hwm:.1f}); dump {counts}")


def idle(lab: LightLab, host: Host, res: Results, peers_n: int, windows: int, seconds: float) -> None:
    pid = lab.flanneld_pid(host)
    time.sleep(5.0)
    for w in range(windows):
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        pct = (c1 - c0) / (t1 - t0) * 100
        res.add("idle_cpu_pct", peers_n, pct, "% of one core")
        res.add("idle_rss_mb", peers_n, rss_mb(pid), "MB")
        log(f"idle window {w + 1}/{windows}: flanneld CPU {pct:.2f}% of a core, RSS {rss_mb(pid):.1f} MB")
