"""Both udp pumps against an oracle built from ``core.packet`` / ``core.routes``, without root.

A ``socketpair(AF_UNIX, SOCK_DGRAM)`` stands in for the TUN (one read or write is one packet, as
on a TUN) and loopback UDP sockets for the peers, so the pumps' per-packet decisions (validation,
LPM, TTL, ICMP net-unreachable, source check, counters) are compared packet by packet on a few
thousand seeded random packets, good and bad. The real TUN and namespaces are in
``tests/e2e/test_udp_pump.py``; ``choose_pump`` (the env var) is tested here too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import pathlib
import random
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from pyflannel.backend import udp_pump
from pyflannel.backend.udp_pump import Tables, UdpFastPump, UdpPump, choose_pump, flatten
from pyflannel.core.errors import LocalConfigError
from pyflannel.core.packet import checksum, decrement_ttl, icmp_net_unreachable, is_valid_ipv4
from pyflannel.core.routes import RouteTable, SourceCheck

LOCAL = int(ipaddress.IPv4Address("10.0.1.0"))
PEERS = ("127.0.0.2", "127.0.0.3")
# the compiled pump as the backend runs it on 2 CPUs (also speaking virtio_net_hdr to its "TUN", as on a
# TUN with offloads), and one thread per direction without UDP GSO/GRO
IMPLEMENTATIONS = ["python", "c", "c-vnet", "c-split-plain"]
C_OPTIONS = {"c": {"split": False}, "c-vnet": {"split": False, "vnet_hdr": True},
             "c-split-plain": {"split": True, "gso": False, "gro": False}}
VNET_PLAIN = bytes(10)  # a zeroed virtio_net_hdr: a whole packet, checksum complete


def ip4(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


class Rig:
    def __init__(self, impl: str) -> None:
        self.vnet = bool(C_OPTIONS.get(impl, {}).get("vnet_hdr"))
        self.tun_test, self.tun_pump = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.tun_test, self.tun_pump):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.tun_pump.setblocking(False)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.peers = {}
        for p in PEERS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((p, 0))
            self.peers[p] = s
        if impl == "python":
            self.pump: UdpPump | UdpFastPump = UdpPump(self.tun_pump.fileno(), self.sock, LOCAL, 1472)
        else:
            self.pump = UdpFastPump(self.tun_pump.fileno(), self.sock, LOCAL, 1472, **C_OPTIONS[impl])
        rt: RouteTable[tuple[str, int]] = RouteTable([
            (ipaddress.IPv4Network("10.0.0.0/17"), (PEERS[1], self.peers[PEERS[1]].getsockname()[1])),
            (ipaddress.IPv4Network("10.0.2.0/24"), (PEERS[0], self.peers[PEERS[0]].getsockname()[1])),
            (ipaddress.IPv4Network("10.0.2.128/25"), (PEERS[1], self.peers[PEERS[1]].getsockname()[1])),
            (ipaddress.IPv4Network("10.0.3.0/24"), (PEERS[1], self.peers[PEERS[1]].getsockname()[1])),
        ])
        self.tables = Tables(rt, SourceCheck.from_routes(rt))
        self.pump.set_tables(self.tables)
        self.pump.start()

    def tun_send(self, pkt: bytes) -> None:
        """What the pump reads from its TUN."""
        self.tun_test.send(VNET_PLAIN + pkt if self.vnet else pkt)

    def tun_drain(self, timeout: float) -> list[bytes]:
        """What the pump wrote into its TUN (each, with offloads, behind a zeroed virtio_net_hdr)."""
        got = drain(self.tun_test, timeout)
        if self.vnet:
            assert all(g[:10] == VNET_PLAIN for g in got)
            return [g[10:] for g in got]
        return got

    def close(self) -> None:
        self.pump.stop()
        for s in (self.tun_test, self.tun_pump, self.sock, *self.peers.values()):
            s.close()

    def wait_total(self, n: int, timeout: float = 10.0) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = Counter(self.pump.stats)
            if sum(v for k, v in c.items() if not k.endswith("_bytes")) >= n:
                time.sleep(0.05)
                return Counter(self.pump.stats)
            time.sleep(0.01)
        raise AssertionError(f"pump handled {dict(self.pump.stats)} of {n} packets")


def drain(sock: socket.socket, timeout: float = 0.3) -> list[bytes]:
    out = []
    while True:
        r, _, _ = select.select([sock], [], [], timeout)
        if not r:
            return out
        out.append(sock.recv(70000))
        timeout = 0.05


@pytest.fixture(params=IMPLEMENTATIONS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    if request.param != "python" and not udp_pump.available():
        pytest.fail(f"the compiled pump was not built: {udp_pump.IMPORT_ERROR}")
    r = Rig(request.param)
    try:
        yield r
    finally:
        r.close()


ADDRS = ["10.0.1.7", "10.0.2.5", "10.0.2.200", "10.0.3.9", "10.0.77.1", "10.0.200.3", "10.1.0.1", "0.1.2.3",
         "127.0.0.5", "224.0.0.9", "255.255.255.255", "192.168.7.7"]


def random_packet(rnd: random.Random, src_choices: list[str], dst_choices: list[str]) -> bytes:
    """Mostly plausible IPv4, sometimes broken in one of the ways the wire can break it."""
    kind = rnd.random()
    if kind < 0.05:
        return rnd.randbytes(rnd.randrange(0, 40))
    if kind < 0.08:
        return bytes([0x60]) + rnd.randbytes(rnd.randrange(39, 200))  # IPv6
    ihl = 5 if rnd.random() < 0.8 else rnd.randrange(5, 16)
    proto = rnd.choice([1, 1, 6, 17, 17, 47])
    payload_len = rnd.choice([0, 3, 8, 20, 64, 700, 1400, 1452, 2000])
    options = rnd.randbytes((ihl - 5) * 4)
    payload = bytearray(rnd.randbytes(payload_len))
    if proto == 1 and payload_len:
        payload[0] = rnd.choice([0, 3, 5, 8, 11, 13, 17, 42])
    frag = rnd.choice([0, 0, 0, 0x2000, 0x0001, 0x4000])
    ttl = rnd.choice([0, 1, 2, 3, 64, 255])
    total = 4 * ihl + payload_len
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, total & 0xFFFF, rnd.randrange(65536), frag, ttl,
                                proto, 0, ip4(rnd.choice(src_choices)), ip4(rnd.choice(dst_choices)))) + options
    hdr[10:12] = checksum(hdr).to_bytes(2, "big")
    pkt = bytes(hdr + payload)
    if rnd.random() < 0.05:  # truncated on the way
        pkt = pkt[: rnd.randrange(0, len(pkt) + 1)]
    if rnd.random() < 0.03:
        pkt = bytes([rnd.choice([0x35, 0x44, 0x00, 0xF5])]) + pkt[1:]
    return pkt


def test_egress_matches_the_oracle(rig: Rig) -> None:
    rnd = random.Random(7)
    pkts = [random_packet(rnd, ["10.0.1.7", "10.0.1.9", *ADDRS[7:]], ADDRS) for _ in range(1500)]
    want: dict[str, list[bytes]] = {p: [] for p in PEERS}
    want_icmp: list[bytes] = []
    want_stats: Counter[str] = Counter()
    for p in pkts:
        if not is_valid_ipv4(p, len(p)):
            # a whole packet of another IP version (the kernel's IPv6) is not a broken one
            want_stats["tx_drop_not_ipv4" if p and p[0] >> 4 != 4 else "tx_drop_malformed"] += 1
            continue
        peer = rig.tables.routes.lookup(int.from_bytes(p[16:20], "big"))
        if peer is None:
            want_stats["tx_drop_no_route"] += 1
            icmp = icmp_net_unreachable(p, LOCAL)
            if icmp is not None:
                want_icmp.append(icmp)
            continue
        buf = bytearray(p)
        if not decrement_ttl(buf):
            want_stats["tx_drop_ttl"] += 1
            continue
        want[peer[0]].append(bytes(buf))
        want_stats["tx_packets"] += 1
        want_stats["tx_bytes"] += len(p)
    got: dict[str, list[bytes]] = {p: [] for p in PEERS}
    got_icmp: list[bytes] = []
    for i in range(0, len(pkts), 100):  # in slices, so that no queue on the way overflows
        for p in pkts[i : i + 100]:
            rig.tun_send(p)
        for peer, sock in rig.peers.items():
            got[peer] += drain(sock, 0.2)
        got_icmp += rig.tun_drain(0.05)
    stats = rig.wait_total(len(pkts))
    for peer, sock in rig.peers.items():
        got[peer] += drain(sock, 0.1)
    got_icmp += rig.tun_drain(0.1)
    assert stats == want_stats
    assert got == want
    assert got_icmp == want_icmp
    assert want_stats["tx_packets"] > 100 and want_icmp
    assert want_stats["tx_drop_ttl"] and want_stats["tx_drop_malformed"] and want_stats["tx_drop_not_ipv4"]


def test_ingress_matches_the_oracle(rig: Rig) -> None:
    rnd = random.Random(11)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.9", 0))
    senders = {**rig.peers, "127.0.0.9": stranger}
    dst = rig.sock.getsockname()
    want: list[bytes] = []
    want_stats: Counter[str] = Counter()
    sent = []
    for _ in range(1500):
        src = rnd.choice(list(senders))
        p = random_packet(rnd, ["10.0.2.5", "10.0.2.130", "10.0.3.9", "10.0.44.4", "10.0.1.7", "10.9.9.9"],
                          ["10.0.1.7"])
        sent.append((src, p))
        if not is_valid_ipv4(p, len(p)):
            want_stats["rx_drop_malformed"] += 1
            continue
        if not rig.tables.sources.allowed(ip4(src), int.from_bytes(p[12:16], "big")):
            peer = rig.tables.sources.is_peer(ip4(src))
            want_stats["rx_drop_spoofed_source" if peer else "rx_drop_unknown_source"] += 1
            continue
        buf = bytearray(p)
        if not decrement_ttl(buf):
            want_stats["rx_drop_ttl"] += 1
            continue
        want.append(bytes(buf))
        want_stats["rx_packets"] += 1
        want_stats["rx_bytes"] += len(p)
    got: list[bytes] = []
    try:
        for i in range(0, len(sent), 50):
            for src, p in sent[i : i + 50]:
                senders[src].sendto(p, dst)
            got += rig.tun_drain(0.1)
        stats = rig.wait_total(len(sent))
        got += rig.tun_drain(0.1)
    finally:
        stranger.close()
    assert stats == want_stats
    assert got == want
    assert want_stats["rx_packets"] > 100 and want_stats["rx_drop_unknown_source"]
    assert want_stats["rx_drop_spoofed_source"] and want_stats["rx_drop_ttl"]


# ---- the compiled pump's control surface ---------------------------------------------------------

@pytest.mark.skipif(not udp_pump.available(), reason="compiled pump not built")
def test_compiled_pump_rejects_bad_tables() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        pump = udp_pump._fastpump.Pump(a.fileno(), b.fileno(), LOCAL, 1472)
        for routes, sources in [([(1, 33, 2, 3)], []), ([(1, 24, 2, 70000)], []), ([(1, 2, 3)], []),
                                ([(2**32, 24, 1, 1)], []), (["x"], []), ([], [(1, 2)]), (5, [])]:
            with pytest.raises((TypeError, ValueError, OverflowError)):
                pump.set_tables(routes, sources)
        pump.set_tables([(ip4("10.0.2.0"), 24, ip4("127.0.0.2"), 8285)] * 3, [])  # repeated: last wins
        assert pump.features()["routes"] == 3
        assert set(pump.counters()) == set(udp_pump._fastpump.COUNTERS)
        assert udp_pump._fastpump.COUNTERS == udp_pump.COUNTERS  # both pumps count the same things
        pump.stop()  # never started: a no-op
        assert not pump.alive()
        with pytest.raises(ValueError):
            udp_pump._fastpump.Pump(-1, b.fileno(), LOCAL, 1472)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_every_counter_exists_from_the_start(impl: str) -> None:
    """At zero before the first packet, so that the metrics export every drop reason at once."""
    if impl != "python" and not udp_pump.available():
        pytest.fail(f"the compiled pump was not built: {udp_pump.IMPORT_ERROR}")
    r = Rig(impl)
    try:
        assert dict(r.pump.stats) == dict.fromkeys(udp_pump.COUNTERS, 0)
    finally:
        r.close()


def test_flatten_gives_host_order_ints() -> None:
    rt: RouteTable[tuple[str, int]] = RouteTable([(ipaddress.IPv4Network("10.0.2.0/24"), ("192.168.0.11", 8285)),
                                                  (ipaddress.IPv4Network("10.0.4.0/23"), ("192.168.0.11", 8285))])
    routes, sources = flatten(Tables(rt, SourceCheck.from_routes(rt)))
    assert sorted(routes) == [(0x0A000200, 24, 0xC0A8000B, 8285), (0x0A000400, 23, 0xC0A8000B, 8285)]
    assert sorted(sources) == [(0xC0A8000B, 0x0A000200, 0xFFFFFF00), (0xC0A8000B, 0x0A000400, 0xFFFFFE00)]


# ---- choosing the pump -----------------------------------------------------------------------------

def test_choose_pump_defaults_to_compiled_when_built() -> None:
    cls, how = choose_pump({})
    if udp_pump.available():
        assert (cls, how) == (UdpFastPump, "compiled")
    else:
        assert cls is UdpPump and how.startswith("pure python")


@pytest.mark.parametrize(("value", "want"), [("python", UdpPump), ("PY", UdpPump), ("auto", None), ("", None)])
def test_choose_pump_env(value: str, want: type | None) -> None:
    cls, how = choose_pump({"PYFLANNEL_PUMP": value})
    assert cls is (want or (UdpFastPump if udp_pump.available() else UdpPump))
    assert how.startswith("pure python" if cls is UdpPump else "compiled")


def test_choose_pump_forced_c(monkeypatch: pytest.MonkeyPatch) -> None:
    if udp_pump.available():
        assert choose_pump({"PYFLANNEL_PUMP": "c"}) == (UdpFastPump, "compiled (PYFLANNEL_PUMP=c)")
    monkeypatch.setattr(udp_pump, "_fastpump", None)
    monkeypatch.setattr(udp_pump, "IMPORT_ERROR", "No module named 'pyflannel.backend._fastpump'")
    with pytest.raises(LocalConfigError, match="compiled udp pump is not available"):
        choose_pump({"PYFLANNEL_PUMP": "c"})
    cls, how = choose_pump({})
    assert cls is UdpPump and "not available" in how


def test_choose_pump_rejects_nonsense() -> None:
    with pytest.raises(LocalConfigError, match="not one of auto, c, python"):
        choose_pump({"PYFLANNEL_PUMP": "rust"})


def test_pump_options_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFLANNEL_PUMP_OPTS", "gso=0, split=off,spin_us=25,bogus")
    assert udp_pump._env_options() == {"gso": False, "split": False, "spin_us": 25}
    if not udp_pump.available():
        return
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.ExitStack() as stack:
        for s in (a, b, udp):
            stack.callback(s.close)
        pump = UdpFastPump(a.fileno(), udp, LOCAL, 1472)
        pump.start()
        stack.callback(pump.stop)
        f = pump.features()
        assert (f["gso"], f["workers"], f["spin_us"]) == (False, 1, 25)
        assert pump.alive()



def test_compiled_pump_is_built_from_the_current_source() -> None:
    """An editable install builds _fastpump once; `make setup` reinstalls only when pyproject.toml
    changes, so an edited _fastpump.c would otherwise be tested as its stale old build."""
    if not udp_pump.available():
        pytest.skip("compiled pump not built")
    built = pathlib.Path(udp_pump._fastpump.__file__)
    if not built.with_name("_fastpump.c").exists():
        pytest.skip("installed without its source")
    for source in sorted(built.parent.glob("_*.[ch]")):  # the pump and every header it includes
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{source.name} is newer than {built.name}: rebuild with `.venv/bin/pip install -e .`")
