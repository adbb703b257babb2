"""flannel-cni: the CNI plugin ``flannel`` (docs/compatibility.md#cni), a tiny stdin/stdout program.

The runtime runs it once per operation with ``CNI_*`` variables and the netconf on stdin, and reads
one JSON document from stdout: a result, nothing, or a SPEC error (then the exit status is 1).
``main`` is the skeleton (libcni's ``skel``: environment, version negotiation, one ``cmd_*`` per
command, every failure turned into error JSON); the ``cmd_*`` functions are thin, because what to
send the delegate is decided in ``core/cni.py``. This module does the I/O: subnet.env, the scratch
file under ``dataDir`` and running the delegate plugin found in ``CNI_PATH``.

Where it parts from Go flannel, on purpose:

- DEL keeps the scratch file when the delegate's DEL fails, so a retried DEL retries the cleanup
  (flannel removes it anyway, docs/compatibility.md#cni, and the retry succeeds having done nothing).
- ADD looks the delegate up before saving anything, and the scratch file is written atomically.
- CHECK is not a no-op: it replays the saved delegate netconf, with the runtime's ``prevResult``,
  as a delegated CHECK (SPEC: "call CHECK on any delegated plugins"), after making sure flanneld's
  subnet.env is there. STATUS reports code 50 while subnet.env is unusable and asks the delegate
  too when it speaks CNI 1.1.0 (Debian's bridge 1.1.1 does not). GC has nothing to do, as in flannel.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from pyflannel.core.cni import (
    CURRENT_VERSION,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    UNKNOWN_CONTAINER,
    CniError,
    FlannelEnv,
    NetConf,
    check_delegate,
    check_version,
    parse_flannel_env,
    parse_json,
    parse_netconf,
    render_delegate,
    render_error,
    render_go_json,
    render_version_info,
    stored_delegate_type,
    subnet_env_error,
    valid_name,
    with_route_gateways,
)
from pyflannel.core.errors import LocalConfigError
from pyflannel.core.subnetenv import parse_subnet_env

ABOUT = "CNI Plugin flannel (pyflannel)"
# which commands need which variable (libcni skel's table)
_REQUIRED = {"CNI_CONTAINERID": {"ADD", "CHECK", "DEL"}, "CNI_NETNS": {"ADD", "CHECK"},
             "CNI_IFNAME": {"ADD", "CHECK", "DEL"}, "CNI_PATH": {"ADD", "CHECK", "DEL", "GC", "STATUS"}}
_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
Log = Callable[[str], None]


@dataclass(frozen=True)
class CmdArgs:
    command: str
    container_id: str
    ifname: str
    path: tuple[str, ...]
    env: Mapping[str, str]  # passed on to the delegate, like invoke.DelegateAdd does


def parse_cmd_args(env: Mapping[str, str]) -> CmdArgs:
    """The ``CNI_*`` environment, checked as libcni's skel checks it (SPEC code 4 naming the variables)."""
    command = env.get("CNI_COMMAND", "")
    if command not in _COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command}", f"expected one of {', '.join(_COMMANDS)}")
    missing = [name for name, needed_by in _REQUIRED.items() if command in needed_by and not env.get(name)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    cid, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    if command in _REQUIRED["CNI_CONTAINERID"]:
        if not valid_name(cid):
            raise CniError(INVALID_ENV, "invalid characters in containerID", cid)
        if len(ifname) > 15 or ifname in (".", "..") or any(c in "/:" or c.isspace() for c in ifname):
            raise CniError(INVALID_ENV, "invalid interface name in CNI_IFNAME", ifname)
    dirs = tuple(d for d in env.get("CNI_PATH", "").split(os.pathsep) if d)
    return CmdArgs(command, cid, ifname, dirs, env)


def main(environ: Mapping[str, str] | None = None, stdin: BinaryIO | None = None,
         stdout: BinaryIO | None = None, log: Log | None = None) -> int:
    """Run one CNI command; 0 on success, 1 after printing SPEC error JSON on stdout."""
    env = dict(os.environ if environ is None else environ)
    inp, out = stdin or sys.stdin.buffer, stdout or sys.stdout.buffer
    log = log or _log_stderr
    version = CURRENT_VERSION
    try:
        if not env.get("CNI_COMMAND"):
            log(f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}")
            return 0
        args = parse_cmd_args(env)
        if args.command == "VERSION":
            out.write(render_version_info(_requested_version(inp)).encode())
            return 0
        conf = parse_netconf(_read_stdin(inp))
        version = conf.cni_version if conf.cni_version in SUPPORTED_VERSIONS else version
        check_version(args.command, conf.cni_version)
        result = _HANDLERS[args.command](args, conf, log)
        if result:
            out.write(result)
        return 0
    except CniError as err:
        failure = err
    except Exception as err:  # anything unforeseen is still answered in SPEC form (skel: code 999)
        failure = CniError(INTERNAL, f"{type(err).__name__}: {err}")
    log(f"{ABOUT}: {env.get('CNI_COMMAND')} failed: code={failure.code} {failure}")
    out.write(render_error(failure, version).encode())
    return 1


def _log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_add(args: CmdArgs, conf: NetConf, log: Log) -> bytes:
    check_delegate(conf)  # a wrong config is permanent: say so before "try again later"
    delegate = render_delegate(conf, load_flannel_env(conf.subnet_file))
    plugin = find_plugin(delegate["type"], args.path)
    body = render_go_json(delegate)
    path = save_scratch(conf.data_dir, args.container_id, body)
    log(f"{ABOUT}: ADD container={args.container_id} delegate={plugin} saved={path} netconf={body.decode()}")
    return run_delegate(plugin, "ADD", body, args.env)


def cmd_del(args: CmdArgs, conf: NetConf, log: Log) -> None:
    path = os.path.join(conf.data_dir, args.container_id)
    body = _read_scratch(path)
    if body is None:
        return  # never added, or already deleted: DEL succeeds (SPEC)
    try:
        kind = stored_delegate_type(body, path)
    except CniError as err:  # as flannel: nothing we can replay; the veth goes with the namespace
        log(f"{ABOUT}: DEL container={args.container_id}: {err}; keeping {path}")
        return
    run_delegate(find_plugin(kind, args.path), "DEL", body, args.env)
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)  # only now: a failed DEL keeps the file, so a retry replays it


