"""/healthz, /readyz and /metrics of a running flanneld, fetched from inside its host namespace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import Host, Lab

from .helpers import subnet_of, wait_for

FETCH = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:8081" + sys.argv[1], timeout=5)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except OSError as e:
    print(0); print(e)
"""


def get(host: Host, path: str) -> tuple[int, str]:
    out = subprocess.run(["ip", "netns", "exec", host.ns, sys.executable, "-c", FETCH, path], capture_output=True,
                         text=True, timeout=30).stdout
    code, _, body = out.partition("\n")
    return int(code or 0), body.removesuffix("\n")


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    # no config yet: the first test watches /readyz before and after writing it
    with make_lab("pfth", 2, write_config=False, extra=("-healthz-port=8081", "-healthz-ip=127.0.0.1")) as lab:
        yield lab


def test_not_ready_until_subnet_env(lab: Lab) -> None:
    h = lab.hosts[0]
    wait_for(lambda: get(h, "/healthz")[0] == 200, what="the health server")
    assert get(h, "/healthz") == (200, "flanneld is running")
    assert get(h, "/readyz") == (503, "flanneld is not ready yet")
    lab.put_config('{"Network": "10.0.0.0/16"}')
    lab.finish(20)
    assert get(h, "/readyz") == (200, "flanneld is ready")


def test_metrics(lab: Lab) -> None:
    h1, h2 = lab.hosts
    assert lab.ping(h1, h2, 3)[0]
    code, text = get(h1, "/metrics")
    assert code == 200
    assert (f'flannel_lease_info{{backend="udp",network="10.0.0.0/16",public_ip="{h1.ip}",reservation="false",'
            f'subnet="{subnet_of(h1)}"}} 1.0') in text
    assert "flannel_lease_expiry_timestamp_seconds " in text
    assert "flannel_peers 1.0" in text
    assert "flannel_ready 1.0" in text
    tx = next(line for line in text.splitlines() if line.startswith('flannel_udp_packets_total{direction="tx"}'))
    assert float(tx.split()[-1]) >= 3
    assert "flannel_reconcile_duration_seconds_count" in text
    assert "flannel_etcd_errors_total 0.0" in text
    assert get(h1, "/nope")[0] == 404


SPOOF = """
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
src, dst, target, bind = sys.argv[1:5]
icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"spoof" * 8)
icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                          socket.inet_aton(src), socket.inet_aton(dst)))
ip[10:12] = struct.pack("!H", csum(bytes(ip)))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, 0))
for _ in range(20):
    s.sendto(bytes(ip) + bytes(icmp), (target, 8285))
"""


def icmp_in(ns: str) -> int:
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True).stdout
    head, values = [line.split() for line in text.splitlines() if line.startswith("Icmp:")][:2]
    return int(values[head.index("InMsgs")])


def drops(host: Host, reason: str) -> float:
    text = get(host, "/metrics")[1]
    line = next((ln for ln in text.splitlines()
                 if ln.startswith(f'flannel_udp_drops_total{{direction="rx",reason="{reason}"}}')), "x 0")
    return float(line.split()[-1])


def test_spoofed_datagrams_are_dropped_and_counted(lab: Lab) -> None:
    """UDP/8285 from a non-member, and from a member with an inner source outside its subnet: none
    reaches the container (Go flannel delivers them all), each is counted."""
    from pyflannel.lab.netns import ns_add

    h1, h2 = lab.hosts
    ns_add(f"{lab.name}-spoof")  # removed with the lab
    lab._attach(f"{lab.name}-spoof", "198.18.0.250", "spoof")
    before_in = icmp_in(h1.container_ns)
    before_stranger, before_member = drops(h1, "unknown_source"), drops(h1, "spoofed_source")
    peer_src = subnet_of(h2).replace(".0/24", ".9")
    subprocess.run(["ip", "netns", "exec", f"{lab.name}-spoof", sys.executable, "-c", SPOOF, peer_src,
                    h1.container_ip, h1.ip, "198.18.0.250"], check=True, timeout=30)
    subprocess.run(["ip", "netns", "exec", h2.ns, sys.executable, "-c", SPOOF, "10.0.250.9", h1.container_ip, h1.ip,
                    h2.ip], check=True, timeout=30)
    # each kind under its own reason: a stranger's datagrams, and a member's forged inner sources
    wait_for(lambda: drops(h1, "unknown_source") >= before_stranger + 20
             and drops(h1, "spoofed_source") >= before_member + 20, timeout=10, what="20 + 20 counted drops")
    assert icmp_in(h1.container_ns) == before_in, "no spoofed packet reached the container"
    assert lab.ping(h2, h1, 2)[0], "real traffic from the member still flows"
