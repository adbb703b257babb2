"""The reconciler's two paths against a real kernel, in a namespace of their own: the full run
(read, diff, apply) and the lease-event fast path that sends only the change, never overwrites a
route it did not create, and falls back to a full run when the kernel refuses a message."""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import os
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
from pyroute2 import IPRoute

from pyflannel.core.desired import DesiredState, Route
from pyflannel.kernel.reconciler import Reconciler
from pyflannel.lab.netns import ns_add, ns_delete, sh

T = TypeVar("T")
NET = ipaddress.IPv4Network("10.0.0.0/16")
GW = ipaddress.IPv4Address("198.18.0.9")
CLONE_NEWNET = 0x40000000


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered ``ns`` (setns moves only the calling thread)."""
    out: dict[str, object] = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            out["error"] = err
        finally:
            os.close(fd)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


@pytest.fixture
def ns():
    name = f"pfrec-{uuid.uuid4().hex[:6]}"
    ns_add(name)
    try:
        sh(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        for dev in ("v0", "v1"):
            sh(["ip", "-n", name, "link", "set", dev, "up"])
        sh(["ip", "-n", name, "addr", "add", "198.18.0.1/24", "dev", "v0"])
        yield name
    finally:
        ns_delete(name)


def state(*thirds: int, gw: ipaddress.IPv4Address = GW) -> DesiredState:
    return DesiredState(NET, routes=frozenset(Route(ipaddress.IPv4Network(f"10.0.{t}.0/24"), "v0", gw)
                                              for t in thirds))


def routes(ns: str) -> dict[str, str]:
    """dst -> the whole `ip route` line, for every route in 10.0.0.0/16."""
    out = sh(["ip", "-n", ns, "-4", "route", "show", "root", str(NET)]).stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_delta_sends_only_the_change_and_tracks_it(ns: str) -> None:
    rec = Reconciler()
    in_netns(ns, lambda: rec.apply_delta(state(1, 2, 3)))  # no earlier run: a full one
    assert (rec.full_runs, rec.delta_runs) == (1, 0)
    plan, _ = in_netns(ns, lambda: rec.apply_delta(state(1, 2, 3, 4)))
    assert [str(r.dst) for r in plan.put_routes] == ["10.0.4.0/24"] and not plan.del_routes
    plan, _ = in_netns(ns, lambda: rec.apply_delta(state(2, 3, 4)))
    assert [str(r.dst) for r in plan.del_routes] == ["10.0.1.0/24"]
    assert (rec.full_runs, rec.delta_runs) == (1, 2)
    got = routes(ns)
    assert sorted(got) == ["10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24"]
    assert all("via 198.18.0.9" in line and "proto 151" in line for line in got.values())
    # a changed gateway is replaced in place by the fast path too
    in_netns(ns, lambda: rec.apply_delta(state(2, 3, 4, gw=ipaddress.IPv4Address("198.18.0.10"))))
    assert all("via 198.18.0.10" in line for line in routes(ns).values())
    assert rec.delta_runs == 3


def test_delta_never_overwrites_a_route_that_appeared_since_the_last_read(ns: str) -> None:
    rec = Reconciler()
    in_netns(ns, lambda: rec.apply(state(1)))
    sh(["ip", "-n", ns, "route", "add", "10.0.7.0/24", "via", "198.18.0.77", "dev", "v0"])  # an admin's route
    plan, _ = in_netns(ns, lambda: rec.apply_delta(state(1, 7, 8)))
    got = routes(ns)
    assert "via 198.18.0.77" in got["10.0.7.0/24"] and "proto 151" not in got["10.0.7.0/24"]
    assert "proto 151" in got["10.0.8.0/24"]
    assert rec.full_runs == 2, "the refused exclusive add must fall back to a full run"
    assert any("not replacing the existing route to 10.0.7.0/24" in n for n in plan.notes)


def test_go_flannels_route_exactly_as_ours_is_adopted_any_other_left_alone(ns: str) -> None:
    """After an in-place switch from Go flannel its routes are still there, protocol boot: one
    exactly as we want it is replaced with ours (and goes when its lease goes); one with another
    gateway, or of another daemon's protocol, is left alone."""
    sh(["ip", "-n", ns, "route", "add", "10.0.1.0/24", "via", str(GW), "dev", "v0"])  # Go flannel's
    sh(["ip", "-n", ns, "route", "add", "10.0.2.0/24", "via", "198.18.0.77", "dev", "v0"])  # an admin's
    sh(["ip", "-n", ns, "route", "add", "10.0.3.0/24", "via", str(GW), "dev", "v0", "proto", "static"])
    rec = Reconciler()
    plan, _ = in_netns(ns, lambda: rec.apply(state(1, 2, 3)))
    got = routes(ns)
    assert got["10.0.1.0/24"].split() == ["10.0.1.0/24", "via", str(GW), "dev", "v0", "proto", "151"]
    assert "proto" not in got["10.0.2.0/24"] and "via 198.18.0.77" in got["10.0.2.0/24"]
    assert "proto static" in got["10.0.3.0/24"]
    assert [n.split()[6] for n in plan.notes] == ["10.0.2.0/24:", "10.0.3.0/24:"]  # "...route to X: it is..."
    in_netns(ns, lambda: rec.apply(state(2, 3)))  # 10.0.1.0/24's lease is gone: so is the adopted route
    assert sorted(routes(ns)) == ["10.0.2.0/24", "10.0.3.0/24"]


