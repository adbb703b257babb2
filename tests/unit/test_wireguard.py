"""The wireguard backend, pure parts: options, lease JSON, the peer set, the `wg set` diff; and
the key file (kernel/wireguard.py, on a temporary folder)."""

from __future__ import annotations

import base64
import ipaddress
import os
import stat

import pytest

from pyflannel.backend.wireguard import WireguardBackend, parse_options, plan_peers
from pyflannel.core.config import parse_config
from pyflannel.core.errors import ConfigError, LocalConfigError
from pyflannel.core.host import ExternalInterface, HostFacts
from pyflannel.core.lease import Lease, LeaseAttrs, parse_lease_attrs, render_lease_attrs
from pyflannel.core.plan import WgPlan, target_of
from pyflannel.core.wgconf import new_private_key, parse_dump, set_args, valid_key
from pyflannel.kernel import wireguard as kwg

K1 = base64.b64encode(b"\x01" * 32).decode()
K2 = base64.b64encode(b"\x02" * 32).decode()
K3 = base64.b64encode(b"\x03" * 32).decode()
OWN = base64.b64encode(b"\x09" * 32).decode()
EXT = ExternalInterface("eth0", 2, 1500, ipaddress.IPv4Address("198.18.0.11"), ipaddress.IPv4Address("198.18.0.11"))
Net = ipaddress.IPv4Network


def config(backend: str = '{"Type": "wireguard"}'):
    return parse_config(f'{{"Network": "10.0.0.0/16", "Backend": {backend}}}')


def lease(subnet: str, ip: str, data: object) -> Lease:
    return Lease(Net(subnet), LeaseAttrs(ipaddress.IPv4Address(ip), None, "wireguard", data))


def test_defaults_as_go() -> None:
    o = parse_options(config(), 1500)
    assert (o.listen_port, o.listen_port_v6, o.mtu, o.psk, o.keepalive, o.mode) == (
        51820, 51821, 1500, "", 0, "separate")
    backend = WireguardBackend(EXT, config())
    assert backend.mtu() == 1420  # MTU - 80


