"""The soak's report, pure: from the faults as run, the wall times of lost pings, the check rounds
and the violations, the numbers (``summarize``), a Markdown table (``markdown``) and an SVG chart
of loss over time with the faults marked (``svg``, written by hand: no plotting dependency).

A fault's loss is the pings lost from its start until one second after it healed, on every pair
for an etcd fault, else on the pairs with its host (or the peer it names) at either end; its time
to heal is from its end (its undo done; an instant fault ends when injected) to the first check
round that found every host's kernel matching the leases, every flanneld running and every host
holding its lease. Faults whose windows and pairs overlap are both charged with the loss they
share.
"""

from __future__ import annotations

import bisect
import html
import statistics
from typing import Any

from .schedule import KINDS, kinds_for, touches_data_path

NO_HEAL_WINDOW = 5.0  # seconds after its end a fault that never healed is charged with


def heal_time(end: float, rounds: list[tuple[float, bool]]) -> float | None:
    """Seconds from ``end`` to the first consistent round starting at or after it."""
    i = bisect.bisect_left(rounds, (end, False))
    for t, ok in rounds[i:]:
        if ok:
            return round(t - end, 3)
    return None


def _lost_in(losses: list[float], lo: float, hi: float) -> int:
    return bisect.bisect_right(losses, hi) - bisect.bisect_left(losses, lo)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _fault_loss(fault: dict[str, Any], pairs: dict[tuple[int, int], list[float]], lo: float, hi: float) -> int:
    """Pings lost from ``lo`` to ``hi`` on the pairs a fault can touch: every pair for an etcd fault,
    else the pairs with its host (or its peer) at either end."""
    hosts = {fault["target"], fault["peer"]} - {0}
    every = KINDS[fault["kind"]].target == "etcd"
    return sum(_lost_in(ts, lo, hi) for (a, b), ts in pairs.items() if every or a in hosts or b in hosts)


def summarize(meta: dict[str, Any], records: list[dict[str, Any]], pairs: dict[tuple[int, int], list[float]],
              sent: int, rounds: list[tuple[float, bool]], violations: list[dict[str, Any]], t0: float, t1: float
              ) -> dict[str, Any]:
    """``records``: one per fault that started, {"fault": Fault.to_json(), "start", "end", "note",
    "skipped", "error"} (wall times); ``pairs``: (source host, destination host) -> wall times of
    its lost pings."""
    pairs = {k: sorted(v) for k, v in pairs.items()}
    losses = sorted(t for ts in pairs.values() for t in ts)
    faults, by_kind = [], {}
    for rec in records:
        f = dict(rec)
        kind = rec["fault"]["kind"]
        if rec.get("skipped") or rec.get("error") or rec.get("end") is None:
            f.update(heal_s=None, lost=None)
        else:
            heal = heal_time(rec["end"], rounds)
            f["heal_s"] = heal
            f["window"] = (rec["start"], rec["end"] + (NO_HEAL_WINDOW if heal is None else heal) + 1)
            f["lost"] = _fault_loss(rec["fault"], pairs, *f["window"])
        faults.append(f)
        k = by_kind.setdefault(kind, {"injected": 0, "skipped": 0, "errors": 0, "unhealed": 0, "lost": [],
                                      "heal": [], "ready": []})
        if rec.get("ready_s") is not None:
            k["ready"].append(rec["ready_s"])
        if rec.get("skipped"):
            k["skipped"] += 1
        elif rec.get("error"):
            k["errors"] += 1
        elif f["lost"] is not None:
            k["injected"] += 1
            k["lost"].append(f["lost"])
            if f["heal_s"] is None:
                k["unhealed"] += 1
            else:
                k["heal"].append(f["heal_s"])
    alone = _alone(faults, meta["backend"])
    kinds = {}
    for name, k in sorted(by_kind.items()):
        solo = [f["lost"] for f in faults if f["fault"]["kind"] == name and f["fault"]["seq"] in alone]
        kinds[name] = {"injected": k["injected"], "skipped": k["skipped"], "errors": k["errors"],
                       "unhealed": k["unhealed"], "data_path": touches_data_path(name, meta["backend"]),
                       "lost": _stats(k["lost"]), "heal_s": _stats(k["heal"]),
                       "alone": len(solo), "lost_alone": _stats(solo)}
        if k["ready"]:  # a flanneld restart: how long the new flanneld took to say it was ready
            kinds[name]["ready_s"] = _stats(k["ready"])
    seconds = max(1, int(t1 - t0) + 1)
    per_second = [0] * seconds
    for t in losses:
        if t0 <= t < t1:
            per_second[int(t - t0)] += 1
    return {**meta, "seconds": round(t1 - t0, 1), "pings_sent": sent, "pings_lost": len(losses),
            "violations": violations, "kinds": kinds, "faults": faults,
            "check_rounds": len(rounds), "loss_per_second": per_second,
            "fault_marks": [{"t": round(r["start"] - t0, 2), "seq": r["fault"]["seq"], "kind": r["fault"]["kind"]}
                            for r in records if r.get("start")]}


def _alone(faults: list[dict[str, Any]], backend: str) -> set[int]:
    """The faults (by seq) whose window no data-path fault's window overlaps: the loss charged to
    them is theirs alone (every pair touches every other host, so time decides)."""
    windows = [(f["fault"]["seq"], f["window"], touches_data_path(f["fault"]["kind"], backend))
               for f in faults if f.get("window")]
    dp = [(seq, w) for seq, w, data_path in windows if data_path]
    return {seq for seq, (lo, hi), _ in windows if not any(o != seq and a < hi and lo < b for o, (a, b) in dp)}


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:g}{unit}"


