"""``flannelctl doctor``'s judgement, pure: what was read from etcd and the kernel goes in, one
``Check`` per question comes out (ok / warning / problem, the cause, the fix). The reading is in
``cli/ctl_doctor.py``; everything that decides is here and unit-tested."""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

OK, WARNING, PROBLEM = "ok", "warning", "problem"
OVERHEAD = {"udp": 28, "vxlan": 50}  # bytes the encapsulation adds: outer IPv4+UDP (+ VXLAN + inner Ethernet)


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    text: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<8} {self.name:<12} {self.text}" + (f"  -> fix: {self.fix}" if self.fix else "")

    def as_json(self) -> dict[str, str]:
        return {k.capitalize(): v for k, v in asdict(self).items()}  # the key style of flannelctl's --json


def worst(checks: Iterable[Check]) -> str:
    levels = {c.level for c in checks}
    return PROBLEM if PROBLEM in levels else WARNING if WARNING in levels else OK


def clock_skew(name: str, skew_s: float, limit_s: float = 5.0) -> Check:
    """This host's clock against etcd's (HTTP ``Date``, 1 s resolution)."""
    if abs(skew_s) <= limit_s:
        return Check("clock", OK, f"within {limit_s:g}s of {name}")
    way = "ahead of" if skew_s > 0 else "behind"
    return Check("clock", WARNING, f"{abs(skew_s):.0f}s {way} {name}: lease expiry times and logs disagree between "
                 "hosts", "sync the clocks (systemctl enable --now systemd-timesyncd, or chrony)")


def mtu_chain(backend: str, underlay: tuple[str, int] | None, device: tuple[str, int] | None, flannel_mtu: int,
              bridges: Sequence[tuple[str, int]]) -> list[Check]:
    """underlay MTU - encapsulation >= flannel device MTU == FLANNEL_MTU >= each bridge's MTU."""
    out: list[Check] = []
    overhead = OVERHEAD.get(backend, 0)
    if underlay is not None and device is not None and underlay[1] - overhead < device[1]:
        out.append(Check("mtu", PROBLEM, f"{device[0]} mtu {device[1]} but underlay {underlay[0]} mtu {underlay[1]} "
                         f"leaves {underlay[1] - overhead} after {backend}'s {overhead} bytes: big packets are lost",
                         f"restart flanneld (it sizes {device[0]} from the underlay), or raise {underlay[0]}'s MTU"))
    if device is not None and device[1] != flannel_mtu:
        out.append(Check("mtu", PROBLEM, f"{device[0]} mtu {device[1]} but subnet.env says FLANNEL_MTU={flannel_mtu}",
                         "restart flanneld, then docker (it rewrites subnet.env and the device)"))
    for name, mtu in bridges:
        if mtu > flannel_mtu:
            out.append(Check("mtu", PROBLEM, f"{name} mtu {mtu} > FLANNEL_MTU={flannel_mtu}: containers send packets "
                             "the overlay cannot carry (large transfers hang)",
                             f"give docker --mtu={flannel_mtu} (mk-docker-opts --daemon-json, then restart docker), "
                             f"or `ip link set {name} mtu {flannel_mtu}`"))
        elif mtu < flannel_mtu:
            out.append(Check("mtu", WARNING, f"{name} mtu {mtu} < FLANNEL_MTU={flannel_mtu}: works, but wastes "
                             "capacity", f"give docker --mtu={flannel_mtu} and restart it"))
    if not out:
        chain = [f"{n} {m}" for n, m in [*(x for x in (underlay, device) if x), *bridges]]
        out.append(Check("mtu", OK, f"FLANNEL_MTU={flannel_mtu}: " + (", ".join(chain) or "no device to compare")))
    return out


def _nets(rule: dict[str, str], flag: str) -> ipaddress.IPv4Network | None:
    value = rule.get(flag)
    if value is None:
        return None
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        return None


_OPTS = {"-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d", "-j": "-j", "--jump": "-j",
         "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o"}


