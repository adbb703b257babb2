"""The wireguard backend on an IPv6-only network (EnableIPv4 false), pure: the devices per Mode (Go's
``separate``: flannel-wg-v6 alone on ListenPortV6), the lease JSON (BackendV6Data alone, PublicIP
0.0.0.0), each device's peers over IPv6, a kernel plan without IPv4, and the one Mode refused."""

from __future__ import annotations

import argparse
import base64
import ipaddress

import pytest

from pyflannel.backend.wireguard import WireguardBackend
from pyflannel.cli.ctl_status import device_names
from pyflannel.core.allocate import NO_IPV4
from pyflannel.core.config import parse_config
from pyflannel.core.desired import DesiredState
from pyflannel.core.errors import ConfigError, FlannelError
from pyflannel.core.host import ExternalInterface, HostFacts
from pyflannel.core.lease import Lease, LeaseAttrs, render_lease_attrs
from pyflannel.core.plan import WgPlan, target_of

K1, K2, K3, OWN = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2, 3, 9))
A4, A6, N6 = ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv6Network
NONE = A4(0)
# an IPv6-only host: its interface's IPv4 address and PublicIP are 0.0.0.0 (kernel/iface.py)
EXT = ExternalInterface("eth0", 2, 1500, NONE, NONE, A6("2001:db8::d"), A6("2001:db8::d"))
NET6 = "2001:db8:42::/56"


def config(mode: str | None = None, extra: str = ""):
    backend = '{"Type": "wireguard"' + (f', "Mode": "{mode}"' if mode else "") + extra + "}"
    return parse_config(f'{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "{NET6}", "Backend": {backend}}}')


def backend(mode: str | None = None, extra: str = "") -> WireguardBackend:
    be = WireguardBackend(EXT, config(mode, extra))
    be.public_key = OWN
    be.kinds = {d.name: "tun" for d in be.devs}
    return be


def peer(i: int, data6: object = "default", pip6: str | None = "", port: int = 51821) -> Lease:
    """Host i of an IPv6-only network as Go writes it: key 0.0.0.0-0&2001:db8:42:i::-64, PublicIP
    0.0.0.0, PublicIPv6 2001:db8::(10+i), BackendV6Data only."""
    key = (K1, K2, K3)[(i - 1) % 3]
    v6 = {"PublicKey": key, "Port": port} if data6 == "default" else data6
    public6 = A6(pip6 or f"2001:db8::{10 + i:x}") if pip6 is not None else None
    return Lease(NO_IPV4, LeaseAttrs(NONE, public6, "wireguard", None, v6), N6(f"2001:db8:42:{i:x}::/64"))


OWN_LEASE = Lease(NO_IPV4, LeaseAttrs(NONE, A6("2001:db8::d"), "wireguard"), N6("2001:db8:42:3::/64"))


def plans(be: WireguardBackend, *leases: Lease) -> tuple[dict[str, WgPlan], DesiredState]:
    sel = be.select({le.ident: le for le in leases})
    out = be.plan(OWN_LEASE, sel.peers, HostFacts())
    wgs = {target_of(p): p for p in out if isinstance(p, WgPlan)}
    assert isinstance(out[-1], DesiredState) and len(out) == len(wgs) + 1
    return wgs, out[-1]


def rows(plan: WgPlan) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((p.public_key, p.endpoint, p.allowed_ips) for p in plan.peers)


def no_ipv4(kernel: DesiredState, dev: str) -> None:
    """The kernel plan of an IPv6-only network: the device, its /128 and the IPv6 network's route."""
    assert kernel.network is None and kernel.network6 == N6(NET6) and kernel.networks == (N6(NET6),)
    assert [lk.name for lk in kernel.links] == [dev] and all(lk.mtu == 1420 for lk in kernel.links)
    assert [(a.dev, str(a.address)) for a in kernel.addresses] == [(dev, "2001:db8:42:3::/128")]
    assert sorted((str(r.dst), r.dev) for r in kernel.routes) == [(NET6, dev)]


