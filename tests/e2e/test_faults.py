"""Faults injected for real: etcd stopped, changes and compaction while flanneld cannot see etcd,
SIGKILL, a host away past its TTL, hand-deleted kernel entries."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pyflannel.daemon import LEASE_DELETE_GRACE_S
from pyflannel.lab.cluster import PREFIX, Lab
from pyflannel.lab.netns import in_ns, sh

from .helpers import all_pairs_ping, ip, lease_key, log_text, ping_counts, subnet_of, wait_for

READYZ = """
import urllib.request, urllib.error
try:
    print(urllib.request.urlopen("http://127.0.0.1:8081/readyz", timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""

PEERS = """
import json, urllib.request
print(json.dumps(json.load(urllib.request.urlopen("http://127.0.0.1:8081/peers", timeout=3))))
"""

BAD_LEASES = """
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8081/metrics", timeout=3).read().decode()
print(next(line.split()[-1] for line in text.splitlines() if line.startswith("flannel_bad_leases ")))
"""

HEALTHZ = ("-healthz-port=8081", "-healthz-ip=127.0.0.1")


@pytest.fixture(scope="module", params=["udp", "vxlan", "host-gw"])
def lab(request: pytest.FixtureRequest, make_lab) -> Iterator[Lab]:
    name = {"udp": "pffu", "vxlan": "pffv", "host-gw": "pffg"}[request.param]
    with make_lab(name, 3, request.param, subnet_max="10.0.199.0", extra=HEALTHZ, wait=20) as lab:
        LAB[lab.name] = lab
        yield lab


def readyz(host) -> int:
    out = subprocess.run(in_ns(host.ns, sys.executable, "-c", READYZ), capture_output=True, text=True, timeout=20)
    return int(out.stdout.strip() or 0)


def lease_json(lab: Lab, subnet: str, ip_: str) -> str:
    if lab.backend == "vxlan":
        return (f'{{"PublicIP":"{ip_}","PublicIPv6":null,"BackendType":"vxlan",'
                f'"BackendData":{{"VNI":1,"VtepMAC":"02:42:00:00:00:{int(subnet.split(".")[2]):02x}"}}}}')
    if lab.backend == "host-gw":
        return f'{{"PublicIP":"{ip_}","PublicIPv6":null,"BackendType":"host-gw"}}'
    return f'{{"PublicIP":"{ip_}","PublicIPv6":null}}'


LAB: dict[str, Lab] = {}


def bad_leases(host) -> float:
    """flanneld's flannel_bad_leases gauge."""
    out = subprocess.run(in_ns(host.ns, sys.executable, "-c", BAD_LEASES), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


def pump_table(host) -> list[dict[str, object]]:
    """The udp pump's own table, read from flanneld's /peers endpoint."""
    out = subprocess.run(in_ns(host.ns, sys.executable, "-c", PEERS), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["backend"] == "udp", got
    return list(got["peers"])


def has_route(host, subnet: str) -> bool:
    """Whether ``host`` forwards to ``subnet``: a kernel route (vxlan, host-gw), or for udp a row
    of the pump's table (/peers)."""
    lab = LAB[host.ns.split("-")[0]]
    if lab.backend != "udp":
        return f"{subnet} via" in ip(host.ns, "route")
    return any(row["subnet"] == subnet for row in pump_table(host))


def pinger(lab: Lab, src, dst, seconds: float) -> subprocess.Popen[str]:
    count = int(seconds / 0.01)
    return subprocess.Popen(in_ns(src.container_ns, "ping", "-n", "-q", "-i", "0.01", "-c", str(count), "-W", "1",
                                  dst.container_ip), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


lost = ping_counts  # (sent, received)


def test_etcd_outage_keeps_traffic_and_catches_up(lab: Lab) -> None:
    """etcd down for 30 s under a 10 ms ping; a lease added and one deleted while flanneld cannot
    see etcd are both applied within 2 s of etcd's return."""
    h1, h2 = lab.hosts[:2]
    gone = "10.0.251.0/24"
    lab.etcdctl("put", f"{PREFIX}/subnets/10.0.251.0-24", lease_json(lab, gone, "198.18.0.96"))
    wait_for(lambda: has_route(h1, gone), what="the doomed peer programmed")
    ping = pinger(lab, h1, h2, 34)
    try:
        time.sleep(1)
        lab.stop_etcd()
        wait_for(lambda: readyz(h1) == 503, timeout=10, what="/readyz to report the outage")
        # while flanneld sees no etcd, the store changes: one lease added, one deleted
        lab.start_etcd("127.0.0.1")
        lab.etcdctl("put", f"{PREFIX}/subnets/10.0.252.0-24", lease_json(lab, "10.0.252.0/24", "198.18.0.95"))
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.251.0-24")
        lab.stop_etcd()
        time.sleep(25)
        assert all_pairs_ping(lab) == [], "every pair still pings with etcd down"
        lab.start_etcd()
        wait_for(lambda: all(has_route(h, "10.0.252.0/24") and not has_route(h, gone) for h in lab.hosts),
                 timeout=LEASE_DELETE_GRACE_S + 2, what="the changes made during the outage, on every host")
        out = ping.communicate(timeout=60)[0]
    finally:
        if ping.poll() is None:
            ping.kill()
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.252.0-24", check=False)
    sent, got = lost(out)
    if lab.backend == "udp":
        assert got == sent, f"udp keeps forwarding with its last peer table: {out}"
    assert got == sent, out
    for h in lab.hosts:
        assert log_text(lab, h).count("etcd is unreachable") == 1, "the outage is logged once"
    wait_for(lambda: readyz(h1) == 200, what="ready again")


def test_compaction_during_an_outage_relists_exactly(lab: Lab) -> None:
    h1 = lab.hosts[0]
    lab.etcdctl("put", f"{PREFIX}/subnets/10.0.253.0-24", lease_json(lab, "10.0.253.0/24", "198.18.0.94"))
    wait_for(lambda: has_route(h1, "10.0.253.0/24"), what="peer programmed")
    relists = log_text(lab, h1).count("re-listing")
    lab.stop_etcd()
    lab.start_etcd("127.0.0.1")
    lab.etcdctl("del", f"{PREFIX}/subnets/10.0.253.0-24")
    lab.etcdctl("put", f"{PREFIX}/subnets/10.0.254.0-24", lease_json(lab, "10.0.254.0/24", "198.18.0.93"))
    rev = re.search(r'"revision":(\d+)', lab.etcdctl("get", "x", "-w", "json")).group(1)
    lab.etcdctl("compact", rev)
    lab.stop_etcd()
    lab.start_etcd()
    try:
        wait_for(lambda: has_route(h1, "10.0.254.0/24") and not has_route(h1, "10.0.253.0/24"), timeout=10,
                 what="an exact peer set after the re-list")
        assert log_text(lab, h1).count("re-listing") > relists, "the compacted watch was re-listed"
        assert all(has_route(h1, subnet_of(p)) for p in lab.hosts[1:]), "no healthy peer dropped"
        assert all_pairs_ping(lab) == []
    finally:
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.254.0-24")


def test_sigkill_restart_keeps_subnet_and_mac(lab: Lab) -> None:
    h = lab.hosts[1]
    subnet = h.subnet
    mac = ip(h.ns, "link", "show", "flannel.1").split("link/ether ")[1].split()[0] if lab.backend == "vxlan" else ""
    ping = pinger(lab, lab.hosts[0], h, 6)
    lab.stop_flanneld(h, sig=9)
    lab.start_flanneld(h, HEALTHZ)
    out = ping.communicate(timeout=60)[0]
    assert lab.wait_subnet(h, 10) == subnet
    if mac:
        assert mac in ip(h.ns, "link", "show", "flannel.1")
    sent, got = lost(out)
    if lab.backend == "udp":
        # flannel0 goes with the killed process, so udp loses the pings of the restart; how many is
        # measured by the soak (flanneld-sigkill per backend), not asserted here. Asserted: the path
        # comes back by itself and then carries a 10 ms ping without a loss.
        wait_for(lambda: lab.ping(lab.hosts[0], h, 1)[0], what="udp forwarding again after the restart")
        after = pinger(lab, lab.hosts[0], h, 2)
        sent, got = lost(after.communicate(timeout=30)[0])
        assert got == sent, f"udp: pings lost after the restart had healed: {sent - got} of {sent}"
    else:
        assert got == sent, out


def test_away_past_ttl_and_subnet_taken_gets_a_new_subnet(lab: Lab) -> None:
    h = lab.hosts[2]
    old = subnet_of(h)
    lab.stop_flanneld(h)
    lab.etcdctl("del", lease_key(h))  # its TTL ran out...
    lab.etcdctl("put", lease_key(h), lease_json(lab, old, "198.18.0.92"))  # ...and someone took it
    try:
        lab.start_flanneld(h, HEALTHZ)
        wait_for(lambda: "SUBNET CHANGED" in log_text(lab, h), what="the loud log")
        new = lab.wait_subnet(h, 10)
        assert new.rsplit(".", 1)[0] != old.rsplit(".", 1)[0], f"a new subnet: {new} (old {old})"
        assert "restart docker" in log_text(lab, h)
    finally:
        lab.etcdctl("del", f"{PREFIX}/subnets/{old.replace('/', '-')}")
        # give the host back its old subnet so the other tests keep their topology
        lab.stop_flanneld(h)
        lab.etcdctl("del", f"{PREFIX}/subnets/{subnet_of(h).replace('/', '-')}")
        with open(lab.subnet_file(h), "w") as f:
            f.write(f"FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET={old.replace('.0/', '.1/')}\n")
        h.subnet = old.replace(".0/", ".1/")
        lab.start_flanneld(h, HEALTHZ)
        wait_for(lambda: lab.ping(lab.hosts[0], h, 1)[0], what="h3 back on its subnet")


def test_hand_deleted_neighbour_and_fdb_come_back(lab: Lab) -> None:
    if lab.backend != "vxlan":
        pytest.skip("vxlan only")
    h1, h2 = lab.hosts[0], lab.hosts[1]
    gw = subnet_of(h2).split("/")[0]
    mac = ip(h2.ns, "link", "show", "flannel.1").split("link/ether ")[1].split()[0]
    # one at a time: the FDB deletion's full run would also restore the neighbour (which the kernel
    # reports deleted as FAILED, not PERMANENT: the chaos soak saw it heal only at the 10 s check)
    sh(["ip", "-n", h1.ns, "neigh", "del", gw, "dev", "flannel.1"])
    wait_for(lambda: f"{gw} lladdr {mac}" in ip(h1.ns, "neigh", "show", "dev", "flannel.1"),
             timeout=3, what="the neighbour entry restored at once (kernel monitor, not the 10 s check)")
    sh(["bridge", "-n", h1.ns, "fdb", "del", mac, "dev", "flannel.1", "dst", h2.ip])
    wait_for(lambda: f"{mac} dst {h2.ip}" in sh(["bridge", "-n", h1.ns, "fdb", "show", "dev", "flannel.1"]).stdout,
             timeout=3, what="the FDB entry restored at once (kernel monitor, not the 10 s check)")


def _kernel_state(lab: Lab, host) -> str:
    """Everything through which ``host`` could forward to a peer: routes, and per backend the FDB
    and neighbours of flannel.1 or the pump's table."""
    text = ip(host.ns, "route")
    if lab.backend == "vxlan":
        text += sh(["bridge", "-n", host.ns, "fdb", "show", "dev", "flannel.1"]).stdout
        text += ip(host.ns, "neigh", "show", "dev", "flannel.1")
    if lab.backend == "udp":
        text += json.dumps(pump_table(host))
    return text


def test_misshapen_and_impossible_leases_never_reach_the_kernel(lab: Lab) -> None:
    """Issue 13 (1, 2): a /25 inside a host's /24, a /23 around it, a subnet outside the network,
    a second key for the victim's very subnet (``<subnet>&<IPv6 subnet>``) and leases whose PublicIP
    no host can have are skipped on every host with one warning naming the key; the victim's
    flanneld keeps running, its containers stay reachable, and deleting the second key removes
    nobody."""
    victim, thief = lab.hosts[0], lab.hosts[2]
    third = int(subnet_of(victim).split(".")[2])
    victim_pid = lab.flanneld_pid(victim)
    value = lease_json  # each backend's own lease shape, with the address under test
    second_key = f"10.0.{third}.0-24&fd00:99::-64"
    hostile = {
        second_key: value(lab, "10.0.153.0", thief.ip),  # VtepMAC 02:42:00:00:00:99
        f"10.0.{third}.128-25": value(lab, "10.0.0.128", thief.ip),
        f"10.0.{third & ~1}.0-23": value(lab, "10.0.0.0", thief.ip),
        "10.1.7.0-24": value(lab, "10.1.7.0", thief.ip),
        "10.0.201.0-24": value(lab, "10.0.201.0", "0.0.0.0"),
        "10.0.202.0-24": '{"PublicIPv6":null}',
        "10.0.203.0-24": value(lab, "10.0.203.0", "224.0.0.1"),
        "10.0.204.0-24": value(lab, "10.0.204.0", "127.0.0.1"),
        "10.0.205.0-24": value(lab, "10.0.205.0", "169.254.9.9"),
        "10.0.206.0-24": value(lab, "10.0.206.0", "255.255.255.255"),
    }
    try:
        for key, val in hostile.items():
            lab.etcdctl("put", f"{PREFIX}/subnets/{key}", val)
        for host in lab.hosts:
            def unwarned(h=host) -> list[str]:
                return [k for k in hostile if f"skipping bad lease key={PREFIX}/subnets/{k}:" not in log_text(lab, h)]
            try:
                wait_for(lambda h=host: not unwarned(h), timeout=10, what="warnings")
            except AssertionError:
                raise AssertionError(f"{host.ns} did not warn about {unwarned()}:\n{lab.log_tail(host, 30)}") from None
        stolen = (f"{subnet_of(victim)} via {thief.ip}", "02:42:00:00:00:99",
                  f'"subnet": "{subnet_of(victim)}", "public_ip": "{thief.ip}"')
        for host in lab.hosts:
            state = _kernel_state(lab, host)
            for needle in (f"10.0.{third}.128/25", f"10.0.{third & ~1}.0/23", "10.1.7.0/24", "10.0.201.0",
                           "10.0.202.0", "10.0.203.0", "10.0.204.0", "10.0.205.0", "10.0.206.0", "224.0.0.1",
                           "dst 0.0.0.0", "169.254.9.9", "255.255.255.255", *stolen):
                assert needle not in state, f"{needle} reached the kernel of {host.ns}:\n{state}"
        assert lab.flanneld_pid(victim) == victim_pid, f"the victim's flanneld ended:\n{lab.log_tail(victim, 30)}"
        for host in lab.hosts[1:]:
            ok, out = lab.ping(host, victim)
            assert ok, f"{host.ns} cannot reach the victim's container: {out}"
        # one warning per key, not one per event or per host restart of the watch
        assert log_text(lab, lab.hosts[1]).count(f"key={PREFIX}/subnets/10.0.{third}.128-25") == 1
        # the second key deleted: the victim's subnet stays programmed everywhere (a lease put after
        # the delete is programmed once the delete has been seen: events arrive in order)
        lab.etcdctl("del", f"{PREFIX}/subnets/{second_key}")
        lab.etcdctl("put", f"{PREFIX}/subnets/10.0.207.0-24", value(lab, "10.0.207.0", "198.18.0.99"))
        for host in lab.hosts:
            wait_for(lambda h=host: has_route(h, "10.0.207.0/24"), timeout=10,
                     what=f"{host.ns} programming 10.0.207.0/24")
        for host in lab.hosts[1:]:
            assert has_route(host, subnet_of(victim)), (
                f"{host.ns} dropped the victim's subnet:\n{_kernel_state(lab, host)}")
        # the bad keys revoked: flannel_bad_leases counts none any more (it used to count them for ever)
        assert all(bad_leases(h) >= len(hostile) - 1 for h in lab.hosts), [bad_leases(h) for h in lab.hosts]
        for key in hostile:
            lab.etcdctl("del", f"{PREFIX}/subnets/{key}")
        for host in lab.hosts:
            wait_for(lambda h=host: bad_leases(h) == 0, timeout=10, what=f"{host.ns}'s flannel_bad_leases back to 0")
    finally:
        for key in (*hostile, "10.0.207.0-24"):
            lab.etcdctl("del", f"{PREFIX}/subnets/{key}", check=False)


def test_a_second_flanneld_is_refused_and_the_first_loses_nothing(lab: Lab) -> None:
    """Issue 13 (4): the same flags again on a running host: refused with one line naming the
    running flanneld, before it touches etcd or the kernel; pings at 10 ms lose nothing."""
    host, other = lab.hosts[1], lab.hosts[0]
    pid = lab.flanneld_pid(host)
    lease_before = lab.etcdctl("get", lease_key(host), "--print-value-only")
    ping = pinger(lab, other, host, 4.0)
    time.sleep(0.5)
    # Without -healthz-port: the busy health port must not be what stops the second one.
    second = subprocess.run(lab.flanneld_command(host), capture_output=True, text=True, timeout=30)
    out, _ = ping.communicate(timeout=30)
    sent, got = lost(out)
    assert second.returncode == 1, second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"flanneld pid {pid} already runs with --subnet-file=" in lines[0], second.stderr
    assert sent - got == 0, f"the running flanneld lost {sent - got} of {sent} pings to a second one: {out}"
    assert lab.flanneld_pid(host) == pid
    assert lab.etcdctl("get", lease_key(host), "--print-value-only") == lease_before
    assert all(ok for ok, _ in [lab.ping(h, host) for h in lab.hosts if h is not host])


def test_a_config_changed_while_running_is_reported_once(lab: Lab) -> None:
    """Issue 13: the config is re-read every second; a change of Network or backend says, once,
    that only a restart applies it (Go reads it only at start), and changing it back is noticed."""
    config = lab.etcdctl("get", f"{PREFIX}/config", "--print-value-only").strip()
    changed = json.dumps({"Network": "10.9.0.0/16", "Backend": {"Type": "host-gw" if lab.backend != "host-gw"
                                                                else "vxlan"}})
    marks = [len(log_text(lab, h)) for h in lab.hosts]
    try:
        lab.put_config(changed)
        for host, mark in zip(lab.hosts, marks, strict=True):
            wait_for(lambda h=host, m=mark: 'Network "10.0.0.0/16" -> "10.9.0.0/16"' in log_text(lab, h)[m:]
                     and "restart flanneld on every host" in log_text(lab, h)[m:], timeout=10,
                     what=f"{host.ns} saying the changed config needs a restart")
    finally:
        lab.put_config(config)
    for host, mark in zip(lab.hosts, marks, strict=True):
        wait_for(lambda h=host: "is the one flanneld runs with again" in log_text(lab, h), timeout=10,
                 what="the config back as it was")
        assert log_text(lab, host)[mark:].count("-> \"10.9.0.0/16\"") == 1  # once, not once a second
    assert all_pairs_ping(lab) == []


def test_a_hand_deleted_route_comes_back_at_once(lab: Lab) -> None:
    """The README promises "at once" (netlink events), not at the 10 s full check: on udp the
    network's route through flannel0, elsewhere a peer's route."""
    host, peer = lab.hosts[0], lab.hosts[1]
    if lab.backend == "udp":
        dst, dev = "10.0.0.0/16", "flannel0"
    else:
        dst, dev = subnet_of(peer), "flannel.1" if lab.backend == "vxlan" else "eth0"
    assert dst in ip(host.ns, "route", "show", "dev", dev)
    start = time.monotonic()
    sh(["ip", "-n", host.ns, "route", "del", dst, "dev", dev])
    wait_for(lambda: dst in ip(host.ns, "route", "show", "dev", dev), timeout=3,
             what=f"{dst} dev {dev} restored by the kernel monitor, not by the 10 s full check")
    took = time.monotonic() - start
    ok, out = lab.ping(peer, host)
    assert ok, out
    print(f"{lab.backend}: {dst} dev {dev} back after {took * 1000:.0f} ms")
