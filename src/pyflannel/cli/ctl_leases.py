"""``flannelctl leases list | reserve | revoke`` and ``flannelctl status``: what operators did with
raw etcdctl, with the checks etcdctl cannot make (inside the network, not someone else's)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from typing import Any

from ..core.allocate import is_compatible
from ..core.config import NetworkConfig, parse_config
from ..core.errors import ConfigError, FlannelError, StoreUnavailable
from ..core.lease import Lease, LeaseAttrs, public_ip_problem
from ..core.subnetenv import parse_subnet_env
from ..store.etcd import EtcdRegistry
from ..store.etcd_v2 import only_in_v2, v2_config


async def network_config(registry: EtcdRegistry, *, required: bool = True) -> NetworkConfig | None:
    data = await registry.get_config()
    if data is None:
        if required:
            raise await no_config(registry)
        return None
    try:
        return parse_config(data)
    except ConfigError as err:
        raise FlannelError(f"the network config at {registry.config_key} is invalid: {err}") from err


async def no_config(registry: EtcdRegistry) -> FlannelError:
    """The error for a missing ``<prefix>/config``: written to the v2 store, or not at all."""
    if await v2_config(registry.options, registry.config_key) is not None:
        return FlannelError(only_in_v2(registry.config_key, registry.endpoints, registry.prefix))
    return FlannelError(f"no network config at {registry.config_key} in etcd {registry.endpoints}: is "
                        f"-etcd-prefix right (flanneld's default is /coreos.com/network)? Write one with "
                        f"`flannelctl -etcd-prefix={registry.prefix} config set FILE`")


def _expires(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 0:
        return "expired"
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _mac(lease: Lease) -> str:
    data = lease.attrs.backend_data
    return str(data.get("VtepMAC", "")) if isinstance(data, dict) else ""


async def leases_list(registry: EtcdRegistry, as_json: bool) -> int:
    config = await network_config(registry, required=False)
    snap = await registry.list_leases()
    if config is None and not snap.leases and not snap.bad:
        await network_config(registry)  # raises: nothing here, probably the wrong prefix
    rows: list[dict[str, Any]] = []
    for lease in sorted(snap.leases, key=lambda le: le.subnet):
        ttl = None
        if not lease.is_reservation:
            with contextlib.suppress(StoreUnavailable):
                ttl = await registry.time_to_live(lease.lease_id)
        # flannel's own field names (as in the lease JSON and the network config): one key style
        rows.append({"Subnet": str(lease.subnet), "PublicIP": str(lease.attrs.public_ip),
                     "BackendType": lease.attrs.backend_type or "udp", "VtepMAC": _mac(lease) or None,
                     "ExpiresInSeconds": ttl, "Reservation": lease.is_reservation,
                     "OutsideNetwork": bool(config and not is_compatible(config, lease.subnet))}
                    | ({"IPv6Subnet": str(lease.ipv6_subnet), "PublicIPv6": str(lease.attrs.public_ipv6 or "") or None}
                       if lease.ipv6_subnet is not None else {}))
    bad = [{"Key": b.key, "Reason": b.reason} for b in snap.bad]
    if as_json:
        print(json.dumps({"Prefix": registry.prefix, "Revision": snap.revision, "Leases": rows, "Bad": bad}))
        return 0
    head = ("SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN", "RESERVATION")
    table = [head] + [(r["Subnet"] + (f" {r['IPv6Subnet']}" if "IPv6Subnet" in r else "")
                       + (" (outside the network)" if r["OutsideNetwork"] else ""),
                       r["PublicIP"] + (f" {r['PublicIPv6']}" if r.get("PublicIPv6") else ""),
                       r["BackendType"], r["VtepMAC"] or "-", _expires(r["ExpiresInSeconds"]),
                       "yes" if r["Reservation"] else "no") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for b in bad:
        print(f"BAD  {b['Key']}: {b['Reason']}")
    return 0


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as err:
        raise FlannelError(f"bad subnet {text!r}: {err} ({subnet_hint(text)})") from err


def subnet_hint(text: str) -> str:
    """The fix for a subnet written with host bits or no length: the subnet it most likely means."""
    try:
        meant = ipaddress.IPv4Network(text if "/" in text else f"{text}/24", strict=False)
    except ValueError:
        return "write it as A.B.C.0/24, e.g. 10.0.53.0/24"
    return f"write it as {meant}"


async def leases_reserve(registry: EtcdRegistry, subnet_text: str, ip_text: str, force: bool = False) -> int:
    subnet = _subnet(subnet_text)
    try:
        public_ip = ipaddress.IPv4Address(ip_text)
    except ValueError as err:
        raise FlannelError(f"bad public IP {ip_text!r}: not an IPv4 address") from err
    problem = public_ip_problem(public_ip)
    if problem is not None:
        raise FlannelError(f"cannot reserve {subnet} for {public_ip}: {problem}; give the address the other "
                           "hosts reach that host on")
    config = await network_config(registry)
    assert config is not None
    if not is_compatible(config, subnet):
        raise FlannelError(f"{subnet} is outside the network: it must be a /{config.subnet_len} between SubnetMin "
                           f"{config.subnet_min} and SubnetMax {config.subnet_max} of {config.network}")
    snap = await registry.list_leases()
    for bad in snap.bad:
        if bad.key == registry.lease_key(subnet) or (bad.subnet is not None and bad.subnet.overlaps(subnet)):
            raise FlannelError(f"{bad.key} is in the way and holds garbage ({bad.reason}): delete it first with "
                               f"`flannelctl leases revoke {bad.key}`")
    for lease in snap.leases:
        what = "a reservation for" if lease.is_reservation else "leased to"
        if lease.subnet.overlaps(subnet) and lease.attrs.public_ip != public_ip:
            raise FlannelError(f"{lease.subnet} is already {what} {lease.attrs.public_ip}: revoke it first "
                               f"(flannelctl leases revoke {lease.subnet}) if that host is gone")
        if lease.attrs.public_ip == public_ip and lease.subnet != subnet and not force:
            # one host, one subnet: with two, every flanneld would warn of a forged lease
            raise FlannelError(f"{public_ip} already holds {lease.subnet} ({what} it): one host has one subnet. "
                               f"Reserve that one instead (flannelctl leases reserve {lease.subnet} {public_ip}), "
                               f"or revoke it first (flannelctl leases revoke {lease.subnet}); --force to reserve "
                               "anyway (the host takes the reservation at its next start)")
    current = next((le for le in snap.leases if le.subnet == subnet), None)
    attrs = current.attrs if current else LeaseAttrs(public_ip)
    if current is not None:
        done = await registry.update_lease(current, attrs, None)
    else:
        done = await registry.create_lease(subnet, attrs, None)
    if done is None:
        raise FlannelError(f"{subnet} changed while reserving it; try again")
    print(f"reserved {subnet} for {public_ip} (a key without TTL: {registry.lease_key(subnet)})")
    return 0


def revoke_key(registry: EtcdRegistry, text: str) -> str:
    """The key ``leases revoke TEXT`` deletes: a subnet (``10.0.5.0/24``), or a key under
    ``<prefix>/subnets/`` as ``leases list`` shows it, in full or its last part (``10.0.5.128-25``,
    ``garbage``): a key that does not decode can be deleted too."""
    prefix = registry.subnets_prefix
    if text.startswith(prefix):
        tail = text[len(prefix):]
    elif text.startswith("/"):
        raise FlannelError(f"{text} is not under {prefix}: only lease keys can be revoked (is -etcd-prefix right?)")
    elif "/" in text:
        return registry.lease_key(_subnet(text))
    else:
        tail = text
    if not tail or "/" in tail:
        raise FlannelError(f"bad key {text!r}: give a subnet (10.0.53.0/24) or a key as `flannelctl leases list` "
                           f"shows it ({prefix}10.0.53.0-24, or just 10.0.53.0-24)")
    return prefix + tail


async def leases_revoke(registry: EtcdRegistry, text: str) -> int:
    key = revoke_key(registry, text)
    if not await registry.delete_subnet_key(key):
        raise FlannelError(f"no lease for {text}: {key} does not exist (see flannelctl leases list)")
    print(f"revoked {key}: if a running flanneld held it, it takes it again; a host leases a new subnet when it "
          "restarts")
    return 0


def orphaned_by(new: NetworkConfig, leases: list[Lease]) -> list[Lease]:
    return [le for le in leases if not is_compatible(new, le.subnet)]


def read_subnet_env(path: str) -> dict[str, str]:
    """subnet.env for ``status``: a file that is not one is an error naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise FlannelError(f"cannot read {path}: {err.strerror} (is flanneld running here? give -subnet-file "
                           "if it writes elsewhere)") from err
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise FlannelError(f"{path} is not a subnet.env: byte {err.start} is not text (a binary or damaged "
                           "file; flanneld writes it anew once it holds its lease)") from None
    return parse_subnet_env(text, source=path)


