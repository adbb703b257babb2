"""Data-path figures, container to container across two hosts, for every path in one run.

Paths, each in its own lab (all up at once, so the rounds interleave and drift hits all alike):

    underlay     host to host over the veth underlay (pfb-hand)     the floor of every ratio
    hand-vxlan   kernel VXLAN typed in with ip/bridge (pfb-hand)    reference of vxlan and host-gw
    vxlan        flanneld, vxlan backend (pfb-vxlan)
    vxlan6       the same backend on a dual-stack lab (pfb-vxlan6), container to container over IPv6:
                 flannel-v6.1 over the IPv6 underlay                reference: vxlan (IPv4, same
                 rounds); also against hand-vxlan, the kernel reference (``ratio_kernel``)
    host-gw      flanneld, host-gw backend (pfb-hostgw)
    udp          flanneld, udp backend: TUN + the pump (pfb-udp)   reference: vxlan
    wireguard    flanneld, wireguard backend over wireguard-go (pfb-wg)   reference: vxlan
    wireguard6   the same on a dual-stack lab (pfb-wg6), container to container over IPv6:
                 flannel-wg-v6 over the IPv6 underlay               reference: wireguard
    go-vxlan, go-host-gw, go-udp
                 Go flannel's flanneld (the original, lab/goflannel.py) with the same flags
                 (pfb-govxlan, pfb-gohostgw, pfb-goudp): each pyflannel path's anchor (issue 14)

Per round and path: iperf3 one TCP stream and four (Gbit/s received), iperf3 UDP with 64-byte
payloads at full speed (packets/s delivered = sent - lost), ping -i 0.001 (RTT p50/p99 in µs),
and the CPU time of both hosts' flanneld during the one-stream test divided by the bytes the
receiving container got (s/GB); on wireguard also wireguard-go's CPU the same way, apart (it is
not flanneld's child: it runs in its own session). Every tool runs inside the lab namespaces, toward lab addresses.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyflannel.lab.bench_hosts import LightLab
from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import LabError, in_ns, ns_pids, sh

from .common import BenchError, Figure, cpu_seconds, log, percentile

PATHS = ("underlay", "hand-vxlan", "vxlan", "vxlan6", "host-gw", "udp", "wireguard", "wireguard6", "go-vxlan",
         "go-host-gw", "go-udp")
RATIO_TO = {"vxlan": "hand-vxlan", "vxlan6": "vxlan", "host-gw": "hand-vxlan", "udp": "vxlan", "wireguard": "vxlan",
            "wireguard6": "wireguard", "go-vxlan": "hand-vxlan", "go-host-gw": "hand-vxlan", "go-udp": "vxlan"}
KERNEL_REF = {"vxlan6": "hand-vxlan"}  # a second reference, on the row as ``ratio_kernel``
GO_OF = {"vxlan": "go-vxlan", "host-gw": "go-host-gw", "udp": "go-udp"}  # pyflannel path -> Go flannel's
METRICS = {  # name -> unit; higher is better for the first three (the chart's six panels)
    "tcp_1": "Gbit/s", "tcp_4": "Gbit/s", "udp64_pps": "packets/s",
    "rtt_us_p50": "µs", "rtt_us_p99": "µs", "cpu_s_per_gb": "s/GB",
}
EXTRA_METRICS = {"wg_go_cpu_s_per_gb": "s/GB"}  # wireguard-go's own CPU, apart from flanneld's
NO_RATIO = ("cpu_s_per_gb", "wg_go_cpu_s_per_gb")
LABS = {  # path -> (lab name, backend, runs Go flannel)
    "vxlan": ("pfb-vxlan", "vxlan", False), "vxlan6": ("pfb-vxlan6", "vxlan", False),
    "host-gw": ("pfb-hostgw", "host-gw", False),
    "udp": ("pfb-udp", "udp", False), "wireguard": ("pfb-wg", "wireguard", False),
    "wireguard6": ("pfb-wg6", "wireguard", False),
    "go-vxlan": ("pfb-govxlan", "vxlan", True), "go-host-gw": ("pfb-gohostgw", "host-gw", True),
    "go-udp": ("pfb-goudp", "udp", True),
}
IPV6_PATHS = ("vxlan6", "wireguard6")  # dual-stack labs, measured between the containers' IPv6 addresses
DEV6 = {"vxlan6": "flannel-v6.1"}  # the device its IPv6 traffic must leave by (checked before measuring)
PING_COUNT = 2000


@dataclass
class Path:
    name: str
    client_ns: str
    server_ns: str
    server_dev: str
    dst: str
    flanneld_pids: list[int | None] = field(default_factory=list)
    helper_pids: list[int] = field(default_factory=list)  # wireguard-go on both hosts
    figures: dict[str, Figure] = field(default_factory=dict)

    def fig(self, metric: str) -> Figure:
        return self.figures.setdefault(metric, Figure())


def build(notes: list[str], info: dict[str, str], wanted: tuple[str, ...] = PATHS) -> list[Path]:
    """Bring up every lab of the ``wanted`` paths and check each path with a ping; a broken path is
    noted and left out. ``info`` gets which udp pump flanneld chose (from its log)."""
    paths: list[Path] = []
    if "underlay" in wanted or "hand-vxlan" in wanted:
        hand = LightLab(name="pfb-hand", hosts_n=2)
        hand.up_hand()
        hand.check_hand()
        h1, h2 = hand.hosts
        if "underlay" in wanted:
            paths.append(Path("underlay", h1.ns, h2.ns, "eth0", h2.ip))
        if "hand-vxlan" in wanted:
            paths.append(Path("hand-vxlan", h1.container_ns, h2.container_ns, "eth0", h2.container_ip))
    for path_name, (name, backend, go) in LABS.items():
        if path_name not in wanted:
            continue
        who = "Go flannel's flanneld" if go else "flanneld"
        log(f"data path: bringing up {name} ({backend}, 2 hosts, {who})")
        v6 = path_name in IPV6_PATHS
        lab = Lab(name=name, hosts_n=2, backend=backend, go_hosts=(1, 2) if go else (), ipv6="dual" if v6 else "")
        try:
            lab.up()
        except LabError as err:
            notes.append(f"{path_name}: the lab did not come up, no figures for it: {str(err)[-600:]}")
            log(notes[-1])
            continue
        a, b = lab.hosts
        if path_name == "udp":
            info["udp_pump"] = _pump_line(lab.log_tail(a, 400))
        dst = b.container_ip6 if v6 else b.container_ip
        ok, out = lab.ping6(a, b, count=3) if v6 else lab.ping(a, b, count=3)
        if not ok:
            notes.append(f"{path_name}: containers {a.container_ns} -> {dst} cannot ping each other; "
                         f"no figures for it. ping said: {out.strip()[-300:]}")
            log(notes[-1])
            continue
        wrong = _wrong_device(path_name, a.ns, dst)
        if wrong:
            notes.append(wrong)
            log(notes[-1])
            continue
        paths.append(Path(path_name, a.container_ns, b.container_ns, "eth0", dst,
                          [lab.flanneld_pid(a), lab.flanneld_pid(b)],
                          [p for h in (a, b) for p in ns_pids(h.ns) if _comm(p) == "wireguard-go"]))
    return paths


def _wrong_device(path_name: str, host_ns: str, dst: str) -> str:
    """Why the path is not what it claims ("" when it is): its IPv6 traffic must leave the sending
    host by DEV6's device (flannel-v6.1 for vxlan6), not by some other route."""
    want = DEV6.get(path_name)
    if want is None:
        return ""
    out = sh(["ip", "-n", host_ns, "-6", "-j", "route", "get", dst], check=False).stdout
    dev = route_dev(out)
    if dev == want:
        return ""
    return f"{path_name}: {host_ns} routes {dst} via {dev or 'nothing'}, not {want}; no figures for it"


