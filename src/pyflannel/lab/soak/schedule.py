"""The seeded fault schedule, pure: ``schedule(seed, ...)`` is the same list for the same arguments.

Faults arrive at exponentially distributed gaps (mean ``mean_gap``) between a warm-up and a
cool-down; each picks its kind uniformly from ``kinds`` and a target that has no fault running at
that time (a host, or an etcd member; at most one member is down at once, so the cluster keeps its
quorum). A fault with a duration is undone ``duration`` seconds after it started (a killed member
or flanneld started again, a cut host reconnected, a link brought up); an instant one (a deletion
by hand, a flush) heals by itself or not at all.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    # "host" (a flanneld host), "peer" (a host and one of its peers), "etcd" (a member), "join" (a new
    # host), "leave" (a host that is not one of the first two: they carry the TCP stream)
    target: str
    duration: tuple[float, float]  # (min, max) seconds until the undo; (0, 0): instant
    data_path: bool  # touches the data path itself: packet loss is expected
    backends: tuple[str, ...] = ()  # only on these backends (empty: every backend)
    description: str = ""
    why_not: tuple[tuple[str, str], ...] = ()  # (backend, why it is not injected there): the report lists it
    data_path_on: tuple[str, ...] = ()  # backends where it touches the data path all the same


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("flanneld-sigkill", "host", (0.2, 2.0), False, description="flanneld SIGKILLed, started again",
         data_path_on=("udp",)),  # udp: the pump runs inside flanneld, flannel0 goes with it
    Kind("flanneld-sigterm", "host", (0.2, 2.0), False, description="flanneld SIGTERMed, started again",
         data_path_on=("udp",)),
    Kind("etcd-member-kill", "etcd", (1.0, 8.0), False, description="an etcd member SIGKILLed, restarted"),
    Kind("etcd-leader-kill", "etcd", (1.0, 8.0), False, description="the etcd leader SIGKILLed, restarted"),
    Kind("host-cut", "host", (2.0, 10.0), False,
         description="a host's packets to etcd dropped (no clean close), then let through"),
    Kind("lease-delete", "host", (0, 0), False, description="a host's lease deleted from etcd"),
    Kind("lease-garbage", "host", (0, 0), False, description="a host's lease overwritten with garbage"),
    Kind("route-delete", "peer", (0, 0), True,
         description="a host's route to a peer deleted by hand (udp, wireguard: the network's one route)"),
    Kind("neigh-delete", "peer", (0, 0), True, ("vxlan",), "a host's neighbour entry for a peer deleted",
         (("*", "only vxlan programs neighbour entries"),)),
    Kind("fdb-delete", "peer", (0, 0), True, ("vxlan",), "a host's FDB entry for a peer deleted",
         (("*", "only vxlan programs FDB entries"),)),
    Kind("device-delete", "host", (0, 0), True, ("vxlan", "wireguard"),
         "a host's flannel.1 (vxlan) or flannel-wg (wireguard) deleted by hand",
         (("host-gw", "host-gw has no device of its own"),
          ("udp", "flannel0 is a TUN device whose only descriptor flanneld's pump holds: deleted, it comes back "
                  "only when flanneld restarts (flanneld logs `device flannel0 is gone: restart flanneld`; Go "
                  "flannel cannot make it again either)"))),
    Kind("iptables-flush", "host", (0, 0), False, description="every iptables chain of a host flushed"),
    Kind("link-down", "host", (0.5, 3.0), True, description="a host's underlay link down, then up"),
    Kind("host-join", "join", (0, 0), False, description="a new host joins (flanneld, docker0, a container)"),
    Kind("host-leave", "leave", (0, 0), False,
         description="a host leaves for good (flanneld stopped, namespaces deleted, its lease revoked)"),
)}
DEFAULT_KINDS = tuple(KINDS)
MEMBERS = 3
JOIN_TIME = 15.0  # seconds a joining host gets before other faults may pick it


@dataclass(frozen=True)
class Fault:
    seq: int
    at: float  # seconds from the start of the run
    kind: str
    target: int  # host index, or etcd member index (0..2; -1: whoever leads when it fires)
    peer: int = 0  # "peer" kinds: the peer whose entry is deleted
    duration: float = 0.0

    @property
    def end(self) -> float:
        return self.at + self.duration

    def label(self) -> str:
        where = f"member {self.target + 1}" if self.kind == "etcd-member-kill" else (
            "leader" if self.kind == "etcd-leader-kill" else f"h{self.target}")
        peer = f" (peer h{self.peer})" if self.peer else ""
        return f"#{self.seq} {self.kind} {where}{peer}" + (f" for {self.duration:.1f}s" if self.duration else "")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def kinds_for(backend: str, wanted: tuple[str, ...] = DEFAULT_KINDS) -> tuple[str, ...]:
    """The kinds of ``wanted`` that apply to ``backend``; an unknown name raises ValueError."""
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind {', '.join(unknown)}: the kinds are {', '.join(KINDS)}")
    return tuple(k for k in wanted if not KINDS[k].backends or backend in KINDS[k].backends)


def not_applicable(backend: str, wanted: tuple[str, ...] = DEFAULT_KINDS) -> dict[str, str]:
    """The kinds of ``wanted`` that do not apply to ``backend``, each with the reason (the report)."""
    out = {}
    for k in wanted:
        kind = KINDS.get(k)
        if kind is not None and kind.backends and backend not in kind.backends:
            why = dict(kind.why_not)
            out[k] = why.get(backend) or why.get("*") or f"only on {', '.join(kind.backends)}"
    return out


def touches_data_path(kind: str, backend: str) -> bool:
    """Whether a fault of ``kind`` touches ``backend``'s data path itself (loss is expected)."""
    k = KINDS[kind]
    return k.data_path or backend in k.data_path_on