def test_delta_does_not_see_hand_deletions_but_the_full_run_repairs_them(ns: str) -> None:
    rec = Reconciler()
    in_netns(ns, lambda: rec.apply(state(1, 2)))
    sh(["ip", "-n", ns, "route", "del", "10.0.1.0/24"])
    in_netns(ns, lambda: rec.apply_delta(state(1, 2, 3)))
    assert sorted(routes(ns)) == ["10.0.2.0/24", "10.0.3.0/24"]  # the fast path trusts its memory
    plan, _ = in_netns(ns, lambda: rec.apply(state(1, 2, 3)))
    assert [str(r.dst) for r in plan.put_routes] == ["10.0.1.0/24"]
    assert sorted(routes(ns)) == ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]


def test_delta_falls_back_to_a_full_run_when_the_device_is_gone(ns: str) -> None:
    rec = Reconciler()
    in_netns(ns, lambda: rec.apply(state(1)))
    sh(["ip", "-n", ns, "link", "del", "v0"])  # takes v1 and the routes with it
    sh(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])  # a new ifindex
    for dev in ("v0", "v1"):
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
    sh(["ip", "-n", ns, "addr", "add", "198.18.0.1/24", "dev", "v0"])
    in_netns(ns, lambda: rec.apply_delta(state(1, 2)))
    assert sorted(routes(ns)) == ["10.0.1.0/24", "10.0.2.0/24"]
    assert rec.full_runs == 2


