"""``flanneld``: flannel's flags (both spellings, FLANNELD_* env) -> ``daemon.Options`` -> run."""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .. import __version__
from ..core.errors import ConfigError
from ..core.kubenode import annotation_prefix
from ..daemon import Options
from ..lifecycle import run
from ..store.etcd import EtcdOptions
from ..store.kube import KubeOptions
from .flags import Flag, FlagSet, HelpRequested, UsageError
from .proctitle import set_process_name

ETCD_FLAGS = [
    Flag("etcd-endpoints", "str", "http://127.0.0.1:4001,http://127.0.0.1:2379",
         "a comma-delimited list of etcd endpoints"),
    Flag("etcd-prefix", "str", "/coreos.com/network", "etcd prefix"),
    Flag("etcd-keyfile", "str", "", "SSL key file used to secure etcd communication"),
    Flag("etcd-certfile", "str", "", "SSL certification file used to secure etcd communication"),
    Flag("etcd-cafile", "str", "", "SSL Certificate Authority file used to secure etcd communication"),
    Flag("etcd-username", "str", "", "username for BasicAuth to etcd"),
    Flag("etcd-password", "str", "", "password for BasicAuth to etcd"),
]

FLANNELD_FLAGS = [
    *ETCD_FLAGS,
    Flag("iface", "list", [], "interface to use (IP or name) for inter-host communication; repeatable"),
    Flag("iface-regex", "list", [], "regex of the IP address or name of the interface to use; repeatable"),
    Flag("iface-can-reach", "str", "", "detect the interface to use by the route to this IP"),
    Flag("subnet-file", "str", "/run/flannel/subnet.env",
         "filename where env variables (subnet, MTU, ...) are written"),
    Flag("public-ip", "str", "", "IP accessible by other nodes for inter-host communication"),
    Flag("public-ipv6", "str", "", "IPv6 accessible by other nodes for inter-host communication"),
    Flag("subnet-lease-renew-margin", "int", 60, "subnet lease renewal margin, in minutes (1..1439)"),
    Flag("subnet-lease-ttl", "int", 86400, "pyflannel: TTL of the subnet lease in etcd, in seconds"),
    Flag("ip-masq", "bool", False, "setup IP masquerade rule for traffic destined outside of overlay network"),
    Flag("ip-masq-fully-random-disable", "bool", False, "disable --random-fully in the MASQUERADE rule"),
    Flag("kube-subnet-mgr", "bool", False, "contact the Kubernetes API for subnet assignment instead of etcd"),
    Flag("kube-api-url", "str", "", "Kubernetes API server URL"),
    Flag("kube-annotation-prefix", "str", "flannel.alpha.coreos.com", "Kubernetes annotation prefix"),
    Flag("kubeconfig-file", "str", "", "kubeconfig file location"),
    Flag("net-config-path", "str", "/etc/kube-flannel/net-conf.json", "path to the network configuration file"),
    Flag("set-node-network-unavailable", "bool", True, "set NodeNetworkUnavailable after ready"),
    Flag("healthz-ip", "str", "0.0.0.0", "the IP address for healthz server to listen"),
    Flag("healthz-port", "int", 0, "the port for healthz server to listen (0 to disable)"),
    Flag("iptables-resync", "int", 5, "resync period for iptables rules, in seconds"),
    Flag("iptables-forward-rules", "bool", True, "add default accept rules to FORWARD chain in iptables"),
    Flag("ip-blackhole-route", "bool", False, "add a blackhole route for the node's own subnet"),
    Flag("version", "bool", False, "print version and exit"),
    Flag("v", "int", 0, "log level for V logs"),
    Flag("vmodule", "str", "", "(accepted for compatibility; ignored)"),
    Flag("log_backtrace_at", "str", "", "(accepted for compatibility; ignored)"),
]

_NOT_YET: dict[str, str] = {}  # flags accepted but not implemented yet: none now
_KUBE_ONLY = ("kube-api-url", "kube-annotation-prefix", "kubeconfig-file", "net-config-path",
              "set-node-network-unavailable")


def unsupported_warnings(v: Mapping[str, Any]) -> tuple[str, ...]:
    """One start-up warning per accepted flag that does nothing here (nothing is silently ignored)."""
    defaults = {f.name: f.default for f in FLANNELD_FLAGS}
    out = []
    if v["ip-blackhole-route"]:
        out.append("-ip-blackhole-route is not supported by pyflannel yet: no blackhole route is added for our "
                   "subnet (remove the flag to silence this)")
    if not v["kube-subnet-mgr"]:
        out += [f"-{name} has no effect without -kube-subnet-mgr (etcd mode)" for name in _KUBE_ONLY
                if v[name] != defaults[name]]
    out += [f"-{name} is accepted for compatibility with Go flannel's logging and has no effect"
            for name in ("vmodule", "log_backtrace_at") if v[name]]
    return tuple(out)


def etcd_options(v: Mapping[str, Any]) -> EtcdOptions:
    if not v["etcd-prefix"].strip().strip("/"):
        raise UsageError(f"-etcd-prefix is empty ({v['etcd-prefix']!r}): set FLANNEL_ETCD_PREFIX in "
                         '/etc/sysconfig/flanneld (e.g. FLANNEL_ETCD_PREFIX="/atomic.io/network") or pass '
                         "-etcd-prefix=/coreos.com/network (flannel's default)")
    return EtcdOptions(
        endpoints=tuple(e for e in v["etcd-endpoints"].split(",") if e.strip()),
        prefix=v["etcd-prefix"],
        keyfile=v["etcd-keyfile"],
        certfile=v["etcd-certfile"],
        cafile=v["etcd-cafile"],
        username=v["etcd-username"],
        password=v["etcd-password"],
    )


