"""Container-to-container throughput per data path, next to the underlay and kernel VXLAN, in one run.

    sudo .venv/bin/python bench/throughput.py [--seconds 5] [--runs 3] [--paths udp-c,udp-python,vxlan,host-gw]
                                              [--no-pps] [--json out.json]

A 2-host lab is built per path (``udp-c`` and ``udp-python`` are the udp backend with
``PYFLANNEL_PUMP`` forcing the compiled or the pure-Python pump; any other name is a backend), all
of them up at once so that the rounds interleave: every round measures every path once, so a
noisy neighbour hits all paths alike. Per path, container to container: iperf3 with one TCP
stream (Gbit/s); ping round trips (200 pings 10 ms apart, average); with pps on, 64-byte UDP
datagrams sent flat out (``iperf3 -u -l 64 -b 0``, packets per second that arrived; on a small VM
that is bounded by the sender, which pays the whole forwarding path per packet: compare with the
underlay's figure); and the CPU seconds both flanneld processes spent per GB moved. The underlay
(host to host over the veth, no overlay) is measured in the first lab. Prints a Markdown table
of medians (min-max) with ratios to kernel vxlan and to the underlay. Not part of `make test`:
speed is measured, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field

from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import in_ns, sh

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def iperf(server_ns: str, client_ns: str, dst: str, seconds: int, *extra: str) -> dict:
    srv = subprocess.Popen(in_ns(server_ns, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = sh(in_ns(client_ns, "iperf3", "-c", dst, "-t", str(seconds), "-J", *extra), timeout=seconds + 30).stdout
        return json.loads(out)["end"]
    finally:
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def ping_ms(ns: str, dst: str, count: int = 200) -> float:
    """Average round trip of ``count`` pings 10 ms apart, in ms."""
    out = sh(in_ns(ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.01", dst), timeout=count * 0.05 + 30).stdout
    line = next(ln for ln in out.splitlines() if "min/avg/max" in ln)
    return float(line.split("=", 1)[1].split("/")[1])


@dataclass
class Path:
    name: str
    lab: Lab
    tcp: list[float] = field(default_factory=list)  # Gbit/s
    pps: list[float] = field(default_factory=list)  # kpps received
    cpu_per_gb: list[float] = field(default_factory=list)  # flanneld CPU s per GB (TCP test)
    rtt: list[float] = field(default_factory=list)  # ping average round trip, ms

    def flanneld_cpu(self) -> float:
        return sum(cpu_seconds(self.lab.flanneld_pid(h)) for h in self.lab.hosts)

    def measure(self, seconds: int, pps: bool) -> None:
        h1, h2 = self.lab.hosts
        self.rtt.append(ping_ms(h1.container_ns, h2.container_ip))
        cpu0 = self.flanneld_cpu()
        end = iperf(h2.container_ns, h1.container_ns, h2.container_ip, seconds)
        cpu = self.flanneld_cpu() - cpu0
        self.tcp.append(end["sum_received"]["bits_per_second"] / 1e9)
        self.cpu_per_gb.append(cpu / max(end["sum_received"]["bytes"] / 1e9, 1e-9))
        if pps:
            end = iperf(h2.container_ns, h1.container_ns, h2.container_ip, seconds, "-u", "-l", "64", "-b", "0")
            rcv = end["sum_received"] if "sum_received" in end else end["sum"]
            self.pps.append((rcv["packets"] - rcv["lost_packets"]) / rcv["seconds"] / 1e3)


def build(name: str, index: int, env_pump: str | None) -> Lab:
    """``udp-c`` / ``udp-python``: the udp backend with that pump forced; ``udp``: whatever
    PYFLANNEL_PUMP says (auto when unset); anything else: that backend."""
    backend, _, pump = name.partition("-")
    if backend == "udp" and pump:
        os.environ["PYFLANNEL_PUMP"] = pump  # inherited by this lab's flanneld processes
    elif env_pump is None:
        os.environ.pop("PYFLANNEL_PUMP", None)
    else:
        os.environ["PYFLANNEL_PUMP"] = env_pump
    lab = Lab(name=f"pfbt{index}", hosts_n=2, backend="udp" if backend == "udp" else name)
    lab.up()
    return lab


def fmt(xs: list[float], digits: int = 2) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--paths", "--backends", dest="paths", default="udp-c,udp-python,vxlan,host-gw")
    ap.add_argument("--no-pps", dest="pps", action="store_false", help="skip the 64-byte UDP packet-rate test")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    saved = os.environ.get("PYFLANNEL_PUMP")
    paths: list[Path] = []
    underlay = Path("underlay", Lab(name="unused"))
    try:
        for i, name in enumerate(names):
            paths.append(Path(name, build(name, i, saved)))
        for _ in range(args.runs):
            h1, h2 = paths[0].lab.hosts
            end = iperf(h2.ns, h1.ns, h2.ip, args.seconds)
            underlay.tcp.append(end["sum_received"]["bits_per_second"] / 1e9)
            underlay.rtt.append(ping_ms(h1.ns, h2.ip))
            if args.pps:
                end = iperf(h2.ns, h1.ns, h2.ip, args.seconds, "-u", "-l", "64", "-b", "0")
                rcv = end["sum_received"] if "sum_received" in end else end["sum"]
                underlay.pps.append((rcv["packets"] - rcv["lost_packets"]) / rcv["seconds"] / 1e3)
            for p in paths:
                p.measure(args.seconds, args.pps)
    finally:
        for p in paths:
            p.lab.down()
        if saved is None:
            os.environ.pop("PYFLANNEL_PUMP", None)
        else:
            os.environ["PYFLANNEL_PUMP"] = saved
    ref = next((statistics.median(p.tcp) for p in paths if p.name == "vxlan"), None)
    ref_pps = next((statistics.median(p.pps) for p in paths if p.name == "vxlan" and p.pps), None)
    base = statistics.median(underlay.tcp)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {args.runs} rounds of {args.seconds} s, "
          "medians (min-max)\n")
    print("| path | TCP 1 stream Gbit/s | ratio to vxlan | ratio to underlay | UDP 64 B kpps | pps ratio to vxlan "
          "| ping avg ms | flanneld CPU s/GB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    upps = statistics.median(underlay.pps) if underlay.pps else None
    print(f"| underlay | {fmt(underlay.tcp)} | {base / ref if ref else float('nan'):.3f} | 1.000 "
          f"| {fmt(underlay.pps, 0)} | {upps / ref_pps if upps and ref_pps else float('nan'):.3f} "
          f"| {fmt(underlay.rtt, 3)} | - |")
    for p in paths:
        med = statistics.median(p.tcp)
        pps = statistics.median(p.pps) if p.pps else None
        print(f"| {p.name} | {fmt(p.tcp)} | {med / ref if ref else float('nan'):.3f} | {med / base:.3f} "
              f"| {fmt(p.pps, 0)} | {pps / ref_pps if pps and ref_pps else float('nan'):.3f} "
              f"| {fmt(p.rtt, 3)} | {fmt(p.cpu_per_gb, 1)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count(), "seconds": args.seconds,
                       "underlay": {"tcp_gbps": underlay.tcp, "udp64_kpps": underlay.pps, "ping_ms": underlay.rtt},
                       **{p.name: {"tcp_gbps": p.tcp, "udp64_kpps": p.pps, "ping_ms": p.rtt,
                                   "flanneld_cpu_s_per_gb": p.cpu_per_gb}
                          for p in paths}}, f, indent=2)


if __name__ == "__main__":
    main()
