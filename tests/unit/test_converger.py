"""The converger's own logic, with a recording target (the real targets — the kernel reconciler,
the udp pump, the cloud tables — are tested against the real thing in tests/e2e and
tests/integration): batching, full runs on kernel events but not on our own deletions, nothing
pruned before the first snapshot, failures logged once and retried with backoff."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping

import pytest

from pyflannel.converger import Converger
from pyflannel.core.errors import KernelError, LocalConfigError, TransientError
from pyflannel.core.host import HostFacts
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.plan import PumpPlan, Selection, select_peers

Net = ipaddress.IPv4Network
NETWORK = Net("10.0.0.0/16")


def lease(i: int, backend: str = "") -> Lease:
    return Lease(Net(f"10.0.{i}.0/24"), LeaseAttrs(ipaddress.IPv4Address(f"198.18.0.{i}"), None, backend))


class Recorder:
    """A target that records what it was given; ``fail`` makes the next applies raise it."""

    inline = True
    full_check_s: float | None = None

    def __init__(self) -> None:
        self.applied: list[tuple[PumpPlan, bool]] = []
        self.fail: Exception | None = None

    def apply(self, plan: object, full: bool) -> int:
        if self.fail is not None:
            raise self.fail
        assert isinstance(plan, PumpPlan)
        self.applied.append((plan, full))
        return len(plan)


class Planner:
    """A minimal backend: plans the peers' subnets as pump rows (pure)."""

    name = "test"
    needs_onlink = False

    def __init__(self) -> None:
        self.planned: list[Mapping[Net, Lease] | None] = []

    def select(self, peers: Mapping[Net, Lease]) -> Selection:
        return select_peers(peers, NETWORK, ("",), lambda le: None, self.name)

    def plan(self, own: Lease, peers: Mapping[Net, Lease] | None, facts: HostFacts) -> tuple[PumpPlan, ...]:
        self.planned.append(peers)
        rows = tuple(sorted((int(sn.network_address), sn.prefixlen, int(le.attrs.public_ip), 8285)
                            for sn, le in (peers or {}).items()))
        return (PumpPlan(rows),)


def converger(target: Recorder) -> tuple[Converger, Planner]:
    planner = Planner()
    conv = Converger(planner)  # type: ignore[arg-type]
    return conv, planner


def test_a_burst_is_planned_once_and_nothing_is_pruned_before_the_snapshot() -> None:
    target = Recorder()
    conv, planner = converger(target)

    async def scenario() -> None:
        await conv.start(lease(1), {"pump": target})
        assert planner.planned == [None], "before the first snapshot the plan has no peers at all"
        table: dict[Net, Lease] = {lease(1).subnet: lease(1)}
        for i in range(2, 102):  # a burst: 100 watch events before the converger gets to run
            table[lease(i).subnet] = lease(i)
            conv.mark_dirty(table)
        task = asyncio.create_task(conv.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(target.applied) >= 2:
                break
        task.cancel()

    asyncio.run(scenario())
    assert len(planner.planned) == 2, "one plan for the whole burst"
    plan, full = target.applied[-1]
    assert len(plan) == 100 and not full
    assert lease(1).subnet not in {Net((r[0], r[1])) for r in plan.routes}, "our own lease is no peer"
    assert conv.stats.peers == 100 and conv.stats.runs == 1


def test_kernel_events_ask_for_a_full_run_but_our_own_deletions_do_not() -> None:
    target = Recorder()
    conv, _ = converger(target)

    async def scenario() -> None:
        await conv.start(lease(1), {"pump": target})
        conv.reconciler.expected_gone.add(("route", Net("10.0.9.0/24")))
        conv.kick("our route to 10.0.9.0/24 was deleted", ("route", Net("10.0.9.0/24")))
        await asyncio.sleep(0)
        assert not conv._dirty.is_set(), "our own deletion wakes nobody"
        conv.kick("our route to 10.0.8.0/24 was deleted", ("route", Net("10.0.8.0/24")))
        await asyncio.sleep(0)
        assert conv._dirty.is_set() and "kernel" in conv._full

    asyncio.run(scenario())


def test_a_failing_target_is_logged_once_retried_and_reported_working_again(caplog: pytest.LogCaptureFixture) -> None:
    target = Recorder()
    conv, _ = converger(target)

    async def scenario() -> None:
        await conv.start(lease(1), {"pump": target})
        conv.mark_dirty({lease(2).subnet: lease(2)})
        target.fail = TransientError("the API is throttled")
        for _ in range(3):
            await conv.converge_once()
        assert conv.stats.errors == 3 and conv._retry_at is not None
        target.fail = None
        await conv.converge_once()

    with caplog.at_level(logging.INFO, logger="pyflannel.converger"):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if "reconcile failed" in r.getMessage()]
    assert len(failures) == 1, "the same failure is logged once, not once per retry"
    assert "pump reconcile works again" in caplog.text
    assert target.applied[-1][1], "the retry after a failure runs in full"


def test_start_stops_on_a_kernel_error_but_not_on_a_transient_one() -> None:
    target = Recorder()
    conv, _ = converger(target)
    target.fail = KernelError("create vxlan device flannel.1 failed: Operation not permitted (EPERM); run as root")
    with pytest.raises(LocalConfigError, match="EPERM"):
        asyncio.run(conv.start(lease(1), {"pump": target}))
    target2 = Recorder()
    conv2, _ = converger(target2)
    target2.fail = TransientError("throttled")
    asyncio.run(conv2.start(lease(1), {"pump": target2}))
    assert conv2.stats.errors == 1 and conv2._retry_at is not None
