"""``flannelctl``: the operator's tool. The same etcd flags as flanneld, in both spellings and
from the same FLANNELD_* environment, before or after the subcommand.

    flannelctl [-etcd-endpoints=…] [-etcd-prefix=…] config get | set FILE|- [--force] | validate [FILE|-] [--json]
    flannelctl config migrate-v2 [--force]
    flannelctl leases list [--json] | reserve SUBNET PUBLIC_IP | revoke SUBNET
    flannelctl [-subnet-file=…] [-healthz-port=N] status | doctor [--json]
    flannelctl trace SRC DST [--json]
    flannelctl lab up|down|status|demo [--name NAME] [--hosts N] [--backend udp|vxlan|host-gw|wireguard]
                                       [--ipv6 dual|only] [--kube]
               [--keep] [--force]

Exit 0 = fine, 1 = the input or the store is wrong (one message naming what and how to fix),
2 = usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from .. import __version__
from ..backend import get_backend
from ..core.config import RESTART_NEEDED, NetworkConfig, config_changes, parse_config
from ..core.errors import ConfigError, FlannelError, StoreUnavailable
from ..lab.netns import LabError
from ..store.etcd import EtcdRegistry
from .ctl_doctor import doctor
from .ctl_lab import lab_command
from .ctl_leases import leases_list, leases_reserve, leases_revoke, no_config, orphaned_by
from .ctl_status import status
from .ctl_trace import trace_command
from .ctl_v2 import migrate_v2
from .flags import Flag, FlagSet, HelpRequested, UsageError
from .flanneld import ETCD_FLAGS, etcd_options
from .sysconfig import with_sysconfig

CTL_FLAGS = [
    *ETCD_FLAGS,
    Flag("subnet-file", "str", "/run/flannel/subnet.env", "status: flanneld's subnet file on this host"),
    Flag("healthz-port", "int", 0, "status: flanneld's health port on this host (0: do not ask)"),
    Flag("healthz-ip", "str", "0.0.0.0", "status: the address flanneld serves health on (0.0.0.0: ask 127.0.0.1)"),
    Flag("version", "bool", False, "print pyflannel's version and exit"),
]


def _flags_epilog() -> str:
    lines = ["flags (before or after the subcommand, one or two dashes; also from FLANNELD_* variables and",
             "FLANNEL_ETCD_ENDPOINTS, FLANNEL_ETCD_PREFIX, FLANNEL_OPTIONS in /etc/sysconfig/flanneld):"]
    for flag in CTL_FLAGS:
        default = "" if flag.default in ("", 0, False) else f" (default {flag.default})"
        lines.append(f"  -{flag.name:<16} {flag.help}{default}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``UsageError``), not the usage text and an exit;
    every subcommand's help ends with the flags it takes (flannelctl's own, parsed before it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", _flags_epilog())
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sub = self.prog.removeprefix("flannelctl").strip()
        raise UsageError(f"{sub + ': ' if sub else ''}{message} (see `{self.prog} -h`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flannelctl", description="Operate a flannel network "
                "(etcd flags as flanneld: -etcd-endpoints, -etcd-prefix, ...)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    cfg = sub.add_parser("config", help="read, check and write the network config").add_subparsers(
        dest="action", required=True)
    cfg.add_parser("get", help="print the network config stored in etcd")
    s = cfg.add_parser("set", help="validate a config, then write it to etcd")
    s.add_argument("file", help="a JSON file, or - for stdin")
    s.add_argument("--force", action="store_true", help="write even if existing leases fall outside the new network")
    m = cfg.add_parser("migrate-v2", help="copy a config (and leases) written to etcd's v2 store into v3, "
                       "which flanneld reads")
    m.add_argument("--force", action="store_true", help="replace a different config already in v3")
    v = cfg.add_parser("validate", help="check a config file (or, with no file, what is in etcd)")
    v.add_argument("file", nargs="?", help="a JSON file, or - for stdin")
    v.add_argument("--json", action="store_true", help="print the effective config with every default")
    leases = sub.add_parser("leases", help="list, reserve and revoke subnet leases").add_subparsers(
        dest="action", required=True)
    ls = leases.add_parser("list", help="a table of every lease (and of bad keys)")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    rs = leases.add_parser("reserve", help="reserve SUBNET for the host with PUBLIC_IP (a key without TTL)")
    rs.add_argument("subnet")
    rs.add_argument("public_ip")
    rs.add_argument("--force", action="store_true", help="reserve even if PUBLIC_IP already holds another subnet")
    rv = leases.add_parser("revoke", help="delete the lease or reservation of SUBNET, or any key under "
                           "<prefix>/subnets/ (a bad one too) given as listed: 10.0.5.128-25 or the full key")
    rv.add_argument("subnet", metavar="SUBNET|KEY")
    sub.add_parser("status", help="this host: lease, backend, peers, devices, health")
    dr = sub.add_parser("doctor", help="this host: every known way flannel breaks, checked, with the fix")
    dr.add_argument("--json", action="store_true", help="one JSON document instead of the lines")
    tr = sub.add_parser("trace", help="the path from container address SRC to DST as this host sees it, and the "
                        "first wrong hop with the fix")
    tr.add_argument("src", metavar="SRC")
    tr.add_argument("dst", metavar="DST")
    tr.add_argument("--json", action="store_true", help="one JSON document instead of the lines")
    lab = sub.add_parser("lab", help="a multi-host cluster in network namespaces on this machine")
    lab.add_argument("action", choices=["up", "down", "status", "demo"])
    lab.add_argument("--name", default="pfl", help="lab name, prefix of its namespaces (default pfl)")
    lab.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    lab.add_argument("--backend", default="udp", help="backend type (default udp, the article's)")
    lab.add_argument("--ipv6", choices=["dual", "only"], default="",
                     help="up: a dual-stack (dual) or IPv6-only (only) network on an IPv6 underlay from "
                     "2001:db8::/32 (vxlan, host-gw)")
    lab.add_argument("--keep", action="store_true", help="demo: leave the lab running afterwards")
    lab.add_argument("--kube", action="store_true", help="up, demo: Kubernetes mode (-kube-subnet-mgr) against a "
                     "real kube-apiserver (built by make setup) instead of etcd leases; with --ipv6 the "
                     "Nodes get IPv6 podCIDRs too (dual) or only (only)")
    lab.add_argument("--force", action="store_true", help="up: replace a lab of that name that is running")
    return p


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise FlannelError(f"cannot read {path}: {err.strerror}") from err


def _warn_restart(previous: bytes | None, new: NetworkConfig) -> None:
    """A changed config takes effect only when each flanneld restarts: say so, with what changed."""
    try:
        changes = config_changes(parse_config(previous), new) if previous else []
    except ConfigError:
        changes = ["the previous config was invalid"]
    if changes:
        print(f"flannelctl: warning: {'; '.join(changes)}: {RESTART_NEEDED}", file=sys.stderr)


async def _config(args: argparse.Namespace, registry: EtcdRegistry) -> int:
    if args.action == "set" or getattr(args, "file", None):  # a file is checked before etcd is asked
        data, where = _read(args.file), args.file
    else:
        got = await registry.get_config()
        where = registry.config_key
        if got is None:
            raise await no_config(registry)
        data = got
    try:
        cfg = parse_config(data)
        for warning in get_backend(cfg.backend_type).check_config(cfg):
            print(f"flannelctl: warning: {warning}", file=sys.stderr)
    except ConfigError as err:
        raise FlannelError(f"invalid network config in {where}: {err}") from err
    if args.action == "get":
        sys.stdout.write(data.decode(errors="replace").rstrip("\n") + "\n")
    elif args.action == "set":
        orphans = orphaned_by(cfg, list((await registry.list_leases()).leases))
        if orphans and not args.force:
            names = ", ".join(f"{le.subnet} ({le.attrs.public_ip})" for le in orphans)
            raise FlannelError(f"refusing to write {registry.config_key}: {len(orphans)} existing lease(s) would "
                               f"fall outside the new network: {names}. Their hosts would lease new subnets "
                               f"(and docker would need a restart); add --force to write anyway")
        previous = await registry.get_config()
        await registry.put_config(data)
        print(f"wrote {registry.config_key}: network {cfg.network}, /{cfg.subnet_len} per host, "
              f"{cfg.subnets_ipv4()} subnets, backend {cfg.backend_type}")
        _warn_restart(previous, cfg)
    elif getattr(args, "json", False):
        print(json.dumps(cfg.to_effective_json(), indent=2))
    else:
        print(f"{where}: valid: network {cfg.network}, /{cfg.subnet_len} per host "
              f"({cfg.subnet_min}..{cfg.subnet_max}, {cfg.subnets_ipv4()} subnets), backend {cfg.backend_type}")
    return 0


async def _run(args: argparse.Namespace, values: Mapping[str, Any], registry: EtcdRegistry) -> int:
    try:
        if args.cmd == "config" and args.action == "migrate-v2":
            return await migrate_v2(registry, args.force)
        if args.cmd == "config":
            return await _config(args, registry)
        if args.cmd == "doctor":
            return await doctor(registry, values["subnet-file"], values["healthz-port"], values["healthz-ip"],
                                args.json)
        if args.cmd == "trace":
            return await trace_command(registry, args.src, args.dst, args.json)
        if args.cmd == "status":
            return await status(registry, values["subnet-file"], values["healthz-port"], values["healthz-ip"])
        if args.action == "list":
            return await leases_list(registry, args.json)
        if args.action == "reserve":
            return await leases_reserve(registry, args.subnet, args.public_ip, args.force)
        return await leases_revoke(registry, args.subnet)
    finally:
        await registry.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Exit 0 when done, 1 with one line naming the cause and the fix when the input, a file or
    the store is wrong, 2 with one line for a usage error; never a traceback."""
    try:
        return _main(argv, environ)
    except UsageError as err:
        print(f"flannelctl: {err}", file=sys.stderr)
        return 2
    except StoreUnavailable as err:
        print(f"flannelctl: {err} (check -etcd-endpoints)", file=sys.stderr)
        return 1
    except (FlannelError, LabError) as err:
        print(f"flannelctl: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `flannelctl leases list | head -1`: the reader is gone, nothing to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # a bug: still one line, with what is needed to report it
        print(f"flannelctl: unexpected {type(err).__name__}: {err} (a bug in flannelctl: please report it with "
              "the command line)", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None, environ: Mapping[str, str] | None) -> int:
    flags = FlagSet("flannelctl", CTL_FLAGS, env_prefix="FLANNELD")
    try:
        values, rest = flags.parse(sys.argv[1:] if argv is None else argv,
                                   with_sysconfig(os.environ if environ is None else environ), interspersed=True)
    except HelpRequested:
        _parser().print_help()
        return 0
    if values["version"]:
        print(f"flannelctl {__version__} (pyflannel)")
        return 0
    try:
        args = _parser().parse_args(rest)
    except SystemExit as exc:  # -h of a subcommand
        return int(exc.code or 0)
    if args.cmd == "lab":
        return lab_command(args)
    return asyncio.run(_run(args, values, EtcdRegistry(etcd_options(values))))


if __name__ == "__main__":
    sys.exit(main())
