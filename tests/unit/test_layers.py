"""The layering of docs/architecture.md, checked: cli > lifecycle > daemon > (converger, keeper, storeprobe,
trafficrules) > (backend | store | kernel) > core; lab on top. Backends only plan: they import core, never kernel."""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "pyflannel"

# layer -> layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "kernel": {"core"},
    "backend": {"core"},
    "systemd": set(),
    "process": set(),
    "observe": {"core", "metrics"},
    "metrics": {"__init__"},  # the version, for flannel_build_info
    "subnetfile": {"core"},
    "instance": {"core"},
    "converger": {"core", "kernel", "backend"},
    "keeper": {"core", "store"},
    "storeprobe": {"core", "store", "observe"},
    "trafficrules": {"core", "kernel"},
    "preflight": {"core", "kernel"},
    "kubemode": {"core", "store", "backend"},
    "daemon": {"core", "store", "kernel", "backend", "systemd", "observe", "subnetfile", "converger", "keeper",
               "kubemode", "instance", "process", "preflight", "storeprobe", "trafficrules"},
    "lifecycle": {"core", "daemon", "instance", "observe", "process"},
    "cli": {"core", "store", "kernel", "backend", "systemd", "daemon", "lifecycle", "lab", "__init__", "instance",
            "subnetfile"},
    "lab": {"core", "store", "cli", "instance"},
}


def _layer(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(SRC).parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # `from .. import x`: x is a top-level module of the package
                for alias in node.names:
                    is_module = (SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").exists()
                    found.add(alias.name if is_module else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyflannel."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pyflannel."))
    return found


@pytest.mark.parametrize("path", sorted(p for p in SRC.rglob("*.py") if p.parent != SRC or p.name != "__init__.py"),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path: pathlib.Path) -> None:
    layer = _layer(path)
    bad = {dep for dep in _imports(path) if dep != layer and dep not in ALLOWED.get(layer, set())}
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports {sorted(bad)}"


def test_backends_are_independent() -> None:
    for path in (SRC / "backend").glob("*.py"):
        text = path.read_text()
        if path.name in ("__init__.py",):
            continue
        stem = path.stem.removesuffix("_pump").removesuffix("_plan")  # a backend and its helper modules
        shared = {"__init__", "base", "base_cloud", path.stem, stem, f"{stem}_pump", f"{stem}_plan"}
        others = {p.stem for p in (SRC / "backend").glob("*.py")} - shared
        assert not [o for o in others if f"from .{o} import" in text], path.name


def _guarded_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``with guard(...)``/``with session(...)`` (also ``netlink.``-qualified), or inside
    a lambda handed to ``_ignore_gone`` (which runs it under ``guard``)."""
    def name(call: ast.expr) -> str:
        func = call.func if isinstance(call, ast.Call) else None
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""

    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(name(item.context_expr) in ("guard", "session") for item in node.items):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, ast.Call) and name(node) == "_ignore_gone":
            for arg in node.args:
                if isinstance(arg, ast.Lambda):
                    lines.update(range(arg.lineno, (arg.end_lineno or arg.lineno) + 1))
    return lines


@pytest.mark.parametrize("path", sorted(p for p in SRC.rglob("*.py") if p != SRC / "kernel" / "netlink.py"),
                         ids=lambda p: str(p.relative_to(SRC)))
def test_every_netlink_call_goes_through_kernel_netlink(path: pathlib.Path) -> None:
    """Issue 12 (3): every pyroute2 IPRoute socket outside kernel/netlink.py is opened, and every
    request on it (``ipr.…``) sent, under ``netlink.guard``/``netlink.session``, so that an error is
    one KernelError line naming the object, the errno and the fix, never a pyroute2 traceback."""
    tree = ast.parse(path.read_text())
    guarded = _guarded_lines(tree)
    loose = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        opens = isinstance(func, ast.Name) and func.id == "IPRoute"
        asks = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "ipr"
        if (opens or asks) and node.lineno not in guarded:
            loose.append(f"line {node.lineno}: {ast.unparse(node)[:60]}")
    assert not loose, f"{path.relative_to(SRC)}: netlink outside netlink.guard/session: {loose}"