def schedule(seed: int, seconds: float, hosts: tuple[int, ...], kinds: tuple[str, ...] = DEFAULT_KINDS, *,
             mean_gap: float = 6.0, warmup: float = 5.0, cooldown: float = 15.0) -> list[Fault]:
    """The faults of a run of ``seconds`` on ``hosts`` (their indexes), in time order. Joins add hosts
    (new indexes) up to one more than ``hosts``; leaves remove hosts down to one fewer, never the
    first two."""
    if not kinds or not hosts:
        return []
    rng = random.Random(seed)
    busy_until: dict[tuple[str, int], float] = {}  # ("host", i) / ("etcd", 0): when the target is free again
    live, protected, next_index = list(hosts), set(hosts[:2]), max(hosts) + 1
    ready: dict[int, float] = {}  # joined host -> when it may be a peer
    faults: list[Fault] = []
    t = warmup
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        kind = KINDS[rng.choice(kinds)]
        lo, hi = kind.duration
        duration = round(rng.uniform(lo, hi), 2) if hi else 0.0
        if t + duration > seconds - cooldown:
            break
        free = [h for h in live if busy_until.get(("host", h), -1.0) <= t]
        if kind.target == "etcd":
            # one member down at a time: the whole cluster is one target
            member = -1 if kind.name == "etcd-leader-kill" else rng.randrange(MEMBERS)
            if busy_until.get(("etcd", 0), -1.0) > t:
                continue
            busy_until[("etcd", 0)] = t + duration + 1.0
            target, peer = member, 0
        elif kind.target == "join":
            if len(live) > len(hosts):
                continue
            target, peer, next_index = next_index, 0, next_index + 1
            live.append(target)
            busy_until[("host", target)] = ready[target] = t + JOIN_TIME
        elif kind.target == "leave":
            free = [h for h in free if h not in protected]
            if len(live) < len(hosts) or not free:
                continue
            target, peer = rng.choice(free), 0
            live.remove(target)
        else:
            if not free:
                continue
            target = rng.choice(free)
            peers = [h for h in live if h != target and ready.get(h, 0.0) <= t]
            peer = rng.choice(peers) if kind.target == "peer" and peers else 0
            if kind.target == "peer" and not peer:
                continue
            busy_until[("host", target)] = t + duration + 1.0
        faults.append(Fault(len(faults) + 1, round(t, 2), kind.name, target, peer, duration))
    return faults


__all__ = ["DEFAULT_KINDS", "KINDS", "Fault", "Kind", "kinds_for", "not_applicable", "schedule", "touches_data_path"]
