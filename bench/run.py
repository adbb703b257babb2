"""pyflannel's benchmark suite (issue 7): `make bench`, or as root:

    .venv/bin/python bench/run.py [--quick] [--only datapath|controlplane] [--rounds 3] ...

Builds lab namespaces (``pfb-…``), measures, tears everything down (also on Ctrl-C, SIGTERM and
errors) and writes bench/results/latest.json, latest.md and datapath.png. See bench/README.md for
what each figure means. Not part of `make test`: speed is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
# pfbench.datapath.PATHS (not imported here: that needs pyflannel, which preflight checks first)
DATA_PATHS = ("underlay", "hand-vxlan", "vxlan", "vxlan6", "host-gw", "udp", "wireguard", "wireguard6", "go-vxlan",
              "go-host-gw", "go-udp")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("datapath", "controlplane", "kube"),
                    help="run one half of the suite, or only the kube-mode figures (written to "
                         "bench/results/<half>/)")
    ap.add_argument("--paths", default="",
                    help="data paths to measure, comma-separated (default: all of " + ", ".join(DATA_PATHS) + ")")
    ap.add_argument("--no-go", action="store_true",
                    help="leave Go flannel out (its data paths and its control-plane figures); by default it is "
                         "measured beside pyflannel, built by scripts/goflannel.sh when missing")
    ap.add_argument("--rounds", type=int, default=5, help="data-path rounds (each path measured once per round)")
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test (plus 1 s omitted)")
    ap.add_argument("--hosts", default="10,50,100", help="convergence cluster sizes")
    ap.add_argument("--conv-rounds", type=int, default=5, help="lease PUTs timed per cluster size")
    ap.add_argument("--conv-cap", type=float, default=30.0, help="seconds before a PUT counts as capped")
    ap.add_argument("--conv-idle", type=float, default=2.0,
                    help="seconds of the quiet window before each PUT that gives the hosts' idle CPU rate")
    ap.add_argument("--peers", type=int, default=1000, help="synthetic peers for the cold start (0: no cold start "
                    "and no idle figures)")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--cold-cap", type=float, default=120.0, help="seconds before a cold start counts as capped")
    ap.add_argument("--idle-windows", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--burst", default="1000,5000",
                    help="lease burst sizes: N leases PUT (then deleted) at once under a running flanneld, and "
                         "the same N as a snapshot at start-up ('' for none)")
    ap.add_argument("--burst-runs", type=int, default=3,
                    help="runs per burst size (a capped run ends its size: repeating would only give the cap)")
    ap.add_argument("--burst-cap", type=float, default=180.0,
                    help="seconds before a burst (or its snapshot) counts as capped")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run (2 s tests, 5/10 hosts, 100 peers, a burst of 200) written to "
                         "bench/results/quick/")
    ap.add_argument("--out", help="results directory (default bench/results, bench/results/quick with --quick)")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.hosts, args.conv_rounds, args.peers = 3, 2, "5,10", 3, 100
        args.idle_seconds, args.cold_cap = 3.0, 60.0
        args.burst, args.burst_cap = "200", 60.0
    args.out = args.out or os.path.join(HERE, "results", "quick" if args.quick else args.only or "")
    args.sizes = sorted({int(x) for x in args.hosts.split(",") if x.strip()})
    args.bursts = sorted({int(x) for x in args.burst.split(",") if x.strip()})
    if min(args.rounds, args.conv_rounds, args.cold_runs, args.idle_windows) < 3:
        ap.error("every figure is a median of at least 3 runs: --rounds, --conv-rounds, --cold-runs and "
                 "--idle-windows must be >= 3")
    if args.sizes and args.sizes[-1] > 240:
        ap.error("at most 240 hosts fit on the lab's /24 underlay")
    if args.bursts and not (args.bursts[0] >= 1 and args.bursts[-1] <= 60000):
        ap.error("--burst sizes must be 1..60000")
    args.path_list = tuple(p.strip() for p in args.paths.split(",") if p.strip()) or DATA_PATHS
    unknown = [p for p in args.path_list if p not in DATA_PATHS]
    if unknown:
        ap.error(f"unknown data path(s) {', '.join(unknown)}: choose from {', '.join(DATA_PATHS)}")
    if args.no_go:
        args.path_list = tuple(p for p in args.path_list if not p.startswith("go-"))
    if args.burst_runs < 1:
        ap.error("--burst-runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, HERE)
    from pfbench import preflight

    problems = preflight.problems(chart=not args.no_chart)
    if problems:
        print("bench: cannot run:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    from pfbench import common, controlplane, datapath, kube, report

    from pyflannel.core.errors import LocalConfigError
    from pyflannel.lab.netns import LabError, ns_list

    started = time.monotonic()
    notes: list[str] = []
    if common.bench_namespaces():
        common.log(f"removing {common.teardown()} namespaces left by an earlier, killed run")
    foreign = [ns for ns in ns_list() if not ns.startswith(common.NS_PREFIX)]
    if foreign:
        notes.append(f"other network namespaces existed when the suite started ({', '.join(sorted(foreign)[:8])}"
                     f"{', …' if len(foreign) > 8 else ''}): another lab shared the CPUs; figures may be disturbed")
    mach = report.machine()
    mach["cpu_busy_at_start_pct"] = common.machine_busy_pct()
    if mach["cpu_busy_at_start_pct"] > 10:
        notes.append(f"the CPUs were {mach['cpu_busy_at_start_pct']}% busy before the suite started anything: "
                     "other work on this machine may disturb the figures")
    dp_rows: list[dict] = []
    info: dict[str, str] = {"PYFLANNEL_PUMP": os.environ.get("PYFLANNEL_PUMP", "(unset: auto)")}
    res = controlplane.Results()
    failure = ""
    go = not args.no_go and common.ensure_go_flannel(notes)
    impls = ["", "go"] if go else [""]
    wanted = args.path_list if go else tuple(p for p in args.path_list if not p.startswith("go-"))
    if go and args.only in (None, "datapath") and ("wireguard" in wanted or "wireguard6" in wanted):
        notes.append("wireguard: no Go flannel column: Go flannel's wireguard backend creates the kernel's "
                     "WireGuard device (netlink) and has no userspace fallback; this machine's kernel has no "
                     "WireGuard, so only pyflannel's wireguard (over wireguard-go) is measured")
    try:
        with common.guarded():
            if args.only in (None, "datapath"):
                paths = datapath.build(notes, info, wanted)
                datapath.measure(paths, args.rounds, args.seconds, notes)
                dp_rows = datapath.rows(paths)
                common.teardown()
            if args.only in (None, "controlplane"):
                for impl in impls if args.sizes else []:  # pyflannel, then Go flannel, in the same run
                    controlplane.convergence(res, args.sizes, args.conv_rounds, args.conv_cap, notes, impl,
                                             args.conv_idle)
                    common.teardown()
                for impl in impls if args.peers > 0 else []:
                    controlplane.coldstart(res, args.peers, args.cold_runs, args.cold_cap, args.idle_windows,
                                           args.idle_seconds, notes, impl)
                    common.teardown()
                if args.bursts:
                    controlplane.burst(res, args.bursts, args.burst_runs, args.burst_cap, notes)
                    common.teardown()
            if args.only in (None, "controlplane", "kube") and args.peers > 0:
                kube.kube_bench(res, args.peers, args.cold_runs, args.cold_cap, args.conv_rounds, notes)
    except (KeyboardInterrupt, common.Interrupted) as err:
        common.log(f"interrupted ({str(err) or 'Ctrl-C'}): every pfb- namespace and process was removed; no results "
                   "written")
        return 130
    except (common.BenchError, LabError, LocalConfigError, OSError) as err:
        failure = f"INCOMPLETE: the suite stopped with an error: {err}"
    except Exception as err:  # a bug of ours: say where, keep what was measured
        traceback.print_exc()
        failure = f"INCOMPLETE: the suite stopped with {type(err).__name__}: {err}"
    if failure:
        common.log(failure)
        notes.append(failure)
    mach["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5 and 15 min: the run's own load too
    late = sorted(set(ns_list()) - set(foreign) - set(common.bench_namespaces()))
    if late:
        notes.append(f"other network namespaces appeared during the run ({', '.join(late[:8])}"
                     f"{', …' if len(late) > 8 else ''}): another lab shared the CPUs; figures may be disturbed")
    params = {"paths": list(wanted), "go_flannel": _go_version() if go else None}
    params.update({k: getattr(args, k) for k in ("rounds", "seconds", "sizes", "conv_rounds", "conv_cap", "conv_idle",
                                            "peers", "cold_runs", "cold_cap", "idle_windows", "idle_seconds", "bursts",
                                            "burst_runs", "burst_cap", "quick")})
    params.update(info)
    doc = report.document(dp_rows, res.rows(), notes, mach, params, started)
    os.makedirs(args.out, exist_ok=True)
    report.write_json(os.path.join(args.out, "latest.json"), doc)
    md = report.markdown(doc)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    if dp_rows and not args.no_chart:
        report.chart(doc, os.path.join(args.out, "datapath.png"))
    print(md)
    common.log(f"wrote {args.out}/latest.json, latest.md{'' if args.no_chart else ', datapath.png'} "
               f"in {doc['runtime_s'] / 60:.1f} min")
    return 1 if failure else 0


def _go_version() -> str:
    from pyflannel.lab import goflannel

    how = goflannel.how_built()
    return f"{goflannel.VERSION}" + (f" ({how})" if how else "")


if __name__ == "__main__":
    sys.exit(main())
