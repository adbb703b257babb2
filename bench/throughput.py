"""Container-to-container iperf3 throughput per backend, next to the underlay, in one run.

    sudo .venv/bin/python bench/throughput.py [--seconds 5] [--runs 3]

For each backend a 2-host lab is built; iperf3 runs container to container (one TCP stream),
and once host to host over the veth underlay as the reference. Prints a Markdown table of
medians (min-max) and the ratio to the underlay. Not part of `make test`: speed is measured,
never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from pyflannel.lab.cluster import Lab
from pyflannel.lab.netns import in_ns, sh


def iperf(server_ns: str, client_ns: str, dst: str, seconds: int) -> float:
    srv = subprocess.Popen(in_ns(server_ns, "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = sh(in_ns(client_ns, "iperf3", "-c", dst, "-t", str(seconds), "-J"), timeout=seconds + 30).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default="udp,vxlan,host-gw")
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    for backend in args.backends.split(","):
        lab = Lab(name="pfbench", hosts_n=2, backend=backend)
        try:
            lab.up()
            h1, h2 = lab.hosts
            if "underlay" not in results:
                results["underlay"] = [iperf(h2.ns, h1.ns, h2.ip, args.seconds) for _ in range(args.runs)]
            results[backend] = [iperf(h2.container_ns, h1.container_ns, h2.container_ip, args.seconds)
                                for _ in range(args.runs)]
        finally:
            lab.down()
    base = statistics.median(results["underlay"])
    print("| path | TCP 1 stream Gbit/s, median (min-max) | ratio to underlay |")
    print("| --- | --- | --- |")
    for name, xs in results.items():
        med = statistics.median(xs)
        print(f"| {name} | {med:.2f} ({min(xs):.2f}-{max(xs):.2f}) | {med / base:.3f} |")


if __name__ == "__main__":
    main()
