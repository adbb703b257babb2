"""mk-docker-opts: turn flannel's subnet.env into Docker daemon options, like dist/mk-docker-opts.sh.

Existing systemd units run ``mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker``
and then ``EnvironmentFile=`` the result, so this port keeps the script's contract: the same
getopts options (``-f -d -i -c -k -m -h -?``, ``-fFILE``, ``-ic``), the same defaults, exit 1 for
usage (a bad option named in dash's getopts words), byte-identical output
(docs/compatibility.md#mk-docker-opts), the output file truncated before writing, and the
routing-table sanity check run *after* the file is written.

Where it differs from the script, it is on purpose:

- subnet.env is *parsed* (``parse_subnet_env``), not sourced: nothing in it is executed, and a
  malformed file is an error naming the line. FLANNEL_* values come from the file only, never from
  this process's environment, and ``-f name`` means ``./name`` (dash's ``.`` searches ``$PATH``).
- A missing env file still writes the combined line, like the script, but warns on stderr.
- Only the three options the script derives (BIP, IPMASQ, MTU) are emitted; stray ``DOCKER_OPT_*``
  shell variables, which the script's ``set | grep`` would sweep in, are not.
- The ``-k`` key must be a shell variable name, since the output is read as an env file.
- If ``ip`` is not installed, the routing-table check is skipped instead of failing.
- ``--daemon-json[=FILE]`` (pyflannel's own) merges the options into docker's daemon.json instead
  (``docker_json``): the way the shipped units hand them to docker, whatever its packaging.

The work is split into small pure functions (options, rendering, the route match); ``main`` only
does the I/O, and takes the environment and the route-table reader as parameters so tests never
read or touch the host's routes.
"""

from __future__ import annotations

import getopt
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyflannel.core.errors import LocalConfigError
from pyflannel.core.subnetenv import parse_subnet_env

from . import docker_json

PROG = "mk-docker-opts"

USAGE = f"""{PROG} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
"""

_SHELL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBNET_RE = re.compile(r"(\d+\.\d+\.\d+)\.(\d+)/(\d+)")


class UsageError(Exception):
    """Bad command line; ``str()`` is the diagnostic ('' for -h/-?, which only prints usage)."""


class OptsError(Exception):
    """The env file's values cannot become Docker options."""


@dataclass(frozen=True)
class Options:
    flannel_env: str = "/run/flannel/subnet.env"
    docker_env: str = "/run/docker_opts.env"
    combined_key: str = "DOCKER_OPTS"
    individual: bool = True
    combined: bool = True
    ipmasq: bool = True


def parse_args(argv: list[str]) -> Options:
    """getopts "f:d:icmk:?h"; like getopts, parsing stops at the first non-option argument."""
    try:
        pairs, _rest = getopt.getopt(argv, "f:d:icmk:?h")
    except getopt.GetoptError as err:  # in the words of the script's getopts (dash)
        missing = "requires argument" in err.msg
        raise UsageError(f"No arg for -{err.opt} option" if missing else f"Illegal option -{err.opt}") from err
    defaults = Options()
    flannel_env, docker_env, key = defaults.flannel_env, defaults.docker_env, defaults.combined_key
    individual = combined = False
    ipmasq = True
    for flag, value in pairs:
        if flag in ("-h", "-?"):
            raise UsageError("")
        if flag == "-f":
            flannel_env = value
        elif flag == "-d":
            docker_env = value
        elif flag == "-k":
            key = value
        elif flag == "-i":
            individual = True
        elif flag == "-c":
            combined = True
        elif flag == "-m":
            ipmasq = False
    if not individual and not combined:
        individual = combined = True
    opts = Options(flannel_env, docker_env, key, individual, combined, ipmasq)
    if not _SHELL_NAME_RE.fullmatch(opts.combined_key):
        raise UsageError(f"{PROG}: invalid combined key {opts.combined_key!r}: must be a shell variable name")
    return opts


