"""The results, three ways: latest.json (flat rows, bench/README.md), latest.md (tables), datapath.png.

JSON rows: one flat row per figure (bench/README.md, "Reading the results"); on top of it every data-path row also
carries ``ratio_underlay`` (the same figure over the underlay's), a control-plane row hit by a time
cap carries ``"capped": true``, and the top level has ``notes`` (what was capped, skipped or
disturbed) and ``runtime_s``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from .datapath import EXTRA_METRICS, GO_OF, KERNEL_REF, METRICS, PATHS, RATIO_TO

LABELS = {"tcp_1": "TCP 1 stream Gbit/s", "tcp_4": "TCP 4 streams Gbit/s", "udp64_pps": "UDP 64 B kpps",
          "rtt_us_p50": "RTT p50 µs", "rtt_us_p99": "RTT p99 µs", "cpu_s_per_gb": "flanneld CPU s/GB",
          "wg_go_cpu_s_per_gb": "wireguard-go CPU s/GB"}


CP_LABELS = {
    "convergence_p50_ms": "convergence p50: lease PUT -> route on a host",
    "convergence_p99_ms": "convergence p99",
    "convergence_max_ms": "convergence, every host programmed",
    "convergence_cpu_ms_per_host": "flanneld CPU per host in that window (PUT -> all programmed)",
    "convergence_idle_cpu_ms_per_host": "of which the hosts' idle rate (what they spend anyway)",
    "convergence_event_cpu_ms_per_host": "flanneld CPU per host for that one lease event, idle rate taken off",
    "convergence_idle_cpu_pct": "idle flanneld CPU per host (the quiet window before each PUT)",
    "coldstart_s": "cold start: start -> all peers' route+neigh+FDB",
    "coldstart_ready_s": "cold start: start -> subnet.env written",
    "coldstart_rss_mb": "RSS when all peers are programmed",
    "coldstart_peak_rss_mb": "peak RSS (VmHWM) by then",
    "idle_cpu_pct": "idle flanneld CPU",
    "idle_rss_mb": "idle flanneld RSS",
    "kube_coldstart_s": "kube mode cold start: start -> all peers' route+neigh+FDB (N Node objects)",
    "kube_coldstart_ready_s": "kube mode cold start: start -> subnet.env written",
    "kube_coldstart_rss_mb": "kube mode: RSS when all peers are programmed",
    "kube_coldstart_peak_rss_mb": "kube mode: peak RSS (VmHWM) by then",
    "kube_convergence_ms": "kube mode: Node POST -> route on the host",
    "burst_add_s": "burst: N leases PUT at once -> all programmed on a running host",
    "burst_add_cpu_s": "flanneld CPU for that burst",
    "burst_add_write_s": "time the N PUTs took",
    "burst_add_rss_mb": "RSS after the burst",
    "burst_del_s": "burst: the N leases deleted at once -> all removed",
    "burst_del_cpu_s": "flanneld CPU for the deletes",
    "burst_del_write_s": "time the N DELETEs took",
    "burst_snapshot_s": "the same N as a snapshot: start -> all programmed",
    "burst_snapshot_cpu_s": "flanneld CPU for the snapshot (from its start)",
    "burst_add_to_snapshot_ratio": "burst / snapshot (per run)",
}
_CP_ORDER = {m: i for i, m in enumerate(CP_LABELS)}
BURST_COLUMNS = ("burst_add_s", "burst_del_s", "burst_snapshot_s", "burst_add_to_snapshot_ratio", "burst_add_cpu_s",
                 "burst_del_cpu_s", "burst_snapshot_cpu_s", "burst_add_write_s")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    from pyflannel import __version__ as version

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1e6, 1), "kernel": platform.release(),
            "python": platform.python_version(), "iperf3": iperf.strip(), "pyflannel": version,
            "loadavg_at_start": round(os.getloadavg()[0], 2)}


def write_json(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "-"
    if metric == "udp64_pps":
        return f"{x / 1e3:.0f}"
    if metric.startswith("rtt"):
        return f"{x:.0f}"
    if metric.endswith("cpu_s_per_gb"):
        return f"{x:.3f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def controlplane_markdown(cp: list[dict]) -> list[str]:
    """The control-plane tables (markdown lines), also used by bench/merge_results.py."""
    out: list[str] = []
    if cp:
        out += ["", "## Control plane", "",
                "hosts: flanneld hosts in the cluster (convergence), or synthetic peer leases in etcd (cold start, "
                "idle, bursts). flanneld: whose ran (Go flannel's measured in the same run, with the same flags); "
                "x Go: pyflannel's median over Go flannel's.", "",
                "| figure | metric | hosts | flanneld | median | min | max | unit | x Go |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(cp, key=lambda r: (_CP_ORDER.get(r["metric"], 99), r["hosts"], r.get("flanneld", ""))):
            cap = " **(capped: a lower bound)**" if r.get("capped") else ""
            who = "Go flannel" if r.get("flanneld") == "go" else "pyflannel"
            ratio = "-" if r.get("ratio_go") is None else f"{r['ratio_go']:.2f}"
            out.append(f"| {CP_LABELS.get(r['metric'], r['metric'])}{cap} | {r['metric']} | {r['hosts']} | {who} | "
                       f"{_fmt(r['median'], '')} | {_fmt(r['min'], '')} | {_fmt(r['max'], '')} | {r['unit']} | "
                       f"{ratio} |")
    burst_rows = {(r["metric"], r["hosts"]): r for r in cp if r["metric"].startswith("burst_")}
    if burst_rows:
        out += ["", "### Lease bursts, one vxlan flanneld", "",
                "Seconds (CPU: flanneld's utime+stime), median (min-max); N: leases in the burst.", "",
                "| N | PUT burst -> programmed | DELETE burst -> removed | snapshot at start-up | burst / snapshot "
                "| CPU burst | CPU deletes | CPU snapshot | PUTs took |",
                "| --- |" + " --- |" * len(BURST_COLUMNS)]
        for n in sorted({n for _, n in burst_rows}):
            cells = []
            for k in BURST_COLUMNS:
                r = burst_rows.get((k, n))
                cells.append("-" if r is None else f"{'≥ ' if r.get('capped') else ''}{_fmt(r['median'], '')} "
                             f"({_fmt(r['min'], '')}-{_fmt(r['max'], '')})")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out += ["", "≥: capped, a lower bound (see the notes)."]
    return out


def datapath_markdown(dp: list[dict], merged: bool = False, repeats: bool = False) -> list[str]:
    """The data-path tables (markdown lines), also used by bench/merge_results.py (``repeats``: each row
    the median over several runs of the same paths, pfbench/repeats.py)."""
    out: list[str] = []
    rows = {(r["backend"], r["metric"]): r for r in dp}
    paths = [p for p in PATHS if any(b == p for b, _ in rows)]
    if paths:
        shown = [*METRICS, *(k for k in EXTRA_METRICS if any(m == k for _, m in rows))]
        out += ["", "## Data path, container to container across two hosts", "",
                "go-…: Go flannel's flanneld with the same flags; wireguard: over wireguard-go (this kernel has no "
                "WireGuard); …6: the same backend on a dual-stack lab, container to container over IPv6."
                + (" Each figure: the median over the runs of each run's median (min-max: over every round of every "
                   "run)." if repeats else ""), "",
                "| path | " + " | ".join(LABELS[k] for k in shown) + " |",
                "| --- |" + " --- |" * len(shown)]
        for p in paths:
            cells = []
            for k in shown:
                r = rows.get((p, k))
                cells.append("-" if r is None else f"{_fmt(r['median'], k)} ({_fmt(r['min'], k)}-{_fmt(r['max'], k)})")
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        ratio_metrics = [k for k in METRICS if k != "cpu_s_per_gb"]
        run = "the same run (the row's part)" if merged else "this run"
        if repeats:
            run = "each run, the median over the runs"
        out += ["", f"Ratios of medians measured in {run} (for RTT a ratio above 1 means slower):", "",
                "| path | reference | " + " | ".join(LABELS[k] for k in ratio_metrics) + " |",
                "| --- | --- |" + " --- |" * len(ratio_metrics)]
        for p in paths:
            for ref, key in ((RATIO_TO.get(p), "ratio"), (KERNEL_REF.get(p), "ratio_kernel"),
                             ("underlay", "ratio_underlay")):
                if ref is None or ref == p:
                    continue
                vals = [rows.get((p, k), {}).get(key) for k in ratio_metrics]
                if all(v is None for v in vals):
                    continue
                out.append(f"| {p} | {ref} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
        go_paths = [p for p in paths if GO_OF.get(p) in paths]
        if go_paths:
            go_metrics = list(METRICS)
            out += ["", f"pyflannel over Go flannel, medians measured in {run} (RTT and CPU: above 1 means "
                    "pyflannel is slower or costs more):", "",
                    "| path | Go flannel's | " + " | ".join(LABELS[k] for k in go_metrics) + " |",
                    "| --- | --- |" + " --- |" * len(go_metrics)]
            for p in go_paths:
                vals = [rows.get((p, k), {}).get("ratio_go") for k in go_metrics]
                out.append(f"| {p} | {GO_OF[p]} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals)
                           + " |")
    return out


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    prm = doc["params"]
    out = [f"# pyflannel benchmark, {doc['date']}", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}, "
           f"{m['iperf3']}, pyflannel {m['pyflannel']}. Suite runtime {doc['runtime_s'] / 60:.1f} min. "
           + _load(m) + "Each figure: median (min-max) of its runs: "
           f"{prm['rounds']} interleaved rounds for the data path, {prm['conv_rounds']} lease PUTs per cluster size, "
           f"{prm['cold_runs']} cold starts, {prm['idle_windows']} idle windows of {prm['idle_seconds']:g} s"
           + (f", up to {prm['burst_runs']} runs per lease burst size" if prm.get("bursts") else "") + "."
           + (f" udp pump: {prm['udp_pump']}." if "udp_pump" in prm else "")
           + (f" Go flannel: {prm['go_flannel']}." if prm.get("go_flannel") else "")]
    out += datapath_markdown(doc["datapath"])
    out += controlplane_markdown(doc["controlplane"])
    if doc["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


def _load(m: dict[str, Any]) -> str:
    """The machine's load average at the start and the end of the run (a 2-core machine: above 2, other
    work competed for the CPUs)."""
    out = f"Load average {m['loadavg_at_start']} at the start" if m.get("loadavg_at_start") is not None else ""
    if m.get("loadavg_at_end"):
        out += (", " if out else "Load average ") + f"{' / '.join(map(str, m['loadavg_at_end']))} (1 / 5 / 15 min) " \
               "at the end"
    return out + ". " if out else ""


def chart(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["backend"], r["metric"]): r for r in doc["datapath"]}
    paths = [p for p in PATHS if any(b == p for b, _ in rows)]
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    colors = {"underlay": "#9e9e9e", "hand-vxlan": "#5c6bc0", "vxlan": "#26a69a", "vxlan6": "#80deea",
              "host-gw": "#66bb6a", "udp": "#ef6c00", "wireguard": "#8e24aa", "wireguard6": "#ba68c8",
              "go-vxlan": "#80cbc4", "go-host-gw": "#a5d6a7", "go-udp": "#ffcc80"}
    for ax, metric in zip(axes.flat, METRICS, strict=True):
        scale = 1e-3 if metric == "udp64_pps" else 1.0
        names = [p for p in paths if (p, metric) in rows]
        med = [rows[(p, metric)]["median"] * scale for p in names]
        lo = [m - rows[(p, metric)]["min"] * scale for p, m in zip(names, med, strict=True)]
        hi = [rows[(p, metric)]["max"] * scale - m for p, m in zip(names, med, strict=True)]
        bars = ax.bar(names, med, yerr=[lo, hi], capsize=4, color=[colors[p] for p in names])
        for bar, p in zip(bars, names, strict=True):
            ratio = rows[(p, metric)].get("ratio")
            if ratio is not None:
                top = rows[(p, metric)]["max"] * scale  # above the whisker
                ax.annotate(f"x{ratio:.2f}", (bar.get_x() + bar.get_width() / 2, top), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
        lower_better = metric.startswith(("rtt", "cpu"))
        if lower_better:
            ax.set_yscale("log")  # udp is an order of magnitude above the kernel paths here
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * (2.0 if lower_better else 1.08))  # room for the ratio labels
        ax.set_title(LABELS[metric] + ("  (lower is better, log scale)" if lower_better else ""))
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    m = doc["machine"]
    fig.suptitle(f"pyflannel data path, container to container, {doc['date']} - {m['cores']} x {m['cpu']}, "
                 f"Linux {m['kernel']}; median of {doc['params']['rounds']}, whiskers = min-max;\n"
                 "xN = ratio to the reference measured in the same run: hand-vxlan for vxlan, host-gw and Go's, "
                 "vxlan for udp, go-udp, wireguard and vxlan6 (IPv6), wireguard for wireguard6; go-…: Go flannel",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def document(datapath: list[dict], controlplane: list[dict], notes: list[str], mach: dict[str, Any],
             params: dict[str, Any], started: float) -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": mach, "datapath": datapath,
            "controlplane": controlplane, "notes": notes, "params": params,
            "runtime_s": round(time.monotonic() - started, 1), "command": " ".join(sys.argv)}
