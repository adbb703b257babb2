"""The wireguard backend end to end: 3 dual-stack hosts over wireguard-go (these kernels have no
WireGuard), each in its own mount namespace with its own /run/wireguard, in Go's default Mode
"separate": flannel-wg (IPv4, port 51820) and flannel-wg-v6 (IPv6, port 51821) on every host."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import PREFIX, Host, Lab
from pyflannel.lab.ipv6 import NETWORK6, host_ip6
from pyflannel.lab.netns import in_ns, ns_add, sh
from pyflannel.lab.pcap import all_packets

from .helpers import capture_one, ip, log_text, wait_for, wireguard_go_pids

PATTERN = "a5c3f00dd00dfeedbeef0123456789ab"  # ping -p: 16 bytes repeated through the payload

pytestmark = pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg") is None,
                                reason="needs wireguard-go and wireguard-tools (make setup installs them)")


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfwg", 3, "wireguard", subnet_max="10.0.199.0", ipv6="dual",
                  host_extra={i: ("-ip-masq",) for i in (1, 2, 3)}) as lab:
        yield lab


def wg_peers(lab: Lab, host: Host, dev: str = "flannel-wg") -> set[str]:
    return set(lab.wg(host, "show", dev, "peers").split())


def allowed_ips(lab: Lab, host: Host, dev: str) -> set[str]:
    return {n for line in lab.wg(host, "show", dev, "allowed-ips").splitlines() for n in line.split()[1:]}


def subnet6(lab: Lab, host: Host) -> ipaddress.IPv6Network:
    with open(lab.subnet_file(host)) as f:
        value = dict(line.split("=", 1) for line in f.read().splitlines())["FLANNEL_IPV6_SUBNET"]
    return ipaddress.IPv6Interface(value).network


def lease_key(lab: Lab, host: Host) -> str:
    """The dual-stack key: 10.0.53.0-24&2001:db8:42:7::-64."""
    sn, sn6 = ipaddress.IPv4Interface(host.subnet).network, subnet6(lab, host)
    return f"{PREFIX}/subnets/{sn.network_address}-{sn.prefixlen}&{sn6.network_address}-{sn6.prefixlen}"


def lease_value(lab: Lab, host: Host) -> dict:
    return json.loads(lab.etcdctl("get", lease_key(lab, host), "--print-value-only"))


def public_key(lab: Lab, host: Host) -> str:
    return str(lease_value(lab, host)["BackendData"]["PublicKey"])


def all_pairs(lab: Lab, ping) -> list[tuple[int, int]]:
    return [(a.index, b.index) for a in lab.hosts for b in lab.hosts if a is not b and not ping(a, b, 1)[0]]


def test_six_pairs_ping_over_ipv4_and_ipv6(lab: Lab) -> None:
    wait_for(lambda: all(len(wg_peers(lab, h, "flannel-wg-v6")) == 2 for h in lab.hosts), what="the IPv6 peers")
    assert all_pairs(lab, lab.ping) == []
    # the first IPv6 packets may wait for the handshakes of the new device: each pair answers in time
    wait_for(lambda: all_pairs(lab, lab.ping6) == [], timeout=15, what="all six IPv6 pairs to answer")
    for h in lab.hosts:
        text = log_text(lab, h)
        assert "using wireguard-go for flannel-wg " in text and "using wireguard-go for flannel-wg-v6" in text
        assert len(wg_peers(lab, h)) == 2
        assert h.docker_opts.endswith("--mtu=1420")
        assert len(wireguard_go_pids(h)) == 2  # one per device
        assert lab.wg(h, "show", "flannel-wg", "listen-port").strip() == "51820"
        assert lab.wg(h, "show", "flannel-wg-v6", "listen-port").strip() == "51821"
        assert "mtu 1420" in ip(h.ns, "link", "show", "flannel-wg-v6")
        assert f"{subnet6(lab, h).network_address}/128" in ip(h.ns, "-6", "addr", "show", "dev", "flannel-wg-v6")
        assert f"{NETWORK6} dev flannel-wg-v6" in ip(h.ns, "-6", "route", "show", NETWORK6)
        assert allowed_ips(lab, h, "flannel-wg-v6") == {str(subnet6(lab, o)) for o in lab.hosts if o is not h}


def test_lease_json_is_gos(lab: Lab) -> None:
    h = lab.hosts[0]
    value = lab.etcdctl("get", lease_key(lab, h), "--print-value-only").strip()
    key = public_key(lab, h)
    assert value == (f'{{"PublicIP":"{h.ip}","PublicIPv6":"{host_ip6(h.index)}","BackendType":"wireguard",'
                     f'"BackendData":{{"PublicKey":"{key}","Port":51820}},'
                     f'"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}')


def test_ipv6_crosses_the_underlay_over_ipv6_to_port_51821(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    line = capture_one(lab.underlay_ns, f"h{a.index}", f"ip6 and udp and src {host_ip6(a.index)}",
                       lambda: lab.ping6(a, b, 1))
    assert f"{host_ip6(a.index)}.51821 > {host_ip6(b.index)}.51821: UDP" in line, line


def test_ip6tables_masquerade_rules_for_the_ipv6_network(lab: Lab) -> None:
    h = lab.hosts[0]
    rules = sh(in_ns(h.ns, "ip6tables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG")).stdout
    assert f"-s {subnet6(lab, h)} -d {NETWORK6}" in rules and f"-s {NETWORK6} ! -d ff00::/8" in rules, rules


def test_underlay_carries_only_udp_51820_never_the_payload(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    path = os.path.join(lab.state_dir, "wg.pcap")
    # on host a's port of the underlay switch: br0 itself sees only what the bridge floods
    proc = subprocess.Popen(in_ns(lab.underlay_ns, "tcpdump", "-i", f"h{a.index}", "-U", "-c", "10", "-w", path,
                                  f"host {a.ip} and host {b.ip}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in proc.stderr.readline() and time.monotonic() < deadline:
            pass
        res = sh(in_ns(a.container_ns, "ping", "-n", "-c", "5", "-i", "0.2", "-s", "200", "-p", PATTERN,
                       b.container_ip), check=False)
        assert res.returncode == 0, res.stdout
        proc.wait(timeout=10)  # -c 10: 5 echo requests and 5 replies, at least
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    with open(path, "rb") as f:
        _, frames = all_packets(f.read())
    ipv4 = [fr[14:] for fr in frames if fr[12:14] == b"\x08\x00"]
    assert len(ipv4) >= 10  # 5 requests and 5 replies, at least
    for pkt in ipv4:
        ihl = (pkt[0] & 15) * 4
        assert pkt[9] == 17, "only UDP may cross the underlay between two wireguard hosts"
        assert int.from_bytes(pkt[ihl:ihl + 2], "big") == 51820 and int.from_bytes(pkt[ihl + 2:ihl + 4], "big") == 51820
    raw = b"".join(frames)
    assert bytes.fromhex(PATTERN) not in raw and bytes.fromhex(PATTERN)[:8] not in raw
    inner = ipaddress.IPv4Address(a.container_ip).packed + ipaddress.IPv4Address(b.container_ip).packed
    assert inner not in raw  # no inner IPv4 header in the clear either


def test_a_stranger_reaches_no_container(lab: Lab) -> None:
    """A WireGuard host with a key no lease carries, and a plain datagram, both aimed at host 1's
    port 51820: nothing reaches container 1."""
    target = lab.hosts[0]
    ns = f"{lab.name}-x"
    ns_add(ns)
    lab._attach(ns, "198.18.0.99", "x")
    wgdir = os.path.join(lab.state_dir, "x-wireguard")
    os.makedirs(wgdir, exist_ok=True)
    key = base64.b64encode(os.urandom(32)).decode()
    with open(os.path.join(wgdir, "key"), "w") as f:
        f.write(key)
    script = ("mkdir -p /run/wireguard && mount --bind \"$0\" /run/wireguard && wireguard-go rogue >/dev/null 2>&1 && "
              "wg set rogue private-key \"$0/key\" listen-port 51820 peer \"$1\" endpoint \"$2:51820\" "
              "allowed-ips 10.0.0.0/16 persistent-keepalive 1 && ip addr add 10.0.250.1/32 dev rogue && "
              "ip link set rogue up && ip route add 10.0.0.0/16 dev rogue")
    sh(in_ns(ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script, wgdir, public_key(lab, target),
             target.ip))
    cap = subprocess.Popen(in_ns(target.container_ns, "tcpdump", "-i", "eth0", "-U", "-n", "-l", "icmp or udp"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cap.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in cap.stderr.readline() and time.monotonic() < deadline:
            pass
        res = sh(in_ns(ns, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "1", target.container_ip), check=False)
        assert res.returncode != 0, res.stdout
        # a plaintext IPv4/UDP packet to the container inside a datagram to the WireGuard port
        inner = _udp_packet("10.0.250.1", target.container_ip, b"plaintext")
        sh(in_ns(ns, "python3", "-c", "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 "[s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 51820)) for _ in range(5)]",
                 inner.hex(), target.ip))
        time.sleep(1.0)  # give a forwarded packet the time to show (an absence cannot be waited for)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    assert "10.0.250.1" not in out, out
    assert lab.ping(lab.hosts[1], target, count=1)[0]


def _udp_packet(src: str, dst: str, payload: bytes) -> bytes:
    udp = (40000).to_bytes(2, "big") + (9).to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") + b"\0\0"
    total = 20 + len(udp) + len(payload)
    hdr = bytearray(b"\x45\x00" + total.to_bytes(2, "big") + b"\0\0\0\0\x40\x11\0\0"
                    + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed)
    s = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, 20, 2))
    s = (s & 0xFFFF) + (s >> 16)
    hdr[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(hdr) + udp + payload


def test_leases_come_and_go_by_key_not_endpoint(lab: Lab) -> None:
    """Two hosts behind one NAT address (one PublicIP, two keys): deleting one lease removes
    exactly its peer on every host; a lease with a bad PublicKey is skipped with a warning."""
    k1, k2 = (base64.b64encode(bytes([n]) * 32).decode() for n in (0x31, 0x32))
    for subnet, key in (("10.0.201.0-24", k1), ("10.0.202.0-24", k2), ("10.0.203.0-24", "not-a-key")):
        lab.etcdctl("put", f"{PREFIX}/subnets/{subnet}", json.dumps(
            {"PublicIP": "198.18.0.77", "PublicIPv6": None, "BackendType": "wireguard",
             "BackendData": {"PublicKey": key, "Port": 51820}}, separators=(",", ":")))
    try:
        wait_for(lambda: all({k1, k2} <= wg_peers(lab, h) for h in lab.hosts), what="both NATed peers everywhere")
        wait_for(lambda: all(re.search(r"skipping peer 10\.0\.203\.0/24 .*no valid PublicKey", log_text(lab, h))
                             for h in lab.hosts), what="the bad key warned about")
        lab.etcdctl("del", f"{PREFIX}/subnets/10.0.201.0-24")
        wait_for(lambda: all(k1 not in wg_peers(lab, h) for h in lab.hosts), what="peer 1 removed everywhere")
        assert all(k2 in wg_peers(lab, h) for h in lab.hosts)
    finally:
        for subnet in ("10.0.201.0-24", "10.0.202.0-24", "10.0.203.0-24"):
            lab.etcdctl("del", f"{PREFIX}/subnets/{subnet}")
    wait_for(lambda: all(len(wg_peers(lab, h)) == 2 for h in lab.hosts), what="back to the real peers")


def test_deleted_lease_removes_both_families_peers(lab: Lab) -> None:
    h1, h2, h3 = lab.hosts
    key3, lease3 = public_key(lab, h3), lease_key(lab, h3)
    lab.stop_flanneld(h3)
    lab.etcdctl("del", lease3)

    def gone() -> bool:
        return all(key3 not in wg_peers(lab, h, dev) for h in (h1, h2) for dev in ("flannel-wg", "flannel-wg-v6"))

    wait_for(gone, timeout=5, what="h3's IPv4 and IPv6 peers to go on h1 and h2")
    assert all(str(subnet6(lab, h3)) not in allowed_ips(lab, h, "flannel-wg-v6") for h in (h1, h2))
    lab.start_flanneld(h3)  # back on the same subnets (its subnet.env), with the same key
    lab.wait_subnet(h3, 20)
    wait_for(lambda: all(key3 in wg_peers(lab, h, "flannel-wg-v6") for h in (h1, h2)), what="h3 back")
    assert lease_key(lab, h3) == lease3
    wait_for(lambda: lab.ping6(h1, h3, 1)[0] and lab.ping(h1, h3, 1)[0], what="h3 reachable again")


def test_restart_loses_no_packet_and_keeps_key_subnets_and_devices(lab: Lab) -> None:
    h, other = lab.hosts[0], lab.hosts[1]
    key, pids, lease = public_key(lab, h), wireguard_go_pids(h), lease_key(lab, h)
    with open(os.path.join(lab.host_dir(h), "wgkey")) as f:
        private = f.read()
    pings = [subprocess.Popen(in_ns(other.container_ns, "ping", *family, "-n", "-i", "0.01", dst),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for family, dst in (((), h.container_ip), (("-6",), h.container_ip6))]
    try:
        time.sleep(0.5)
        lab.stop_flanneld(h)
        assert wireguard_go_pids(h) == pids, "wireguard-go must outlive flanneld"
        lab.start_flanneld(h)
        lab.wait_subnet(h, 20)
        wait_for(lambda: "keeping flannel-wg-v6 (wireguard-go) and its peers" in log_text(lab, h)
                 and log_text(lab, h).count("flannel is ready") >= 2, what="the devices kept")
        time.sleep(0.5)
    finally:
        outs = []
        for ping in pings:
            ping.send_signal(signal.SIGINT)
            outs.append(ping.communicate(timeout=10)[0])
    for out in outs:
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m is not None, out
        assert int(m.group(1)) > 50 and m.group(1) == m.group(2), out
    assert public_key(lab, h) == key and lease_key(lab, h) == lease  # both subnets kept
    with open(os.path.join(lab.host_dir(h), "wgkey")) as f:
        assert f.read() == private
    assert private not in log_text(lab, h)


def test_missing_key_file_is_made_again_and_peers_follow(lab: Lab) -> None:
    h = lab.hosts[2]
    old = public_key(lab, h)
    lab.stop_flanneld(h)
    os.unlink(os.path.join(lab.host_dir(h), "wgkey"))
    lab.start_flanneld(h)
    lab.wait_subnet(h, 20)
    wait_for(lambda: public_key(lab, h) != old, what="the new public key in the lease")
    new = public_key(lab, h)
    assert oct(os.stat(os.path.join(lab.host_dir(h), "wgkey")).st_mode & 0o777) == "0o400"
    assert lease_value(lab, h)["BackendV6Data"]["PublicKey"] == new
    wait_for(lambda: all(new in wg_peers(lab, o, dev) and old not in wg_peers(lab, o, dev) for o in lab.hosts[:2]
                         for dev in ("flannel-wg", "flannel-wg-v6")), what="the peers use the new key")
    wait_for(lambda: lab.ping(lab.hosts[0], h, count=1)[0] and lab.ping6(lab.hosts[0], h, 1)[0],
             what="ping with the new key")


def test_killed_wireguard_go_is_started_again_with_its_peers(lab: Lab) -> None:
    h = lab.hosts[1]
    for pid in wireguard_go_pids(h):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(f"{dev} is gone: creating it again with all 2 peers" in log_text(lab, h)
                         for dev in ("flannel-wg", "flannel-wg-v6")), what="both devices made again")
    wait_for(lambda: len(wireguard_go_pids(h)) == 2 and len(wg_peers(lab, h)) == 2
             and len(wg_peers(lab, h, "flannel-wg-v6")) == 2, what="wireguard-go back")
    wait_for(lambda: lab.ping(lab.hosts[0], h, count=1)[0] and lab.ping(h, lab.hosts[2], count=1)[0]
             and lab.ping6(lab.hosts[0], h, 1)[0], timeout=30, what="ping through the new devices")