def cmd_check(args: CmdArgs, conf: NetConf, log: Log) -> None:
    path = os.path.join(conf.data_dir, args.container_id)
    body = _read_scratch(path)
    if body is None:
        raise CniError(UNKNOWN_CONTAINER, f"container {args.container_id} is not attached to network {conf.name}",
                       f"{path} does not exist: ADD did not run for it, or DEL already did")
    load_flannel_env(conf.subnet_file)  # flanneld, the daemon our connectivity depends on, is there
    kind = stored_delegate_type(body, path)
    stored = parse_json(body, f"delegate netconf {path}")
    if conf.prev_result is not None:
        stored["prevResult"] = with_route_gateways(conf.prev_result)
    if conf.cni_version:
        stored["cniVersion"] = conf.cni_version
    run_delegate(find_plugin(kind, args.path), "CHECK", render_go_json(stored), args.env)


def cmd_gc(args: CmdArgs, conf: NetConf, log: Log) -> None:
    """Nothing of ours outlives DEL but the scratch files, and those DEL needs; flannel's GC is a no-op."""


def cmd_status(args: CmdArgs, conf: NetConf, log: Log) -> None:
    try:
        check_delegate(conf)
        delegate = render_delegate(conf, load_flannel_env(conf.subnet_file))
        plugin = find_plugin(delegate["type"], args.path)
    except CniError as err:
        raise CniError(NOT_AVAILABLE, err.msg, err.details) from err
    if _speaks(plugin, "1.1.0", args.env):
        run_delegate(plugin, "STATUS", render_go_json(delegate), args.env)


_HANDLERS: dict[str, Callable[[CmdArgs, NetConf, Log], bytes | None]] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


