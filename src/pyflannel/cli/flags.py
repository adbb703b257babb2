"""Go ``flag``-style parsing, so flannel's command lines work unchanged.

Both ``-name=value`` and ``--name value`` spellings; bools as ``-flag`` or ``-flag=false``;
repeatable flags; and ``FLANNELD_*`` environment variables applied only to flags not given on
the command line (coreos/pkg flagutil.SetFlagsFromEnv). Unlike flannel, a bad flag exits 2 with
a message naming it (flannel exits 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class UsageError(Exception):
    """A flag or argument on the command line is wrong."""


class HelpRequested(Exception):
    """-h or --help was given."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # "str" | "int" | "bool" | "list"
    default: Any
    help: str


def _convert(flag: Flag, raw: str, where: str) -> Any:
    if flag.kind == "bool":
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise UsageError(f"invalid boolean value {raw!r} for {where}: use true or false")
    if flag.kind == "int":
        try:
            if raw != raw.strip():
                raise ValueError(raw)
            # Go's strconv.ParseInt(s, 0, 64): a leading 0 means octal
            return int(raw, 8) if re.fullmatch(r"[+-]?0[0-7_]+", raw) else int(raw, 0)
        except ValueError:
            raise UsageError(f"invalid value {raw!r} for {where}: not an integer") from None
    return raw


class FlagSet:
    def __init__(self, prog: str, flags: Sequence[Flag], env_prefix: str | None = None) -> None:
        self.prog = prog
        self.flags = {f.name: f for f in flags}
        self.env_prefix = env_prefix

    def parse(
        self, argv: Sequence[str], environ: Mapping[str, str] | None = None, *, interspersed: bool = False
    ) -> tuple[dict[str, Any], list[str]]:
        """Values for every flag, and the remaining arguments. With ``interspersed``, flags may
        appear between positional arguments and unknown flags are passed through as arguments."""
        values: dict[str, Any] = {}
        rest: list[str] = []
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                rest.extend(args[i:])
                break
            if not arg.startswith("-") or arg == "-":
                rest.append(arg)
                if not interspersed:
                    rest.extend(args[i:])
                    break
                continue
            name, eq, raw = arg.lstrip("-").partition("=")
            flag = self.flags.get(name)
            if flag is None:
                if interspersed:
                    rest.append(arg)
                    continue
                if name in ("h", "help"):
                    raise HelpRequested()
                raise UsageError(f"flag provided but not defined: -{name}")
            if not eq and flag.kind != "bool":
                if i >= len(args):
                    raise UsageError(f"flag needs an argument: -{name}")
                raw = args[i]
                i += 1
            elif not eq:
                raw = "true"
            value = _convert(flag, raw, f"-{name}")
            if flag.kind == "list":
                values.setdefault(name, []).append(value)
            else:
                values[name] = value
        self._apply_env(values, environ or {})
        for flag in self.flags.values():
            values.setdefault(flag.name, list(flag.default) if flag.kind == "list" else flag.default)
        return values, rest

    def _apply_env(self, values: dict[str, Any], environ: Mapping[str, str]) -> None:
        if self.env_prefix is None:
            return
        for flag in self.flags.values():
            if flag.name in values:
                continue
            var = f"{self.env_prefix}_{flag.name.upper().replace('-', '_')}"
            raw = environ.get(var, "")
            if raw:
                value = _convert(flag, raw, f"${var}")
                values[flag.name] = [value] if flag.kind == "list" else value

    def usage(self) -> str:
        lines = [f"Usage: {self.prog} [OPTION]..."]
        for f in self.flags.values():
            arg = "" if f.kind == "bool" else (" int" if f.kind == "int" else " string")
            default = f" (default {f.default!r})" if f.default not in ("", [], (), False, None, 0) else ""
            lines.append(f"  -{f.name}{arg}\n    \t{f.help}{default}")
        if self.env_prefix:
            lines.append(f"\nEvery flag can also be set as {self.env_prefix}_<NAME> in the environment "
                         f"(e.g. {self.env_prefix}_ETCD_ENDPOINTS).")
        return "\n".join(lines)