@pytest.mark.parametrize("backend, fragment", [
    ('{"Type": "wireguard", "PSK": "secret"}', "PSK must be a WireGuard key"),
    ('{"Type": "wireguard", "PSK": "' + base64.b64encode(b"x" * 16).decode() + '"}', "PSK must be"),
    ('{"Type": "wireguard", "ListenPort": 0}', "ListenPort must be an integer 1..65535"),
    ('{"Type": "wireguard", "ListenPort": 65536}', "ListenPort must be an integer 1..65535"),
    ('{"Type": "wireguard", "ListenPortV6": -1}', "ListenPortV6 must be an integer 1..65535"),
    ('{"Type": "wireguard", "Mode": "both"}', "no valid Mode configured"),
])
def test_bad_options_one_line(backend: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        WireguardBackend.check_config(config(backend))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_psk_accepted_and_never_in_repr() -> None:
    o = parse_options(config(f'{{"Type": "wireguard", "PSK": "{K3}", "PersistentKeepaliveInterval": 25}}'), 1500)
    assert o.psk == K3 and o.keepalive == 25
    plan = WgPlan("flannel-wg", "/k", 51820, (), K3)
    assert K3 not in repr(plan)


def test_lease_json_byte_for_byte_as_go() -> None:
    backend = WireguardBackend(EXT, config())
    backend.public_key = K1
    raw = render_lease_attrs(backend.lease_attrs())
    assert raw == (b'{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"wireguard",'
                   b'"BackendData":{"PublicKey":"' + K1.encode() + b'","Port":51820}}')
    assert parse_lease_attrs(raw) == backend.lease_attrs()


def test_keys() -> None:
    key = new_private_key()
    raw = base64.b64decode(key)
    assert valid_key(key) and raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40
    assert not valid_key("x" * 44) and not valid_key(K1[:-1]) and not valid_key(None) and not valid_key(K1 + "\n")


def test_peer_set_skips_bad_keys_with_a_reason() -> None:
    backend = WireguardBackend(EXT, config())
    peers = {Net("10.0.5.0/24"): lease("10.0.5.0/24", "198.18.0.12", {"PublicKey": K1, "Port": 51820}),
             Net("10.0.6.0/24"): lease("10.0.6.0/24", "198.18.0.13", {"PublicKey": "not-a-key", "Port": 51820}),
             Net("10.0.7.0/24"): lease("10.0.7.0/24", "198.18.0.14", {"PublicKey": K2, "Port": 0})}
    sel = backend.select(peers)
    assert set(sel.peers) == {Net("10.0.5.0/24"), Net("10.0.7.0/24")}
    assert [why for _, why in sel.skipped] == ["its BackendData has no valid PublicKey: "
                                               "{'PublicKey': 'not-a-key', 'Port': 51820}"]
    wg_peers = plan_peers(backend.opts, backend.devs[0], sel.peers)
    assert [(p.public_key, p.endpoint, p.allowed_ips) for p in wg_peers] == [
        (K1, "198.18.0.12:51820", ("10.0.5.0/24",)), (K2, "198.18.0.14:51820", ("10.0.7.0/24",))]  # Port 0: ours


def test_plans_for_two_targets_and_no_prune_before_the_snapshot() -> None:
    backend = WireguardBackend(EXT, config())
    backend.kinds = {"flannel-wg": "tun"}
    own = lease("10.0.3.0/24", "198.18.0.11", {"PublicKey": OWN, "Port": 51820})
    wg, kernel = backend.plan(own, None, HostFacts())
    assert target_of(wg) == "wg" and target_of(kernel) == "kernel"
    assert isinstance(wg, WgPlan) and not wg.prune and wg.peers == ()
    assert [str(a.address) for a in kernel.addresses] == ["10.0.3.0/32"]
    assert [(str(r.dst), r.dev) for r in kernel.routes] == [("10.0.0.0/16", "flannel-wg")]
    assert kernel.links[0].mtu == 1420
    wg2, _ = backend.plan(own, {}, HostFacts())
    assert isinstance(wg2, WgPlan) and wg2.prune


DUMP = ("PRIV\t" + OWN + "\t51820\toff\n"
        + K1 + "\t(none)\t198.18.0.50:51820\t10.0.5.0/24\t1700000000\t100\t200\toff\n"
        + K2 + "\t(none)\t198.18.0.50:51820\t10.0.7.0/24\t0\t0\t0\toff\n")


def test_dump_parse_drops_the_private_key() -> None:
    state = parse_dump(DUMP)
    assert state.public_key == OWN and state.listen_port == 51820 and "PRIV" not in repr(state)
    assert state.peers[K1].latest_handshake == 1700000000 and state.peers[K1].rx == 100
    assert state.peers[K1].allowed_ips == ("10.0.5.0/24",)


def test_stale_peer_removed_by_key_not_endpoint() -> None:
    """Two hosts behind one NAT address: the lease of one goes away, only its peer goes."""
    from pyflannel.core.plan import WgPeer

    keep = WgPeer(K1, "198.18.0.50:51820", ("10.0.5.0/24",))
    plan = WgPlan("flannel-wg", "/k", 51820, (keep,))
    assert set_args(plan, parse_dump(DUMP), OWN, "/dev/null", {}) == ["peer", K2, "remove"]
    # before the first snapshot nothing is removed
    assert set_args(WgPlan("flannel-wg", "/k", 51820, (keep,), prune=False), parse_dump(DUMP), OWN, "/dev/null",
                    {}) == []


def test_new_peer_device_fix_and_roaming_kept() -> None:
    from pyflannel.core.plan import WgPeer

    state = parse_dump(DUMP)
    peers = (WgPeer(K1, "198.18.0.12:51820", ("10.0.5.0/24",)), WgPeer(K2, "198.18.0.50:51820", ("10.0.7.0/24",)),
             WgPeer(K3, "198.18.0.13:51820", ("10.0.8.0/24",), 25))
    plan = WgPlan("flannel-wg", "/k", 51821, peers, K3)
    args = set_args(plan, state, K2, "/run/psk", {K1: "198.18.0.12:51820"})
    # K1 roamed (behind a NAT) to .50 after we set .12: left alone except for the new PSK
    assert args == ["listen-port", "51821", "private-key", "/k",
                    "peer", K1, "preshared-key", "/run/psk",
                    "peer", K2, "preshared-key", "/run/psk",
                    "peer", K3, "endpoint", "198.18.0.13:51820", "allowed-ips", "10.0.8.0/24",
                    "persistent-keepalive", "25", "preshared-key", "/run/psk"]


def test_key_file_made_0400_then_reused(tmp_path) -> None:
    path = str(tmp_path / "flannel" / "wgkey")
    pub = kwg.load_key(path)
    assert valid_key(pub)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    with open(path) as f:
        assert valid_key(f.read())  # base64, no newline, as Go writes it
    assert kwg.load_key(path) == pub


def test_key_file_loose_or_garbage_is_refused_without_the_key(tmp_path) -> None:
    path = str(tmp_path / "wgkey")
    kwg.load_key(path)
    with open(path) as f:
        secret = f.read()
    os.chmod(path, 0o644)
    with pytest.raises(LocalConfigError) as err:
        kwg.load_key(path)
    assert "loose permissions" in str(err.value) and "chmod 400" in str(err.value) and secret not in str(err.value)
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        f.write("garbage")
    with pytest.raises(LocalConfigError, match="holds no WireGuard private key"):
        kwg.load_key(path)
    os.chmod(path, 0o400)
    with open(path, "w") as f:  # root writes through 0400
        f.write(secret[:-2])
    with pytest.raises(LocalConfigError) as err:
        kwg.load_key(path)
    assert secret[:-2] not in str(err.value)


def test_key_file_in_a_folder_we_cannot_read(tmp_path) -> None:
    folder = tmp_path / "k"
    folder.mkdir()
    (folder / "wgkey").mkdir()  # a directory where the key file should be
    with pytest.raises(LocalConfigError, match="cannot read the wireguard key file"):
        kwg.load_key(str(folder / "wgkey"))


def test_no_kernel_wireguard_and_no_wireguard_go_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(kwg.shutil, "which", lambda name: None)
    with pytest.raises(LocalConfigError) as err:
        kwg._start_wireguard_go("flannel-wg")
    assert "apt-get install wireguard-go" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LocalConfigError, match="apt-get install wireguard-tools"):
        kwg._wg("show")