def _parse_rule(line: str) -> tuple[dict[str, str], set[str]] | None:
    """``-A FORWARD -s NET -j DROP`` -> ({-s: NET, -j: DROP}, {any other word})."""
    try:
        words = shlex.split(line)[2:]
    except ValueError:
        return None
    opts: dict[str, str] = {}
    other: set[str] = set()
    i = 0
    while i < len(words):
        key = _OPTS.get(words[i])
        if key is not None and i + 1 < len(words):
            opts[key] = words[i + 1]
            i += 2
        else:
            other.add(words[i])
            i += 1
    return opts, other


def forward_chain(rules: str, network: ipaddress.IPv4Network) -> Check:
    """``iptables -S FORWARD``: does a DROP/REJECT (the policy, or a rule covering the network with
    no other condition) come before anything that accepts the network's traffic?"""
    policy = "ACCEPT"
    for n, line in enumerate(x for x in rules.splitlines() if x.startswith("-A FORWARD ")):
        parsed = _parse_rule(line)
        if parsed is None:
            continue
        opts, other = parsed
        target = opts.get("-j", "")
        src, dst = _nets(opts, "-s"), _nets(opts, "-d")
        covers = all(x is None or x.overlaps(network) for x in (src, dst)) and not other
        if target == "FLANNEL-FWD" or (target == "ACCEPT" and not other and (
                (src is not None and network.subnet_of(src)) or (dst is not None and network.subnet_of(dst)))):
            return Check("forward", OK, f"{network} is accepted by FORWARD rule {n + 1} ({line.strip()})")
        if target in ("DROP", "REJECT") and covers and "-i" not in opts and "-o" not in opts:
            return Check("forward", PROBLEM, f"FORWARD rule {n + 1} ({line.strip()}) drops {network}'s traffic "
                         "before any rule accepts it: containers on different hosts cannot talk",
                         f"delete or narrow it (iptables -D FORWARD {n + 1}), or insert an accept ahead of it: "
                         f"iptables -I FORWARD -s {network} -j ACCEPT; iptables -I FORWARD -d {network} -j ACCEPT")
    for line in rules.splitlines():
        if line.startswith("-P FORWARD "):
            policy = line.split()[2]
    if policy != "ACCEPT":
        return Check("forward", PROBLEM, f"FORWARD policy is {policy} and no rule accepts {network}'s traffic "
                     "(docker sets DROP): containers on different hosts cannot talk",
                     f"run flanneld with -iptables-forward-rules=true (its FLANNEL-FWD rules), or "
                     f"iptables -A FORWARD -s {network} -j ACCEPT; iptables -A FORWARD -d {network} -j ACCEPT")
    return Check("forward", OK, f"FORWARD policy {policy}, nothing drops {network}")


def route_drift(wrong: Sequence[str], total: int, how: str) -> Check:
    """Peers whose subnet the kernel does not route the way the backend wants (``how``)."""
    if not wrong:
        return Check("routes", OK, f"all {total} peer subnet(s) routed {how}")
    first = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
    return Check("routes", PROBLEM, f"{len(wrong)} of {total} peer subnet(s) not routed {how}: {first}",
                 "flanneld restores its routes within seconds (-v=2 logs each repair): is it running? "
                 "Else restart it")


def entry_drift(dev: str, missing_neighs: Sequence[str], missing_fdbs: Sequence[str], peers: int) -> Check:
    """vxlan: the permanent neighbour (peer gateway -> VtepMAC) and FDB (VtepMAC -> PublicIP) entries
    the backend wants on ``dev`` that the kernel lacks or has different."""
    if not missing_neighs and not missing_fdbs:
        return Check("neigh/fdb", OK, f"all {peers} peer(s) have their neighbour and FDB entry on {dev}")
    parts = []
    for what, rows in (("neighbour", missing_neighs), ("FDB", missing_fdbs)):
        if rows:
            parts.append(f"{len(rows)} {what} entr{'y' if len(rows) == 1 else 'ies'} missing or wrong ("
                         + "; ".join(rows[:3]) + (f"; and {len(rows) - 3} more" if len(rows) > 3 else "") + ")")
    return Check("neigh/fdb", PROBLEM, f"on {dev}, of {peers} peer(s): " + ", ".join(parts)
                 + ": packets to those peers are dropped or sent to the wrong host",
                 "flanneld restores its entries within seconds (-v=2 logs each repair): is it running? Else restart it")


