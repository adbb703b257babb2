"""The soak's report: loss and time to heal per fault kind, the table, the chart; and its command
line's refusals."""

from __future__ import annotations

import pytest

from pyflannel.lab.soak.__main__ import parse
from pyflannel.lab.soak.report import heal_time, markdown, reproduce_args, summarize, svg
from pyflannel.lab.soak.schedule import Fault, kinds_for, not_applicable

T0 = 1000.0


def rec(seq: int, kind: str, start: float, end: float, **kw: object) -> dict[str, object]:
    f = Fault(seq, start - T0, kind, 1, 0, end - start)
    return {"fault": f.to_json(), "label": f.label(), "start": start, "end": end, "note": "", "skipped": None,
            "error": None, **kw}


def meta() -> dict[str, object]:
    return {"seed": 4, "minutes": 1, "backend": "vxlan", "hosts": 5, "garbage_left": ["/p/subnets/10.0.5.0-24"],
            "tcp": {"bytes": 10, "connections": 1, "corrupt": None},
            "resources": {"rss_mb": 40.0, "fds": 20, "threads": 5}}


def test_heal_time_is_the_first_consistent_round_after_the_end() -> None:
    rounds = [(1.0, True), (2.0, False), (2.5, False), (3.1, True), (4.0, True)]
    assert heal_time(2.2, rounds) == 0.9
    assert heal_time(0.5, rounds) == 0.5
    assert heal_time(4.5, rounds) is None


def test_loss_and_heal_per_kind() -> None:
    rounds = [(T0 + t / 10, not 105 <= t < 112) for t in range(0, 600)]
    records = [rec(1, "route-delete", T0 + 10.5, T0 + 10.5), rec(2, "route-delete", T0 + 30, T0 + 30),
               rec(3, "flanneld-sigkill", T0 + 40, T0 + 41), rec(4, "lease-delete", T0 + 50, T0 + 50, skipped="gone")]
    pairs = {(1, 2): [T0 + 10.6, T0 + 11.0, T0 + 40.5], (3, 4): [T0 + 10.7, T0 + 20.0, T0 + 40.6]}
    rep = summarize(meta(), records, pairs, 5000, rounds, [], T0, T0 + 60)
    k = rep["kinds"]["route-delete"]
    # the route deleted on h1 is charged with h1's pairs only: 2 of the 3 pings lost meanwhile
    assert k["injected"] == 2 and k["lost"] == {"median": 1, "max": 2} and k["heal_s"]["max"] == 0.7
    assert k["data_path"] is True
    assert rep["kinds"]["flanneld-sigkill"]["lost"] == {"median": 1, "max": 1}
    # no fault here overlaps a data-path fault (but itself): each one's loss is its own
    assert rep["kinds"]["flanneld-sigkill"]["alone"] == 1 and rep["kinds"]["route-delete"]["alone"] == 2
    assert rep["kinds"]["lease-delete"] == {"injected": 0, "skipped": 1, "errors": 0, "unhealed": 0,
                                            "data_path": False, "lost": {"median": None, "max": None},
                                            "heal_s": {"median": None, "max": None}, "alone": 0,
                                            "lost_alone": {"median": None, "max": None}}
    assert rep["pings_lost"] == 6 and sum(rep["loss_per_second"]) == 6 and rep["loss_per_second"][10:12] == [2, 1]
    table = markdown(rep)
    assert "**Invariant violations: 0**" in table
    assert "| route-delete | yes | 2 | 0 | 1 / 2 | 2: 1 / 2 | 0.35 / 0.7 | 0 |" in table
    assert "--seed 4" in table and "garbage at the end (flanneld rewrites" in table
    chart = svg(rep)
    assert chart.startswith("<svg") and chart.count("<line") == 4 + 2 and "route-delete" in chart


@pytest.mark.parametrize(("args", "needle"), [
    (["--backend", "aws-vpc"], "--backend aws-vpc: the soak runs udp, vxlan, host-gw, wireguard"),
    (["--backend", "nope"], "--backend nope: the soak runs udp, vxlan, host-gw, wireguard"),
    (["--minutes", "0"], "--minutes 0"),
    (["--hosts", "1"], "--hosts 1"),
    (["--kinds", "route-delete,bogus"], "--kinds: unknown fault kind bogus"),
])
def test_bad_arguments_are_one_line(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(args)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_good_arguments() -> None:
    o = parse(["--minutes", "2", "--seed", "9", "--backend", "host-gw", "--kinds", "route-delete, host-cut"])
    assert (o.minutes, o.seed, o.backend, o.kinds) == (2, 9, "host-gw", ("route-delete", "host-cut"))


def test_udp_report_lists_the_kinds_that_do_not_apply_and_a_restart_as_data_path() -> None:
    m = meta() | {"backend": "udp", "kinds_not_applicable": not_applicable("udp")}
    rep = summarize(m, [rec(1, "flanneld-sigkill", T0 + 5, T0 + 6)], {}, 100, [(T0 + 7, True)], [], T0, T0 + 10)
    assert rep["kinds"]["flanneld-sigkill"]["data_path"] is True
    table = markdown(rep)
    assert "Fault kinds not applicable on udp (not injected):" in table
    assert "- fdb-delete: only vxlan programs FDB entries" in table
    assert "| flanneld-sigkill | yes | 1 |" in table


def test_the_reproduce_line_names_every_argument_that_is_not_the_default() -> None:
    rep = meta() | {"kinds_enabled": list(kinds_for("vxlan")), "mean_gap_s": 6.0}
    assert reproduce_args(rep) == "--minutes 1 --seed 4 --backend vxlan"
    rep |= {"hosts": 3, "mean_gap_s": 2.0, "kinds_enabled": ["lease-delete"]}
    assert reproduce_args(rep) == "--minutes 1 --seed 4 --backend vxlan --hosts 3 --mean-gap 2 --kinds lease-delete"


def test_a_fault_overlapping_a_data_path_fault_is_not_counted_alone() -> None:
    rounds = [(T0 + t / 10, True) for t in range(0, 600)]
    records = [rec(1, "route-delete", T0 + 10, T0 + 10), rec(2, "lease-delete", T0 + 10.5, T0 + 10.5),
               rec(3, "lease-delete", T0 + 30, T0 + 30)]
    pairs = {(1, 2): [T0 + 10.2, T0 + 10.6]}
    k = summarize(meta(), records, pairs, 5000, rounds, [], T0, T0 + 60)["kinds"]["lease-delete"]
    assert k["lost"] == {"median": 0.5, "max": 1}  # the route's loss is charged to the deletion beside it
    assert (k["alone"], k["lost_alone"]) == (1, {"median": 0, "max": 0})  # but not when alone


def test_a_restart_reports_how_long_the_new_flanneld_took_to_be_ready() -> None:
    records = [rec(1, "flanneld-sigkill", T0 + 5, T0 + 9, ready_s=2.5), rec(2, "flanneld-sigkill", T0 + 20, T0 + 21,
                                                                              ready_s=0.5),
               rec(3, "lease-delete", T0 + 30, T0 + 30)]
    rep = summarize(meta(), records, {}, 100, [(T0 + 40, True)], [], T0, T0 + 50)
    assert rep["kinds"]["flanneld-sigkill"]["ready_s"] == {"median": 1.5, "max": 2.5}
    assert "ready_s" not in rep["kinds"]["lease-delete"]
    assert "flanneld-sigkill 1.5 / 2.5 s" in markdown(rep)