def test_monitor_repairs_hand_deletions_at_once_but_not_our_own(ns: str) -> None:
    """host-gw through the daemon's converger and its kernel monitor: our own route deletions
    cause no full run; a route deleted by hand does, at once."""
    from pyflannel.backend.hostgw import HostGwBackend
    from pyflannel.converger import Converger
    from pyflannel.core.config import parse_config
    from pyflannel.core.host import ExternalInterface
    from pyflannel.core.lease import Lease, LeaseAttrs
    from pyflannel.kernel.host import KernelHost

    def lease(third: int) -> Lease:
        return Lease(ipaddress.IPv4Network(f"10.0.{third}.0/24"), LeaseAttrs(GW, None, "host-gw"))

    async def until(cond: Callable[[], bool], what: str) -> None:
        for _ in range(250):
            if cond():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    async def scenario() -> tuple[int, int, int, int]:
        def index() -> int:
            with IPRoute() as ipr:  # a sync pyroute2 call: never on the loop's own thread
                return int(ipr.link_lookup(ifname="v0")[0])

        idx = await asyncio.to_thread(index)
        ext = ExternalInterface("v0", idx, 1500, ipaddress.IPv4Address("198.18.0.1"),
                                ipaddress.IPv4Address("198.18.0.1"))
        be = HostGwBackend(ext, parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}}'))
        conv = Converger(be, full_check_s=3600)
        await be.prepare(KernelHost(conv.reconciler))
        await conv.start(lease(1), await be.start(lease(1)))
        task = asyncio.create_task(conv.run())
        rec = conv.reconciler
        try:
            table = {le.subnet: le for le in map(lease, (1, 2, 3, 4))}
            conv.mark_dirty(table)  # the first snapshot: a full run
            await until(lambda: len(routes(ns)) == 3, "three peer routes")
            first = rec.full_runs
            del table[ipaddress.IPv4Network("10.0.4.0/24")]
            conv.mark_dirty(table)  # delta: one deletion of ours
            await until(lambda: len(routes(ns)) == 2, "the deleted peer's route gone")
            await asyncio.sleep(0.5)
            after_own = rec.full_runs
            sh(["ip", "-n", ns, "route", "del", "10.0.2.0/24"])  # by hand
            await until(lambda: len(routes(ns)) == 2 and rec.full_runs > after_own, "the hand-deleted route back")
            return first, after_own, rec.full_runs, len(routes(ns))
        finally:
            task.cancel()
            await conv.close()
            await be.close()

    first, after_own, repaired, n_routes = in_netns(ns, lambda: asyncio.run(scenario()))
    assert after_own == first, "deleting a route ourselves must not trigger a full run"
    assert repaired == after_own + 1, "a hand-deleted route must trigger one full run at once"
    assert n_routes == 2


def _vxlan_prepare(ns: str) -> str:
    """Run the vxlan backend's prepare in ``ns`` the way the daemon does; the error it raises."""
    from pyflannel.backend.vxlan import VxlanBackend
    from pyflannel.core.config import parse_config
    from pyflannel.core.errors import LocalConfigError
    from pyflannel.core.host import ExternalInterface
    from pyflannel.kernel.host import KernelHost

    def body() -> str:
        with IPRoute() as ipr:
            idx = int(ipr.link_lookup(ifname="v0")[0])
        ext = ExternalInterface("v0", idx, 1500, ipaddress.IPv4Address("198.18.0.1"),
                                ipaddress.IPv4Address("198.18.0.1"))
        be = VxlanBackend(ext, parse_config('{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan"}}'))
        host = KernelHost(Reconciler())
        try:
            asyncio.run(be.prepare(host))
        except LocalConfigError as err:
            return str(err)
        finally:
            host.release()
        return ""

    return in_netns(ns, body)


def test_a_device_that_cannot_be_created_is_one_line_naming_the_cause_and_the_fix(ns: str) -> None:
    # another VXLAN device already uses VNI 1 on the default port: the kernel answers EEXIST
    sh(["ip", "-n", ns, "link", "add", "vx-other", "type", "vxlan", "id", "1", "dstport", "8472", "local",
        "198.18.0.1", "dev", "v0"])
    msg = _vxlan_prepare(ns)
    assert "create vxlan device flannel.1 (VNI 1, local 198.18.0.1) failed" in msg and "(EEXIST)" in msg, msg
    assert "another device uses that VNI" in msg or "remove it" in msg, msg
    assert "\n" not in msg and "Traceback" not in msg
    sh(["ip", "-n", ns, "link", "del", "vx-other"])
    # a device of another kind holds the name
    sh(["ip", "-n", ns, "link", "add", "flannel.1", "type", "bridge"])
    msg = _vxlan_prepare(ns)
    assert "a device named flannel.1 exists but is a bridge device: remove or rename it" in msg, msg


