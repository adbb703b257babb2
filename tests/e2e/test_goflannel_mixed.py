"""Go flannel itself as a peer (issue 14, item 1): for each of udp, vxlan and host-gw, three lab
hosts on one etcd prefix, h1 and h2 running pyflannel's flanneld, h3 Go flannel's (v0.28.9, built
by setup), all with the same flags; ``-ip-masq`` on h1 (ours) and h3 (Go).

Every pair pings; each side's lease is programmed in the other's kernel as each backend makes it
(and the entries are the same, but for the route protocol: ours carry 151, Go's "boot"); on udp,
50 MB of TCP in both directions between ours and Go's arrive with the same sha256. Deleting either
kind's lease removes that peer everywhere; restarting either keeps its subnet.

On udp the peer table is not in the kernel: ours is read from /peers, and Go's C proxy is probed
by the data path: with no route it writes an ICMP net unreachable into flannel0 (from its TUN
address; tcpdump sees it there, the sender never does: a difference, tested below).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import in_ns, sh

from .helpers import all_pairs_ping, ip, lease_key, log_text, subnet_of, transfer, wait_for

HEALTHZ = ("-healthz-port=8081", "-healthz-ip=127.0.0.1")
FLAGS = ("-iface=eth0", *HEALTHZ)
MASQ = ("-ip-masq",)
NAMES = {"udp": "pfgu", "vxlan": "pfgv", "host-gw": "pfgg"}
LABS: dict[str, Lab] = {}


@pytest.fixture(scope="module", params=list(NAMES))
def lab(request: pytest.FixtureRequest, make_lab, go_flanneld: str) -> Iterator[Lab]:
    flags = {1: FLAGS + MASQ, 2: FLAGS, 3: FLAGS + MASQ}  # kept by every restart
    with make_lab(NAMES[request.param], 3, request.param, subnet_max="10.0.199.0", go_hosts=(3,),
                  host_extra=flags) as lab:
        LABS[lab.name] = lab
        yield lab


def ours(lab: Lab) -> list[Host]:
    return [h for h in lab.hosts if not h.go]


def go_host(lab: Lab) -> Host:
    return next(h for h in lab.hosts if h.go)


# ---- what one host has programmed for one peer ----------------------------------------------------

_PEERS = """
import json, urllib.request
print(json.dumps(json.load(urllib.request.urlopen("http://127.0.0.1:8081/peers", timeout=3))))
"""


def pump_table(host: Host) -> dict[str, str]:
    """Our udp pump's table (/peers): subnet -> PublicIP."""
    out = subprocess.run(in_ns(host.ns, sys.executable, "-c", _PEERS), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return {row["subnet"]: row["public_ip"] for row in json.loads(out.stdout)["peers"]}


_SYN = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[2]))
try:
    s.connect((sys.argv[1], 9))
except OSError as err:
    print(err.errno if err.errno is not None else "timeout")
"""


def tcp_probe(host: Host, dst: str, timeout: float = 1.0) -> str:
    """A TCP connect from host's container to ``dst``: "101" (ENETUNREACH: an ICMP net unreachable
    came back), "timeout", or another errno."""
    res = subprocess.run(in_ns(host.container_ns, sys.executable, "-c", _SYN, dst, str(timeout)),
                         capture_output=True, text=True, timeout=timeout + 20)
    return res.stdout.strip()


def proxy_unreachables(host: Host, dst: str) -> list[str]:
    """The ICMP net unreachable ``host``'s udp proxy writes into flannel0 for a TCP SYN to ``dst``
    (seen by tcpdump on flannel0, as they may never reach the sender: see
    test_udp_net_unreachable_reaches_the_sender_only_from_ours)."""
    cmd = in_ns(host.ns, "tcpdump", "-n", "-l", "-i", "flannel0", "-c", "1",
                f"icmp and icmp[icmptype] == 3 and src {subnet_of(host).split('/')[0]}")
    cap = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cap.stderr is not None
        wait_for(lambda: "listening on" in cap.stderr.readline(), timeout=10, interval=0, what="tcpdump")
        tcp_probe(host, dst, timeout=0.5)
        out = cap.communicate(timeout=2)[0]
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.communicate()
    return [line for line in out.splitlines() if f"ICMP net {dst} unreachable" in line]


def go_proxy_has_no_route(host: Host, peer: Host) -> bool:
    """Go's udp proxy on ``host`` has no route to ``peer``'s subnet: it answers a TCP SYN to the
    peer's container with net unreachable."""
    return bool(proxy_unreachables(host, peer.container_ip))


def vtep_mac(host: Host) -> str:
    return ip(host.ns, "link", "show", "flannel.1").split("link/ether ")[1].split()[0]