def docker_opts(values: Mapping[str, str], ipmasq: bool) -> dict[str, str]:
    """``DOCKER_OPT_*`` name -> option, in the script's (alphabetical) order: BIP, IPMASQ, MTU."""
    opts: dict[str, str] = {}
    if values.get("FLANNEL_SUBNET"):
        opts["DOCKER_OPT_BIP"] = f"--bip={values['FLANNEL_SUBNET']}"
    masq = values.get("FLANNEL_IPMASQ", "")
    if masq and ipmasq:
        # flannel masquerades itself when FLANNEL_IPMASQ=true, so Docker must not, and vice versa.
        if masq == "true":
            opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=false"
        elif masq == "false":
            opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=true"
        else:
            raise OptsError(f"Invalid value of FLANNEL_IPMASQ: {masq}")
    if values.get("FLANNEL_MTU"):
        opts["DOCKER_OPT_MTU"] = f"--mtu={values['FLANNEL_MTU']}"
    return opts


def render_docker_env(opts: Mapping[str, str], options: Options, current: str | None) -> str:
    """The Docker env file; ``current`` is the environment's value of the combined key, if any."""
    combined = f"{current} " if current else ""
    lines: list[str] = []
    for name, value in opts.items():
        if options.individual:
            lines.append(f'{name}="{value}"')
        combined += f" {value}"
    if options.combined:
        lines.append(f'{options.combined_key}="{combined}"')
    return "".join(line + "\n" for line in lines)


def route_probe(flannel_subnet: str) -> str | None:
    """``10.1.74.1/24`` -> ``10.1.74.0/24``, the string the script greps for; None if not a.b.c.d/n."""
    m = _SUBNET_RE.fullmatch(flannel_subnet)
    if m is None:
        return None
    return f"{m.group(1)}.{int(m.group(2)) - 1}/{m.group(3)}"


def conflicting_routes(route_table: str, probe: str) -> list[str]:
    """Lines of ``ip route show`` that ``grep PROBE | grep via`` selects (dots match any char)."""
    pattern = re.compile(re.escape(probe).replace(r"\.", "."))
    return [line for line in route_table.splitlines() if pattern.search(line) and "via" in line]


def read_route_table() -> str | None:
    """``ip route show`` output, or None when ``ip`` is not installed or cannot run."""
    ip = shutil.which("ip")
    if ip is None:
        return None
    try:
        done = subprocess.run([ip, "route", "show"], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def read_flannel_env(path: str) -> dict[str, str]:
    """The env file's values; {} with a warning when it does not exist (the script's ``[ -f ]``)."""
    if not os.path.isfile(path):
        _err(f"{PROG}: warning: flannel env file {path} not found; writing no flannel options")
        return {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_subnet_env(f.read(), source=path)


def main(
    argv: list[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    route_table: Callable[[], str | None] = read_route_table,
) -> int:
    """Run like the script; returns the exit status."""
    env = os.environ if environ is None else environ
    args = list(sys.argv[1:] if argv is None else argv)
    daemon_json = _take_daemon_json(args)
    try:
        options = parse_args(args)
    except UsageError as err:
        if str(err):
            _err(str(err))
        _err(USAGE)
        return 1
    try:
        values = read_flannel_env(options.flannel_env)
        opts = docker_opts(values, options.ipmasq)
    except (OSError, LocalConfigError, OptsError) as err:
        _err(str(err) if isinstance(err, OptsError) else f"{PROG}: {err}")
        return 1
    if daemon_json is not None:
        return docker_json.run(values, daemon_json, options.ipmasq, PROG)
    text = render_docker_env(opts, options, env.get(options.combined_key))
    try:
        with open(options.docker_env, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    except OSError as err:
        _err(f"{PROG}: cannot write {options.docker_env}: {err}")
        return 1
    return _check_routes(values.get("FLANNEL_SUBNET", ""), route_table)


def _take_daemon_json(args: list[str]) -> str | None:
    """Remove pyflannel's ``--daemon-json[=FILE]`` from ``args``; its FILE, or None when absent."""
    for i, arg in enumerate(args):
        if arg == "--daemon-json" or arg.startswith("--daemon-json="):
            del args[i]
            return arg.partition("=")[2] or docker_json.DEFAULT_PATH
    return None


def _check_routes(flannel_subnet: str, route_table: Callable[[], str | None]) -> int:
    """The script's last step: refuse when a route via a gateway already covers our subnet."""
    probe = route_probe(flannel_subnet) if flannel_subnet else None
    if probe is None:
        return 0
    table = route_table()
    if table is None:
        return 0
    found = conflicting_routes(table, probe)
    if found:
        _err("Your routing table already contains the subnet: " + "\n".join(found))
        return 1
    return 0


def _err(message: str) -> None:
    print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
