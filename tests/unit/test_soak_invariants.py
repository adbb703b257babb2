"""The soak's invariant checks, on hand-made observations."""

from __future__ import annotations

import ipaddress
import json

from pyflannel.lab.soak.invariants import (
    Bounds,
    EnvWatch,
    ResourceWatch,
    actual_kernel,
    duplicate_problems,
    expected_kernel,
    read_leases,
)

NET = ipaddress.IPv4Network("10.0.0.0/16")
MAC = "aa:bb:cc:00:00:02"


def lease(ip: str, mac: str = MAC) -> bytes:
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}}).encode()


def test_malformed_and_ttl_less_leases_are_problems_but_our_own_garbage_is_not() -> None:
    kvs = [("/p/subnets/10.0.5.0-24", lease("198.18.0.12"), 7), ("/p/subnets/10.0.6.0-24", b"garbage-1", 0),
           ("/p/subnets/10.0.7.0-24", b'{"PublicIP": 5}', 9), ("/p/subnets/10.0.8.0-24", lease("198.18.0.13"), 0)]
    leases, problems = read_leases(kvs, {b"garbage-1"})
    assert [(v.key, v.public_ip, v.vtep_mac) for v in leases] == [
        ("/p/subnets/10.0.5.0-24", "198.18.0.12", MAC), ("/p/subnets/10.0.8.0-24", "198.18.0.13", MAC)]
    assert len(problems) == 2
    assert "malformed lease written at /p/subnets/10.0.7.0-24" in problems[0]
    assert "10.0.8.0-24 was written without a TTL" in problems[1]
    assert read_leases(kvs[1:2], set())[1][0].startswith("malformed lease written at /p/subnets/10.0.6.0-24")


def test_two_hosts_one_subnet_and_one_host_two_leases() -> None:
    leases, _ = read_leases([("/p/subnets/10.0.5.0-24", lease("198.18.0.12"), 1),
                             ("/p/subnets/10.0.9.0-24", lease("198.18.0.12"), 1)], set())
    problems = duplicate_problems(leases, {1: "10.0.5.1/24", 2: "10.0.5.1/24", 3: "10.0.7.1/24"})
    assert problems == ["hosts h1, h2 all hold subnet 10.0.5.0/24",
                        "198.18.0.12 holds 2 leases: /p/subnets/10.0.5.0-24, /p/subnets/10.0.9.0-24"]
    assert duplicate_problems(leases[:1], {1: "10.0.5.1/24", 3: "10.0.7.1/24"}) == []


def test_kernel_matches_leases_vxlan() -> None:
    leases, _ = read_leases([("/p/subnets/10.0.5.0-24", lease("198.18.0.12"), 1),
                             ("/p/subnets/10.0.6.0-24", lease("198.18.0.11", "aa:bb:cc:00:00:01"), 1)], set())
    want = expected_kernel("vxlan", leases, "198.18.0.11")
    routes = json.dumps([{"dst": "10.0.5.0/24", "gateway": "10.0.5.0", "dev": "flannel.1"},
                         {"dst": "10.0.6.0/24", "dev": "docker0"}, {"dst": "default", "gateway": "198.18.0.1",
                                                                    "dev": "eth0"}])
    neighs = json.dumps([{"dst": "10.0.5.0", "lladdr": MAC.upper()}])
    fdbs = json.dumps([{"mac": MAC, "dst": "198.18.0.12"}])
    own = ipaddress.IPv4Network("10.0.6.0/24")
    assert actual_kernel("vxlan", NET, own, routes, neighs, fdbs) == want
    assert actual_kernel("vxlan", NET, own, routes, neighs, "[]") == want - {f"fdb {MAC} 198.18.0.12"}
    assert actual_kernel("vxlan", NET, own, "", "", "not json") == set()


def test_kernel_matches_leases_host_gw_and_a_stale_route_shows() -> None:
    leases, _ = read_leases([("/p/subnets/10.0.5.0-24", lease("198.18.0.12"), 1)], set())
    want = expected_kernel("host-gw", leases, "198.18.0.11")
    assert want == {"route 10.0.5.0/24 via 198.18.0.12 dev eth0"}
    routes = json.dumps([{"dst": "10.0.5.0/24", "gateway": "198.18.0.12", "dev": "eth0"},
                         {"dst": "10.0.9.0/24", "gateway": "198.18.0.19", "dev": "eth0"}])
    assert actual_kernel("host-gw", NET, None, routes, "", "") - want == {"route 10.0.9.0/24 via 198.18.0.19 dev eth0"}


def udp_lease(ip: str) -> bytes:
    return json.dumps({"PublicIP": ip}).encode()  # Go flannel's udp lease: no BackendType, no BackendData


