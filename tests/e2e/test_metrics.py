"""/metrics of a lab flanneld (udp): it agrees with /readyz during an etcd outage, an idle host
drops nothing (the kernel's IPv6 chatter never reaches the pump) and exports every drop reason at
zero, and the shipped Grafana dashboard and Prometheus rules read only metrics that exist."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyflannel.backend.udp_pump import COUNTERS
from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import in_ns

from .helpers import wait_for
from .promql import dashboard_exprs, metric_names, rule_exprs
from .test_health import get

HEALTHZ = ("-healthz-port=8081", "-healthz-ip=127.0.0.1")
# made by Prometheus for every target, never exported by one
SYNTHETIC = frozenset({"up"})


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pfme", 2, "udp", extra=HEALTHZ) as lab:
        yield lab


def scrape(host: Host) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of ``host``'s /metrics."""
    code, text = get(host, "/metrics")
    assert code == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text + "\n") for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_an_idle_host_drops_nothing_and_exports_every_drop_reason(lab: Lab) -> None:
    """On an idle host the kernel used to send its own IPv6 router solicitations and MLD reports
    into flannel0, counted as malformed drops (3 within seconds); flannel0 now has IPv6 off, and
    every drop reason is exported from the start, at zero."""
    h = lab.hosts[0]
    assert subprocess.run(["ip", "-n", h.ns, "-6", "addr", "show", "dev", "flannel0"], capture_output=True,
                          text=True, check=True).stdout == "", "flannel0 has no IPv6 address"
    sysctl = subprocess.run(in_ns(h.ns, "cat", "/proc/sys/net/ipv6/conf/flannel0/disable_ipv6"),
                            capture_output=True, text=True, check=True).stdout.strip()
    assert sysctl == "1"
    # the kernel solicits routers up to 3 times, 4 s apart, from when the device comes up: let 10 s pass
    started = value(scrape(h), "process_start_time_seconds")
    assert started is not None
    wait_for(lambda: time.time() - started >= 10, timeout=30, interval=0.5, what="flanneld up for 10 s")
    samples = scrape(h)
    drops = {dict(labels)["direction"] + "_drop_" + dict(labels)["reason"]: v
             for (name, labels), v in samples.items() if name == "flannel_udp_drops_total"}
    assert drops == {key: 0.0 for key in COUNTERS if "_drop_" in key}
    for direction in ("tx", "rx"):
        assert value(samples, "flannel_udp_packets_total", direction=direction) is not None
        assert value(samples, "flannel_udp_bytes_total", direction=direction) is not None


def test_metrics_agree_with_readyz_during_an_etcd_outage(lab: Lab) -> None:
    h = lab.hosts[0]

    def health() -> tuple[int, float | None, float | None, float | None]:
        samples = scrape(h)
        return (get(h, "/readyz")[0], value(samples, "flannel_ready"), value(samples, "flannel_etcd_reachable"),
                value(samples, "flannel_subnet_file_written"))

    assert health() == (200, 1.0, 1.0, 1.0)
    lab.stop_etcd()
    try:
        wait_for(lambda: get(h, "/readyz")[0] == 503, timeout=15, what="/readyz to report the outage")
        assert get(h, "/readyz") == (503, "flanneld is not ready: etcd is unreachable (forwarding continues)")
        # not ready, and why: etcd unreachable; subnet.env was written (Go flannel's readiness)
        assert health() == (503, 0.0, 0.0, 1.0)
        assert lab.ping(h, lab.hosts[1], 2)[0], "forwarding continues"
    finally:
        lab.start_etcd()
    wait_for(lambda: get(h, "/readyz")[0] == 200, timeout=15, what="ready again")
    assert health() == (200, 1.0, 1.0, 1.0)


def test_dashboard_and_alert_rules_use_only_live_metrics(lab: Lab) -> None:
    live = {name for name, _ in scrape(lab.hosts[0])}
    exprs = [*dashboard_exprs(), *rule_exprs()]
    assert len(exprs) > 30
    missing = []
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        missing += [f"{where}: {name}" for name in sorted(names - live - SYNTHETIC)]
    assert missing == [], "metrics the dashboard or the rules read that flanneld does not export"
    alerts = {where.removeprefix("rule ") for where, _ in rule_exprs()}
    assert {"FlannelLeaseExpiringSoon", "FlannelEtcdUnreachable", "FlannelPeersDrift",
            "FlannelUdpDropsRising"} <= alerts


@pytest.mark.parametrize(("expr", "names"), [
    ('flannel_ready{job=~"$job",instance=~"$instance"}', {"flannel_ready"}),
    ("histogram_quantile(0.99, sum by (instance, le) (rate(flannel_reconcile_duration_seconds_bucket"
     '{job=~"$job"}[$__rate_interval])))', {"flannel_reconcile_duration_seconds_bucket"}),
    ("(flannel_peers * on(instance, job) group_left(network) flannel_lease_info) < on(network) group_left() "
     "(count by (network) (flannel_lease_info) - 1)", {"flannel_peers", "flannel_lease_info"}),
    ('sum(rate(x_total{reason!="a,b"}[5m] offset 1h)) without (pod) / ignoring(le) y > bool 1e3',
     {"x_total", "y"}),
    ('label_values(flannel_build_info{job=~"$job", a="b"}, instance)', {"flannel_build_info"}),
    ("time() - flannel_lease_expiry_timestamp_seconds < 1800", {"flannel_lease_expiry_timestamp_seconds"}),
    ("max_over_time(up[1h:5m]) unless absent(z)", {"up", "z"}),
])
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