# ---- the I/O around the core --------------------------------------------------------------------


def load_flannel_env(path: str) -> FlannelEnv:
    """Read subnet.env; every way it can be unusable is CNI code 11 except a plain I/O failure."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError as err:
        raise subnet_env_error(f"open {path}: no such file or directory") from err
    except OSError as err:
        raise CniError(IO_FAILURE, f"failed to read flannel 'subnet.env' file {path}", str(err)) from err
    try:
        values = parse_subnet_env(text, source=path)
    except LocalConfigError as err:
        raise subnet_env_error(str(err)) from err
    return parse_flannel_env(values, path)


def find_plugin(name: str, dirs: tuple[str, ...]) -> str:
    """The delegate's executable in CNI_PATH, like ``invoke.FindInPath``, but a name is only a name."""
    if not name or "/" in name or name in (".", ".."):
        raise CniError(INVALID_CONFIG, f"invalid delegate plugin type {name!r}", "expected a plugin name like bridge")
    for d in dirs:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate):
            return candidate
    raise CniError(INVALID_CONFIG, f'failed to find plugin "{name}" in path [{" ".join(dirs)}]',
                   "fix delegate.type or CNI_PATH; Debian's containernetworking-plugins installs bridge and "
                   "host-local in /usr/lib/cni")


def save_scratch(data_dir: str, container_id: str, body: bytes) -> str:
    """The rendered delegate netconf for DEL: mode 0600 in a 0700 dir, fsync'd, then renamed into place."""
    path = os.path.join(data_dir, container_id)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise CniError(IO_FAILURE, f"failed to save the delegate netconf to {path}", str(err)) from err
    return path


def _read_scratch(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CniError(IO_FAILURE, f"failed to read the saved delegate netconf {path}", str(err)) from err


def run_delegate(plugin: str, command: str, body: bytes, env: Mapping[str, str]) -> bytes:
    """Run the delegate with our environment and ``CNI_COMMAND=command``; its stdout, or its error."""
    for attempt in range(6):
        try:
            proc = subprocess.run([plugin], input=body, env={**env, "CNI_COMMAND": command},
                                  capture_output=True, check=False)
            break
        except OSError as err:  # the plugin may be being replaced right now: retry a "text file busy"
            if err.errno != errno.ETXTBSY or attempt == 5:
                raise CniError(INTERNAL, f"failed to run delegate plugin {plugin}", str(err)) from err
            time.sleep(1)
    if proc.stderr:  # the delegate's log is ours
        _log_stderr(proc.stderr.decode("utf-8", "replace").rstrip("\n"))
    if proc.returncode == 0:
        return proc.stdout
    with contextlib.suppress(ValueError):
        reported = json.loads(proc.stdout)
        if isinstance(reported, dict) and isinstance(reported.get("code"), int) and reported.get("msg"):
            raise CniError(reported["code"], str(reported["msg"]), str(reported.get("details") or ""))
    text = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()
    raise CniError(INTERNAL, f"delegate {os.path.basename(plugin)} {command} failed (exit status {proc.returncode})",
                   text or "no error message")


def _speaks(plugin: str, version: str, env: Mapping[str, str]) -> bool:
    with contextlib.suppress(CniError, ValueError, AttributeError):
        info = json.loads(run_delegate(plugin, "VERSION", b'{"cniVersion":"%s"}' % version.encode(), env))
        return version in info.get("supportedVersions", [])
    return False


def _read_stdin(inp: BinaryIO) -> bytes:
    try:
        return inp.read()
    except OSError as err:
        raise CniError(IO_FAILURE, "error reading the network config from stdin", str(err)) from err


def _requested_version(inp: BinaryIO) -> str:
    """VERSION may carry ``{"cniVersion": ...}``; never block on a terminal waiting for it."""
    with contextlib.suppress(Exception):
        if not inp.isatty():
            requested = json.loads(inp.read() or b"{}").get("cniVersion", "")
            return requested if isinstance(requested, str) else ""
    return ""


if __name__ == "__main__":
    sys.exit(main())