def reproduce_args(rep: dict[str, Any]) -> str:
    """The ``make soak`` arguments that run this report's faults again."""
    args = f"--minutes {rep['minutes']:g} --seed {rep['seed']} --backend {rep['backend']}"
    if rep.get("hosts", 5) != 5:
        args += f" --hosts {rep['hosts']}"
    if rep.get("mean_gap_s", 6.0) != 6.0:
        args += f" --mean-gap {rep['mean_gap_s']:g}"
    kinds = rep.get("kinds_enabled")
    if kinds and tuple(kinds) != kinds_for(rep["backend"]):
        args += f" --kinds {','.join(kinds)}"
    return args


def markdown(rep: dict[str, Any]) -> str:
    lines = [f"# Chaos soak: {rep['backend']}, {rep['hosts']} hosts, {rep['seconds']:g} s, seed {rep['seed']}", "",
             f"Reproduce: `make soak SOAK_ARGS=\"{reproduce_args(rep)}\"`", "",
             f"Pings sent {rep['pings_sent']}, lost {rep['pings_lost']}; TCP stream {rep['tcp']['bytes']} bytes in "
             f"{rep['tcp']['connections']} connection(s), corrupted: {rep['tcp']['corrupt'] is not None}; "
             f"check rounds {rep['check_rounds']}; flanneld peak RSS {rep['resources']['rss_mb']:g} MB, "
             f"{rep['resources']['fds']} descriptors, {rep['resources']['threads']} threads.", "",
             f"**Invariant violations: {len(rep['violations'])}**", ""]
    if rep.get("garbage_left"):
        lines += [f"Lease keys still holding the soak's garbage at the end (flanneld rewrites its own lease only "
                  f"when it renews it): {', '.join(rep['garbage_left'])}", ""]
    for v in rep["violations"]:
        lines.append(f"- at {v['t']:.1f} s: {v['what']}")
    if rep.get("kinds_not_applicable"):
        lines += ["", f"Fault kinds not applicable on {rep['backend']} (not injected):"]
        lines += [f"- {kind}: {why}" for kind, why in rep["kinds_not_applicable"].items()]
    lines += ["", "| fault | data path | injected | skipped | lost pings (median / max) | alone: n, lost (median / "
              "max) | heal s (median / max) | never healed |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, k in rep["kinds"].items():
        solo = k.get("lost_alone", {"median": None, "max": None})
        lines.append(f"| {name} | {'yes' if k['data_path'] else 'no'} | {k['injected']} | {k['skipped']} | "
                     f"{_fmt(k['lost']['median'])} / {_fmt(k['lost']['max'])} | "
                     f"{k.get('alone', 0)}: {_fmt(solo['median'])} / {_fmt(solo['max'])} | "
                     f"{_fmt(k['heal_s']['median'])} / {_fmt(k['heal_s']['max'])} | {k['unhealed']} |")
    ready = [f"{name} {_fmt(k['ready_s']['median'])} / {_fmt(k['ready_s']['max'])} s"
             for name, k in rep["kinds"].items() if k.get("ready_s")]
    if ready:
        lines += ["", "A restarted flanneld said it was ready after (median / max; its fault lasts until then): "
                  + ", ".join(ready) + "."]
    return "\n".join(lines) + "\n"


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31")


def svg(rep: dict[str, Any], width: int = 960, height: int = 320) -> str:
    """Pings lost per second (all pairs) over the run, a tick per fault coloured by kind."""
    series = rep["loss_per_second"]
    left, right, top, bottom = 50, 190, 20, 40
    w, h = width - left - right, height - top - bottom
    top_y = max(10, max(series, default=0))
    n = max(1, len(series))

    def x(t: float) -> float:
        return left + w * t / n

    def y(v: float) -> float:
        return top + h - h * v / top_y

    kinds = sorted({m["kind"] for m in rep["fault_marks"]})
    color = {k: _COLORS[i % len(_COLORS)] for i, k in enumerate(kinds)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="14">pings lost per second ({html.escape(rep["backend"])}, seed {rep["seed"]}, '
           f'{len(rep["violations"])} violations)</text>']
    for m in rep["fault_marks"]:
        out.append(f'<line x1="{x(m["t"]):.1f}" y1="{top}" x2="{x(m["t"]):.1f}" y2="{top + h}" '
                   f'stroke="{color[m["kind"]]}" stroke-opacity="0.6"><title>#{m["seq"]} {m["kind"]}</title></line>')
    points = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(series))
    out.append(f'<polyline fill="none" stroke="black" stroke-width="1.2" points="{points}"/>')
    out.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="black"/>')
    for v in (0, top_y // 2, top_y):
        out.append(f'<text x="{left - 5}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for i in range(6):
        t = n * i / 5
        out.append(f'<text x="{x(t):.1f}" y="{top + h + 15}" text-anchor="middle">{t:.0f}s</text>')
    for i, k in enumerate(kinds):
        yy = top + 12 + 14 * i
        out.append(f'<rect x="{left + w + 10}" y="{yy - 8}" width="10" height="10" fill="{color[k]}"/>'
                   f'<text x="{left + w + 25}" y="{yy + 1}">{html.escape(k)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["heal_time", "markdown", "reproduce_args", "summarize", "svg"]
