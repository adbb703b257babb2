"""``python -m pyflannel.lab.soak`` (``make soak SOAK_ARGS=...``): the chaos soak from the command
line. Exit 0 with no invariant violation, 1 with one (the report and the kept logs say which), 2 on
bad arguments; a lab that cannot be built is one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys

from ...core.errors import FlannelError
from ..cluster import LAB_BACKENDS
from ..netns import LabError
from .run import Options, Soak
from .schedule import DEFAULT_KINDS, kinds_for

SOAK_BACKENDS = LAB_BACKENDS  # udp, vxlan, host-gw, wireguard: what runs in namespaces on one machine


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="make soak SOAK_ARGS=...", description=__doc__)
    p.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected (default 30)")
    p.add_argument("--seed", type=int, default=1, help="the seed of the fault schedule (default 1)")
    p.add_argument("--backend", default="vxlan", help=f"one of {', '.join(SOAK_BACKENDS)} (default vxlan)")
    p.add_argument("--hosts", type=int, default=5, help="hosts in the lab (default 5)")
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="fault kinds, comma-separated (default all)")
    p.add_argument("--mean-gap", type=float, default=6.0, help="mean seconds between faults (default 6)")
    p.add_argument("--out", default="bench/results", help="where the report goes (default bench/results)")
    p.add_argument("--name", default="pfsk", help="lab name, prefix of its namespaces (default pfsk)")
    a = p.parse_args(argv)
    if a.backend not in SOAK_BACKENDS:
        p.error(f"--backend {a.backend}: the soak runs {', '.join(SOAK_BACKENDS)} (the cloud backends need a cloud)")
    if not 0 < a.minutes <= 24 * 60:
        p.error(f"--minutes {a.minutes:g}: give 0 < minutes <= 1440")
    if not 2 <= a.hosts <= 20:
        p.error(f"--hosts {a.hosts}: the soak runs 2..20 hosts")
    if a.mean_gap <= 0:
        p.error(f"--mean-gap {a.mean_gap:g}: give a positive number of seconds")
    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
    try:
        kinds_for(a.backend, kinds)
    except ValueError as err:
        p.error(f"--kinds: {err}")
    return Options(minutes=a.minutes, seed=a.seed, backend=a.backend, hosts=a.hosts, kinds=kinds,
                   mean_gap=a.mean_gap, name=a.name, out=a.out)


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("soak: the lab needs root (network namespaces): run it as root", file=sys.stderr)
        return 1
    try:
        rep = Soak(opts, log=lambda line: print(line, flush=True)).run()
    except (LabError, FlannelError, RuntimeError) as err:
        print(f"soak: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak: interrupted; the lab was removed", file=sys.stderr)
        return 130
    print(f"soak: {len(rep['violations'])} invariant violations, {rep['pings_lost']} of {rep['pings_sent']} "
          f"pings lost, seed {opts.seed}")
    return 1 if rep["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