def entries(lab: Lab, host: Host, peer: Host) -> list[str]:
    """``host``'s kernel entries for ``peer`` as the backend makes them, with the peer's values as
    placeholders and the route protocol dropped: comparable between a Go host and ours."""
    sn = subnet_of(peer)
    gw = sn.split("/")[0]
    lines = [ip(host.ns, "route", "show", sn).strip()]
    if lab.backend == "vxlan":
        mac = vtep_mac(peer)
        lines += [line for line in ip(host.ns, "neigh", "show", "dev", "flannel.1").splitlines() if mac in line]
        lines += [line for line in sh(["bridge", "-n", host.ns, "fdb", "show", "dev", "flannel.1"]).stdout.splitlines()
                  if line.startswith(mac)]
        subst = [(mac, "MAC")]
    else:
        subst = []
    subst += [(sn, "SUBNET"), (peer.ip, "PUBLICIP"), (gw, "GW")]
    out = []
    for line in lines:
        line = re.sub(r" proto \S+", "", line).strip()
        for value, name in subst:
            line = line.replace(value, name)
        out.append(line)
    return out


EXPECTED = {  # what both flannels program for a peer
    "vxlan": ["SUBNET via GW dev flannel.1 onlink", "GW lladdr MAC PERMANENT", "MAC dst PUBLICIP self permanent"],
    "host-gw": ["SUBNET via PUBLICIP dev eth0"],
}


def programmed(lab: Lab, host: Host, peer: Host) -> bool:
    """Whether ``host`` forwards to ``peer``: its kernel entries (vxlan, host-gw), our udp pump's
    table, or for Go's udp proxy a ping that gets through."""
    if lab.backend != "udp":
        return entries(lab, host, peer) == EXPECTED[lab.backend]
    if host.go:
        return lab.ping(host, peer, 1)[0]
    return pump_table(host).get(subnet_of(peer)) == peer.ip


def forgotten(lab: Lab, host: Host, peer: Host) -> bool:
    """Whether ``host`` has nothing left for ``peer`` (whose flanneld is stopped)."""
    if lab.backend != "udp":
        sn = subnet_of(peer)
        left = ip(host.ns, "route", "show", sn).strip()
        if lab.backend == "vxlan":
            gw = sn.split("/")[0]
            left += ip(host.ns, "neigh", "show", gw, "dev", "flannel.1").strip()
            left += "".join(line for line in sh(["bridge", "-n", host.ns, "fdb", "show", "dev", "flannel.1"]
                                                 ).stdout.splitlines() if f"dst {peer.ip} " in line)
        return left == ""
    if host.go:
        return go_proxy_has_no_route(host, peer)
    return subnet_of(peer) not in pump_table(host)


# ---- the tests ------------------------------------------------------------------------------------

def test_h3_runs_go_flannel(lab: Lab, go_flanneld: str) -> None:
    h3 = go_host(lab)
    assert h3.index == 3 and lab.flanneld_binary(h3) == [go_flanneld]
    version = subprocess.run([go_flanneld, "--version"], capture_output=True, text=True, timeout=10)
    assert version.stderr.strip() == "v0.28.9"
    assert f"Found network config - Backend type: {lab.backend}" in log_text(lab, h3)  # Go's klog line
    assert all("Found network config" not in log_text(lab, h) for h in ours(lab))


def test_all_six_pairs_ping(lab: Lab) -> None:
    assert all_pairs_ping(lab) == []


def test_each_lease_is_programmed_in_the_others_kernel(lab: Lab) -> None:
    for host in lab.hosts:
        for peer in lab.hosts:
            if host is not peer:
                assert programmed(lab, host, peer), (host.ns, peer.ns, entries(lab, host, peer))


def test_route_protocol_is_the_one_difference(lab: Lab) -> None:
    """Ours mark their routes with protocol 151 (so the reconciler only ever removes its own);
    Go's are "boot". On purpose: docs/compatibility.md#kernel-entries."""
    h1, h3 = ours(lab)[0], go_host(lab)
    sn = "10.0.0.0/16"  # the lab's network
    if lab.backend == "udp":
        assert ip(h1.ns, "route", "show", "exact", sn).split() == [sn, "dev", "flannel0", "proto", "151"]
        assert ip(h3.ns, "route", "show", "exact", sn).split() == [sn, "dev", "flannel0"]
        for h in (h1, h3):  # the same TUN address and MTU
            assert f"inet {subnet_of(h).split('/')[0]}/32 " in ip(h.ns, "addr", "show", "flannel0")
            assert "mtu 1472 " in ip(h.ns, "link", "show", "flannel0")
        return
    assert "proto 151" in ip(h1.ns, "route", "show", subnet_of(h3))
    assert "proto" not in ip(h3.ns, "route", "show", subnet_of(h1))  # boot: not shown