@dataclass(frozen=True)
class PeerProbe:
    """What one peer answered: echo to its overlay address, echo to its public IP, and whether a
    UDP datagram through the overlay arrived intact (None: not probed)."""
    subnet: str
    public_ip: str
    overlay: bool
    underlay: bool
    udp: bool | None = None

    def who(self) -> str:
        return f"{self.subnet} ({self.public_ip})"


def _listed(probes: Sequence[PeerProbe]) -> str:
    return ", ".join(p.who() for p in probes[:3]) + (f" and {len(probes) - 3} more" if len(probes) > 3 else "")


def peer_checks(encap: str, probes: Sequence[PeerProbe], explained: str = "") -> Check:
    """Per peer, whether its encapsulation port (``encap``, e.g. ``udp/8472``) answers through the
    overlay; told apart from a peer that is down or unreachable on the underlay. ``explained``:
    the name of a check above that already found this host's own entries wrong (then that is
    the likelier cause, not a firewall)."""
    if not probes:
        return Check("peers", OK, "no peer to probe")
    blocked = [p for p in probes if not p.overlay and p.underlay]
    gone = [p for p in probes if not p.overlay and not p.underlay]
    if blocked and explained:
        return Check("peers", PROBLEM, f"{len(blocked)} of {len(probes)} peer(s) answer on the underlay but not "
                     f"through the overlay: {_listed(blocked)}: the {explained} problem above explains it",
                     f"fix the {explained} problem first, then run doctor again")
    if blocked:
        return Check("peers", PROBLEM, f"{len(blocked)} of {len(probes)} peer(s) answer on the underlay but not "
                     f"through {encap}: {_listed(blocked)}: a firewall on the way or on the peer drops it",
                     f"allow {encap} from this host on those peers (e.g. iptables -I INPUT -p {encap.split('/')[0]} "
                     f"--dport {encap.split('/')[1]} -j ACCEPT; cloud security groups too)")
    if gone:
        return Check("peers", PROBLEM, f"{len(gone)} of {len(probes)} peer(s) answer neither through the overlay nor "
                     f"on the underlay: {_listed(gone)}: the host is down or its public IP unreachable from here",
                     "check those hosts; a host gone for good: flannelctl leases revoke SUBNET")
    return Check("peers", OK, f"all {len(probes)} peer(s) answer through the overlay ({encap})")


def checksum_check(dev: str, offload: bool | None, probes: Sequence[PeerProbe]) -> Check:
    """vxlan: echo passes through the overlay but a UDP datagram does not arrive intact (its peer
    never answers port-unreachable): the checksum offload produces bad packets."""
    state = {True: "on", False: "off", None: "unknown"}[offload]
    tried = [p for p in probes if p.overlay and p.udp is not None]
    if not tried:
        return Check("checksum", OK, f"not probed: no peer answers through the overlay ({dev} tx checksum "
                     f"offload {state})")
    bad = [p for p in tried if not p.udp]
    if not bad:
        return Check("checksum", OK, f"UDP through {dev} arrives intact at {len(tried)} peer(s) (tx checksum "
                     f"offload {state})")
    return Check("checksum", PROBLEM, f"ping passes through {dev} but UDP does not arrive intact at {len(bad)} of "
                 f"{len(tried)} peer(s): {_listed(bad)} (tx checksum offload {state}): the packets leave with bad "
                 "checksums (the known vxlan checksum-offload fault of some kernels and NICs; TCP and DNS "
                 "through the overlay hang)",
                 f"ethtool -K {dev} tx-checksum-ip-generic off (flanneld does this itself when its start-up probe "
                 "fails); if it persists, check the underlay NIC: ethtool -K <nic> tx-udp_tnl-csum-segmentation off")
