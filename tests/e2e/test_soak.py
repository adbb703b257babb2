"""The chaos soak (issue 20) as part of ``make test``: two minutes of random faults from a fixed seed
on five vxlan hosts over a three-member TLS etcd, under pings at 10 ms between every pair and a
content-checked TCP stream: no invariant may be violated. Nothing here asserts a timing; the report
(loss, time to heal) is written to the test's own directory and printed.

And the soak must be able to fail: a fault that no flanneld heals (a route planted by hand, which
flanneld does not own and leaves alone) is a violation that stops the run, with the seed, the fault
sequence and the logs kept."""

from __future__ import annotations

import json
import os

import pytest

from pyflannel.lab.cluster import stop_everything
from pyflannel.lab.netns import in_ns, ns_list, sh
from pyflannel.lab.soak.faults import Injector
from pyflannel.lab.soak.run import Options, Soak
from pyflannel.lab.soak.schedule import Fault

SEED = 20


def _soak(opts: Options) -> dict:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces)")
    stop_everything(opts.name)
    try:
        return Soak(opts).run()
    finally:
        left = [ns for ns in ns_list() if ns.startswith(f"{opts.name}-")]
        assert not left, f"namespaces of the soak left after it: {left}"


def test_two_minute_soak_has_no_invariant_violation(tmp_path) -> None:
    rep = _soak(Options(minutes=2, seed=SEED, backend="vxlan", hosts=5, name="pfss", out=str(tmp_path)))
    print((tmp_path / "soak-latest.md").read_text())
    assert rep["violations"] == [], (tmp_path / "soak-latest.md").read_text()
    injected = sum(k["injected"] for k in rep["kinds"].values())
    assert injected >= 8, rep["kinds"]
    assert not any(k["errors"] for k in rep["kinds"].values()), [f for f in rep["faults"] if f["error"]]
    assert rep["tcp"]["corrupt"] is None and rep["tcp"]["bytes"] > 0
    assert rep["pings_sent"] > 0 and len(rep["loss_per_second"]) >= 100
    assert json.loads((tmp_path / "soak-latest.json").read_text())["seed"] == SEED


def test_an_unhealed_fault_is_a_violation_that_keeps_the_logs(tmp_path, monkeypatch) -> None:
    def plant_route(self: Injector, fault: Fault) -> str:
        host = self.soak.host(fault.target)
        sh(in_ns(host.ns, "ip", "route", "add", "10.0.250.0/24", "via", "198.18.0.99", "dev", "eth0"))
        return "planted a route to 10.0.250.0/24"

    monkeypatch.setattr(Injector, "_iptables_flush", plant_route)
    opts = Options(minutes=1, seed=SEED, backend="vxlan", hosts=2, kinds=("iptables-flush",), mean_gap=2.0,
                   bound=3.0, name="pfsv", out=str(tmp_path))
    rep = _soak(opts)
    assert len(rep["violations"]) == 1, rep["violations"]
    assert "not healed 3s after the last fault" in rep["violations"][0]["what"]
    assert "route 10.0.250.0/24 via 198.18.0.99 dev eth0" in rep["violations"][0]["what"]
    assert rep["stopped_early"] and rep["seconds"] < 60
    kept = tmp_path / f"soak-latest-logs-seed{SEED}"
    assert (kept / "violations.json").exists() and (kept / "h1" / "flanneld.log").exists()
    assert json.loads((kept / "violations.json").read_text())["faults"][0]["fault"]["kind"] == "iptables-flush"
