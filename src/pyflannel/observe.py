"""flanneld's HTTP endpoint: flannel's ``/healthz`` and ``/readyz`` (§8), and ``/metrics``.

One small asyncio server in the daemon's loop (no thread, no web framework). Metrics are read at
scrape time from the objects that own them (conductor, registry, backend) by one collector on a
private registry, so nothing is global and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("flanneld.http")


@dataclass
class Stats:
    """Counters the daemon keeps for the metrics (plain ints: one event loop writes them)."""

    ready: bool = False
    store_ok: bool = True
    etcd_errors: int = 0
    watch_relists: int = 0
    bad_leases: int = 0
    reconcile_runs: int = 0
    reconcile_errors: int = 0
    reconcile_changes: int = 0
    reconcile_seconds: float = 0.0
    masq_repairs: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class View:
    """What the collector asks the daemon at scrape time."""

    stats: Stats
    lease: Callable[[], Any] = lambda: None  # our Lease or None
    backend: Callable[[], str] = lambda: ""
    peers: Callable[[], int] = lambda: 0
    datapath: Callable[[], dict[str, int]] = dict  # udp pump counters


class FlannelCollector(Collector):
    def __init__(self, view: View) -> None:
        self.view = view

    def collect(self) -> Iterator[Any]:
        v, s = self.view, self.view.stats
        lease = v.lease()
        info = GaugeMetricFamily("flannel_lease_info", "Our subnet lease (1 while held)",
                                 labels=["subnet", "public_ip", "backend", "reservation"])
        expiry = GaugeMetricFamily("flannel_lease_expiry_timestamp_seconds", "When our lease expires (unix time)")
        if lease is not None:
            info.add_metric([str(lease.subnet), str(lease.attrs.public_ip), v.backend(),
                             str(lease.is_reservation).lower()], 1)
            if lease.expiration:
                expiry.add_metric([], lease.expiration)
        yield info
        yield expiry
        yield GaugeMetricFamily("flannel_ready", "1 once subnet.env is written", value=int(s.ready))
        yield GaugeMetricFamily("flannel_etcd_reachable", "1 while etcd answers", value=int(s.store_ok))
        yield GaugeMetricFamily("flannel_peers", "Peer leases programmed", value=v.peers())
        yield GaugeMetricFamily("flannel_bad_leases", "Keys under subnets/ that cannot be decoded", value=s.bad_leases)
        yield CounterMetricFamily("flannel_etcd_errors", "etcd calls that failed", value=s.etcd_errors)
        yield CounterMetricFamily("flannel_etcd_watch_relists", "Lease re-lists after a lost watch or compaction",
                                  value=s.watch_relists)
        yield CounterMetricFamily("flannel_reconcile_errors", "Kernel reconciles that failed", value=s.reconcile_errors)
        yield CounterMetricFamily("flannel_reconcile_changes", "Kernel entries added, replaced or removed",
                                  value=s.reconcile_changes)
        yield SummaryMetricFamily("flannel_reconcile_duration_seconds", "Kernel reconcile runs and their time",
                                  count_value=s.reconcile_runs, sum_value=s.reconcile_seconds)
        yield CounterMetricFamily("flannel_masq_repairs", "Times the iptables rules had to be restored",
                                  value=s.masq_repairs)
        yield from self._datapath(v.datapath())

    @staticmethod
    def _datapath(counters: dict[str, int]) -> Iterator[Any]:
        packets = CounterMetricFamily("flannel_udp_packets", "Packets moved by the udp backend", labels=["direction"])
        nbytes = CounterMetricFamily("flannel_udp_bytes", "Bytes moved by the udp backend", labels=["direction"])
        drops = CounterMetricFamily("flannel_udp_drops", "Packets dropped by the udp backend",
                                    labels=["direction", "reason"])
        for key, value in sorted(counters.items()):
            direction, _, rest = key.partition("_")
            if rest == "packets":
                packets.add_metric([direction], value)
            elif rest == "bytes":
                nbytes.add_metric([direction], value)
            elif rest.startswith("drop_"):
                drops.add_metric([direction, rest.removeprefix("drop_")], value)
        yield from (packets, nbytes, drops)


class HttpServer:
    """GET /healthz, /readyz, /metrics on --healthz-ip:--healthz-port."""

    def __init__(self, host: str, port: int, view: View) -> None:
        self.host, self.port, self.view = host, port, view
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FlannelCollector(view))
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("serving /healthz /readyz /metrics on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 3)

    def respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"flanneld is running"
        if path == "/readyz":
            if self.view.stats.ready and self.view.stats.store_ok:
                return 200, "text/plain", b"flanneld is ready"
            if self.view.stats.ready:
                return 503, "text/plain", b"flanneld is not ready: etcd is unreachable (forwarding continues)"
            return 503, "text/plain", b"flanneld is not ready yet"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        return 404, "text/plain", b"not found: try /healthz, /readyz or /metrics"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self.respond(path) if method in ("GET", "HEAD") else (405, "text/plain", b"")
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (body if method == "GET" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
