"""The flannel CNI plugin's pure core: netconf in, delegate netconf out, errors as the SPEC wants them.

The plugin is a meta-plugin (docs/compatibility.md#cni): it merges its own netconf with subnet.env and hands
the result to ``bridge`` + ``host-local``. Interop means *the same bytes*: Go flannel saves the
delegate under ``dataDir`` as ``json.Marshal`` of a Go map, and a Go DEL may replay a file we wrote
(or the reverse). So the delegate is a plain JSON tree rendered by ``render_go_json`` with Go's
rules: sorted map keys, compact, ``<>&`` escaped, numbers as float64; ``ipam.routes`` are CNI
``types.Route`` structs, normalised and emitted in struct field order (``GoStruct``).

Parsing follows Go's decoder where a config could tell the difference (field names match
case-insensitively, the last duplicate wins, ``null`` leaves a string field at its default, two
spellings of a map field merge), but a wrong type is a typed ``CniError`` with SPEC code 7 rather
than flannel's panic or code 999, and a missing or half-written subnet.env is code 11 ("try again
later"): flanneld writes it once it holds a lease. Nothing here does I/O; ``cli/cni.py`` does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import gojson
from .errors import FlannelError

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
# SPEC well-known error codes (containernetworking/cni SPEC.md, "Error")
INCOMPATIBLE_VERSION, UNKNOWN_CONTAINER, INVALID_ENV, IO_FAILURE = 1, 3, 4, 5
DECODING_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER, NOT_AVAILABLE, INTERNAL = 6, 7, 11, 50, 999

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # CNI network names and container IDs
_MAX_DEPTH = 200
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CniError(FlannelError):
    """A failure the runtime sees as SPEC error JSON: ``code``, ``msg`` and optional ``details``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}; {details}" if details else msg)
        self.code, self.msg, self.details = code, msg, details


def render_error(err: CniError, cni_version: str = CURRENT_VERSION) -> str:
    """SPEC error JSON (Go's ``types.Error`` pretty-printed, plus the SPEC's ``cniVersion``)."""
    body: dict[str, Any] = {"cniVersion": cni_version, "code": err.code, "msg": err.msg}
    if err.details:
        body["details"] = err.details
    return json.dumps(body, indent=4, ensure_ascii=False)


# ---- versions ---------------------------------------------------------------------------------


def parse_version(version: str) -> tuple[int, int, int]:
    """Go's ``version.ParseVersion``: up to three decimal parts; ``""`` means 0.1.0."""
    if version == "":
        return (0, 1, 0)
    parts = version.split(".")
    if len(parts) >= 4 or not all(re.fullmatch(r"[+-]?[0-9]{1,18}", p) for p in parts):
        raise CniError(DECODING_FAILURE, f"invalid CNI version {version!r}", "expected MAJOR.MINOR.MICRO")
    nums = [int(p) for p in parts] + [0, 0]
    return (nums[0], nums[1], nums[2])


def check_version(command: str, config_version: str) -> None:
    """skel's negotiation: CHECK needs config >= 0.4.0, GC and STATUS >= 1.1.0; then an exact match."""
    version = config_version or "0.1.0"
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and parse_version(version) < parse_version(minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                       f"config is {version!r}; {command} needs cniVersion {minimum} or later")
    if version not in SUPPORTED_VERSIONS:
        supported = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports [{supported}]')


def render_version_info(requested: str = "") -> str:
    """The VERSION answer: echo the caller's cniVersion when we speak it (SPEC), else our newest."""
    current = requested if requested in SUPPORTED_VERSIONS else CURRENT_VERSION
    return json.dumps({"cniVersion": current, "supportedVersions": list(SUPPORTED_VERSIONS)},
                      separators=(",", ":")) + "\n"


# ---- the plugin's netconf ---------------------------------------------------------------------


@dataclass(frozen=True)
class NetConf:
    """flannel's ``NetConf``: the fields it reads, with flannel's defaults."""

    name: str
    cni_version: str = ""
    type: str = ""
    subnet_file: str = DEFAULT_SUBNET_FILE
    data_dir: str = DEFAULT_DATA_DIR
    ipam: dict[str, Any] | None = None
    delegate: dict[str, Any] | None = None
    runtime_config: dict[str, Any] | None = None
    prev_result: dict[str, Any] | None = None


