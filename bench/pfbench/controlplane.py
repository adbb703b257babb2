"""Control-plane figures: convergence with N hosts, cold start with 1000 peers, an idle flanneld.

(a) Convergence, lab ``pfb-conv`` (host-gw: a route per peer, no TUN or VXLAN device per host).
    Hosts are added in batches up to each N; after the cluster settles, a synthetic lease for a
    host that does not exist is PUT into etcd, and one netlink socket per host namespace timestamps
    the moment its route appears. Per PUT: p50, p99 and max over the N hosts of (route seen - PUT
    issued). The lease is then deleted (waiting for every route to go) before the next PUT. CPU:
    flanneld's utime+stime summed over the hosts, in the window PUT -> every host programmed (as
    ever), and apart from it what the hosts spend anyway (their idle rate over a quiet window just
    before the PUT), so that the event's own cost is reported too.
(b) Cold start, lab ``pfb-cold`` (vxlan): 1000 synthetic vxlan leases (distinct subnets, VtepMACs,
    PublicIPs from 198.19.0.0/16, never sent to) are written first; then a fresh host namespace's
    flanneld is started and timed until all 1000 routes, neighbours and FDB entries are in its
    kernel (netlink events, checked by a dump at the end). Each run uses a new namespace and
    removes the previous host's lease, so every run starts from nothing.
(c) Idle: the last cold-started flanneld is left alone; its CPU (utime+stime over wall time, % of
    one core) and RSS over consecutive windows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field

from pyflannel.lab.bench_hosts import LightLab
from pyflannel.lab.cluster import Host
from pyflannel.lab.netns import LabError, in_ns, sh

from .common import BenchError, Figure, LeaseWriter, cpu_seconds, log, percentile, rss_mb
from .nlwatch import RTMGRP_IPV4_ROUTE, RTMGRP_NEIGH, Event, Watcher

CONV_CONFIG = json.dumps({"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}})
COLD_NETWORK = ipaddress.IPv4Network("10.0.0.0/12")
COLD_CONFIG = json.dumps({"Network": str(COLD_NETWORK), "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
GHOST_IP = "198.18.0.250"  # the public IP of the synthetic host-gw peer: on the segment, nobody there
EVENT_TAIL_S = 0.3  # after every host has the route: counted into the event's own CPU (then the delete)


@dataclass
class Results:
    """Figures keyed by (metric, hosts, flanneld): ``"go"`` for Go flannel's, ``""`` for pyflannel's."""

    figures: dict[tuple[str, int, str], Figure] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def add(self, metric: str, hosts: int, value: float, unit: str, capped: bool = False, impl: str = "") -> None:
        fig = self.figures.setdefault((metric, hosts, impl), Figure())
        fig.add(value)
        fig.capped = fig.capped or capped
        self.units[metric] = unit

    def rows(self) -> list[dict]:
        """pyflannel's rows carry ``ratio_go`` (median / Go flannel's median of the same figure, this
        run) when Go's was measured; Go's rows carry ``"flanneld": "go"``."""
        out = []
        for (m, n, impl), f in self.figures.items():
            row = {"metric": m, "hosts": n, **f.summary(), "unit": self.units[m]}
            if impl:
                row["flanneld"] = impl
            if f.capped:
                row["capped"] = True
            go = self.figures.get((m, n, "go"))
            if not impl and go is not None and go.values and go.median:
                row["ratio_go"] = round(f.median / go.median, 3)
                if go.capped:
                    row["ratio_go_capped"] = True
            out.append(row)
        return out


IMPL_NAME = {"": "pyflannel", "go": "Go flannel"}
ALL_GO = tuple(range(1, 256))  # a LightLab's go_hosts when every host runs Go flannel's flanneld


# ---- (a) convergence ------------------------------------------------------------------------------
def convergence(res: Results, sizes: list[int], rounds: int, cap_s: float, notes: list[str], impl: str = "",
                idle_s: float = 2.0) -> None:
    """``impl`` "go": every host runs Go flannel's flanneld (lab ``pfb-goconv``)."""
    lab = LightLab(name="pfb-goconv" if impl else "pfb-conv", go_hosts=ALL_GO if impl else ())
    lab.up_base(CONV_CONFIG)
    writer = LeaseWriter(lab)
    who = IMPL_NAME[impl]
    try:
        for n in sizes:
            t0 = time.monotonic()
            log(f"convergence ({who}): starting hosts {len(lab.hosts) + 1}..{n}")
            lab.add_hosts(n - len(lab.hosts))
            _settle(lab, n - 1, cap_s=120.0, notes=notes)
            log(f"convergence ({who}): {n} hosts up and settled in {time.monotonic() - t0:.0f} s")
            if lab.restarted:
                notes.append(f"convergence ({who}): up to {n} hosts, {lab.restarted} flanneld exited before writing "
                             "subnet.env and were started again (as systemd's Restart=on-failure would)")
                log(notes[-1])
                lab.restarted = 0
            _converge_rounds(lab, writer, res, rounds, cap_s, notes, impl, idle_s)
    finally:
        writer.close()


