"""flanneld's Prometheus metrics: one collector reading the daemon's ``View`` at scrape time, on a
private registry. Imported by ``observe.HttpServer`` only when the server is on. ``view`` is an
``observe.View`` (not imported: observe imports this module)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector


def registry_for(view: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlannelCollector(view))
    return registry


class FlannelCollector(Collector):
    def __init__(self, view: Any) -> None:
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
        yield GaugeMetricFamily("flannel_bad_leases", "Keys under subnets/ that cannot be decoded",
                                value=v.bad_leases())
        yield CounterMetricFamily("flannel_etcd_errors", "etcd calls that failed", value=v.etcd_errors())
        yield CounterMetricFamily("flannel_etcd_watch_relists", "Lease re-lists after a lost watch or compaction",
                                  value=s.watch_relists)
        r = v.reconcile()
        runs, errors, changes, seconds = (r.runs, r.errors, r.changes, r.seconds) if r is not None else (0, 0, 0, 0.0)
        yield CounterMetricFamily("flannel_reconcile_errors", "Converge runs in which a target failed", value=errors)
        yield CounterMetricFamily("flannel_reconcile_changes", "Entries added, replaced or removed (kernel, udp pump "
                                  "table, cloud routes)", value=changes)
        yield SummaryMetricFamily("flannel_reconcile_duration_seconds", "Converge runs and their time",
                                  count_value=runs, sum_value=seconds)
        yield CounterMetricFamily("flannel_masq_repairs", "Times the iptables rules had to be restored",
                                  value=v.masq_repairs())
        yield from self._datapath(v.datapath())
        yield from wireguard_metrics(v.wg_peers())

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