_STR_FIELDS = {"cniVersion": "cni_version", "name": "name", "type": "type", "subnetFile": "subnet_file",
               "dataDir": "data_dir"}
_MAP_FIELDS = {"ipam": "ipam", "delegate": "delegate", "runtimeConfig": "runtime_config",
               "prevResult": "prev_result", "capabilities": "", "dns": ""}
_NETCONF_FIELDS = gojson.Fields([*_STR_FIELDS, *_MAP_FIELDS])


def parse_json(data: bytes, what: str = "network config") -> Any:
    """JSON as Go reads it: bad UTF-8 and lone surrogates become U+FFFD; NaN and overflow are errors."""
    def reject(token: str) -> Any:
        raise ValueError(f"invalid number {token}")
    try:
        return _normalize(json.loads(data.decode("utf-8", "replace"), parse_constant=reject), 0)
    except (ValueError, RecursionError) as err:
        raise CniError(DECODING_FAILURE, f"error decoding {what}", str(err)) from err


def parse_netconf(data: bytes) -> NetConf:
    """stdin bytes -> NetConf, or CniError 6 (not a JSON object) / 7 (bad field or network name)."""
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise CniError(DECODING_FAILURE, "error decoding network config", "expected a JSON object")
    values: dict[str, Any] = {}
    for key, value in obj.items():
        field = _NETCONF_FIELDS.match(key)
        kind, attrs = (str, _STR_FIELDS) if field in _STR_FIELDS else (dict, _MAP_FIELDS)
        if field is None or (value is None and kind is str):  # unknown, or null: Go leaves the default
            continue
        if value is not None and not isinstance(value, kind):
            expected = "an object" if kind is dict else "a string"
            raise CniError(INVALID_CONFIG, f"network config field {field!r} must be {expected}", f"got {value!r}")
        old = values.get(attrs[field])  # Go decodes a second spelling of a map field into the same map
        values[attrs[field]] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    values.pop("", None)
    name = values.get("name", "")
    if not name:
        raise CniError(INVALID_CONFIG, "missing network name", "set \"name\" in the network config")
    if not _NAME_RE.fullmatch(name):
        raise CniError(INVALID_CONFIG, "invalid characters found in network name", name)
    return NetConf(**values)


def valid_name(name: str) -> bool:
    """skel's rule for network names and container IDs (a container ID names a file under dataDir)."""
    return _NAME_RE.fullmatch(name) is not None


def stored_delegate_type(body: bytes, path: str) -> str:
    """The ``type`` of a delegate netconf saved by ADD (ours or Go flannel's); CniError 6 if unreadable."""
    obj = parse_json(body, f"delegate netconf {path}")
    kind = gojson.lookup(obj, "type") if isinstance(obj, dict) else None  # the last spelling wins
    if not isinstance(kind, str) or not kind:
        raise CniError(DECODING_FAILURE, f"error decoding delegate netconf {path}", "no string 'type' field")
    return kind


