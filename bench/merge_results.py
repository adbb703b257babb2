"""Merge the results of several bench/run.py runs into one JSON and one markdown file.

For figures measured in separate, shorter runs (each under the shared lock for at most ~15 min),
e.g. issue 12's before/after figures:

    python bench/merge_results.py --out bench/results/issue12-before --title "issue 12, before" \\
        --commit d200c45 --note "..." PART1/latest.json PART2/latest.json ...

writes ``OUT.json`` (rows as in latest.json, each with ``part``: the number of the run it comes
from; each part's params, command, notes and machine state kept under ``parts``) and ``OUT.md``
(the tables of bench/README.md's latest.md). Every ratio in a row was measured within its own part.
A row measured in two parts (same path and metric; same metric, hosts and flanneld) is kept from
the later part. Needs no root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/merge_results.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", help="latest.json files of the runs, in the order they ran")
    ap.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    ap.add_argument("--title", default="pyflannel control-plane benchmark")
    ap.add_argument("--commit", default="", help="the commit measured")
    ap.add_argument("--note", action="append", default=[], help="a note for the top (repeatable)")
    ap.add_argument("--repeats", action="store_true",
                    help="the runs measured the same data paths again: each data-path row becomes the median over "
                         "the runs (pfbench/repeats.py), not the later run's")
    ap.add_argument("--chart", help="also draw the data-path chart (as bench/run.py's datapath.png) to this PNG")
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    from pfbench import repeats, report

    rows: dict[tuple[str, int, str], dict] = {}
    dp_rows: dict[tuple[str, str], dict] = {}
    parts = []
    runs: list[list[dict]] = []
    for i, path in enumerate(args.parts):
        with open(path) as f:
            doc = json.load(f)
        for r in doc["controlplane"]:
            rows[(r["metric"], r["hosts"], r.get("flanneld", ""))] = {**r, "part": i + 1}
        for r in doc.get("datapath", []):
            dp_rows[(r["backend"], r["metric"])] = {**r, "part": i + 1}
        runs.append(doc.get("datapath", []))
        parts.append({"file": path, "date": doc["date"], "command": doc.get("command", ""),
                      "runtime_s": doc["runtime_s"], "params": doc["params"], "notes": doc["notes"],
                      "cpu_busy_at_start_pct": doc["machine"].get("cpu_busy_at_start_pct"),
                      "loadavg_at_start": doc["machine"].get("loadavg_at_start"),
                      "loadavg_at_end": doc["machine"].get("loadavg_at_end")})
    machine = {k: v for k, v in doc["machine"].items()
               if k not in ("cpu_busy_at_start_pct", "loadavg_at_start", "loadavg_at_end")}
    merged = {"title": args.title, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": args.commit,
              "machine": machine, "machine_notes": args.note,
              "datapath": repeats.repeated_rows(runs) if args.repeats else list(dp_rows.values()),
              "controlplane": list(rows.values()),
              "notes": [f"part {i + 1}: {n}" for i, p in enumerate(parts) for n in p["notes"]], "parts": parts}
    report.write_json(args.out + ".json", merged)
    m = machine
    md = [f"# {args.title}", "",
          f"Commit {args.commit or '(not given)'}. Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, "
          f"Linux {m['kernel']}, Python {m['python']}, pyflannel {m['pyflannel']}. "
          f"Merged {time.strftime('%Y-%m-%d')} from {len(parts)} runs of bench/run.py:", ""]
    for i, p in enumerate(parts):
        load = f", load average {p['loadavg_at_start']} at its start" if p.get("loadavg_at_start") is not None else ""
        if p.get("loadavg_at_end"):
            load += f", {' / '.join(map(str, p['loadavg_at_end']))} (1 / 5 / 15 min) at its end"
        md.append(f"{i + 1}. {p['date']}, {p['runtime_s'] / 60:.1f} min, CPUs {p['cpu_busy_at_start_pct']}% busy "
                  f"before it started{load}: `{p['command']}`")
    if args.note:
        md += [""] + [f"- {n}" for n in args.note]
    md += report.datapath_markdown(merged["datapath"], merged=True, repeats=args.repeats)
    if args.repeats:
        md += repeats.run_medians_markdown(merged["datapath"])
    md += report.controlplane_markdown(merged["controlplane"])
    if merged["notes"]:
        md += ["", "## Notes", ""] + [f"- {n}" for n in merged["notes"]]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    if args.chart and merged["datapath"]:
        rounds = sorted({p["params"]["rounds"] for p in parts if p["params"].get("paths")})
        report.chart({**merged, "params": {"rounds": "/".join(map(str, rounds)) or "?"}}, args.chart)
    print(f"wrote {args.out}.json and {args.out}.md ({len(merged['datapath'])} data-path and {len(rows)} "
          "control-plane rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
