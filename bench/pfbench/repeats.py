"""Data-path figures from several runs of the same paths (``bench/merge_results.py --repeats``): on a
shared machine one run's medians swing by 10-20 %, so a figure is repeated and each row becomes the
median over the runs. Pure: rows in, rows out (bench/README.md, "Figures from repeated runs")."""

from __future__ import annotations

import statistics

from .report import LABELS, _fmt

RATIO_KEYS = ("ratio", "ratio_kernel", "ratio_underlay", "ratio_go")


def repeated_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per (path, metric) out of each run's data-path rows: ``median`` the median of the runs'
    medians, ``min``/``max`` over every round of every run, ``runs`` the rounds in all, ``run_medians``
    and ``run_ratios`` each run's median and ratio in run order, and each ratio the median of the ratios
    measured within each run (a ratio never mixes two runs). A path missing from a run just has fewer
    run medians."""
    by_key: dict[tuple[str, str], list[dict]] = {}
    for rows in runs:
        for r in rows:
            if r.get("median") is not None:
                by_key.setdefault((r["backend"], r["metric"]), []).append(r)
    out = []
    for rs in by_key.values():
        row = {k: v for k, v in rs[-1].items() if k != "part"}
        row.update(median=_median([r["median"] for r in rs]), min=min(r["min"] for r in rs),
                   max=max(r["max"] for r in rs), runs=sum(r.get("runs", 0) for r in rs),
                   run_medians=[r["median"] for r in rs], run_ratios=[r.get("ratio") for r in rs])
        for key in RATIO_KEYS:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals or key in row:
                row[key] = round(_median(vals), 3) if vals else None
        out.append(row)
    return out


def run_medians_markdown(rows: list[dict], metrics: tuple[str, ...] = ("tcp_1", "tcp_4", "rtt_us_p50")) -> list[str]:
    """Each run's median of ``metrics`` per path, and the ratio each run measured: the run-to-run noise."""
    shown = [r for r in rows if r["metric"] in metrics]
    if not shown:
        return []
    n = max(len(r["run_medians"]) for r in shown)
    out = ["", "Each run's median (and its ratio to the row's reference, measured in that run), to show the "
           "run-to-run noise:", "",
           "| path | figure | " + " | ".join(f"run {i + 1}" for i in range(n)) + " | median over the runs |",
           "| --- | --- |" + " --- |" * (n + 1)]
    for r in sorted(shown, key=lambda r: (metrics.index(r["metric"]), r["backend"])):
        cells = [_fmt(v, r["metric"]) + ("" if q is None else f" (x{q:.2f})")
                 for v, q in zip(r["run_medians"], r["run_ratios"], strict=True)]
        cells += ["-"] * (n - len(cells))
        ratio = f" (x{r['ratio']:.2f} of {r['ratio_to']})" if r.get("ratio") is not None else ""
        out.append(f"| {r['backend']} | {LABELS[r['metric']]} | " + " | ".join(cells)
                   + f" | {_fmt(r['median'], r['metric'])}{ratio} |")
    return out


def _median(values: list[float]) -> float:
    return float(f"{statistics.median(values):.4g}")
