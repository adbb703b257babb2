"""The metrics collector without a daemon: flannel_ready agrees with /readyz in every state, the
converge-time histogram, zero-valued series from the start, docs/metrics.md's table equal to what
is exported, and the shipped alert rules under promtool (when installed)."""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyflannel import __version__
from pyflannel.backend.udp_pump import COUNTERS
from pyflannel.converger import DURATION_BUCKETS, ConvergeStats
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.observe import HttpServer, Stats, View, readiness

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _view(stats: Stats | None = None, conv: ConvergeStats | None = None, datapath: dict[str, int] | None = None,
          expiration: float | None = 1.8e9, wg_peers: list | None = None) -> View:
    lease = Lease(ipaddress.IPv4Network("10.0.53.0/24"), LeaseAttrs(ipaddress.IPv4Address("198.18.0.11")),
                  lease_id=0 if expiration is None else 7, expiration=expiration)
    return View(stats or Stats(subnet_file_written=True), lease=lambda: lease, backend=lambda: "udp",
                peers=lambda: 2, known=lambda: 3, network=lambda: "10.0.0.0/16", compiled_pump=lambda: True,
                reconcile=lambda: conv, datapath=lambda: datapath if datapath is not None else {},
                wg_peers=lambda: wg_peers or [])


def scrape(view: View) -> dict[str, list]:
    """{family name: its samples} as Prometheus would read them."""
    status, ctype, body = HttpServer("127.0.0.1", 0, view).respond("/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}  # type: ignore[misc]


def sample(families: dict, name: str, **labels: str) -> float:
    found = [s.value for f in families.values() for s in f.samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.mark.parametrize("written", [False, True])
@pytest.mark.parametrize("store_ok", [False, True])
@pytest.mark.parametrize("cause", ["", "cannot write /run/flannel/subnet.env: Read-only file system"])
def test_flannel_ready_is_what_readyz_answers(written: bool, store_ok: bool, cause: str) -> None:
    stats = Stats(subnet_file_written=written, store_ok=store_ok, not_ready="" if written else cause)
    view = _view(stats)
    status, _, body = HttpServer("127.0.0.1", 0, view).respond("/readyz")
    families = scrape(view)
    assert sample(families, "flannel_ready") == (1.0 if status == 200 else 0.0)
    assert (status == 200) == (written and store_ok)
    assert body.decode() == readiness(stats)[1]
    assert sample(families, "flannel_subnet_file_written") == float(written)
    assert sample(families, "flannel_etcd_reachable") == float(store_ok)


def test_the_etcd_outage_answer() -> None:
    stats = Stats(subnet_file_written=True, store_ok=False)
    assert readiness(stats) == (False, "flanneld is not ready: etcd is unreachable (forwarding continues)")
    assert sample(scrape(_view(stats)), "flannel_ready") == 0.0


def test_reconcile_duration_is_a_histogram() -> None:
    conv = ConvergeStats(runs=5, last_ok=1.7e9, per_target={"kernel": 4, "pump": 2},
                         errors_per_target={"kernel": 1, "pump": 0})
    for seconds in (0.0004, 0.001, 0.003, 0.2, 42.0):  # 0.001 lies in the 0.001 bucket: "le" is <=
        conv.observe(seconds)
    conv.runs += 1  # a run under way: counted in runs, not yet in the histogram
    families = scrape(_view(conv=conv))
    hist = families["flannel_reconcile_duration_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert (buckets["0.001"], buckets["0.0025"], buckets["0.005"], buckets["0.25"], buckets["10.0"],
            buckets["+Inf"]) == (2, 2, 3, 4, 4, 5)
    assert sample(families, "flannel_reconcile_duration_seconds_count") == 5
    assert sample(families, "flannel_reconcile_duration_seconds_sum") == pytest.approx(42.2044)
    assert sample(families, "flannel_reconcile_changes_total", target="pump") == 2
    assert sample(families, "flannel_reconcile_errors_total", target="kernel") == 1
    assert sample(families, "flannel_reconcile_errors_total", target="pump") == 0
    assert sample(families, "flannel_reconcile_last_success_timestamp_seconds") == 1.7e9


def test_udp_counters_are_exported_at_zero_from_the_start() -> None:
    families = scrape(_view(datapath=dict.fromkeys(COUNTERS, 0)))
    drops = {(s.labels["direction"], s.labels["reason"]): s.value for s in families["flannel_udp_drops"].samples}
    assert drops == {(k.split("_")[0], k.split("_drop_")[1]): 0.0 for k in COUNTERS if "_drop_" in k}
    assert ("tx", "not_ipv4") in drops
    assert sample(families, "flannel_udp_packets_total", direction="tx") == 0.0
    # other backends forward in the kernel: no udp series at all
    assert not any(name.startswith("flannel_udp_") for name in scrape(_view(datapath={})))


def test_build_info_and_process_metrics() -> None:
    families = scrape(_view())
    info = families["flannel_build_info"].samples
    assert [s.labels["version"] for s in info] == [__version__]
    assert info[0].labels["compiled_pump"] == "true" and info[0].labels["python"].startswith("3.")
    assert sample(families, "process_resident_memory_bytes") > 0
    assert sample(families, "process_open_fds") > 0


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's metric table: {name: (type, labels)}."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    out = {}
    for m in re.finditer(r"^\| `(\w+)` \| (\w+) \|([^|]*)\|", text, re.M):
        out[m.group(1)] = (m.group(2), set(re.findall(r"`(\w+)`", m.group(3))))
    return out


def test_docs_list_every_metric_exported_and_no_other() -> None:
    conv = ConvergeStats(last_ok=1.0, per_target={"kernel": 0})
    wg = [{"public_key": "k", "subnet": "10.0.5.0/24", "latest_handshake": 1.0, "rx_bytes": 1, "tx_bytes": 2}]
    families = scrape(_view(conv=conv, datapath=dict.fromkeys(COUNTERS, 0), wg_peers=wg))
    exported = {}
    for f in families.values():
        name = f.name + "_total" if f.type == "counter" else f.name
        labels = set().union(*(s.labels.keys() for s in f.samples))
        exported[name] = (f.type, labels)
    assert _documented() == exported


@pytest.mark.skipif(shutil.which(os.environ.get("PROMTOOL", "promtool")) is None,
                    reason="promtool not installed (Debian's prometheus package; or PROMTOOL=/path)")
def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which(os.environ.get("PROMTOOL", "promtool"))
    assert promtool is not None
    rules = ROOT / "dist" / "prometheus"
    for args in (["check", "rules", "pyflannel-alerts.yml"], ["test", "rules", "pyflannel-alerts_test.yml"]):
        out = subprocess.run([promtool, *args], cwd=rules, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
