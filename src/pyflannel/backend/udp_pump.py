"""The UDP backend's data path: raw IPv4 packets between flannel0 and UDP/8285.

Wire format as Go flannel (FLANNEL-COMPAT §4.1): one whole IPv4 packet per datagram, no header;
TTL decremented on egress and on ingress; ICMP net-unreachable back into the TUN for a
destination no peer owns. Better than flannel: longest-prefix match, and ingress datagrams are
dropped (and counted) unless the outer source is a current peer's PublicIP and the inner source
lies in that peer's subnet.

It runs in one thread of its own, blocked in epoll, draining each fd until EAGAIN (a burst per
wake-up, PERF-NOTES). The control plane swaps in a whole immutable ``Tables`` value when leases
change; the thread reads that one attribute per packet, so it needs no lock. Counters are plain
ints read by the metrics without locking (a torn read is at worst one packet stale).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

from ..core.packet import decrement_ttl, icmp_net_unreachable, ipv4_dst, ipv4_src, is_valid_ipv4
from ..core.routes import RouteTable, SourceCheck

log = logging.getLogger(__name__)
_BURST = 256


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
        self.stats: Counter[str] = Counter()
        self._ip_cache: dict[str, int] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def set_tables(self, tables: Tables) -> None:
        self.tables = tables

    def start(self) -> None:
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
                stats["tx_drop_malformed"] += 1
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
            if not self.tables.sources.allowed(outer, ipv4_src(buf)):
                stats["rx_drop_unknown_source"] += 1
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