def test_kernel_matches_leases_udp_the_pump_table_and_the_network_route() -> None:
    leases, _ = read_leases([("/p/subnets/10.0.5.0-24", udp_lease("198.18.0.12"), 1),
                             ("/p/subnets/10.0.6.0-24", udp_lease("198.18.0.11"), 1),
                             ("/p/subnets/10.0.7.0-24", udp_lease("198.18.0.13"), 1)], set())
    want = expected_kernel("udp", leases, "198.18.0.11", NET)
    assert want == {"route 10.0.0.0/16 dev flannelN", "pump 10.0.5.0/24 198.18.0.12:8285",
                    "pump 10.0.7.0/24 198.18.0.13:8285"}
    routes = json.dumps([{"dst": "10.0.0.0/16", "dev": "flannel0", "prefsrc": "10.0.6.0"},
                         {"dst": "10.0.6.0/24", "dev": "docker0"}])
    peers = {"backend": "udp", "subnet": "10.0.6.0/24", "peers": [
        {"subnet": "10.0.5.0/24", "public_ip": "198.18.0.12", "port": 8285},
        {"subnet": "10.0.7.0/24", "public_ip": "198.18.0.13", "port": 8285}]}
    own = ipaddress.IPv4Network("10.0.6.0/24")
    assert actual_kernel("udp", NET, own, routes, peers=json.dumps(peers)) == want
    # a row the leases do not have, a lease the pump lacks, the route gone, flanneld not answering
    peers["peers"][1] = {"subnet": "10.0.9.0/24", "public_ip": "198.18.0.19", "port": 8285}
    have = actual_kernel("udp", NET, own, "[]", peers=json.dumps(peers))
    assert want - have == {"route 10.0.0.0/16 dev flannelN", "pump 10.0.7.0/24 198.18.0.13:8285"}
    assert have - want == {"pump 10.0.9.0/24 198.18.0.19:8285"}
    assert actual_kernel("udp", NET, own, routes, peers=None) == {
        "route 10.0.0.0/16 dev flannelN", "pump: flanneld's /peers did not answer"}


def wg_lease(ip: str, key: str, port: int | None = 51820) -> bytes:
    data = {"PublicKey": key} | ({"Port": port} if port is not None else {})
    return json.dumps({"PublicIP": ip, "BackendType": "wireguard", "BackendData": data}).encode()


def test_kernel_matches_leases_wireguard_the_device_peers_and_the_network_route() -> None:
    k2, k3 = "B" * 43 + "=", "C" * 43 + "="
    leases, _ = read_leases([("/p/subnets/10.0.5.0-24", wg_lease("198.18.0.12", k2), 1),
                             ("/p/subnets/10.0.6.0-24", wg_lease("198.18.0.11", "A" * 43 + "="), 1),
                             ("/p/subnets/10.0.7.0-24", wg_lease("198.18.0.13", k3, None), 1)], set())
    want = expected_kernel("wireguard", leases, "198.18.0.11", NET)
    assert want == {"route 10.0.0.0/16 dev flannel-wg", f"wg {k2} 198.18.0.12:51820 10.0.5.0/24",
                    f"wg {k3} 198.18.0.13:51820 10.0.7.0/24"}  # no Port: ours, as Go flannel
    dump = "\n".join(["PRIVATE\tPUBLIC\t51820\toff",
                      f"{k2}\t(none)\t198.18.0.12:51820\t10.0.5.0/24\t1700000000\t10\t20\t25",
                      f"{k3}\t(none)\t198.18.0.13:51820\t10.0.7.0/24\t0\t0\t0\t25"]) + "\n"
    routes = json.dumps([{"dst": "10.0.0.0/16", "dev": "flannel-wg"}])
    own = ipaddress.IPv4Network("10.0.6.0/24")
    assert actual_kernel("wireguard", NET, own, routes, wg=dump) == want
    stale = dump.replace(f"{k3}\t(none)\t198.18.0.13:51820\t10.0.7.0/24", f"{k3}\t(none)\t198.18.0.13:51820\t(none)")
    assert want - actual_kernel("wireguard", NET, own, routes, wg=stale) == {f"wg {k3} 198.18.0.13:51820 10.0.7.0/24"}
    assert actual_kernel("wireguard", NET, own, "[]", wg=None) == {"wg: `wg show flannel-wg dump` failed"}
    assert "PRIVATE" not in str(actual_kernel("wireguard", NET, own, routes, wg=dump))


def test_subnet_env_may_change_only_after_its_lease_ended() -> None:
    w = EnvWatch()
    assert w.update(1, "A") is None and w.update(1, "A") is None and w.update(1, None) is None
    assert "subnet.env of h1 changed while its lease lived" in (w.update(1, "B") or "")
    w.lease_lost(1)
    assert w.update(1, "B") is None  # unchanged: the allowance stays
    assert w.update(1, "C") is None
    assert w.update(1, "D") is not None


def test_resource_bounds_and_leaks_per_process() -> None:
    w = ResourceWatch(Bounds(rss_mb=100, fd_growth=10, thread_growth=2))
    assert w.sample(1, 100, 50 * 1024, 20, 5) == []
    assert w.sample(1, 100, 60 * 1024, 30, 7) == []
    problems = w.sample(1, 100, 120 * 1024, 31, 8)
    assert len(problems) == 3 and "120 MB" in problems[0] and "31 descriptors, 20" in problems[1]
    assert w.sample(1, 101, 50 * 1024, 40, 9) == []  # a restarted flanneld: its own start
    assert w.peak == {"rss_mb": 120.0, "fds": 40, "threads": 9}