def _count_routes(ns: str) -> int:
    """Routes into the network (10.0.0.0/16): pyflannel marks its own (proto 151), Go flannel does
    not, so they are counted by destination."""
    return sum(1 for line in sh(["ip", "-n", ns, "-4", "route", "show"], check=False).stdout.splitlines()
               if line.startswith("10."))


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
                     notes: list[str], impl: str, idle_s: float) -> None:
    n = len(lab.hosts)
    who = IMPL_NAME[impl]
    pids = [lab.flanneld_pid(h) for h in lab.hosts]
    taken: set[str] = set()
    with Watcher([h.ns for h in lab.hosts], RTMGRP_IPV4_ROUTE) as watch:
        watch.register(writer.stdout, "writer")
        for r in range(rounds):
            subnet = _free_subnet(lab, taken)
            taken.add(subnet)
            # the idle rate right before: what the N flanneld spend anyway (store probe, full kernel
            # check, rule checks), to tell the event's own cost from the window it is measured in
            cpu_i, t_i = sum(cpu_seconds(p) for p in pids), time.monotonic()
            time.sleep(idle_s)
            cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.monotonic()
            rate = (cpu0 - cpu_i) / (t0 - t_i)
            writer.send(op="put", subnet=subnet, public_ip=GHOST_IP, type="host-gw", ttl=None)
            t_put, seen = _wait_routes(watch, writer, subnet, n, True, cap_s)
            cpu1, t1 = sum(cpu_seconds(p) for p in pids), time.monotonic()
            time.sleep(EVENT_TAIL_S)  # what a host still does after its route is in (its log lines)
            cpu2, t2 = sum(cpu_seconds(p) for p in pids), time.monotonic()
            lat = [(seen.get(h.ns, t_put + cap_s) - t_put) * 1000 for h in lab.hosts]
            capped = len(seen) < n
            if capped:
                notes.append(f"convergence ({who}) N={n}: {n - len(seen)} hosts had no route for {subnet} after the "
                             f"{cap_s:g}s cap; counted as {cap_s:g}s (a lower bound)")
            for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
                res.add(f"convergence_{name}_ms", n, percentile(lat, q), "ms", capped, impl)
            gross = (cpu1 - cpu0) * 1000 / n
            idle_share = rate * (t1 - t0) * 1000 / n
            event = ((cpu2 - cpu0) - rate * (t2 - t0)) * 1000 / n
            res.add("convergence_cpu_ms_per_host", n, gross, "ms", capped, impl)
            res.add("convergence_idle_cpu_ms_per_host", n, idle_share, "ms", capped, impl)
            res.add("convergence_event_cpu_ms_per_host", n, event, "ms", capped, impl)
            res.add("convergence_idle_cpu_pct", n, rate * 100 / n, "% of one core", impl=impl)
            log(f"convergence ({who}) N={n} round {r + 1}/{rounds}: p50 {percentile(lat, 50):.0f} ms, p99 "
                f"{percentile(lat, 99):.0f} ms, max {max(lat):.0f} ms, flanneld CPU {gross:.1f} ms/host in the "
                f"window (idle share {idle_share:.1f}), the event's own {event:.2f} ms/host; idle "
                f"{rate * 100 / n:.2f}% of a core per host")
            writer.send(op="del", subnet=subnet)
            _, gone = _wait_routes(watch, writer, subnet, n, False, cap_s)
            if len(gone) < n:
                notes.append(f"convergence ({who}) N={n}: {n - len(gone)} hosts kept the route to deleted {subnet}")
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
    routes = {line.split()[0] for line in sh(["ip", "-n", ns, "-4", "route", "show"],  # Go's have no proto 151
                                             check=False).stdout.splitlines() if line.strip()}
    neighs = sh(["ip", "-n", ns, "neigh", "show", "dev", "flannel.1", "nud", "permanent"], check=False).stdout
    fdbs = sh(in_ns(ns, "bridge", "fdb", "show", "dev", "flannel.1"), check=False).stdout
    return {"route": len(routes & peers.routes),
            "neigh": sum(1 for line in neighs.splitlines() if tuple(line.split()[0:3:2]) in peers.neighs),
            "fdb": sum(1 for line in fdbs.splitlines() if "dst" in line.split()
                       and (line.split()[0], line.split()[line.split().index("dst") + 1]) in peers.fdbs)}