def test_a_second_network_asking_for_the_same_vxlan_device_is_refused(ns: str) -> None:
    """Two flanneld of two networks on one host with the same VNI would share flannel.1 and delete
    each other's neighbour and FDB entries: the second one is refused, naming the fix."""
    from pyflannel.backend.vxlan import VxlanBackend
    from pyflannel.core.config import parse_config
    from pyflannel.core.errors import LocalConfigError
    from pyflannel.core.host import ExternalInterface
    from pyflannel.kernel.host import KernelHost

    def body() -> tuple[str, str]:
        with IPRoute() as ipr:
            idx = int(ipr.link_lookup(ifname="v0")[0])
        ext = ExternalInterface("v0", idx, 1500, ipaddress.IPv4Address("198.18.0.1"),
                                ipaddress.IPv4Address("198.18.0.1"))

        def backend(net: str, vni: int) -> VxlanBackend:
            config = f'{{"Network": "{net}", "Backend": {{"Type": "vxlan", "VNI": {vni}}}}}'
            return VxlanBackend(ext, parse_config(config))

        # The claims live as long as these objects (in flanneld: the process): release them, or
        # this long-lived test process would hold them after the namespace is gone, and a later
        # namespace that reuses its inode would find flannel.1 taken.
        hosts = [KernelHost(Reconciler()) for _ in range(3)]
        try:
            asyncio.run(backend("10.10.0.0/16", 1).prepare(hosts[0]))
            try:
                asyncio.run(backend("10.20.0.0/16", 1).prepare(hosts[1]))
                refused = ""
            except LocalConfigError as err:
                refused = str(err)
            asyncio.run(backend("10.20.0.0/16", 2).prepare(hosts[2]))  # its own VNI: fine
            return refused, sh(["ip", "-n", ns, "-br", "link"]).stdout
        finally:
            for host in hosts:
                host.release()

    refused, links = in_netns(ns, body)
    assert refused.startswith("flannel.1 is already used on this host by the flanneld of network 10.10.0.0/16: "
                              "two networks on one host need different VXLAN VNIs"), refused
    assert '"VNI": 2' in refused
    assert "flannel.1" in links and "flannel.2" in links


def test_a_full_run_recreates_a_deleted_device_before_setting_its_sysctls(ns: str) -> None:
    """flannel.1 deleted by hand, and the full run comes after the kernel has removed it (the
    chaos soak, seed 1 on vxlan: a busy host): its accept_ra sysctl is gone with it. The run must
    create the device first and then set it, not fail on the sysctl before the device and retry
    the same failure for good."""
    from pyflannel.core.desired import LinkSpec, VxlanSpec

    idx = int(sh(["ip", "-n", ns, "-j", "link", "show", "v0"]).stdout.split('"ifindex":')[1].split(",")[0])
    spec = LinkSpec("flannel.1", "vxlan", 1450, "aa:bb:cc:00:00:01",
                    VxlanSpec(1, 0, ipaddress.IPv4Address("198.18.0.1"), idx))
    desired = DesiredState(NET, links=(spec,), routes=frozenset({Route(ipaddress.IPv4Network("10.0.5.0/24"),
                                                                       "flannel.1", ipaddress.IPv4Address("10.0.5.0"),
                                                                       True)}),
                           sysctls=(("net/ipv6/conf/flannel.1/accept_ra", "0"),))
    rec = Reconciler()
    in_netns(ns, lambda: rec.apply(desired))
    sh(["ip", "-n", ns, "link", "del", "flannel.1"])
    in_netns(ns, lambda: rec.apply(desired))
    assert "aa:bb:cc:00:00:01" in sh(["ip", "-n", ns, "link", "show", "flannel.1"]).stdout
    assert "10.0.5.0/24" in routes(ns)
    accept_ra = sh(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra"]).stdout
    assert accept_ra.strip() == "0"
