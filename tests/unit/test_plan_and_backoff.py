"""Pure helpers the converger and the backends share: peer selection, shared public IPs, the
pump's rows, backoff and log-once, and the one-line netlink error."""

from __future__ import annotations

import errno
import ipaddress
import logging

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from pyflannel.backend.udp import plan_pump
from pyflannel.core.backoff import Backoff, LogOnce
from pyflannel.core.errors import KernelError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.plan import PumpPlan, select_peers, shared_public_ips
from pyflannel.kernel.netlink import describe, guard, is_gone

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def lease(subnet: str, ip: str, backend: str = "vxlan") -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(ip), None, backend))


def test_select_keeps_our_kind_inside_the_network_and_says_why_not() -> None:
    peers = {le.subnet: le for le in (lease("10.0.1.0/24", "198.18.0.1"), lease("10.9.1.0/24", "198.18.0.2"),
                                      lease("10.0.2.0/24", "198.18.0.3", "host-gw"),
                                      lease("10.0.3.0/24", "198.18.0.4"))}
    sel = select_peers(peers, N("10.0.0.0/16"), ("vxlan",),
                       lambda le: "no VtepMAC" if le.subnet == N("10.0.3.0/24") else None, "vxlan")
    assert list(sel.peers) == [N("10.0.1.0/24")]
    why = {str(le.subnet): reason for le, reason in sel.skipped}
    assert why == {"10.9.1.0/24": "its subnet is outside the network 10.0.0.0/16",
                   "10.0.2.0/24": "its backend is 'host-gw', this network runs vxlan",
                   "10.0.3.0/24": "no VtepMAC"}


def test_shared_public_ips_include_our_own() -> None:
    own = lease("10.0.1.0/24", "198.18.0.1")
    peers = {le.subnet: le for le in (lease("10.0.2.0/24", "198.18.0.1"), lease("10.0.3.0/24", "198.18.0.3"))}
    assert shared_public_ips(own, peers) == [(A("198.18.0.1"), [N("10.0.1.0/24"), N("10.0.2.0/24")])]
    assert shared_public_ips(own, {}) == []


def test_pump_rows_are_ints_sorted_and_give_the_source_check() -> None:
    peers = {le.subnet: le for le in (lease("10.0.9.0/24", "198.18.0.9", ""), lease("10.0.2.0/23", "198.18.0.2", ""))}
    plan = plan_pump(peers, 8285)
    assert plan.routes == ((int(A("10.0.2.0")), 23, int(A("198.18.0.2")), 8285),
                           (int(A("10.0.9.0")), 24, int(A("198.18.0.9")), 8285))
    assert plan.sources() == [(int(A("198.18.0.2")), int(A("10.0.2.0")), 0xFFFFFE00),
                              (int(A("198.18.0.9")), int(A("10.0.9.0")), 0xFFFFFF00)]
    assert plan == plan_pump(dict(reversed(list(peers.items()))), 8285) and len(PumpPlan()) == 0


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(0.2, 1.0)
    assert [b.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.2


def test_log_once_logs_each_distinct_failure_once_and_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.logonce")
    once = LogOnce(log, same=lambda m: m.split(":")[0])
    with caplog.at_level(logging.INFO, logger="test.logonce"):
        assert once.error("etcd down: timeout") and not once.error("etcd down: refused")
        assert once.error("config bad: x") and once.failing
        assert once.ok("works again") and not once.ok("works again")
    assert [r.getMessage() for r in caplog.records] == ["etcd down: timeout", "config bad: x", "works again"]


@pytest.mark.parametrize(("code", "fix"), [(errno.EPERM, "run flanneld as root"),
                                           (errno.EEXIST, "something else holds that name"),
                                           (errno.EOPNOTSUPP, "modprobe vxlan")])
def test_a_netlink_error_is_one_line_naming_the_object_the_errno_and_the_fix(code: int, fix: str) -> None:
    with pytest.raises(KernelError) as got, guard("create vxlan device flannel.1"):
        raise NetlinkError(code, "kernel says no")
    text = str(got.value)
    assert text.startswith("create vxlan device flannel.1 failed: ") and errno.errorcode[code] in text and fix in text
    assert "\n" not in text and not is_gone(got.value)
    assert "ENOENT" in describe("delete route 10.0.1.0/24", NetlinkError(errno.ENOENT))
    with pytest.raises(KernelError) as gone, guard("delete route"):
        raise NetlinkError(errno.ENOENT, "no such route")
    assert is_gone(gone.value)