def route_dev(route_get_json: str) -> str:
    """The device of ``ip -j route get``'s answer ("" when there is none)."""
    try:
        routes = json.loads(route_get_json or "[]")
    except json.JSONDecodeError:
        return ""
    return str(routes[0].get("dev", "")) if routes and isinstance(routes[0], dict) else ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pump_line(log_text: str) -> str:
    found = [line.split("udp pump:", 1)[1].strip() for line in log_text.splitlines() if "udp pump:" in line]
    return found[-1] if found else "not named in flanneld's log"


def _wait_listening(ns: str, port: int = 5201, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sh(in_ns(ns, "ss", "-Hltn", f"sport = :{port}"), check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise BenchError(f"iperf3 -s in {ns} is not listening on {port} after {timeout:g}s")


def rx_bytes(ns: str, dev: str) -> int:
    out = sh(["ip", "-n", ns, "-j", "-s", "link", "show", dev]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def iperf(path: Path, seconds: int, *args: str) -> dict:
    """One iperf3 test from the client to a one-shot server in the path's server namespace."""
    server = subprocess.Popen(in_ns(path.server_ns, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_listening(path.server_ns)
        res = sh(in_ns(path.client_ns, "iperf3", "-c", path.dst, "-J", "-t", str(seconds), "-O", "1",
                       "--connect-timeout", "3000", *args), check=False, timeout=seconds + 40)
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError as err:
            raise BenchError(f"iperf3 {' '.join(args)} on {path.name} printed no JSON: {res.stderr.strip()}") from err
        if "error" in data:
            raise BenchError(f"iperf3 {' '.join(args)} on {path.name} failed: {data['error']}")
        return data
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def tcp(path: Path, seconds: int, streams: int) -> None:
    pids, helpers = path.flanneld_pids, path.helper_pids
    cpu0, rx0 = sum(cpu_seconds(p) for p in pids), rx_bytes(path.server_ns, path.server_dev)
    hcpu0 = sum(cpu_seconds(p) for p in helpers)
    data = iperf(path, seconds, "-P", str(streams))
    cpu1, rx1 = sum(cpu_seconds(p) for p in pids), rx_bytes(path.server_ns, path.server_dev)
    hcpu1 = sum(cpu_seconds(p) for p in helpers)
    path.fig(f"tcp_{streams}").add(data["end"]["sum_received"]["bits_per_second"] / 1e9)
    gb = max((rx1 - rx0) / 1e9, 1e-9)
    if streams == 1 and pids:
        path.fig("cpu_s_per_gb").add((cpu1 - cpu0) / gb)
    if streams == 1 and helpers:
        path.fig("wg_go_cpu_s_per_gb").add((hcpu1 - hcpu0) / gb)


def udp64(path: Path, seconds: int) -> None:
    s = iperf(path, seconds, "-u", "-b", "0", "-l", "64")["end"]["sum_received"]
    path.fig("udp64_pps").add((s["packets"] - s["lost_packets"]) / s["seconds"])


_TIME_RE = re.compile(r"time=([0-9.]+) ms")


def rtt(path: Path) -> None:
    res = sh(in_ns(path.client_ns, "ping", "-n", "-i", "0.001", "-c", str(PING_COUNT), "-W", "1", path.dst),
             check=False, timeout=PING_COUNT * 0.01 + 30)
    times = [float(t) * 1000 for t in _TIME_RE.findall(res.stdout)]
    if len(times) < PING_COUNT // 2:
        raise BenchError(f"ping on {path.name}: only {len(times)} of {PING_COUNT} replies\n{res.stdout[-400:]}")
    path.fig("rtt_us_p50").add(percentile(times, 50))
    path.fig("rtt_us_p99").add(percentile(times, 99))


def measure(paths: list[Path], rounds: int, seconds: int, notes: list[str]) -> None:
    """``rounds`` interleaved rounds; within a round the path order rotates. A test that fails is
    noted and its figure has one run fewer; the other tests go on."""
    tests: list[tuple[str, Callable[[Path], None]]] = [
        ("tcp_1", lambda p: tcp(p, seconds, 1)), ("tcp_4", lambda p: tcp(p, seconds, 4)),
        ("udp64", lambda p: udp64(p, seconds)), ("rtt", rtt),
    ]
    for r in range(rounds):
        order = paths[r % len(paths):] + paths[:r % len(paths)]
        for path in order:
            t0 = time.monotonic()
            for name, test in tests:
                try:
                    test(path)
                except BenchError as err:
                    notes.append(f"{path.name} round {r + 1}: {name} failed, one run fewer: {err}")
                    log(notes[-1])
            log(f"data path round {r + 1}/{rounds} {path.name}: " + ", ".join(
                f"{k} {_last(path, k)}" for k in ("tcp_1", "tcp_4", "udp64_pps", "rtt_us_p50", "cpu_s_per_gb",
                                                  "wg_go_cpu_s_per_gb")
                if k in path.figures) + f" ({time.monotonic() - t0:.0f} s)")


def _last(path: Path, metric: str) -> str:
    v = path.figures[metric].values
    return f"{v[-1]:.4g}" if v else "-"


def rows(paths: list[Path]) -> list[dict]:
    """The flat rows of bench/README.md; ``ratio`` is median / median of ``ratio_to`` measured in this run,
    ``ratio_underlay`` the same against the underlay, ``ratio_kernel`` (vxlan6) against hand-vxlan; on
    pyflannel's vxlan, host-gw and udp rows ``ratio_go`` is the same against Go flannel's path
    (``go_path``), CPU included."""
    by_name = {p.name: p for p in paths}
    out = []
    for path in sorted(paths, key=lambda p: PATHS.index(p.name)):
        for metric, unit in {**METRICS, **EXTRA_METRICS}.items():
            fig = path.figures.get(metric)
            if fig is None or not fig.values:
                continue
            ref = RATIO_TO.get(path.name) if metric not in NO_RATIO else None
            ref_fig = by_name[ref].figures.get(metric) if ref in by_name else None
            under = by_name["underlay"].figures.get(metric) if "underlay" in by_name else None
            row = {
                "backend": path.name, "metric": metric, **fig.summary(), "unit": unit,
                "ratio_to": ref if ref_fig else None,
                "ratio": _ratio(fig, ref_fig), "ratio_underlay": _ratio(fig, under),
            }
            kernel = KERNEL_REF.get(path.name) if metric not in NO_RATIO else None
            kernel_fig = by_name[kernel].figures.get(metric) if kernel in by_name else None
            if kernel_fig is not None and kernel_fig.values:
                row.update(ratio_kernel=_ratio(fig, kernel_fig))
            go = GO_OF.get(path.name)
            go_fig = by_name[go].figures.get(metric) if go in by_name else None
            if go_fig is not None and go_fig.values:
                row.update(go_path=go, ratio_go=_ratio(fig, go_fig))
            out.append(row)
    return out


def _ratio(fig: Figure, ref: Figure | None) -> float | None:
    if ref is None or not ref.values or not ref.median:
        return None
    return round(fig.median / ref.median, 3)
