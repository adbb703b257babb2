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


def test_the_walk_of_one_lease_event_names_at_most_five_files_that_exist_with_their_functions():
    """Issue 12, done-when: the README's architecture section follows one lease event from the etcd
    watch to a kernel route in at most five files; each file and function it names is there."""
    readme = (ROOT / "README.md").read_text()
    walk = re.search(r"One lease event, etcd to kernel route, in (\w+) files: (.*?)\.\n", readme, re.S)
    assert walk is not None and walk.group(1) == "five"
    files = re.findall(r"`([\w/]+\.py)`(?: \(`(\w+)`)?", walk.group(2))
    assert 1 < len(files) <= 5, files
    for path, func in files:
        text = (ROOT / "src" / "pyflannel" / path).read_text()
        assert not func or re.search(rf"^\s*(async )?def {func}\(", text, re.M), f"{path} has no {func}()"
