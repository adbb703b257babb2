"""The UDP backend's data path: raw IPv4 packets between flannel0 and UDP/8285.

Wire format as Go flannel (docs/compatibility.md#udp): one whole IPv4 packet per datagram, no header;
TTL decremented on egress and on ingress; ICMP net-unreachable back into the TUN for a
destination no peer owns. Better than flannel: longest-prefix match, and ingress datagrams are
dropped (and counted) unless the outer source is a current peer's PublicIP and the inner source
lies in that peer's subnet.

It runs in one thread of its own, blocked in epoll, draining each fd until EAGAIN (a burst per
wake-up, docs/performance.md#udp-pump). The control plane swaps in a whole immutable ``Tables`` value when leases
change; the thread reads that one attribute per packet, so it needs no lock. Counters are plain
ints read by the metrics without locking (a torn read is at worst one packet stale); every one of
``COUNTERS`` exists from the start, at zero (docs/metrics.md). A packet from flannel0 that is not
IPv4 at all (IPv6: the udp backend carries IPv4 only) is counted as ``tx_drop_not_ipv4``, not as
malformed.

``UdpPump`` is the reference implementation and the fallback. ``UdpFastPump`` is its compiled
twin: the same API, decisions and counters (tested side by side), with the packet loop in C
threads that never take the GIL (``_fastpump.c``: bursts of TUN reads, sendmmsg/recvmmsg, UDP
GSO/GRO, and TUN offloads: TSO super-packets cut into wire packets, TCP segments coalesced into
one TUN write). Python keeps the control there too: ``set_tables`` turns the immutable ``Tables`` into
plain int tuples and the C side swaps in a complete new table; ``stats`` reads the C counters into
the same keys. ``choose_pump`` picks one for the backend: the compiled pump when it was built,
else this one; ``PYFLANNEL_PUMP=python`` or ``=c`` forces one (``c`` fails loudly without it).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import LocalConfigError
from ..core.packet import decrement_ttl, icmp_net_unreachable, ipv4_dst, ipv4_src, is_valid_ipv4
from ..core.plan import PumpPlan
from ..core.routes import RouteTable, SourceCheck

try:
    from . import _fastpump
except ImportError as err:  # built without a C compiler, or an unsupported platform
    _fastpump = None  # type: ignore[assignment]
    IMPORT_ERROR: str | None = str(err)
else:
    IMPORT_ERROR = None

log = logging.getLogger(__name__)
_BURST = 256
ENV_VAR = "PYFLANNEL_PUMP"

# every counter of both pumps, in the compiled pump's order (its COUNTERS, tested equal):
# <direction>_packets, <direction>_bytes and <direction>_drop_<reason>
COUNTERS = (
    "tx_packets", "tx_bytes", "tx_drop_no_route", "tx_drop_ttl", "tx_drop_malformed", "tx_drop_send_error",
    "tx_drop_not_ipv4",
    "rx_packets", "rx_bytes", "rx_drop_malformed", "rx_drop_unknown_source", "rx_drop_ttl", "rx_drop_tun_write",
    "rx_drop_recv_error", "rx_drop_spoofed_source",
)


@dataclass(frozen=True)
class Tables:
    routes: RouteTable[tuple[str, int]] = field(default_factory=lambda: RouteTable(()))
    sources: SourceCheck = field(default_factory=lambda: SourceCheck({}))


class UdpPump:
    def __init__(self, tun_fd: int, sock: socket.socket, local_ip: int, mtu: int) -> None:
        self.tun_fd = tun_fd
        self.sock = sock
        self.local_ip = local_ip
        self.mtu = mtu
        self.tables = Tables()
        self.stats: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._ip_cache: dict[str, int] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def set_tables(self, tables: Tables) -> None:
        self.tables = tables

    def set_plan(self, plan: PumpPlan) -> None:
        self.tables = tables_of(plan)

    def start(self) -> None:
        # the loop drains each fd until EAGAIN: both must be non-blocking (the backend's are)
        os.set_blocking(self.tun_fd, False)
        self.sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="udp-pump", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        ep = select.epoll()
        tun, udp = self.tun_fd, self.sock.fileno()
        ep.register(tun, select.EPOLLIN)
        ep.register(udp, select.EPOLLIN)
        ep.register(self._stop_r, select.EPOLLIN)
        tun_buf, udp_buf = bytearray(65536), bytearray(65536)
        try:
            while True:
                for fd, _ in ep.poll():
                    if fd == self._stop_r:
                        return
                    if fd == tun:
                        self._drain_tun(tun_buf)
                    else:
                        self._drain_udp(udp_buf)
        except Exception:
            log.exception("udp pump crashed")
            raise
        finally:
            ep.close()

    def _drain_tun(self, buf: bytearray) -> None:
        """flannel0 -> peers: look up, decrement TTL, send."""
        mv = memoryview(buf)
        stats, sock, tun = self.stats, self.sock, self.tun_fd
        for _ in range(_BURST):
            try:
                n = os.readv(tun, [buf])
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                raise
            if not is_valid_ipv4(buf, n):
                stats["tx_drop_not_ipv4" if n and buf[0] >> 4 != 4 else "tx_drop_malformed"] += 1
                continue
            peer = self.tables.routes.lookup(ipv4_dst(buf))
            if peer is None:
                stats["tx_drop_no_route"] += 1
                icmp = icmp_net_unreachable(mv[:n], self.local_ip, n)
                if icmp is not None:
                    self._write_tun(icmp)
                continue
            if not decrement_ttl(buf):
                stats["tx_drop_ttl"] += 1
                continue
            try:
                sock.sendto(mv[:n], peer)
            except OSError:
                stats["tx_drop_send_error"] += 1
                continue
            stats["tx_packets"] += 1
            stats["tx_bytes"] += n

    def _drain_udp(self, buf: bytearray) -> None:
        """peers -> flannel0: check the sender, decrement TTL, write."""
        mv = memoryview(buf)
        stats, sock, cache = self.stats, self.sock, self._ip_cache
        for _ in range(_BURST):
            try:
                n, (src, _port) = sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                stats["rx_drop_recv_error"] += 1
                return
            if not is_valid_ipv4(buf, n):
                stats["rx_drop_malformed"] += 1
                continue
            outer = cache.get(src)
            if outer is None:
                outer = cache[src] = int.from_bytes(socket.inet_aton(src), "big")
                if len(cache) > 4096:
                    cache.clear()
            sources = self.tables.sources
            if not sources.allowed(outer, ipv4_src(buf)):  # a stranger, or a peer's forged inner source
                stats["rx_drop_spoofed_source" if sources.is_peer(outer) else "rx_drop_unknown_source"] += 1
                continue
            if not decrement_ttl(buf):
                stats["rx_drop_ttl"] += 1
                continue
            if self._write_tun(mv[:n]):
                stats["rx_packets"] += 1
                stats["rx_bytes"] += n

    def _write_tun(self, pkt: bytes | memoryview) -> bool:
        try:
            os.write(self.tun_fd, pkt)
            return True
        except OSError:
            self.stats["rx_drop_tun_write"] += 1
            return False


# ---- the compiled pump -------------------------------------------------------------------------

def available() -> bool:
    return _fastpump is not None


def _ip_int(ip: Any) -> int:
    return int(ipaddress.IPv4Address(ip))


def flatten(tables: Tables) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int]]]:
    """``Tables`` as the C pump takes them: routes ``(net, prefixlen, peer_ip, port)`` and sources
    ``(peer_ip, net, mask)``, every address a host-order int."""
    routes = [(int(net.network_address), net.prefixlen, _ip_int(peer[0]), int(peer[1])) for net, peer in tables.routes]
    return routes, tables.sources.rows()


def tables_of(plan: PumpPlan) -> Tables:
    """A ``PumpPlan`` as the pure-Python pump's ``Tables``."""
    routes: RouteTable[tuple[str, int]] = RouteTable(
        (ipaddress.IPv4Network((net, plen)), (str(ipaddress.IPv4Address(ip)), port))
        for net, plen, ip, port in plan.routes)
    return Tables(routes, SourceCheck.from_routes(routes))