def coldstart(res: Results, peers_n: int, runs: int, cap_s: float, idle_windows: int, idle_s: float,
              notes: list[str], impl: str = "") -> None:
    """``impl`` "go": Go flannel's flanneld (lab ``pfb-gocold``)."""
    lab = LightLab(name="pfb-gocold" if impl else "pfb-cold", go_hosts=ALL_GO if impl else ())
    lab.up_base(COLD_CONFIG)
    writer = LeaseWriter(lab)
    try:
        peers = synthetic_peers(peers_n)
        t0 = time.monotonic()
        writer.call(op="bulk", leases=peers, timeout=300.0)
        log(f"cold start ({IMPL_NAME[impl]}): wrote {peers_n} synthetic vxlan leases in {time.monotonic() - t0:.1f} s")
        expected = Expected.of(peers)
        host = None
        for r in range(runs):
            if host is not None:
                _retire(lab, writer, host)
            host = lab.add_host(r + 1, start=False)  # a new namespace and address every run
            _cold_run(lab, host, expected, res, peers_n, cap_s, notes, r, runs, impl)
        assert host is not None
        idle(lab, host, res, peers_n, idle_windows, idle_s, impl)
    finally:
        writer.close()


def _retire(lab: LightLab, writer: LeaseWriter, host: Host) -> None:
    with open(lab.subnet_file(host)) as f:
        subnet = next(line.split("=", 1)[1].strip() for line in f if line.startswith("FLANNEL_SUBNET="))
    lab.remove_host(host)
    writer.call(op="del", subnet=str(ipaddress.IPv4Interface(subnet).network))


def _retire_kube(lab: LightLab, host: Host) -> None:
    """As ``_retire``, for kube mode: the host's namespace and its Node go."""
    lab.remove_host(host)
    assert lab.kube_api is not None
    lab.kube_api.delete_node(f"h{host.index}")


def _cold_run(lab: LightLab, host: Host, expected: Expected, res: Results, peers_n: int, cap_s: float,
              notes: list[str], r: int, runs: int, impl: str) -> None:
    tag = f"cold start ({IMPL_NAME[impl]}) run {r + 1}"
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
        notes.append(f"{tag}: not all {peers_n} peers were programmed after the {cap_s:g}s cap "
                     f"(kernel holds routes/neighbours/FDB {counts['route']}/{counts['neigh']}/{counts['fdb']}); "
                     f"counted as {cap_s:g}s (a lower bound)")
    elif min(counts.values()) < peers_n:
        notes.append(f"{tag}: events said complete but a dump finds {counts}")
    if watch.overflows:
        notes.append(f"{tag}: the netlink socket overflowed {watch.overflows}x; completion was "
                     "taken from dumps")
    res.add("coldstart_s", peers_n, done, "s", capped, impl)
    res.add("coldstart_ready_s", peers_n, ready, "s", impl=impl)
    res.add("coldstart_rss_mb", peers_n, rss, "MB", impl=impl)
    res.add("coldstart_peak_rss_mb", peers_n, hwm, "MB", impl=impl)
    log(f"{tag}/{runs}: subnet.env after {ready:.2f} s, all {peers_n} peers programmed after "
        f"{done:.2f} s{' (CAPPED)' if capped else ''}; RSS {rss:.1f} MB (peak {hwm:.1f}); dump {counts}")


