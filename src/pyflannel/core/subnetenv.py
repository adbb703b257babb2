"""subnet.env as flannel writes and reads it: the file Docker, the CNI plugin and a restart rely on.

Three readers depend on this file: ``mk-docker-opts``, flannel's CNI plugin (a strict, case-sensitive
reader with no quoting support) and flanneld itself on its next start, which reads the previous
subnet back to keep its lease. So the writer is byte-exact with Go's ``WriteSubnetFile``
(docs/compatibility.md#subnet-env): fixed line order, IPv4 and IPv6 lines only when that family is enabled, no
quoting, no ``export``, a trailing newline. The reader is lenient like ``godotenv.Read``, because a
human may have edited the file or another tool may have written it.

Everything here is pure: callers do the file I/O (the daemon writes atomically, the CLI reads). A
line that is not ``KEY=VALUE`` raises ``LocalConfigError``: the file lives on this host and the
operator fixes it. flanneld itself reads its previous file with ``salvage_subnet_env`` instead:
bytes, line by line, keeping every line that reads and noting the others, because a damaged file
must never stop it (``previous_run`` then says which subnet, if any, the file still names).

Differences from godotenv, on purpose: no ``$VAR`` expansion, no multi-line quoted values, no
YAML-style ``KEY: value`` lines. None of these occur in a file flannel writes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import LocalConfigError

SUBNET_KEY = "FLANNEL_SUBNET"
IPV6_SUBNET_KEY = "FLANNEL_IPV6_SUBNET"
NETWORK_KEY = "FLANNEL_NETWORK"
IPV6_NETWORK_KEY = "FLANNEL_IPV6_NETWORK"
MAX_SUBNET_ENV_BYTES = 64 * 1024  # flannel writes ~100 bytes; flanneld reads no more than this

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INLINE_COMMENT_RE = re.compile(r"\s#")
_PREFIX_LEN_RE = re.compile(r"[0-9]{1,3}")
_LEADING_ADDR_RE = re.compile(r"\s*([0-9.]+)(/?)")
_IGNORED_KEPT = 8  # ignored lines named in the log; the rest are counted
_DOUBLE_QUOTE_ESCAPES = {"n": "\n", "r": "\r"}

_Iface = TypeVar("_Iface", ipaddress.IPv4Interface, ipaddress.IPv6Interface)


@dataclass(frozen=True)
class SubnetEnv:
    """What flanneld tells its neighbours on this host: network, our subnet, MTU and masquerading.

    ``subnet`` is the first usable address of the leased subnet with the lease's prefix
    (``10.0.53.1/24`` for the lease ``10.0.53.0/24``): Docker uses it as the bridge IP. A family is
    either fully present (network and subnet) or absent.
    """

    network: ipaddress.IPv4Network | None
    subnet: ipaddress.IPv4Interface | None
    ipv6_network: ipaddress.IPv6Network | None
    ipv6_subnet: ipaddress.IPv6Interface | None
    mtu: int
    ipmasq: bool

    def __post_init__(self) -> None:
        if (self.network is None) != (self.subnet is None):
            raise ValueError("SubnetEnv needs both network and subnet for IPv4, or neither")
        if (self.ipv6_network is None) != (self.ipv6_subnet is None):
            raise ValueError("SubnetEnv needs both ipv6_network and ipv6_subnet for IPv6, or neither")
        if isinstance(self.mtu, bool) or not isinstance(self.mtu, int):
            raise ValueError(f"SubnetEnv mtu must be an int, got {self.mtu!r}")
        if not isinstance(self.ipmasq, bool):
            raise ValueError(f"SubnetEnv ipmasq must be a bool, got {self.ipmasq!r}")


def render_subnet_env(env: SubnetEnv) -> str:
    """The file's text, byte for byte what Go flannel's ``WriteSubnetFile`` writes."""
    lines: list[str] = []
    if env.network is not None:
        lines.append(f"{NETWORK_KEY}={env.network}")
        lines.append(f"{SUBNET_KEY}={env.subnet}")
    if env.ipv6_network is not None:
        lines.append(f"{IPV6_NETWORK_KEY}={env.ipv6_network}")
        lines.append(f"{IPV6_SUBNET_KEY}={env.ipv6_subnet}")
    lines.append(f"FLANNEL_MTU={env.mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}")
    return "\n".join(lines) + "\n"


def parse_subnet_env(text: str, *, source: str = "subnet.env") -> dict[str, str]:
    """Read ``KEY=VALUE`` lines leniently, like godotenv; a later duplicate key wins.

    Skips blank lines and ``#`` comments, accepts an ``export`` prefix, strips matching single or
    double quotes (double quotes understand ``\\n``, ``\\r`` and backslash-escaped characters) and
    drops an inline `` # comment`` after an unquoted value. ``source`` only names the file in errors.
    """
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key, value = _parse_line(line)
        except ValueError as err:
            raise LocalConfigError(
                f"{source} line {lineno}: {err}: {raw!r}; expected KEY=VALUE lines such as FLANNEL_MTU=1450"
            ) from err
        values[key] = value
    return values


def _parse_line(line: str) -> tuple[str, str]:
    """One non-blank, non-comment line -> (key, value); ValueError says what is wrong."""
    if line.startswith(("export ", "export\t")):
        line = line[len("export") :].lstrip()
    key, sep, value = line.partition("=")
    if not sep:
        raise ValueError("no '=' in line")
    key = key.strip()
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid key {key!r}")
    return key, _parse_value(value.strip())


def _parse_value(value: str) -> str:
    if value[:1] == "'":
        end = value.find("'", 1)
        if end == -1:
            raise ValueError("unterminated single quote")
        _check_after_quote(value[end + 1 :])
        return value[1:end]
    if value[:1] == '"':
        return _parse_double_quoted(value)
    comment = _INLINE_COMMENT_RE.search(value)
    return value if comment is None else value[: comment.start()].rstrip()


def _parse_double_quoted(value: str) -> str:
    out: list[str] = []
    i = 1
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append(_DOUBLE_QUOTE_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if ch == '"':
            _check_after_quote(value[i + 1 :])
            return "".join(out)
        out.append(ch)
        i += 1
    raise ValueError("unterminated double quote")


def _check_after_quote(rest: str) -> None:
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise ValueError("text after the closing quote")


def previous_subnets(
    values: Mapping[str, str],
) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """The subnets a previous run wrote, in network form (``10.5.52.1/24`` -> ``10.5.52.0/24``).

    Values may be comma-separated lists; invalid entries are skipped and the first valid CIDR wins.
    (Go flannel, given more than one valid entry, logs an error and ignores them all; a list never
    comes from flannel's own writer, so taking the first is the kinder reading.) ``None`` when the
    key is absent or holds no valid CIDR of the right family.
    """
    v4 = _first_cidr(values.get(SUBNET_KEY), ipaddress.IPv4Interface)
    v6 = _first_cidr(values.get(IPV6_SUBNET_KEY), ipaddress.IPv6Interface)
    return (None if v4 is None else v4.network), (None if v6 is None else v6.network)


def _first_cidr(value: str | None, kind: type[_Iface]) -> _Iface | None:
    """First entry that is ``ADDR/LEN`` of the given family, like Go's ``net.ParseCIDR``."""
    if not value:
        return None
    for item in value.split(","):
        addr, sep, plen = item.strip().partition("/")
        # ParseCIDR wants a decimal prefix length; ipaddress alone would also take netmasks,
        # bare addresses and IPv6 zones.
        if not sep or not _PREFIX_LEN_RE.fullmatch(plen) or "%" in addr:
            continue
        try:
            return kind(f"{addr}/{plen}")
        except ValueError:
            continue
    return None


def subnet_env_for(
    network: ipaddress.IPv4Network | None,
    lease_subnet: ipaddress.IPv4Network | None,
    mtu: int,
    ipmasq: bool,
    ipv6_network: ipaddress.IPv6Network | None = None,
    ipv6_subnet: ipaddress.IPv6Network | None = None,
) -> SubnetEnv:
    """The SubnetEnv for a lease: FLANNEL_SUBNET is the lease's network address + 1, same prefix."""
    return SubnetEnv(
        network=network,
        subnet=None if lease_subnet is None else _first_usable_v4(lease_subnet),
        ipv6_network=ipv6_network,
        ipv6_subnet=None if ipv6_subnet is None else _first_usable_v6(ipv6_subnet),
        mtu=mtu,
        ipmasq=ipmasq,
    )


# Network address + 1 with the network's prefix; wraps around at the top like Go's IncrementIP.
def _first_usable_v4(net: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    addr = ipaddress.IPv4Address((int(net.network_address) + 1) % 2**32)
    return ipaddress.IPv4Interface((addr, net.prefixlen))


def _first_usable_v6(net: ipaddress.IPv6Network) -> ipaddress.IPv6Interface:
    addr = ipaddress.IPv6Address((int(net.network_address) + 1) % 2**128)
    return ipaddress.IPv6Interface((addr, net.prefixlen))


# --- flanneld's own previous file, read leniently -------------------------------------------------


@dataclass(frozen=True)
class Salvaged:
    """What a possibly damaged subnet.env still says (``salvage_subnet_env``).

    ``values`` holds the lines that read cleanly (a later duplicate wins). ``ignored`` names the
    first few other lines and why (``line 3 (b'\\xff\\xfe'): not UTF-8 ...``), ``ignored_count``
    counts them all. ``cut_key`` is the key of a last line with no newline after it: the file may
    have been cut off there, so its value may be too. ``fragments`` maps the key of a damaged line
    (bad bytes, a broken quote) to the text before the damage.
    """

    values: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    ignored_count: int = 0
    cut_key: str = ""
    fragments: dict[str, str] = field(default_factory=dict)


def salvage_subnet_env(data: bytes, *, truncated: bool = False) -> Salvaged:
    """Read ``data`` line by line, never failing: a line that is not UTF-8, holds a NUL byte or is
    not ``KEY=VALUE`` is noted and skipped, the others are read as ``parse_subnet_env`` reads them.
    ``truncated``: the caller read only the first ``MAX_SUBNET_ENV_BYTES`` of a longer file."""
    values: dict[str, str] = {}
    fragments: dict[str, str] = {}
    ignored: list[str] = []
    count, cut_key = 0, ""
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")
        text, why = _undamaged_prefix(raw)
        if not why:
            line = text.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key, value = _parse_line(line)
            except ValueError as err:
                why = str(err)
            else:
                values[key] = value
                cut_key = key if lineno == len(lines) else ""  # the last "line" is b"" after a final newline
                continue
        count += 1
        if len(ignored) < _IGNORED_KEPT:
            ignored.append(f"line {lineno} ({_excerpt(raw)}): {why}")
        key, value = _fragment(text)
        if key:
            fragments[key] = value
    if truncated:
        count += 1
        ignored.append(f"everything after the first {MAX_SUBNET_ENV_BYTES} bytes (the file is larger)")
    return Salvaged(values, tuple(ignored), count, cut_key, fragments)


def _undamaged_prefix(raw: bytes) -> tuple[str, str]:
    """(the line's text up to any damage, why it is damaged or "")."""
    nul = raw.find(b"\0")
    head = raw if nul < 0 else raw[:nul]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        return head[: err.start].decode("utf-8"), f"not UTF-8 (byte 0x{head[err.start]:02x} at column {err.start + 1})"
    if nul >= 0:
        return text, f"NUL byte at column {nul + 1}"
    return text, ""


def _excerpt(raw: bytes, limit: int = 20) -> str:
    """A short, printable, log-safe rendering of a line."""
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def _fragment(text: str) -> tuple[str, str]:
    """``KEY=value...`` at the start of a damaged line: (KEY, the value's text), else ("", "")."""
    text = text.strip()
    if text.startswith(("export ", "export\t")):
        text = text[len("export") :].lstrip()
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY_RE.fullmatch(key):
        return "", ""
    return key, value.strip().lstrip("'\"")


@dataclass(frozen=True)
class PreviousRun:
    """What flanneld's previous subnet.env tells the next start.

    ``subnet``: the lease it names (network form), to be asked for again; ``network``: the network
    it served (to recycle old iptables rules). ``problem``: why a file that is there names no usable
    subnet (the caller says so plainly). ``recovered``: how a damaged ``FLANNEL_SUBNET`` still
    named its subnet. ``ipv6_subnet`` and ``ipv6_network``: the same for IPv6, from whole lines only.
    """

    subnet: ipaddress.IPv4Network | None = None
    network: ipaddress.IPv4Network | None = None
    problem: str = ""
    recovered: str = ""
    ipv6_subnet: ipaddress.IPv6Network | None = None  # FLANNEL_IPV6_SUBNET's subnet, when whole
    ipv6_network: ipaddress.IPv6Network | None = None  # FLANNEL_IPV6_NETWORK, when whole


def previous_run(s: Salvaged, subnet_len: int) -> PreviousRun:
    """``_previous_v4``, plus the IPv6 subnet and network of whole ``FLANNEL_IPV6_SUBNET`` and
    ``FLANNEL_IPV6_NETWORK`` lines (Go's prevIPv6Subnet and prevIPv6Network)."""
    v6 = _first_cidr(s.values.get(IPV6_SUBNET_KEY), ipaddress.IPv6Interface) if s.cut_key != IPV6_SUBNET_KEY else None
    return dataclasses.replace(_previous_v4(s, subnet_len), ipv6_subnet=None if v6 is None else v6.network,
                               ipv6_network=_network(s, IPV6_NETWORK_KEY, ipaddress.IPv6Network))


_N = TypeVar("_N", ipaddress.IPv4Network, ipaddress.IPv6Network)


def _network(s: Salvaged, key: str, kind: type[_N]) -> _N | None:
    """The network of a whole ``key`` line (host bits allowed, as Go's ParseCIDR), else None."""
    if key not in s.values or s.cut_key == key:
        return None
    try:
        return kind(s.values[key], strict=False)
    except ValueError:
        return None


def _previous_v4(s: Salvaged, subnet_len: int) -> PreviousRun:
    """The previous subnet and network in ``s``. A clean ``FLANNEL_SUBNET`` is taken as it is
    (``previous_subnets``). A damaged or cut one still names its subnet when its address is
    whole (followed by ``/``, or ending a complete line) and is what flannel writes, the first
    address of a ``subnet_len`` subnet: ``10.0.53.1/2`` cut from ``10.0.53.1/24`` is
    ``10.0.53.0/24``; ``10.0.5`` names nothing."""
    network = _network(s, NETWORK_KEY, ipaddress.IPv4Network)
    clean = s.values.get(SUBNET_KEY)
    complete = clean is not None and s.cut_key != SUBNET_KEY
    full = _first_cidr(clean, ipaddress.IPv4Interface)
    if full is not None and complete:
        return PreviousRun(full.network, network)
    raw = clean if clean is not None else s.fragments.get(SUBNET_KEY)
    if raw is None:
        return PreviousRun(None, network, problem=f"it has no {SUBNET_KEY} line" + _ignored_note(s))
    shown = ascii(raw[:40])
    addr, subnet = _subnet_from_address(raw, complete, subnet_len)
    if subnet is None:
        if clean is None:
            why = "is on a damaged line, and no whole address survives in it"
        elif not complete:
            why = "is cut off (no newline ends the file), and no whole address survives in it"
        else:
            why = "is not a subnet such as 10.0.53.1/24"
        return PreviousRun(None, network, problem=f"{SUBNET_KEY}={shown} {why}")
    if full is not None and full.network == subnet:
        return PreviousRun(subnet, network)  # a hand-written file without a final newline
    how = (f"{SUBNET_KEY}={shown} is not a whole subnet (damaged or cut off); its address {addr} is the first "
           f"of {subnet} (SubnetLen /{subnet_len}): asking for that subnet")
    return PreviousRun(subnet, network, recovered=how)


def _ignored_note(s: Salvaged) -> str:
    n = s.ignored_count
    return f" ({n} damaged line{'' if n == 1 else 's'} ignored)" if n else ""


def _subnet_from_address(raw: str, complete: bool, subnet_len: int
                         ) -> tuple[str, ipaddress.IPv4Network | None]:
    """(the leading address, the ``subnet_len`` subnet it is the first address of) or ("", None)
    when the address may be cut or is not a subnet's first address."""
    m = _LEADING_ADDR_RE.match(raw)
    if m is None or not (m.group(2) or (complete and m.end() == len(raw.rstrip()))):
        return "", None
    try:
        addr = ipaddress.IPv4Address(m.group(1))
        subnet = ipaddress.IPv4Network((addr, subnet_len), strict=False)
    except ValueError:
        return "", None
    if int(addr) != int(subnet.network_address) + 1:
        return "", None
    return str(addr), subnet