class UdpFastPump:
    """Drop-in for ``UdpPump`` with the per-packet loop in C (``pyflannel.backend._fastpump``).

    ``vnet_hdr=True`` when ``tun_fd`` was opened by ``kernel.tun.open_tun_offload`` (IFF_VNET_HDR,
    TSO4 + checksum offloads): TCP super-packets read from the TUN are cut into MTU-sized packets in C
    and in-order TCP segments from a peer are coalesced into one TUN write; the wire is unchanged.

    Options (tests and the benchmark use them; the backend takes the defaults): ``gso``/``gro``
    send runs of equal-size packets to one peer as one UDP_SEGMENT message and receive coalesced
    trains (the wire still carries one datagram per packet); ``split`` runs one thread per
    direction (the default from 4 CPUs up; on 2 CPUs one thread serving both directions measured
    faster: the receiver's ACKs are read by the thread already awake, no wake-up per batch);
    ``spin_us`` polls that long before sleeping (latency for CPU).
    """

    def __init__(self, tun_fd: int, sock: socket.socket, local_ip: int, mtu: int, *, gso: bool | None = None,
                 gro: bool | None = None, split: bool | None = None, spin_us: int | None = None,
                 vnet_hdr: bool = False) -> None:
        if _fastpump is None:
            raise RuntimeError(f"the compiled udp pump is not available: {IMPORT_ERROR}")
        self.tun_fd = tun_fd
        self.sock = sock
        self.local_ip = local_ip
        self.mtu = mtu
        self.tables = Tables()
        opts = _env_options()
        self._pump = _fastpump.Pump(
            tun_fd, sock.fileno(), local_ip, mtu,
            gso=opts.get("gso", True) if gso is None else gso,
            gro=opts.get("gro", True) if gro is None else gro,
            split=opts.get("split", default_split()) if split is None else split,
            spin_us=int(opts.get("spin_us", 0)) if spin_us is None else spin_us,
            vnet_hdr=vnet_hdr,
        )
        self.vnet_hdr = vnet_hdr
        self._reported = False

    def set_tables(self, tables: Tables) -> None:
        routes, sources = flatten(tables)
        self._pump.set_tables(routes, sources)
        self.tables = tables

    def set_plan(self, plan: PumpPlan) -> None:
        """The converger's path: the plan's int rows go to C as they are."""
        self._pump.set_tables(list(plan.routes), plan.sources())

    def start(self) -> None:
        self._pump.start()

    def alive(self) -> bool:
        ok = bool(self._pump.alive())
        if not ok and not self._reported:
            err = self._pump.error()
            if err:
                self._reported = True
                log.error("udp pump crashed: %s", err)
        return ok

    def stop(self) -> None:
        self._pump.stop()

    def error(self) -> str | None:
        return self._pump.error()

    def features(self) -> dict[str, Any]:
        """GSO/GRO and TUN offloads (``vnet_hdr``) in use, workers, and call counters (how well the
        batching works: TUN reads and writes, super-packets cut and segments coalesced)."""
        return dict(self._pump.features())

    @property
    def stats(self) -> Counter[str]:
        """The same keys as ``UdpPump.stats``: every one of ``COUNTERS``, zeros included."""
        return Counter(self._pump.counters())