def kube_options(v: Mapping[str, Any]) -> KubeOptions | None:
    if not v["kube-subnet-mgr"]:
        return None
    try:
        prefix = annotation_prefix(v["kube-annotation-prefix"])
    except ConfigError as err:
        raise UsageError(str(err)) from err
    return KubeOptions(kubeconfig=v["kubeconfig-file"], api_url=v["kube-api-url"], prefix=prefix,
                       net_config_path=v["net-config-path"],
                       set_network_unavailable=v["set-node-network-unavailable"])


def build_options(v: Mapping[str, Any]) -> Options:
    margin = v["subnet-lease-renew-margin"]
    if margin >= 1440 or margin <= 0:
        raise UsageError("Invalid subnet-lease-renew-margin option, out of acceptable range (1..1439 minutes)")
    if v["subnet-lease-ttl"] < 5:
        raise UsageError("-subnet-lease-ttl must be at least 5 seconds")
    if not v["kube-subnet-mgr"] and not [e for e in v["etcd-endpoints"].split(",") if e.strip()]:
        raise UsageError("-etcd-endpoints is empty: set FLANNEL_ETCD_ENDPOINTS in /etc/sysconfig/flanneld "
                         '(e.g. FLANNEL_ETCD_ENDPOINTS="http://etcd:2379") or pass -etcd-endpoints=http://HOST:2379')
    if not 0 <= v["healthz-port"] <= 65535:
        raise UsageError(f"-healthz-port must be 0..65535, got {v['healthz-port']}")
    if v["iptables-resync"] <= 0:
        raise UsageError("-iptables-resync must be a positive number of seconds")
    for name, what in _NOT_YET.items():
        if v[name]:
            raise UsageError(f"-{name}: {what} is not supported by this version of pyflannel yet")
    return Options(
        etcd=etcd_options(v),
        kube=kube_options(v),
        ifaces=tuple(v["iface"]),
        iface_regex=tuple(v["iface-regex"]),
        iface_can_reach=v["iface-can-reach"],
        public_ip=v["public-ip"],
        public_ipv6=v["public-ipv6"],
        subnet_file=v["subnet-file"],
        renew_margin_min=margin,
        lease_ttl_s=v["subnet-lease-ttl"],
        ip_masq=v["ip-masq"],
        ip_masq_random_fully=not v["ip-masq-fully-random-disable"],
        forward_rules=v["iptables-forward-rules"],
        iptables_resync_s=float(v["iptables-resync"]),
        healthz_ip=v["healthz-ip"],
        healthz_port=v["healthz-port"],
        unsupported=unsupported_warnings(v),
    )


OWN_LOGGERS = ("flanneld", "pyflannel")  # everything pyflannel logs is under one of these


def setup_logging(verbosity: int) -> None:
    """-v=0/1: pyflannel's own info; -v=2: its debug decisions too; -v>=3: the libraries' debug
    as well (pyroute2, grpc, asyncio, etcd3aio, botocore). Below 3 libraries say only warnings."""
    logging.basicConfig(
        level=logging.DEBUG if verbosity >= 3 else logging.WARNING,
        format="%(asctime)s %(levelname).1s %(process)d %(name)s] %(message)s",
        stream=sys.stderr,
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    if verbosity < 3:
        logging.getLogger("etcd3aio").setLevel(logging.ERROR)  # we log outages once, ourselves
        logging.getLogger("asyncio").addFilter(_grpc_watch_teardown_noise)


def _grpc_watch_teardown_noise(record: logging.LogRecord) -> bool:
    """etcd3aio re-creates its watch stream after a reconnect and leaves grpc's request-iterator
    task of the old stream pending; asyncio then reports it when it is collected. Harmless (the
    new stream carries on); shown only with -v=3."""
    text = record.getMessage()
    return not ("_consume_request_iterator" in text or "aclose(): asynchronous generator is already running" in text
                or "async_generator_athrow" in text)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    flags = FlagSet("flanneld", FLANNELD_FLAGS, env_prefix="FLANNELD")
    try:
        values, rest = flags.parse(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
        if values["version"]:
            print(__version__, file=sys.stderr)
            return 0
        if rest:
            raise UsageError(f"unexpected argument {rest[0]!r}")
        opts = build_options(values)
    except HelpRequested:
        print(flags.usage())
        return 0
    except UsageError as err:
        print(f"flanneld: {err}\nRun 'flanneld -h' for the flags.", file=sys.stderr)
        return 2
    setup_logging(values["v"])
    set_process_name("flanneld", list(sys.argv[1:] if argv is None else argv))
    return run(opts, f"flanneld {__version__} (pyflannel, Python {platform.python_version()}) starting; "
                     f"effective flags: {effective_flags(values)}")


def effective_flags(v: Mapping[str, Any]) -> str:
    """Every flag with the value in force (command line, FLANNELD_* environment or default), as Go
    flannel logs its "CLI flags config"; the etcd password is never shown."""
    out = []
    for flag in FLANNELD_FLAGS:
        value = v[flag.name]
        if flag.name == "etcd-password" and value:
            value = "<redacted>"
        elif isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = str(value).lower()
        out.append(f"-{flag.name}={value}")
    return " ".join(out)


if __name__ == "__main__":
    sys.exit(main())
