"""The soak's run: build the lab, start the traffic, fire the scheduled faults (each in a thread of
its own, at its time), check the invariants round after round, stop at the end or at the first
violation, write the report; the lab is always removed, and after a violation its logs are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..netns import LabError
from . import report
from .faults import Injector, Skipped, Unready
from .invariants import EnvWatch, ResourceWatch, duplicate_problems, expected_kernel, read_leases
from .schedule import DEFAULT_KINDS, Fault, kinds_for, not_applicable, schedule
from .soaklab import NETWORK, SoakLab
from .traffic import Pinger, TcpStream

RESOURCE_SETTLE = 15.0  # seconds a flanneld runs before its descriptors and threads are its baseline


@dataclass
class Options:
    minutes: float = 30.0
    seed: int = 1
    backend: str = "vxlan"
    hosts: int = 5
    kinds: tuple[str, ...] = DEFAULT_KINDS
    mean_gap: float = 6.0  # seconds between faults, on average
    bound: float = 10.0  # seconds after the last fault by which every kernel must match the leases
    name: str = "pfsk"
    out: str = "bench/results"
    prefix: str = "soak-latest"  # the report files: OUT/PREFIX.{json,md,svg}


@dataclass
class _State:
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    last_event: float = 0.0  # monotonic time of the last fault's start or end
    violations: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[tuple[float, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Soak:
    def __init__(self, opts: Options, log: Any = print) -> None:
        self.opts = opts
        self.log = log
        self.kinds = kinds_for(opts.backend, opts.kinds)
        self.stop = threading.Event()
        self.stopped_early = False  # set when a violation ended the run before its time
        self.state = _State()
        self.garbage: set[bytes] = set()
        self.env = EnvWatch()
        self.resources = ResourceWatch()
        self.inconsistent_since: float | None = None
        self.last_good: dict[str, Any] = {}  # key -> its last valid LeaseView
        self.garbage_left: list[str] = []  # keys still holding the soak's garbage

    # ---- the run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        o = self.opts
        self.log(f"soak: building {o.hosts} {o.backend} hosts on a 3-member TLS etcd (lab {o.name})")
        soak = self.soak = SoakLab.build(o.name, o.hosts, o.backend)
        self.pingers: list[Pinger] = []
        pingers = self.pingers
        tcp = None
        try:
            hosts = soak.lab.hosts
            pingers += [Pinger(a.container_ns, b.container_ip, f"h{a.index}->h{b.index}")
                        for a in hosts for b in hosts if a is not b]
            tcp = TcpStream(hosts[1].container_ns, hosts[0].container_ns, hosts[0].container_ip, o.seed)
            self._warm_up(pingers)
            self.rules = {h.index: soak.rules(h) for h in hosts}
            seconds = o.minutes * 60
            faults = schedule(o.seed, seconds, tuple(h.index for h in hosts), self.kinds, mean_gap=o.mean_gap)
            self.log(f"soak: {len(faults)} faults over {seconds:g} s, seed {o.seed}")
            self.injector = Injector(soak, self.garbage, self.env.lease_lost, self._joined, self._leaving)
            self.t0, self.m0 = time.time(), time.monotonic()
            for p in pingers:
                p.mark()
            self.state.last_event = self.m0
            threads = [threading.Thread(target=self._fault, args=(f,), daemon=True) for f in faults]
            for t in threads:
                t.start()
            while time.monotonic() - self.m0 < seconds and not self.stop.is_set():
                self._round(tcp)
                time.sleep(0.05)
            self.stopped_early = self.stop.is_set()  # a violation ended the run before its time
            self.stop.set()
            for t in threads:
                t.join(timeout=60)
            t1 = time.time()
            for p in pingers:
                p.stop()
            tcp.stop()
            return self._report(faults, pingers, tcp, t1)
        finally:
            self.stop.set()
            for p in pingers:
                p.stop()
            if tcp is not None:
                tcp.stop()
            try:
                if self.state.violations:
                    self._keep_logs()
            finally:
                soak.down()

    def _joined(self, host: Any) -> None:
        """Pings between the new host and every other, both ways; its rules as it made them."""
        with self.state.lock:
            others = [h for h in self.soak.lab.hosts if h is not host]
            self.pingers += [Pinger(a.container_ns, b.container_ip, f"h{a.index}->h{b.index}", True)
                             for h in others for a, b in ((h, host), (host, h))]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(self.soak.rules(host)) < len(self.rules[1]):
            time.sleep(0.1)
        self.rules[host.index] = self.soak.rules(host)

    def _leaving(self, host: Any) -> None:
        """Its pings stop (they are counted up to here)."""
        with self.state.lock:
            mine = [p for p in self.pingers if p.label.startswith(f"h{host.index}->")
                    or p.label.endswith(f"->h{host.index}")]
        for p in mine:
            p.stop()
        self.rules.pop(host.index, None)

    def _warm_up(self, pingers: list[Pinger], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(any(p.received) for p in pingers):
                time.sleep(RESOURCE_SETTLE)
                return
            time.sleep(0.2)
        dead = [p.label for p in pingers if not any(p.received)]
        raise LabError(f"the lab does not forward: no ping answered within {timeout:g}s on {', '.join(dead)}")

    def _fault(self, f: Fault) -> None:
        if self.stop.wait(max(0.0, self.m0 + f.at - time.monotonic())):
            return
        rec: dict[str, Any] = {"fault": f.to_json(), "label": f.label(), "start": time.time(), "end": None,
                               "note": "", "skipped": None, "error": None}
        with self.state.lock:
            self.state.records[f.seq] = rec
            self.state.active.add(f.seq)
            self.state.last_event = time.monotonic()
        try:
            rec["note"] = self.injector.inject(f)
            self.log(f"soak: {time.monotonic() - self.m0:7.1f}s {f.label()}: {rec['note']}")
            if f.duration:
                self.stop.wait(max(0.0, self.m0 + f.end - time.monotonic()))
            undone = self.injector.undo(f)
            rec["ready_s"] = self.injector.ready_s.pop(f.seq, None)
            if undone:
                rec["note"] += f"; {undone}"
                self.log(f"soak: {time.monotonic() - self.m0:7.1f}s {f.label()}: {undone}")
        except Unready as err:
            if not self.stop.is_set():  # not a lab being taken down at the end of the run
                self._violation(str(err))
        except Skipped as err:
            rec["skipped"] = str(err)
            self.log(f"soak: {time.monotonic() - self.m0:7.1f}s {f.label()}: skipped ({err})")
        except (LabError, RuntimeError, OSError) as err:
            rec["error"] = str(err)
            self.log(f"soak: {time.monotonic() - self.m0:7.1f}s {f.label()}: INJECTOR ERROR {err}")
        rec["end"] = time.time()
        with self.state.lock:
            self.state.active.discard(f.seq)
            self.state.last_event = time.monotonic()

    # ---- one round of checks -----------------------------------------------------------------------
    def _violation(self, what: str) -> None:
        t = time.monotonic() - self.m0
        self.log(f"soak: {t:7.1f}s VIOLATION {what}")
        self.state.violations.append({"t": round(t, 2), "what": what})
        self.stop.set()

    def _round(self, tcp: TcpStream) -> None:
        soak, start = self.soak, time.time()
        kvs = soak.lease_kvs(timeout=2)
        problems: list[str] = []
        unsettled: list[str] = [] if kvs is not None else ["etcd did not answer"]
        leases, bad = read_leases(kvs or [], self.garbage)
        problems += bad
        if kvs is not None:
            # pyflannel skips a garbage value and keeps the key's last good lease (README: Garbage in
            # etcd): that is what every kernel must match; flanneld does not rewrite its own lease
            # until its renewal, so a garbage key stays (reported as garbage_left)
            self.last_good.update((lv.key, lv) for lv in leases)
            self.garbage_left = sorted(k for k, v, _ in kvs if v in self.garbage)
            leases += [self.last_good[k] for k in self.garbage_left if k in self.last_good]
        subnets: dict[int, str] = {}
        for h in list(soak.lab.hosts):
            problem = self.env.update(h.index, soak.subnet_env(h))
            if problem:
                problems.append(problem)
            own = soak.own_subnet(h)
            if own is not None:
                subnets[h.index] = str(own)
            problems += self._resources(h)
            unsettled += self._host_unsettled(h, own, leases if kvs is not None else None)
        if kvs is not None:
            problems += duplicate_problems(leases, subnets)
        if tcp.corrupt is not None:
            problems.append(f"the TCP stream's data was corrupted at byte {tcp.corrupt}")
        self.state.rounds.append((start, not unsettled))
        for p in problems:
            self._violation(p)
        self._judge(unsettled)

    def _resources(self, h: Any) -> list[str]:
        """A flanneld's resources, counted from RESOURCE_SETTLE s after it was ready (it wrote
        subnet.env since it started): a start slowed down by a busy machine is no leak (its
        baseline taken while Python was still importing said 1 thread)."""
        stats = self.soak.proc_stats(h)
        ready = self.soak.ready_since(h, stats[0]) if stats is not None else None
        if stats is None or ready is None or time.time() - ready < RESOURCE_SETTLE:
            return []
        return self.resources.sample(h.index, *stats)

    def _host_unsettled(self, h: Any, own: Any, leases: list[Any] | None) -> list[str]:
        out = []
        if self.soak.lab.flanneld_pid(h) is None:
            out.append(f"h{h.index}: flanneld is not running")
        if leases is not None:
            if not any(lv.public_ip == h.ip and lv.subnet == own for lv in leases):
                out.append(f"h{h.index}: no lease in etcd for its subnet {own}")
            want, have = expected_kernel(self.soak.backend, leases, h.ip, NETWORK), self.soak.kernel(h)
            if want != have:
                out.append(f"h{h.index}: kernel lacks {sorted(want - have)}, has extra {sorted(have - want)}")
        rules, want_rules = self.soak.rules(h), self.rules.get(h.index)
        if want_rules is not None and rules != want_rules:
            out.append(f"h{h.index}: iptables lacks {sorted(want_rules - rules)}")
        return out

    def _judge(self, unsettled: list[str]) -> None:
        now = time.monotonic()
        if not unsettled:
            self.inconsistent_since = None
            return
        if self.inconsistent_since is None:
            self.inconsistent_since = now
        with self.state.lock:
            if self.state.active:
                return
            since = max(self.inconsistent_since, self.state.last_event)
        if now - since > self.opts.bound:
            self._violation(f"not healed {self.opts.bound:g}s after the last fault: {'; '.join(unsettled)}")

    # ---- the end -----------------------------------------------------------------------------------
    def _report(self, faults: list[Fault], pingers: list[Pinger], tcp: TcpStream, t1: float) -> dict[str, Any]:
        o = self.opts
        sent, pairs = 0, {}
        for p in pingers:
            n, lost = p.losses(min(t1, p.stopped or t1) - 2.0)
            sent += n
            a, b = (int(x.lstrip("h")) for x in p.label.split("->"))
            pairs.setdefault((a, b), []).extend(lost)
        meta = {"seed": o.seed, "minutes": o.minutes, "backend": o.backend, "hosts": o.hosts,
                "kinds_enabled": list(self.kinds), "kinds_not_applicable": not_applicable(o.backend, o.kinds),
                "mean_gap_s": o.mean_gap, "heal_bound_s": o.bound,
                "stopped_early": self.stopped_early,
                "schedule": [f.label() for f in faults],
                "tcp": {"bytes": tcp.bytes, "connections": tcp.connections, "corrupt": tcp.corrupt,
                        "errors": tcp.errors[:20]},
                "resources": self.resources.peak, "garbage_left": self.garbage_left}
        records = [self.state.records[k] for k in sorted(self.state.records)]
        rep = report.summarize(meta, records, pairs, sent, self.state.rounds, self.state.violations, self.t0, t1)
        os.makedirs(o.out, exist_ok=True)
        base = os.path.join(o.out, o.prefix)
        with open(base + ".json", "w") as f:
            json.dump(rep, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(report.markdown(rep))
        with open(base + ".svg", "w") as f:
            f.write(report.svg(rep))
        self.log(f"soak: report in {base}.json, .md and .svg")
        return rep

    def _keep_logs(self) -> None:
        dest = os.path.join(self.opts.out, f"{self.opts.prefix}-logs-seed{self.opts.seed}")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.soak.lab.state_dir, dest, ignore=shutil.ignore_patterns(
            "data", "member", "pki", "*.key", "wgkey", "*.sock"))  # wireguard-go's sockets cannot be copied
        with open(os.path.join(dest, "violations.json"), "w") as f:
            json.dump({"seed": self.opts.seed, "violations": self.state.violations,
                       "faults": [self.state.records[k] for k in sorted(self.state.records)]}, f, indent=1)
        self.log(f"soak: violation: the lab's logs and the fault sequence are kept in {dest}")


__all__ = ["Options", "Soak"]
