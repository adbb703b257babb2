"""WireGuard, pure: keys, ``wg show <dev> dump`` and the ``wg set``
arguments that turn what the device has into what a ``WgPlan`` wants.

Kernel WireGuard and wireguard-go are configured alike through ``wg`` (wireguard-tools speaks the
kernel's netlink and wireguard-go's UAPI socket), so this diff serves both.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from .plan import WgPeer, WgPlan

KEY_LEN = 32


def valid_key(text: object) -> bool:
    """A WireGuard key as ``wg`` and Go's wgtypes.ParseKey take it: standard base64 of 32 bytes."""
    if not isinstance(text, str) or len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == KEY_LEN
    except (binascii.Error, ValueError):
        return False


def new_private_key() -> str:
    """A fresh Curve25519 private key, clamped as ``wg genkey`` does, base64."""
    k = bytearray(os.urandom(KEY_LEN))
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return base64.b64encode(bytes(k)).decode()


@dataclass(frozen=True)
class PeerState:
    """One peer line of ``wg show <dev> dump``."""

    public_key: str
    psk: str  # "" = none
    endpoint: str  # "" = none
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix time, 0 = never
    rx: int
    tx: int
    keepalive: int  # 0 = off


@dataclass(frozen=True)
class DeviceState:
    public_key: str  # "" = no private key set
    listen_port: int
    peers: dict[str, PeerState]


def parse_dump(text: str) -> DeviceState:
    """``wg show <dev> dump``: the device line (private key, public key, port, fwmark), then one
    tab-separated line per peer. The private key is dropped here and never kept."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 3:
        raise ValueError(f"unexpected `wg show dump` output ({len(lines)} lines)")
    dev = lines[0]
    peers = {}
    for f in lines[1:]:
        if len(f) < 8:
            raise ValueError(f"unexpected peer line in `wg show dump` ({len(f)} fields)")
        none = ("(none)", "")
        peers[f[0]] = PeerState(
            f[0], "" if f[1] in none else f[1], "" if f[2] in none else f[2],
            () if f[3] in none else tuple(sorted(f[3].split(","))), int(f[4]), int(f[5]), int(f[6]),
            0 if f[7] == "off" else int(f[7]))
    return DeviceState("" if dev[1] in ("(none)", "") else dev[1], int(dev[2]), peers)


def set_args(plan: WgPlan, actual: DeviceState, own_public: str, psk_file: str,
             sent_endpoints: dict[str, str]) -> list[str]:
    """The arguments after ``wg set <dev>`` that make ``actual`` what ``plan`` wants; [] when
    nothing differs. An endpoint is (re)set only for a new peer or when the lease's endpoint
    changed since we last set it (``sent_endpoints``): WireGuard follows a roaming peer (a NAT
    mapping) by itself, and a full check must not undo that. Peers not in the plan are removed
    only when ``plan.prune``."""
    args: list[str] = []
    if actual.listen_port != plan.listen_port:
        args += ["listen-port", str(plan.listen_port)]
    if actual.public_key != own_public:
        args += ["private-key", plan.key_file]
    wanted = {p.public_key: p for p in plan.peers}
    for key in sorted(set(actual.peers) - set(wanted)) if plan.prune else ():
        args += ["peer", key, "remove"]
    for peer in sorted(plan.peers):
        have = actual.peers.get(peer.public_key)
        sets = _peer_sets(peer, have, plan.psk, psk_file, sent_endpoints.get(peer.public_key))
        if sets:
            args += ["peer", peer.public_key, *sets]
    return args


def _peer_sets(peer: WgPeer, have: PeerState | None, psk: str, psk_file: str, sent: str | None) -> list[str]:
    out: list[str] = []
    if have is None or (peer.endpoint != sent if sent is not None else peer.endpoint != have.endpoint):
        out += ["endpoint", peer.endpoint]
    if have is None or tuple(sorted(peer.allowed_ips)) != have.allowed_ips:
        out += ["allowed-ips", ",".join(peer.allowed_ips)]
    if have is None or have.keepalive != peer.keepalive:
        out += ["persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off"]
    if have is None or have.psk != psk:
        out += ["preshared-key", psk_file if psk else "/dev/null"]
    return out