def test_vxlan_devices_are_the_same(lab: Lab) -> None:
    if lab.backend != "vxlan":
        pytest.skip("vxlan only")

    def device(h: Host) -> dict[str, object]:
        d = json.loads(ip(h.ns, "-d", "-j", "link", "show", "flannel.1"))[0]
        for key in ("ifindex", "address", "link_index", "operstate"):
            d.pop(key, None)
        assert d["linkinfo"]["info_data"].pop("local") == h.ip
        return d

    h1, h3 = ours(lab)[0], go_host(lab)
    assert device(h1) == device(h3)
    for h in (h1, h3):
        assert f"inet {subnet_of(h).split('/')[0]}/32 " in ip(h.ns, "addr", "show", "flannel.1")


def test_udp_50_mb_both_ways_arrive_intact(lab: Lab) -> None:
    """Our pump (TUN offloads: GSO trains, TSO segments cut by the pump) against Go's C proxy (one
    packet per read and write), 50 MB each way, sha256 checked."""
    if lab.backend != "udp":
        pytest.skip("udp only")
    h1, h3 = ours(lab)[0], go_host(lab)
    transfer(h1, h3, size=50 * 1024 * 1024, seed=1)
    transfer(h3, h1, size=50 * 1024 * 1024, seed=2)


def test_udp_net_unreachable_reaches_the_sender_only_from_ours(lab: Lab) -> None:
    """A TCP SYN to an address no lease covers: both proxies answer ICMP net unreachable from their
    flannel0 address. Go's is dropped by its own kernel as a martian (a local source address,
    accept_local off), so the sender only times out; ours sets accept_local on flannel0 and the
    sender hears it (ENETUNREACH). A Go flannel bug not copied: docs/compatibility.md#udp."""
    if lab.backend != "udp":
        pytest.skip("udp only")
    h1, h3 = ours(lab)[0], go_host(lab)
    nowhere = "10.0.222.2"  # above the lab's SubnetMax: never leased
    assert tcp_probe(h1, nowhere) == "101"
    assert proxy_unreachables(h3, nowhere), "Go's proxy writes the ICMP into flannel0"
    assert tcp_probe(h3, nowhere) == "timeout"
    accept_local = sh(in_ns(h3.ns, "sysctl", "-n", "net.ipv4.conf.flannel0.accept_local")).stdout.strip()
    assert accept_local == "0"


@pytest.mark.parametrize("kind", ["go", "ours"])
def test_deleted_lease_is_removed_everywhere(lab: Lab, kind: str) -> None:
    victim = go_host(lab) if kind == "go" else ours(lab)[1]
    others = sorted((h for h in lab.hosts if h is not victim), key=lambda h: not h.go)  # Go's first
    before = victim.subnet
    lab.stop_flanneld(victim)  # else it takes its deleted lease straight back
    try:
        lab.etcdctl("del", lease_key(victim))
        for host in others:
            wait_for(lambda host=host: forgotten(lab, host, victim), timeout=10,
                     what=f"{host.ns} ({'Go' if host.go else 'ours'}) to forget {victim.ns}")
    finally:
        lab.start_flanneld(victim)  # back on the same subnet, from its subnet.env
    assert lab.wait_subnet(victim, 30) == before
    for host in others:
        wait_for(lambda host=host: programmed(lab, host, victim), what=f"{host.ns} to program {victim.ns} again")
    wait_for(lambda: all_pairs_ping(lab) == [], what="all pairs again")


@pytest.mark.parametrize("kind", ["go", "ours"])
def test_restart_keeps_the_subnet(lab: Lab, kind: str) -> None:
    victim = go_host(lab) if kind == "go" else ours(lab)[0]
    before, key = victim.subnet, lease_key(victim)
    mac = vtep_mac(victim) if lab.backend == "vxlan" else ""
    ready = log_text(lab, victim).count("flannel is ready")
    lab.stop_flanneld(victim)
    assert lab.etcdctl("get", key, "--print-value-only").strip(), "the lease stays in etcd"
    lab.start_flanneld(victim)
    wait_for(lambda: log_text(lab, victim).count("flannel is ready") > ready, what=f"{victim.ns} ready again")
    assert lab.wait_subnet(victim, 30) == before
    assert lease_key(victim) == key
    if mac:
        assert vtep_mac(victim) == mac
    wait_for(lambda: all_pairs_ping(lab) == [], what="all pairs after the restart")
