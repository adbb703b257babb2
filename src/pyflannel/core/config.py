"""The network config: flannel's JSON, parsed (``ParseConfig``) and defaulted (``CheckNetworkConfig``).

Why it is shaped so:

- One pure function, ``parse_config(text) -> NetworkConfig``, shared by the store, the daemon and
  ``flannelctl config validate``. The result is frozen and complete (every default filled in), so
  nobody downstream re-derives SubnetMin/Max, and tests need no etcd.
- Go ``encoding/json`` is imitated on purpose, because operators write configs for Go flannel: keys
  match case-insensitively (``core/gojson.py``), every occurrence is decoded in order (the last
  wins), unknown keys are ignored, ``null`` leaves a bool or number at its default, and types are
  strict (``24.0`` is no uint). ``Network`` follows ``net.ParseCIDR``: host bits dropped;
  ``0.0.0.0/0`` is "not defined".
- Messages start with flannel's own text where flannel has one (so its docs and searches apply),
  then add ``(got ..., fix: ...)``. Whether the backend type exists is the registry's business.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from pyflannel.core import gojson
from pyflannel.core.errors import ConfigError

_UINT_MAX = 2**64 - 1  # Go uint on 64-bit hosts
_CIDR = re.compile(r"[0-9A-Fa-f.:]+/[0-9]{1,3}")  # net.ParseCIDR: address "/" decimal bits, no zone
_ABSENT: Any = object()
_NULL_IS_NOOP = frozenset({"EnableIPv4", "EnableIPv6", "EnableNFTables", "SubnetLen", "IPv6SubnetLen"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _JSONObject(list[tuple[str, Any]]):
    """A JSON object as the (key, value) pairs written, so duplicate keys keep Go's order."""


