"""flanneld's Prometheus metrics: one collector reading the daemon's ``View`` at scrape time, on a
private registry with the process and GC collectors. Imported by ``observe.HttpServer`` only when
the server is on. ``view`` is an ``observe.View`` (not imported: observe imports this module).

Every metric, its labels and its meaning are listed in docs/metrics.md (a unit test keeps the two
equal). Series that can be known from the start are exported from the start, at zero (the udp
drop reasons, each converger target), so that ``rate()`` and alerts see them before the first
event.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import GC_COLLECTOR, CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from . import __version__

Readiness = Callable[[Any], tuple[bool, str]]


def registry_for(view: Any, readiness: Readiness) -> CollectorRegistry:
    """``readiness(stats)`` is the one that answers /readyz, so that ``flannel_ready`` agrees."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlannelCollector(view, readiness))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    registry.register(GC_COLLECTOR)  # python_gc_*: reads gc.get_stats(), shared and stateless
    return registry


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, labels=labels)


class FlannelCollector(Collector):
    def __init__(self, view: Any, readiness: Readiness) -> None:
        self.view = view
        self.readiness = readiness

    def collect(self) -> Iterator[Any]:
        v, s = self.view, self.view.stats
        build = _gauge("flannel_build_info", "pyflannel's version, the Python running it and whether the compiled "
                       "udp pump was built (always 1)", labels=["version", "python", "compiled_pump"])
        build.add_metric([__version__, platform.python_version(), str(bool(v.compiled_pump())).lower()], 1)
        yield build
        yield _gauge("flannel_ready", "1 while /readyz answers 200: subnet.env written and etcd reachable",
                     int(self.readiness(s)[0]))
        yield _gauge("flannel_subnet_file_written", "1 once subnet.env is written (Go flannel's readiness)",
                     int(s.subnet_file_written))
        yield _gauge("flannel_etcd_reachable", "1 while etcd answers flanneld's probe (every second)",
                     int(s.store_ok))
        yield from self._lease(v)
        yield _gauge("flannel_peers", "Peers programmed into the data path by the last successful converge run",
                     v.peers())
        yield _gauge("flannel_peer_leases", "Peer leases in etcd as the lease watch last saw them, programmed or not",
                     v.known())
        yield _gauge("flannel_bad_leases", "Keys under subnets/ that cannot be used as a lease (undecodable or "
                     "misshapen)", v.bad_leases())
        yield CounterMetricFamily("flannel_etcd_errors", "etcd calls that failed", value=v.etcd_errors())
        yield CounterMetricFamily("flannel_etcd_watch_relists", "Lease re-lists after a lost watch or compaction",
                                  value=s.watch_relists)
        yield from self._reconcile(v.reconcile())
        yield CounterMetricFamily("flannel_masq_repairs", "Times the iptables/nftables rules (masquerade and "
                                  "forward) had to be restored", value=v.masq_repairs())
        yield from self._datapath(v.datapath())
        yield from wireguard_metrics(v.wg_peers())

    @staticmethod
    def _lease(v: Any) -> Iterator[Any]:
        lease = v.lease()
        info = _gauge("flannel_lease_info", "Our subnet lease (1 while held)",
                      labels=["subnet", "public_ip", "backend", "reservation", "network"])
        expiry = _gauge("flannel_lease_expiry_timestamp_seconds", "When our lease expires (unix time); absent for "
                        "a reservation")
        if lease is not None:
            pub = lease.attrs.public_ipv6 if lease.attrs.public_ip.is_unspecified else lease.attrs.public_ip
            info.add_metric([str(lease.ident), str(pub), v.backend(),
                             str(lease.is_reservation).lower(), v.network()], 1)
            if lease.expiration:
                expiry.add_metric([], lease.expiration)
        yield info
        yield expiry

    @staticmethod
    def _reconcile(r: Any) -> Iterator[Any]:
        """The converger's counters (``converger.ConvergeStats``), or nothing before it exists."""
        if r is None:
            return
        changes = CounterMetricFamily("flannel_reconcile_changes", "Entries added, replaced or removed, by target "
                                      "(kernel: routes, neighbours, FDB; pump: udp peer table rows; cloud: routes)",
                                      labels=["target"])
        errors = CounterMetricFamily("flannel_reconcile_errors", "Failed applies, by target (each is retried with "
                                     "a backoff)", labels=["target"])
        for target in sorted(r.per_target.keys() | r.errors_per_target.keys()):
            changes.add_metric([target], r.per_target.get(target, 0))
            errors.add_metric([target], r.errors_per_target.get(target, 0))
        yield changes
        yield errors
        cumulative = r.cumulative()
        yield HistogramMetricFamily("flannel_reconcile_duration_seconds", "Time each converge run took (plan and "
                                    "apply, all targets)",
                                    buckets=[("+Inf" if b == float("inf") else repr(b), n) for b, n in cumulative],
                                    sum_value=r.seconds)
        last = _gauge("flannel_reconcile_last_success_timestamp_seconds", "When a converge run last succeeded "
                      "(unix time); absent before the first")
        if r.last_ok:
            last.add_metric([], r.last_ok)
        yield last

    @staticmethod
    def _datapath(counters: dict[str, int]) -> Iterator[Any]:
        """The udp pump's counters (every one from the start, zeros included); nothing on other backends."""
        if not counters:
            return
        packets = CounterMetricFamily("flannel_udp_packets", "Packets moved by the udp backend",
                                      labels=["direction"])
        nbytes = CounterMetricFamily("flannel_udp_bytes", "Bytes moved by the udp backend (whole inner IPv4 "
                                     "packets)", labels=["direction"])
        drops = CounterMetricFamily("flannel_udp_drops", "Packets dropped by the udp backend, by direction and "
                                    "reason", labels=["direction", "reason"])
        for key, value in sorted(counters.items()):
            direction, _, rest = key.partition("_")
            if rest == "packets":
                packets.add_metric([direction], value)
            elif rest == "bytes":
                nbytes.add_metric([direction], value)
            elif rest.startswith("drop_"):
                drops.add_metric([direction, rest.removeprefix("drop_")], value)
        yield from (packets, nbytes, drops)


# ---- wireguard backend: per-peer handshake and bytes (issue 17; kept apart from the rest) --------
def wireguard_metrics(peers: list[dict[str, Any]], now: float | None = None) -> Iterator[Any]:
    """Each WireGuard peer as the converger last read it (``wg show dump``, at most one full
    check old): seconds since its last handshake (absent until there was one), bytes each way."""
    if not peers:
        return
    now = time.time() if now is None else now
    labels = ["subnet", "public_key"]
    age = GaugeMetricFamily("flannel_wireguard_peer_handshake_age_seconds",
                            "Seconds since the last WireGuard handshake with the peer", labels=labels)
    rx = CounterMetricFamily("flannel_wireguard_peer_receive_bytes", "Bytes received from the peer", labels=labels)
    tx = CounterMetricFamily("flannel_wireguard_peer_transmit_bytes", "Bytes sent to the peer", labels=labels)
    for p in peers:
        key = [str(p["subnet"]), str(p["public_key"])]
        if p["latest_handshake"]:
            age.add_metric(key, max(0.0, now - float(p["latest_handshake"])))
        rx.add_metric(key, float(p["rx_bytes"]))
        tx.add_metric(key, float(p["tx_bytes"]))
    yield age
    yield rx
    yield tx