def idle(lab: LightLab, host: Host, res: Results, peers_n: int, windows: int, seconds: float, impl: str = "") -> None:
    pid = lab.flanneld_pid(host)
    time.sleep(5.0)
    for w in range(windows):
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        pct = (c1 - c0) / (t1 - t0) * 100
        res.add("idle_cpu_pct", peers_n, pct, "% of one core", impl=impl)
        res.add("idle_rss_mb", peers_n, rss_mb(pid), "MB", impl=impl)
        log(f"idle ({IMPL_NAME[impl]}) window {w + 1}/{windows}: flanneld CPU {pct:.2f}% of a core, "
            f"RSS {rss_mb(pid):.1f} MB")


# ---- (d) lease bursts ---------------------------------------------------------------------------------
BURST_NETWORK = ipaddress.IPv4Network("10.0.0.0/8")  # room for 5000+ /24 leases (COLD_NETWORK has 4095)
BURST_CONFIG = json.dumps({"Network": str(BURST_NETWORK), "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
BURST_TTL = 3600


def burst_peers(count: int, exclude: set[str]) -> list[dict]:
    """``count`` synthetic vxlan leases in BURST_NETWORK (as ``synthetic_peers``), skipping the
    subnets in ``exclude`` (the measured host's own)."""
    subnets = BURST_NETWORK.subnets(new_prefix=24)
    next(subnets)  # 10.0.0.0/24 is below SubnetMin
    out: list[dict] = []
    for sn in subnets:
        if len(out) == count:
            break
        if str(sn) in exclude:
            continue
        i = len(out)
        mac = f"02:bb:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
        pip = str(ipaddress.IPv4Address("198.19.0.1") + i)
        out.append({"subnet": str(sn), "public_ip": pip, "type": "vxlan", "data": {"VNI": 1, "VtepMAC": mac}})
    return out


def _gone_matcher(expected: Expected):  # type: ignore[no-untyped-def]
    """Matches removal events of the expected entries (neighbours by address, FDB entries by MAC:
    what the kernel's delete notifications are sure to carry)."""
    neigh_ips = {ip for ip, _ in expected.neighs}
    fdb_macs = {mac for mac, _ in expected.fdbs}

    def match(ev: Event) -> tuple[str, object] | None:
        if ev.added:
            return None
        if ev.kind == "route" and ev.dst in expected.routes:
            return "route", ev.dst
        if ev.kind == "neigh" and ev.dst in neigh_ips:
            return "neigh", ev.dst
        if ev.kind == "fdb" and ev.mac in fdb_macs:
            return "fdb", ev.mac
        return None

    return match


def _wait_kernel(watch: Watcher, ns: str, expected: Expected, n: int, added: bool, t0: float, cap_s: float,
                 proc: subprocess.Popen[bytes], writer: LeaseWriter | None = None, what: str = "",
                 dump_every: float = 0.0) -> tuple[float, dict[str, object] | None, dict[str, int]]:
    """Until the kernel of ``ns`` holds all ``n`` expected routes, neighbours and FDB entries
    (``added``) or none of them (not ``added``), or ``cap_s`` after ``t0``. Returns (seconds from
    ``t0`` to the event that completed it, or nan when capped; the writer's reply when ``writer``
    was given (read while waiting); the last counts, from events or a dump). Completion is also
    checked by a dump every ``dump_every`` seconds when that is set, and every second once the
    netlink socket has overflowed (events were lost)."""
    got: dict[str, set[object]] = {"route": set(), "neigh": set(), "fdb": set()}
    reply: dict[str, object] | None = None
    last_dump = 0.0
    counts = {k: 0 for k in got}
    matcher = expected.match if added else _gone_matcher(expected)
    if writer is not None:
        watch.register(writer.stdout, "writer")
    try:
        while time.monotonic() < t0 + cap_s:
            events, others = watch.poll(0.05)
            last = 0.0
            for ev in events:
                hit = matcher(ev)
                if hit:
                    got[hit[0]].add(hit[1])
                    last = ev.when
            if "writer" in others and writer is not None:
                reply = writer.read(5.0)
                watch.selector.unregister(writer.stdout)
                writer = None
            counts = {k: len(v) for k, v in got.items()}
            if all(c >= n for c in counts.values()):
                return last - t0, reply, counts
            now = time.monotonic()
            every = 1.0 if watch.overflows else dump_every
            if every and now - last_dump > every:  # count by dump instead of events
                last_dump = now
                dumped = dump_counts(ns, expected)
                counts = dumped if added else {k: n - v for k, v in dumped.items()}
                if all(c >= n for c in counts.values()):
                    return time.monotonic() - t0, reply, counts
            if proc.poll() is not None:
                raise BenchError(f"flanneld on {ns} exited ({proc.returncode}) during {what}")
        return math.nan, reply, counts
    finally:
        if writer is not None:
            watch.selector.unregister(writer.stdout)


def _stop_host(lab: LightLab, writer: LeaseWriter, host: Host) -> None:
    """Stop its flanneld (SIGKILL when a backlog keeps it from exiting on SIGTERM), delete its
    namespace and its lease."""
    subnet = host.subnet
    try:
        lab.stop_flanneld(host, timeout=15.0)
    except LabError:  # still busy with a backlog; nothing of it is measured any more
        lab.stop_flanneld(host, sig=9, timeout=15.0)
    lab.remove_host(host)
    if subnet:
        writer.call(op="del", subnet=str(ipaddress.IPv4Interface(subnet).network))


def _finish_capped_add(watch: Watcher, ns: str, expected: Expected, n: int, t0: float, cap_s: float,
                       proc: subprocess.Popen[bytes], tag: str, notes: list[str]) -> None:
    """After a capped PUT burst, wait (untimed, up to one more cap) until the host has caught up,
    so that the DELETE burst starts from a host that holds all N; when it finishes, say when in a
    note (the figure stays the cap)."""
    done, _, _ = _wait_kernel(watch, ns, expected, n, True, time.monotonic(), cap_s, proc,
                              what="the rest of the add burst", dump_every=2.0)
    if math.isnan(done):
        dump = dump_counts(ns, expected)
        notes.append(f"{tag}: add: still not all programmed {2 * cap_s:g}s after the first PUT (routes/neighbours/"
                     f"FDB {dump['route']}/{dump['neigh']}/{dump['fdb']}); the delete burst starts from there")
    else:
        took = time.monotonic() - t0
        notes.append(f"{tag}: add: all {n} were programmed about {took:.0f}s after the first PUT (seen by a dump "
                     f"every 2 s, outside the figure, which stays the {cap_s:g}s cap); the delete burst started "
                     "from there")
        log(f"{tag}: add: all {n} programmed after about {took:.0f} s (beyond the cap)")


def burst(res: Results, sizes: list[int], runs: int, cap_s: float, notes: list[str]) -> None:
    """(d) For each N: one vxlan flanneld already running and watching; N leases PUT within about
    a second (timed until its kernel holds every route, neighbour and FDB entry), then all N
    deleted (timed until none is left); as the reference, the same N read as one snapshot by a
    flanneld started on a fresh namespace after they were written (the cold start, for this N)."""
    lab = LightLab(name="pfb-burst")
    lab.up_base(BURST_CONFIG)
    writer = LeaseWriter(lab)
    index = 0
    try:
        for n in sizes:
            for r in range(runs):
                index += 2
                capped = _burst_run(lab, writer, res, n, cap_s, notes, index, r, runs)
                if capped and r + 1 < runs:
                    notes.append(f"burst N={n}: run {r + 1} hit the {cap_s:g}s cap, so the other "
                                 f"{runs - r - 1} runs of this size were skipped (they would only repeat the cap)")
                    break
    finally:
        writer.close()


def _burst_run(lab: LightLab, writer: LeaseWriter, res: Results, n: int, cap_s: float, notes: list[str],
               index: int, r: int, runs: int) -> bool:
    tag = f"burst N={n} run {r + 1}/{runs}"
    # -- the running host, then the burst of PUTs and the burst of DELETEs
    host = lab.add_host(index - 1, start=False)
    proc = lab.start_flanneld(host)
    lab.wait_subnet(host, 30.0)
    pid = proc.pid
    own = str(ipaddress.IPv4Interface(host.subnet).network)
    peers = burst_peers(n, {own})
    expected = Expected.of(peers)
    time.sleep(3.0)  # let the fresh flanneld settle
    any_capped = add_capped = False
    add_s = math.nan
    with Watcher([host.ns], RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH) as watch:
        for phase, cmd in (("add", {"op": "burst", "leases": peers, "ttl": BURST_TTL}),
                           ("del", {"op": "unburst", "subnets": [p["subnet"] for p in peers]})):
            cpu0 = cpu_seconds(pid)
            writer.send(**cmd)
            t_send = time.monotonic()
            # when the add did not finish, some entries may never be added, so never removed: dump
            done, reply, _ = _wait_kernel(watch, host.ns, expected, n, phase == "add", t_send, cap_s, proc,
                                          writer=writer, what=f"the {phase} burst",
                                          dump_every=2.0 if add_capped else 0.0)
            cpu1 = cpu_seconds(pid)
            if reply is None:
                reply = writer.read(60.0)
            t0, t1 = float(reply["t0"]), float(reply["t1"])  # type: ignore[arg-type]
            capped = math.isnan(done)
            total = cap_s if capped else done + t_send - t0
            dump = dump_counts(host.ns, expected)
            if capped:
                any_capped = True
                notes.append(f"{tag}: {phase}: the kernel still held routes/neighbours/FDB "
                             f"{dump['route']}/{dump['neigh']}/{dump['fdb']} of the {n} after the {cap_s:g}s cap; "
                             f"counted as {cap_s:g}s (a lower bound)")
            elif (phase == "add" and min(dump.values()) < n) or (phase == "del" and max(dump.values()) > 0):
                notes.append(f"{tag}: {phase}: events said complete but a dump finds {dump}")
            res.add(f"burst_{phase}_s", n, total, "s", capped)
            res.add(f"burst_{phase}_cpu_s", n, cpu1 - cpu0, "s", capped)
            res.add(f"burst_{phase}_write_s", n, t1 - t0, "s")
            if phase == "add":
                res.add("burst_add_rss_mb", n, rss_mb(pid), "MB")
                add_s, add_capped = total, capped
            log(f"{tag}: {phase}: {n} leases {'written' if phase == 'add' else 'deleted'} in {t1 - t0:.2f} s; all "
                f"{'programmed' if phase == 'add' else 'removed'} after {total:.2f} s{' (CAPPED)' if capped else ''}; "
                f"flanneld CPU {cpu1 - cpu0:.2f} s; dump {dump}")
            if phase == "add" and capped:
                _finish_capped_add(watch, host.ns, expected, n, t0, cap_s, proc, tag, notes)
        if watch.overflows:
            notes.append(f"{tag}: the netlink socket overflowed {watch.overflows}x; completion was taken from dumps")
    _stop_host(lab, writer, host)
    # -- the reference: the same N read as one snapshot at start-up
    writer.call(op="burst", leases=peers, ttl=BURST_TTL, timeout=120.0)
    host = lab.add_host(index, start=False)
    with Watcher([host.ns], RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH) as watch:
        t0 = time.monotonic()
        proc = lab.start_flanneld(host)
        done, _, _ = _wait_kernel(watch, host.ns, expected, n, True, t0, cap_s, proc, what="the snapshot")
        cpu = cpu_seconds(proc.pid)  # all of it since its start
        if watch.overflows:
            notes.append(f"{tag}: snapshot: the netlink socket overflowed {watch.overflows}x; completion was taken "
                         "from dumps")
    snap_capped = math.isnan(done)
    dump = dump_counts(host.ns, expected)
    if snap_capped:
        done = cap_s
        any_capped = True
        notes.append(f"{tag}: snapshot: the kernel held routes/neighbours/FDB {dump['route']}/{dump['neigh']}/"
                     f"{dump['fdb']} of the {n} after the {cap_s:g}s cap; counted as {cap_s:g}s (a lower bound)")
    elif min(dump.values()) < n:
        notes.append(f"{tag}: snapshot: events said complete but a dump finds {dump}")
    res.add("burst_snapshot_s", n, done, "s", snap_capped)
    res.add("burst_snapshot_cpu_s", n, cpu, "s", snap_capped)
    # a capped burst over an uncapped snapshot is a lower bound; over a capped snapshot it is no bound at all
    res.add("burst_add_to_snapshot_ratio", n, add_s / done, "x", add_capped or snap_capped)
    log(f"{tag}: snapshot: all {n} programmed after {done:.2f} s{' (CAPPED)' if snap_capped else ''}, flanneld "
        f"CPU {cpu:.2f} s; burst/snapshot {add_s / done:.1f}x")
    with contextlib.suppress(LabError):  # without it, its lease stays: one more peer for later runs
        lab.wait_subnet(host, 5.0)
    _stop_host(lab, writer, host)
    writer.call(op="unburst", subnets=[p["subnet"] for p in peers], timeout=120.0)
    return any_capped