def default_split() -> bool:
    return len(os.sched_getaffinity(0)) >= 4


def offload_wanted() -> bool:
    """TUN offloads for the compiled pump: on unless ``PYFLANNEL_PUMP_OPTS`` says ``offload=0``."""
    return bool(_env_options().get("offload", True))


def _env_options() -> dict[str, Any]:
    """Tuning from ``PYFLANNEL_PUMP_OPTS`` ("gso=0,gro=1,split=1,spin_us=50,offload=0"), for benchmarks."""
    out: dict[str, Any] = {}
    for item in os.environ.get("PYFLANNEL_PUMP_OPTS", "").split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key in ("gso", "gro", "split", "offload"):
            out[key] = value.strip().lower() not in ("0", "false", "no", "off")
        elif key == "spin_us" and value.strip().isdigit():
            out[key] = int(value)
        else:
            log.warning("ignoring PYFLANNEL_PUMP_OPTS item %r", item)
    return out


def choose_pump(env: Mapping[str, str] | None = None) -> tuple[type[UdpPump] | type[UdpFastPump], str]:
    """(pump class, what to log): compiled when available, else pure Python; ``PYFLANNEL_PUMP``
    (``c``/``compiled``, ``python``/``py``, or ``auto``) forces one."""
    want = (os.environ if env is None else env).get(ENV_VAR, "auto").strip().lower() or "auto"
    if want in ("python", "py", "pure"):
        return UdpPump, f"pure python ({ENV_VAR}={want})"
    if want in ("c", "compiled", "fast"):
        if _fastpump is None:
            raise LocalConfigError(f"{ENV_VAR}={want} but the compiled udp pump is not available ({IMPORT_ERROR}); "
                                   "reinstall pyflannel where a C compiler and the Python headers are present, "
                                   f"or unset {ENV_VAR}")
        return UdpFastPump, f"compiled ({ENV_VAR}={want})"
    if want != "auto":
        raise LocalConfigError(f"{ENV_VAR}={want!r} is not one of auto, c, python")
    if _fastpump is None:
        return UdpPump, f"pure python (compiled pump not available: {IMPORT_ERROR})"
    return UdpFastPump, "compiled"
