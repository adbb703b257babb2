"""Statements in the README that can drift from the code, checked against it (issue 15.6)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_lists_every_debian_package_setup_installs():
    setup = (ROOT / "scripts/setup.sh").read_text()
    wanted = set(re.search(r"^APT_PACKAGES=\(([^)]*)\)", setup, re.M).group(1).split())
    readme = (ROOT / "README.md").read_text()
    listed = set(re.search(r"Debian packages `([^`]*)`", readme).group(1).split())
    assert listed == wanted, f"README lists {sorted(listed - wanted)} too many, {sorted(wanted - listed)} missing"