@dataclass(frozen=True)
class NetworkConfig:
    """The effective network config: what flanneld will use, with every default filled in."""

    network: ipaddress.IPv4Network | None
    subnet_len: int
    subnet_min: ipaddress.IPv4Address | None
    subnet_max: ipaddress.IPv4Address | None
    enable_ipv4: bool
    enable_ipv6: bool
    enable_nftables: bool
    ipv6_network: ipaddress.IPv6Network | None
    ipv6_subnet_len: int
    ipv6_subnet_min: ipaddress.IPv6Address | None
    ipv6_subnet_max: ipaddress.IPv6Address | None
    backend_type: str
    backend: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A Backend key matched like Go json: any case, last occurrence wins, null means default."""
        return gojson.lookup(self.backend, name, default, null_is_noop=True)

    def subnets_ipv4(self) -> int:
        """How many subnets of ``subnet_len`` lie between ``subnet_min`` and ``subnet_max``, inclusive."""
        if not self.enable_ipv4 or self.subnet_min is None or self.subnet_max is None:
            return 0
        size = 1 << (32 - self.subnet_len)
        return max(0, (int(self.subnet_max) - int(self.subnet_min)) // size + 1)

    def to_effective_json(self) -> dict[str, Any]:
        """The config under flannel's field names, defaults filled in (for ``config validate --json``).
        Unset fields are left out (flannel's parser takes no ``null`` CIDR), so the output is itself a
        valid config that ``config set`` accepts and that parses to this one; ``BackendType`` is
        informational (flannel ignores unknown keys; the type is ``Backend.Type``)."""
        out = {
            "Network": _text(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": _text(self.subnet_min),
            "SubnetMax": _text(self.subnet_max),
            "EnableIPv4": self.enable_ipv4,
            "EnableIPv6": self.enable_ipv6,
            "EnableNFTables": self.enable_nftables,
            "IPv6Network": _text(self.ipv6_network),
            "IPv6SubnetLen": self.ipv6_subnet_len,
            "IPv6SubnetMin": _text(self.ipv6_subnet_min),
            "IPv6SubnetMax": _text(self.ipv6_subnet_max),
            "BackendType": self.backend_type,
            "Backend": copy.deepcopy(dict(self.backend)),
        }
        return {k: v for k, v in out.items() if v is not None}


def config_changes(old: NetworkConfig, new: NetworkConfig) -> list[str]:
    """What differs between two effective configs, one ``Field old -> new`` per field."""
    before, after = old.to_effective_json(), new.to_effective_json()
    for side in (before, after):  # the type is BackendType's; {"Type": "udp"} and {} are one backend
        side["Backend"] = {k: v for k, v in side["Backend"].items() if k.lower() != "type"}
    names = list(before) + [k for k in after if k not in before]
    return [f"{name} {json.dumps(before.get(name))} -> {json.dumps(after.get(name))}"
            for name in names if before.get(name) != after.get(name)]


RESTART_NEEDED = ("flanneld reads the network config only at start (as Go flannel does): restart flanneld on every "
                  "host to use it (then docker, if the subnets move)")


def parse_config(data: str | bytes) -> NetworkConfig:
    """Parse and validate a network config; raise ConfigError naming what is wrong and the fix."""
    fields = _decode_fields(_load_object(data))
    backend_type, backend = _decode_backend(fields.get("Backend", _ABSENT))
    enable_ipv4, enable_ipv6 = fields["EnableIPv4"], fields.get("EnableIPv6", False)
    if not enable_ipv4 and not enable_ipv6:
        raise ConfigError("none defined stack: enable EnableIPv4 or EnableIPv6 in the network config")
    v4 = _check_family(_V4, fields) if enable_ipv4 else _given(_V4, fields)
    v6 = _check_family(_V6, fields) if enable_ipv6 else _given(_V6, fields)
    return NetworkConfig(
        network=v4.network,
        subnet_len=v4.length,
        subnet_min=v4.low,
        subnet_max=v4.high,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        enable_nftables=fields.get("EnableNFTables", False),
        ipv6_network=v6.network,
        ipv6_subnet_len=v6.length,
        ipv6_subnet_min=v6.low,
        ipv6_subnet_max=v6.high,
        backend_type=backend_type,
        backend=MappingProxyType(backend),
    )


# --- decoding: JSON text -> typed field values, with Go encoding/json's rules -------------------


def _load_object(data: str | bytes) -> _JSONObject:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        value = json.loads(text, object_pairs_hook=_JSONObject, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, huge ints
        fix = 'check quotes, commas and braces; e.g. {"Network": "10.0.0.0/16"}'
        raise ConfigError(f"invalid JSON in network config: {err} (fix: {fix})") from err
    if not isinstance(value, _JSONObject):
        raise _error("network config must be a JSON object", value, 'write {"Network": "10.0.0.0/16"}')
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_fields(obj: _JSONObject) -> dict[str, Any]:
    fields: dict[str, Any] = {"EnableIPv4": True}
    for key, value in obj:
        name = _FIELDS.match(key)
        if name is None or (value is None and name in _NULL_IS_NOOP):
            continue
        fields[name] = _DECODERS[name](name, value)
    return fields


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _error(f"{name} must be true or false", value, f'write "{name}": true or false, without quotes')


def _uint(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT_MAX:
        return value
    raise _error(f"{name} must be a non-negative whole number", value, f'write e.g. "{name}": 24, unquoted')


def _ip(cls: type[IPAddress | IPNetwork], example: str) -> Callable[[str, Any], Any]:
    """A decoder for a Network (net.ParseCIDR: host bits dropped) or an address field."""
    is_net = issubclass(cls, ipaddress.IPv4Network | ipaddress.IPv6Network)
    kind = f"{'an IPv4' if '.' in example else 'an IPv6'} {'CIDR' if is_net else 'address'}"

    def decode(name: str, value: Any) -> Any:
        message, fix = f"{name} must be {kind} such as {example}", f'write "{name}": "{example}"'
        if name == "Network" and isinstance(value, str) and ":" in value:
            fix += '; IPv6 ranges go in "IPv6Network", with "EnableIPv6": true'
        if value is None and cls is ipaddress.IPv6Address:
            return None  # a Go *ip.IP6: null means unset
        if not isinstance(value, str) or (_CIDR.fullmatch(value) is None if is_net else "%" in value):
            raise _error(message, value, fix)
        try:
            return cls(value, strict=False) if is_net else cls(value)  # type: ignore[call-arg]
        except ValueError as err:
            raise _error(message, value, fix) from err

    return decode


def _decode_backend(raw: Any) -> tuple[str, dict[str, Any]]:
    """Backend type and options: "udp" when absent, "" when null or without Type (as flannel)."""
    if raw is _ABSENT:
        return "udp", {}
    if raw is None:
        return "", {}
    prefix = "error decoding Backend property of config: "
    if not isinstance(raw, _JSONObject):
        raise _error(prefix + "Backend must be a JSON object", raw, 'write "Backend": {"Type": "vxlan"}')
    backend_type = ""
    for key, value in raw:
        if _BACKEND_FIELDS.match(key) != "Type" or value is None:
            continue
        if not isinstance(value, str):
            raise _error(prefix + "Backend Type must be a string", value, 'write "Type": "vxlan"')
        backend_type = value
    try:
        return backend_type.lower(), _plain(raw)
    except RecursionError as err:
        raise ConfigError(prefix + "Backend is nested too deeply") from err


def _plain(value: Any) -> Any:
    if isinstance(value, _JSONObject):
        return {key: _plain(item) for key, item in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# --- validation and defaults: flannel's CheckNetworkConfig, once for each address family ------


class _Family(NamedTuple):
    p: str  # field-name prefix: "" or "IPv6"
    bits: int
    max_len: int  # longest SubnetLen allowed
    min_prefix: int  # longest Network prefix that still gets a default SubnetLen
    default_len: int
    address: type[IPAddress]
    example: str


class _Ranges(NamedTuple):
    network: IPNetwork | None
    length: int
    low: IPAddress | None
    high: IPAddress | None


_V4 = _Family("", 32, 30, 28, 24, ipaddress.IPv4Address, "10.0.0.0/16")
_V6 = _Family("IPv6", 128, 126, 124, 64, ipaddress.IPv6Address, "fc00::/48")


def _given(fam: _Family, fields: dict[str, Any]) -> _Ranges:
    """A disabled family: kept as written, neither defaulted nor checked (as flannel)."""
    names = (f"{fam.p}Network", f"{fam.p}SubnetLen", f"{fam.p}SubnetMin", f"{fam.p}SubnetMax")
    return _Ranges(*(fields.get(name, 0 if name.endswith("Len") else None) for name in names))


def _check_family(fam: _Family, fields: dict[str, Any]) -> _Ranges:
    p = fam.p
    net: IPNetwork | None = fields.get(f"{p}Network")
    if net is None or (net.prefixlen == 0 and int(net.network_address) == 0):
        got = "nothing" if net is None else str(net)
        fix = f'add "{p}Network": "{fam.example}", a CIDR with a prefix of /{fam.min_prefix} or shorter'
        raise _context(f"please define a correct {p}Network parameter in the flannel config", got, fix)
    length = _subnet_len(fam, net, fields.get(f"{p}SubnetLen", 0))
    size = 1 << (fam.bits - length)
    last = int(net.broadcast_address) + 1 - size
    low = _in_network(fam, "SubnetMin", net, fields.get(f"{p}SubnetMin"), int(net.network_address) + size)
    high = _in_network(fam, "SubnetMax", net, fields.get(f"{p}SubnetMax"), last)
    for which, addr in (("SubnetMin", low), ("SubnetMax", high)):
        if int(addr) % size:
            aligned = fam.address(int(addr) - int(addr) % size)
            fix = f"use {aligned} or another multiple of the /{length} subnet size"
            raise _context(f"{p}{which} is not on a SubnetLen boundary: {addr}", f"{p}SubnetLen {length}", fix)
    return _Ranges(net, length, low, high)


def _subnet_len(fam: _Family, net: IPNetwork, length: int) -> int:
    p, prefix = fam.p, net.prefixlen
    if length > fam.max_len:
        fix = f"use a {p}SubnetLen of at most {fam.max_len}, or leave it out for the default"
        raise _context(f"SubnetLen must be less than /{fam.max_len + 1}", f"{p}SubnetLen {length}", fix)
    if length and length < prefix + 2:
        got, fix = f"{p}SubnetLen {length} in {p}Network {net}", f"use {p}SubnetLen {prefix + 2} or longer"
        raise _context("network must be able to accommodate at least four subnets", got, fix)
    if length:
        return length
    if prefix > fam.min_prefix:
        name = f"{p}Network" if p else "network"
        fix = f"use a {p}Network with a prefix of /{fam.min_prefix} or shorter, e.g. {fam.example}"
        raise _context(f"{name} is too small. Minimum useful network prefix is /{fam.min_prefix}", str(net), fix)
    return fam.default_len if prefix <= fam.default_len - 2 else prefix + 2


def _in_network(fam: _Family, which: str, net: IPNetwork, addr: IPAddress | None, default: int) -> IPAddress:
    if addr is None or int(addr) == 0:  # flannel: the zero address means "unset"
        return fam.address(default)
    if addr not in net:
        fix = f"pick an address inside {net}, or leave {fam.p}{which} out for the default"
        raise _context(f"{fam.p}{which} is not in the range of the {fam.p}Network", str(addr), fix)
    return addr


# --- messages ----------------------------------------------------------------------------------


def _context(message: str, got: str, fix: str) -> ConfigError:
    return ConfigError(f"{message} (got {got}, fix: {fix})")


def _error(message: str, value: Any, fix: str) -> ConfigError:
    return _context(message, _describe(value), fix)


def _describe(value: Any) -> str:
    if isinstance(value, _JSONObject):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


_DECODERS: dict[str, Callable[[str, Any], Any]] = {
    "EnableIPv4": _bool,
    "EnableIPv6": _bool,
    "EnableNFTables": _bool,
    "Network": _ip(ipaddress.IPv4Network, "10.0.0.0/16"),
    "IPv6Network": _ip(ipaddress.IPv6Network, "fc00::/48"),
    "SubnetMin": _ip(ipaddress.IPv4Address, "10.0.1.0"),
    "SubnetMax": _ip(ipaddress.IPv4Address, "10.0.255.0"),
    "IPv6SubnetMin": _ip(ipaddress.IPv6Address, "fc00:0:0:1::"),
    "IPv6SubnetMax": _ip(ipaddress.IPv6Address, "fc00:0:0:ffff::"),
    "SubnetLen": _uint,
    "IPv6SubnetLen": _uint,
    "Backend": lambda _name, value: value,  # a json.RawMessage in Go: decoded by _decode_backend
}
_FIELDS = gojson.Fields(_DECODERS)
_BACKEND_FIELDS = gojson.Fields(["Type"])  # what flannel's parseBackendType decodes
