"""The udp lab's data-path tests once per pump: the compiled one and the pure-Python fallback.

``test_udp_lab`` runs with whatever flanneld picks by itself (the compiled pump when it was built);
here every test of it that uses the 3-host ``lab`` runs again with ``PYFLANNEL_PUMP`` forcing each
implementation for every flanneld the lab starts (restarts included), plus a bulk TCP transfer
whose content is checked end to end (large packets, bursts: the compiled pump's GSO/GRO path).
"""

from __future__ import annotations

import inspect
import os
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from pyflannel.backend import udp_pump
from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import in_ns, sh
from pyflannel.lab.pcap import all_packets

from . import test_udp_lab as _base
from .helpers import log_text, transfer, wait_for

MTU = 1472  # flannel0: the lab's 1500 underlay - 28
PUMPS = {"c": "udp pump: compiled (PYFLANNEL_PUMP=c)", "python": "udp pump: pure python (PYFLANNEL_PUMP=python)"}

# every test of the udp lab module that runs on the shared 3-host lab, collected here again
for _name, _fn in vars(_base).items():
    if _name.startswith("test_") and callable(_fn) and "lab" in inspect.signature(_fn).parameters:
        globals()[_name] = _fn


@pytest.fixture(scope="module", params=list(PUMPS))
def lab(request: pytest.FixtureRequest, make_lab) -> Iterator[Lab]:
    if request.param == "c" and not udp_pump.available():
        pytest.fail(f"the compiled pump was not built: {udp_pump.IMPORT_ERROR}")
    # PYFLANNEL_PUMP is inherited by every flanneld the lab starts, restarts included
    with make_lab("pftu", 3, subnet_max="10.0.199.0", env={"PYFLANNEL_PUMP": request.param}) as lab:
        yield lab


def test_the_forced_pump_is_the_one_running(lab: Lab) -> None:
    want = PUMPS[os.environ["PYFLANNEL_PUMP"]]
    for h in lab.hosts:
        assert want in log_text(lab, h)


def test_bulk_tcp_transfer_arrives_intact(lab: Lab) -> None:
    """20 MB container to container over flannel0 and UDP/8285, both ways."""
    transfer(lab.hosts[0], lab.hosts[1])
    transfer(lab.hosts[1], lab.hosts[0])


def test_the_two_pumps_talk_to_each_other(lab: Lab) -> None:
    """One host on the other pump: GSO trains from the compiled one (cut from TSO super-packets) reach
    the pure one (a plain TUN reader, as Go flannel) as single datagrams, and the pure one's datagrams
    reach the compiled one's GRO socket and are coalesced there; the data arrives intact (sha256)."""
    other = {"c": "python", "python": "c"}[os.environ["PYFLANNEL_PUMP"]]
    h1, h3 = lab.hosts[0], lab.hosts[2]
    lab.stop_flanneld(h3)
    lab.start_flanneld(h3, env={"PYFLANNEL_PUMP": other})
    try:
        wait_for(lambda: PUMPS[other] in log_text(lab, h3),
                 what=f"h3 on the {other} pump")
        wait_for(lambda: lab.ping(h1, h3, count=1)[0], what="ping h1 -> h3")
        compiled = h3 if other == "c" else h1  # with TUN offloads: super-packets against a plain reader
        assert "udp TUN offloads: on" in log_text(lab, compiled)
        transfer(h1, h3)
        transfer(h3, h1)
    finally:
        lab.stop_flanneld(h3)
        lab.start_flanneld(h3)
        wait_for(lambda: lab.ping(h3, h1, count=1)[0], what="h3 back on its pump")


def _checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_bulk_tcp_on_the_wire_is_whole_mtu_sized_ipv4_packets(lab: Lab) -> None:
    """A TCP transfer captured on the underlay (the sender's UDP GSO cut in software before the
    capture point): every UDP/8285 datagram is one whole IPv4 packet of at most the flannel0 MTU,
    with right IP and TCP checksums; what a Go flannel peer writes straight into its TUN. With the
    compiled pump that is the TUN-offload path (TSO super-packets cut by the pump)."""
    h1, h2 = lab.hosts[0], lab.hosts[1]
    if os.environ["PYFLANNEL_PUMP"] == "c":
        assert "udp TUN offloads: on" in log_text(lab, h1)
    path = os.path.join(lab.state_dir, "bulk.pcap")
    sh(["ip", "-n", h1.ns, "link", "set", "eth0", "gso_max_segs", "1"])
    cap = subprocess.Popen(in_ns(lab.underlay_ns, "tcpdump", "-i", "br0", "-U", "-B", "32768", "-w", path,
                                 f"udp dst port 8285 and src host {h1.ip}"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert cap.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in cap.stderr.readline() and time.monotonic() < deadline:
            pass
        transfer(h1, h2, size=4 * 1024 * 1024)
        time.sleep(0.5)
    finally:
        cap.terminate()
        cap.wait(timeout=10)
        sh(["ip", "-n", h1.ns, "link", "set", "eth0", "gso_max_segs", "65535"])
    with open(path, "rb") as f:
        linktype, frames = all_packets(f.read())
    assert linktype == 1
    tcp_sizes = []
    for frame in frames:
        outer = frame[14:]
        ihl = (outer[0] & 0xF) * 4
        udp_len = struct.unpack_from("!H", outer, ihl + 4)[0]
        inner = outer[ihl + 8:ihl + udp_len]
        assert len(inner) >= 20 and inner[0] >> 4 == 4, inner[:20].hex()
        total = struct.unpack_from("!H", inner, 2)[0]
        assert total == len(inner) <= MTU, (total, len(inner))
        assert _checksum(inner[:(inner[0] & 0xF) * 4]) == 0, "IP header checksum"
        if inner[9] == 6:
            iihl = (inner[0] & 0xF) * 4
            seg = inner[iihl:]
            assert _checksum(inner[12:20] + struct.pack("!BBH", 0, 6, len(seg)) + seg) == 0, "TCP checksum"
            tcp_sizes.append(len(inner))
    assert len(tcp_sizes) > 2000, f"only {len(tcp_sizes)} TCP datagrams captured"
    assert max(tcp_sizes) == MTU  # full-size segments: the MSS fills the MTU