def test_metrics_per_peer_handshake_age_and_bytes() -> None:
    from pyflannel.metrics import wireguard_metrics

    peers = [{"public_key": K1, "subnet": "10.0.5.0/24", "endpoint": "198.18.0.12:51820",
              "latest_handshake": 1000, "rx_bytes": 10, "tx_bytes": 20},
             {"public_key": K2, "subnet": "10.0.6.0/24", "endpoint": "", "latest_handshake": 0,
              "rx_bytes": 0, "tx_bytes": 0}]
    fams = {f.name: f for f in wireguard_metrics(peers, now=1030.0)}
    age = fams["flannel_wireguard_peer_handshake_age_seconds"].samples
    assert [(s.labels["subnet"], s.value) for s in age] == [("10.0.5.0/24", 30.0)]  # none for "never"
    rx = [s for s in fams["flannel_wireguard_peer_receive_bytes"].samples if s.name.endswith("_total")]
    assert [(s.labels["public_key"], s.value) for s in rx] == [(K1, 10.0), (K2, 0.0)]
    assert list(wireguard_metrics([])) == []


def test_lab_commands_for_every_backend() -> None:
    """The lab builds flanneld's command line for every backend it runs; only wireguard's host
    gets a private mount namespace with its own /run/wireguard and key file."""
    from pyflannel.lab.cluster import LAB_BACKENDS, Host, Lab

    host = Host(1, "x-h1", "x-c1", "198.18.0.11")
    for backend in LAB_BACKENDS:
        cmd = Lab(name="x", backend=backend).flanneld_command(host)
        assert cmd[:4] == ["ip", "netns", "exec", "x-h1"]
        assert ("unshare" in cmd) == (backend == "wireguard"), cmd
    cmd = Lab(name="x", backend="wireguard").flanneld_command(host)
    assert "WIREGUARD_KEY_FILE=/run/pyflannel-lab/x/h1/wgkey" in cmd and "/run/pyflannel-lab/x/h1/wireguard" in cmd
