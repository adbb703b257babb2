"""The benchmark's same-run ratios to Go flannel (bench/pfbench): pure arithmetic on recorded runs,
no lab. Speed itself is measured in bench/, never asserted here."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

from pfbench import controlplane, datapath, repeats
from pfbench.report import controlplane_markdown, datapath_markdown


def _path(name: str, values: dict[str, list[float]]) -> datapath.Path:
    path = datapath.Path(name, "c", "s", "eth0", "10.0.2.2")
    for metric, vals in values.items():
        path.fig(metric).values = list(vals)
    return path


def test_datapath_rows_carry_the_ratio_to_go_flannels_path() -> None:
    paths = [_path("vxlan", {"tcp_1": [10.0, 12.0, 11.0]}), _path("udp", {"tcp_1": [6.0, 5.0, 7.0],
                                                                          "cpu_s_per_gb": [1.0, 1.0, 1.0]}),
             _path("go-udp", {"tcp_1": [1.0, 1.2, 0.8], "cpu_s_per_gb": [4.0, 4.0, 4.0]}),
             _path("wireguard", {"tcp_1": [2.0, 2.0, 2.0], "wg_go_cpu_s_per_gb": [3.0, 3.0, 3.0]})]
    rows = {(r["backend"], r["metric"]): r for r in datapath.rows(paths)}
    udp = rows[("udp", "tcp_1")]
    assert (udp["go_path"], udp["ratio_go"]) == ("go-udp", 6.0)
    assert (udp["ratio_to"], udp["ratio"]) == ("vxlan", round(6.0 / 11.0, 3))
    assert rows[("udp", "cpu_s_per_gb")]["ratio_go"] == 0.25  # CPU against Go's too
    assert "ratio_go" not in rows[("vxlan", "tcp_1")]  # no go-vxlan in this run: no made-up ratio
    assert "ratio_go" not in rows[("go-udp", "tcp_1")]
    wg = rows[("wireguard", "wg_go_cpu_s_per_gb")]
    assert (wg["median"], wg["ratio"]) == (3.0, None)  # wireguard-go's CPU, reported apart
    text = "\n".join(datapath_markdown(datapath.rows(paths)))
    assert "| udp | go-udp | 6.000 |" in text and "wireguard-go CPU s/GB" in text


def test_controlplane_rows_keep_go_apart_and_give_pyflannel_its_ratio() -> None:
    res = controlplane.Results()
    for v in (1.0, 1.2, 1.1):
        res.add("coldstart_s", 1000, v, "s")
    for v in (2.0, 2.2, 2.4):
        res.add("coldstart_s", 1000, v, "s", capped=v > 2.3, impl="go")
    res.add("idle_rss_mb", 1000, 60.0, "MB")
    rows = {(r["metric"], r.get("flanneld", "")): r for r in res.rows()}
    ours, go = rows[("coldstart_s", "")], rows[("coldstart_s", "go")]
    assert (ours["median"], go["median"], go["flanneld"]) == (1.1, 2.2, "go")
    assert ours["ratio_go"] == 0.5 and ours["ratio_go_capped"] is True
    assert "ratio_go" not in go and "ratio_go" not in rows[("idle_rss_mb", "")]
    text = "\n".join(controlplane_markdown(res.rows()))
    assert "| 1000 | pyflannel | 1.10 | 1.00 | 1.20 | s | 0.50 |" in text
    assert "| 1000 | Go flannel | 2.20 |" in text


def test_vxlan6_rows_carry_the_ratio_to_ipv4_vxlan_and_to_the_kernel_reference() -> None:
    paths = [_path("hand-vxlan", {"tcp_1": [10.0, 10.0, 10.0]}), _path("vxlan", {"tcp_1": [8.0, 8.0, 8.0]}),
             _path("vxlan6", {"tcp_1": [6.0, 7.0, 5.0], "cpu_s_per_gb": [0.1, 0.1, 0.1]})]
    rows = {(r["backend"], r["metric"]): r for r in datapath.rows(paths)}
    v6 = rows[("vxlan6", "tcp_1")]
    assert (v6["ratio_to"], v6["ratio"], v6["ratio_kernel"]) == ("vxlan", 0.75, 0.6)
    assert "ratio_kernel" not in rows[("vxlan", "tcp_1")]  # only the IPv6 path has a second reference
    assert "ratio_kernel" not in rows[("vxlan6", "cpu_s_per_gb")]  # CPU gets no ratio
    text = "\n".join(datapath_markdown(datapath.rows(paths)))
    assert "| vxlan6 | vxlan | 0.750 |" in text and "| vxlan6 | hand-vxlan | 0.600 |" in text
    assert "| vxlan6 | underlay |" not in text  # no underlay in this run: no row of dashes


def test_an_ipv6_path_leaving_by_another_device_is_named() -> None:
    route = '[{"dst":"2001:db8:42:3::2","gateway":"2001:db8:42:3::","dev":"flannel-v6.1","flags":["onlink"]}]'
    assert datapath.route_dev(route) == "flannel-v6.1"
    assert datapath.route_dev("") == "" and datapath.route_dev("not json") == ""
    assert datapath.route_dev('[{"dst":"2001:db8:42:3::2","dev":"eth0"}]') == "eth0"


def test_repeated_runs_give_the_median_of_the_runs_and_of_their_ratios() -> None:
    def run(v4: float, v6: float) -> list[dict]:
        return datapath.rows([_path("vxlan", {"tcp_1": [v4] * 3}), _path("vxlan6", {"tcp_1": [v6 - 1, v6, v6 + 1]})])

    runs = [run(10.0, 9.0), run(9.0, 9.9), run(8.0, 9.6)]  # ratios 0.9, 1.1, 1.2
    rows = {(r["backend"], r["metric"]): r for r in repeats.repeated_rows(runs)}
    v6 = rows[("vxlan6", "tcp_1")]
    assert (v6["median"], v6["min"], v6["max"], v6["runs"]) == (9.6, 8.0, 10.9, 9)
    assert v6["run_medians"] == [9.0, 9.9, 9.6] and v6["run_ratios"] == [0.9, 1.1, 1.2]
    # the median of the ratios each run measured: not the last run's (1.2), not 9.6 / 9.0 across runs
    assert (v6["ratio_to"], v6["ratio"]) == ("vxlan", 1.1)
    assert rows[("vxlan", "tcp_1")]["ratio"] is None  # its reference was not measured: still no ratio
    text = "\n".join(repeats.run_medians_markdown(list(rows.values())))
    assert ("| vxlan6 | TCP 1 stream Gbit/s | 9.00 (x0.90) | 9.90 (x1.10) | 9.60 (x1.20) | 9.60 (x1.10 of vxlan) |"
            in text)