def _normalize(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        return _valid_str(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and not abs(value) < 2**1024 - 2**970:
        raise ValueError("a number does not fit a float64")  # what float() would round to infinity
    if isinstance(value, list):
        return [_normalize(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_valid_str(k): _normalize(v, depth + 1) for k, v in value.items()}
    return value


def _valid_str(s: str) -> str:
    return re.sub("[\ud800-\udfff]", "\ufffd", s)


# ---- subnet.env, as the CNI plugin reads it ---------------------------------------------------


@dataclass(frozen=True)
class FlannelEnv:
    """What ``loadFlannelSubnetEnv`` keeps: networks (deduplicated), subnets in network form, MTU, IPMASQ."""

    networks: tuple[IPNetwork, ...]
    subnet: IPNetwork | None
    ipv6_networks: tuple[IPNetwork, ...]
    ipv6_subnet: IPNetwork | None
    mtu: int
    ipmasq: bool


def parse_flannel_env(values: Mapping[str, str], source: str = DEFAULT_SUBNET_FILE) -> FlannelEnv:
    """subnet.env values -> FlannelEnv, or CniError 11 naming the file, the bad value or every missing key."""
    try:
        nets = _cidr_list(values.get("FLANNEL_NETWORK"))
        nets6 = _cidr_list(values.get("FLANNEL_IPV6_NETWORK"))
        sn = _go_cidr(values["FLANNEL_SUBNET"]) if "FLANNEL_SUBNET" in values else None
        sn6 = _go_cidr(values["FLANNEL_IPV6_SUBNET"]) if "FLANNEL_IPV6_SUBNET" in values else None
        mtu_text = values.get("FLANNEL_MTU")
        if mtu_text is not None and not (re.fullmatch(r"[0-9]+", mtu_text) and int(mtu_text) < 2**32):
            raise ValueError(f"FLANNEL_MTU={mtu_text!r} is not an unsigned 32-bit number")
    except ValueError as err:
        raise subnet_env_error(f"{source}: {err}") from err
    missing = [*(("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK") if not nets and not nets6 else ()),
               *(("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if sn is None and sn6 is None else ()),
               *(k for k in ("FLANNEL_MTU", "FLANNEL_IPMASQ") if k not in values)]
    if missing or mtu_text is None:
        raise subnet_env_error(f"{source} is missing {', '.join(missing)}")
    return FlannelEnv(nets, sn, nets6, sn6, int(mtu_text), values["FLANNEL_IPMASQ"] == "true")


def subnet_env_error(reason: str) -> CniError:
    """flannel's message for an unusable subnet.env, with code 11: flanneld may not have written it yet."""
    return CniError(TRY_AGAIN_LATER,
                    f"failed to load flannel 'subnet.env' file: {reason}. Check the flannel pod log for this node.",
                    "flanneld writes this file once it holds a lease for this node; retry when it has")


def _cidr_list(text: str | None) -> tuple[IPNetwork, ...]:
    if text is None:
        return ()
    return tuple(dict.fromkeys(_go_cidr(item) for item in text.split(",")))


def _go_cidr(text: str, keep_host: bool = False) -> Any:
    """Go's ``net.ParseCIDR``: ``ADDR/LEN`` with a decimal length; the network, or with ``keep_host``
    the interface (``types.IPNet`` keeps ``10.1.17.20/24`` as given)."""
    addr, sep, plen = text.partition("/")
    if not sep or not re.fullmatch(r"[0-9]{1,3}", plen) or "%" in addr or addr.strip() != addr:
        raise ValueError(f"invalid CIDR address: {text!r}")
    iface = ipaddress.ip_interface(f"{addr}/{plen}")
    return iface if keep_host else iface.network


# ---- the delegate -----------------------------------------------------------------------------


class GoStruct(dict[str, Any]):
    """A JSON object Go emits from a struct: fields in declaration order, not sorted like a map."""


def check_delegate(conf: NetConf) -> None:
    """ADD's validation of ``delegate`` (flannel's messages), before anything else is read."""
    d = conf.delegate or {}
    if "type" in d and not isinstance(d["type"], str):
        raise CniError(INVALID_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field",
                       f"got {d['type']!r}")
    for key in ("name", "ipam"):
        if key in d:
            raise CniError(INVALID_CONFIG, f"'delegate' dictionary must not have '{key}' field, it'll be set by "
                           "flannel", f"remove delegate.{key} from the network config")


def render_delegate(conf: NetConf, env: FlannelEnv) -> dict[str, Any]:
    """The delegate netconf flannel's Linux ``doCmdAdd`` builds; defaults only where the user set none."""
    check_delegate(conf)
    d = dict(conf.delegate or {})
    if conf.runtime_config is not None:
        d["runtimeConfig"] = conf.runtime_config
    d["name"] = conf.name
    d.setdefault("type", "bridge")
    d.setdefault("ipMasq", not env.ipmasq)  # if flannel is not masquerading, the bridge should
    d.setdefault("mtu", env.mtu)
    if d["type"] == "bridge":
        d.setdefault("isGateway", True)
    if conf.cni_version:
        d["cniVersion"] = conf.cni_version
    ipam = dict(conf.ipam or {})
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": str(sn)}] for sn in (env.subnet, env.ipv6_subnet) if sn is not None]
    routes = ipam.get("routes")
    if routes is not None and not isinstance(routes, list):
        raise CniError(INVALID_CONFIG, "failed to parse ipam.routes", f"expected a list, got {routes!r}")
    ipam["routes"] = [*(_route(r, i) for i, r in enumerate(routes or [])),
                      *(GoStruct(dst=str(nw)) for nw in (*env.networks, *env.ipv6_networks))]
    d["ipam"] = ipam
    return d


_ROUTE_FIELDS = gojson.Fields(["dst", "gw", "mtu", "advmss", "priority", "table", "scope"])


def _route(value: Any, index: int) -> GoStruct:
    """One ``ipam.routes`` entry through CNI's ``types.Route`` (unknown keys dropped, zero ints omitted)."""
    where = f"ipam.routes[{index}]"
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, f"failed to parse {where}", f"expected an object, got {value!r}")
    fields = {_ROUTE_FIELDS.match(key): v for key, v in value.items()}
    out = GoStruct()
    try:
        if not isinstance(fields.get("dst"), str):
            raise ValueError("dst must be a CIDR string such as 10.96.0.0/12")
        out["dst"] = str(_go_cidr(fields["dst"], keep_host=True))
        gw = fields.get("gw")
        if gw not in (None, ""):
            if not isinstance(gw, str) or "%" in gw:
                raise ValueError(f"gw must be an IP address, got {gw!r}")
            out["gw"] = str(ipaddress.ip_address(gw))
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            v = fields.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or abs(v) >= 2**63):
                raise ValueError(f"{key} must be an integer, got {v!r}")
            if v is not None and (v != 0 or key in ("table", "scope")):
                out[key] = v
    except ValueError as err:
        raise CniError(INVALID_CONFIG, f"failed to parse {where}", str(err)) from err
    return out


def with_route_gateways(prev_result: dict[str, Any]) -> dict[str, Any]:
    """``prevResult`` for a delegated CHECK, each gateway-less route given the gateway ADD used for it.

    ``ipam.ConfigureIface`` routes ``{"dst": ...}`` via the gateway of the address of the same family;
    bridge before 1.3.0 (Debian 12 ships 1.1.1) then fails CHECK looking for a route without one
    (containernetworking/plugins#886). Spelling the gateway out states the same route."""
    gateways: dict[int, str] = {}
    for entry in _list(prev_result.get("ips")):
        with contextlib.suppress(TypeError, ValueError, LookupError):
            gateways.setdefault(ipaddress.ip_address(entry["gateway"]).version, entry["gateway"])
    routes = []
    for route in _list(prev_result.get("routes")):
        with contextlib.suppress(TypeError, ValueError, AttributeError, LookupError):
            if not route.get("gw"):
                route = {**route, "gw": gateways[ipaddress.ip_network(route["dst"], strict=False).version]}
        routes.append(route)
    return {**prev_result, "routes": routes} if "routes" in prev_result else prev_result


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---- Go's json.Marshal --------------------------------------------------------------------------

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
               "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def render_go_json(value: Any) -> bytes:
    """``json.Marshal`` of the same value in Go: compact, map keys sorted, HTML-safe, float64 numbers."""
    return "".join(_go(value)).encode()


def _go(value: Any) -> Iterator[str]:
    if value is None:
        yield "null"
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, int | float):
        yield _go_float(float(value))
    elif isinstance(value, str):
        yield _go_str(value)
    elif isinstance(value, list | tuple):
        yield "["
        for i, item in enumerate(value):
            yield from ("," if i else "", *_go(item))
        yield "]"
    elif isinstance(value, dict):
        keys = list(value) if isinstance(value, GoStruct) else sorted(value, key=lambda k: _valid_str(k).encode())
        yield "{"
        for i, key in enumerate(keys):
            yield from ("," if i else "", _go_str(key), ":", *_go(value[key]))
        yield "}"
    else:
        raise TypeError(f"cannot render {type(value).__name__} as JSON")


def _go_str(s: str) -> str:
    return '"' + _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES.get(m[0], f"\\u{ord(m[0]):04x}"), _valid_str(s)) + '"'


def _go_float(f: float) -> str:
    """strconv.FormatFloat(f, 'f' or 'e', -1, 64) the way encoding/json picks and trims it."""
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    if 1e-6 <= abs(f) < 1e21:
        return format(Decimal(repr(f)).normalize(), "f")
    text = repr(f)
    return re.sub(r"e-0(\d)$", r"e-\1", text)