def test_separate_is_flannel_wg_v6_alone_on_listen_port_v6() -> None:
    be = backend()  # Go's default Mode
    assert [(d.name, d.port, d.v4, d.v6, d.target) for d in be.devs] == [("flannel-wg-v6", 51821, False, True,
                                                                          "wg-v6")]
    # Go's newSubnetAttrs with EnableIPv4 false: no BackendData, the zero IP4 as PublicIP
    assert render_lease_attrs(be.lease_attrs()) == (
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::d","BackendType":"wireguard",'
        b'"BackendV6Data":{"PublicKey":"' + OWN.encode() + b'","Port":51821}}')
    # Port 0 (an older flannel) means our ListenPortV6, as Go
    wgs, kernel = plans(be, peer(1), peer(2, port=0), peer(4, port=7000))
    assert list(wgs) == ["wg-v6"] and (wgs["wg-v6"].dev, wgs["wg-v6"].listen_port) == ("flannel-wg-v6", 51821)
    assert rows(wgs["wg-v6"]) == [(K1, "[2001:db8::b]:51821", ("2001:db8:42:1::/64",)),
                                  (K1, "[2001:db8::e]:7000", ("2001:db8:42:4::/64",)),
                                  (K2, "[2001:db8::c]:51821", ("2001:db8:42:2::/64",))]
    no_ipv4(kernel, "flannel-wg-v6")


@pytest.mark.parametrize("mode", ["auto", "ipv6"])
def test_auto_and_ipv6_modes_are_flannel_wg_carrying_ipv6_alone(mode: str) -> None:
    be = backend(mode, ', "ListenPort": 7000')
    assert [(d.name, d.port, d.v4, d.v6) for d in be.devs] == [("flannel-wg", 7000, False, True)]
    # the port it listens on (Go publishes ListenPortV6, 51821, where nothing listens)
    assert render_lease_attrs(be.lease_attrs()) == (
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::d","BackendType":"wireguard",'
        b'"BackendV6Data":{"PublicKey":"' + OWN.encode() + b'","Port":7000}}')
    # every peer over IPv6, a ULA one too (Go's selectMode would pick its PublicIP 0.0.0.0 there)
    wgs, kernel = plans(be, peer(1, port=7000), peer(2, pip6="fd00::12", port=7000))
    assert list(wgs) == ["wg"] and wgs["wg"].dev == "flannel-wg"
    assert rows(wgs["wg"]) == [(K1, "[2001:db8::b]:7000", ("2001:db8:42:1::/64",)),
                               (K2, "[fd00::12]:7000", ("2001:db8:42:2::/64",))]
    no_ipv4(kernel, "flannel-wg")  # no 0.0.0.0/0 route through the device (Go adds its empty Network)


def test_ipv4_mode_on_an_ipv6_only_network_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        WireguardBackend.check_config(config("ipv4"))
    msg = str(err.value)
    assert 'Mode "ipv4"' in msg and "IPv6-only (EnableIPv4 false)" in msg and 'Mode "separate"' in msg
    assert "\n" not in msg


def test_a_peer_without_a_usable_ipv6_half_is_skipped_with_the_reason() -> None:
    be = backend()
    bad_key, no_public6 = peer(1, data6={"PublicKey": "nope", "Port": 51821}), peer(2, pip6=None)
    bad_port, good = peer(4, data6={"PublicKey": K3, "Port": "x"}), peer(5)
    sel = be.select({le.ident: le for le in (bad_key, no_public6, bad_port, good)})
    assert list(sel.peers) == [good.ident] and sel.notes == ()
    assert sorted(why for _, why in sel.skipped) == [
        "it has no IPv6 subnet or PublicIPv6 (this network is IPv6-only)",
        "its BackendV6Data has no valid Port: {'PublicKey': '" + K3 + "', 'Port': 'x'}",
        "its BackendV6Data has no valid PublicKey: {'PublicKey': 'nope', 'Port': 51821}"]


@pytest.mark.parametrize("mode,devs", [(None, ["flannel-wg-v6"]), ("separate", ["flannel-wg-v6"]),
                                       ("auto", ["flannel-wg"]), ("ipv6", ["flannel-wg"])])
def test_flannelctl_status_looks_for_the_device_the_mode_makes(mode: str | None, devs: list[str]) -> None:
    assert device_names(config(mode)) == devs


def test_the_lab_runs_wireguard_ipv6_only_and_still_refuses_udp(monkeypatch) -> None:
    from pyflannel.cli import ctl_lab

    monkeypatch.setattr(ctl_lab.os, "geteuid", lambda: 0)

    def args(backend: str) -> argparse.Namespace:
        return argparse.Namespace(action="up", backend=backend, ipv6="only", hosts=0, kube=False, name="x",
                                  force=False)

    # --hosts 0 stops the command at the next check: the backend and --ipv6 only passed
    with pytest.raises(FlannelError, match="--hosts 0"):
        ctl_lab.lab_command(args("wireguard"))
    with pytest.raises(FlannelError, match="backend udp cannot run an IPv6-only network"):
        ctl_lab.lab_command(args("udp"))
