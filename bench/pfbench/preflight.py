"""Before anything is built: refuse to start, saying what to install, when something is missing.

Standard library only, so that it can run (and explain) before pyflannel is imported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

# binary -> the Debian package that has it (scripts/setup.sh installs them all)
TOOLS = {
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "ip": "iproute2",
    "bridge": "iproute2",
    "ss": "iproute2",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "iptables": "iptables",
}


def problems(*, chart: bool = True) -> list[str]:
    """Everything that stops the suite from running, each with how to fix it; empty when ready."""
    out = []
    if os.geteuid() != 0:
        out.append("run as root (`sudo make bench`): the benchmark builds network namespaces")
    for tool, pkg in TOOLS.items():
        if shutil.which(tool) is None:
            out.append(f"{tool} is not installed: apt-get install {pkg} (or run `make bench`, which installs it)")
    if importlib.util.find_spec("pyflannel") is None:
        out.append(f"pyflannel is not installed for {sys.executable}: run `make setup` (or `pip install -e .` "
                   "in the project's venv) and start the benchmark with .venv/bin/python")
    else:
        script = os.path.join(os.path.dirname(sys.executable), "flanneld")
        if not os.path.exists(script):
            out.append(f"the flanneld script is missing next to {sys.executable}: run `make setup`")
    if chart and importlib.util.find_spec("matplotlib") is None:
        out.append("matplotlib is not installed (it draws the chart): run `make bench`, or "
                   "`.venv/bin/pip install -e '.[bench]'`; or pass --no-chart")
    return out
