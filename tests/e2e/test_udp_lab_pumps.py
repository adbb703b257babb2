"""The udp lab's data-path tests once per pump: the compiled one and the pure-Python fallback.

``test_udp_lab`` runs with whatever flanneld picks by itself (the compiled pump when it was built);
here every test of it that uses the 3-host ``lab`` runs again with ``PYFLANNEL_PUMP`` forcing each
implementation for every flanneld the lab starts (restarts included), plus a bulk TCP transfer
whose content is checked end to end (large packets, bursts: the compiled pump's GSO/GRO path).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyflannel.backend import udp_pump
from pyflannel.lab.cluster import Host, Lab
from pyflannel.lab.netns import in_ns, ns_list

from . import test_udp_lab as _base
from .helpers import log_text, wait_for

PUMPS = {"c": "udp pump: compiled (PYFLANNEL_PUMP=c)", "python": "udp pump: pure python (PYFLANNEL_PUMP=python)"}

# every test of the udp lab module that runs on the shared 3-host lab, collected here again
for _name, _fn in vars(_base).items():
    if _name.startswith("test_") and callable(_fn) and "lab" in inspect.signature(_fn).parameters:
        globals()[_name] = _fn


@pytest.fixture(scope="module", params=list(PUMPS))
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces, TUN devices)")
    if request.param == "c" and not udp_pump.available():
        pytest.fail(f"the compiled pump was not built: {udp_pump.IMPORT_ERROR}")
    saved = os.environ.get("PYFLANNEL_PUMP")
    os.environ["PYFLANNEL_PUMP"] = request.param  # inherited by every flanneld the lab starts
    lab = Lab(name="pftu", hosts_n=3, subnet_max="10.0.199.0")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        if saved is None:
            os.environ.pop("PYFLANNEL_PUMP", None)
        else:
            os.environ["PYFLANNEL_PUMP"] = saved
    assert not [ns for ns in ns_list() if ns.startswith("pftu-")]


def test_the_forced_pump_is_the_one_running(lab: Lab) -> None:
    want = PUMPS[os.environ["PYFLANNEL_PUMP"]]
    for h in lab.hosts:
        assert want in log_text(lab, h)


_SERVER = """
import hashlib, socket, sys
srv = socket.create_server(("0.0.0.0", 5201))
print("ready", flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

_CLIENT = """
import os, socket, sys
data = bytes.fromhex(sys.argv[2]) * (int(sys.argv[3]) // 4096)
with socket.create_connection((sys.argv[1], 5201), timeout=20) as s:
    s.sendall(data)
"""


def transfer(lab: Lab, a: Host, b: Host, size: int = 20 * 1024 * 1024) -> None:
    """``size`` bytes from a's container to b's over TCP, checked byte for byte."""
    block = os.urandom(4096)
    srv = subprocess.Popen(in_ns(b.container_ns, sys.executable, "-c", _SERVER), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        subprocess.run(in_ns(a.container_ns, sys.executable, "-c", _CLIENT, b.container_ip, block.hex(), str(size)),
                       check=True, timeout=60)
        n, digest = srv.stdout.readline().split()
    finally:
        srv.kill()
        srv.wait(timeout=10)
    assert int(n) == size
    assert digest == hashlib.sha256(block * (size // 4096)).hexdigest()


def test_bulk_tcp_transfer_arrives_intact(lab: Lab) -> None:
    """20 MB container to container over flannel0 and UDP/8285, both ways."""
    transfer(lab, lab.hosts[0], lab.hosts[1])
    transfer(lab, lab.hosts[1], lab.hosts[0])


def test_the_two_pumps_talk_to_each_other(lab: Lab) -> None:
    """One host on the other pump: GSO trains from the compiled one reach the pure one as single
    datagrams, and the pure one's datagrams reach the compiled one's GRO socket."""
    other = {"c": "python", "python": "c"}[os.environ["PYFLANNEL_PUMP"]]
    h1, h3 = lab.hosts[0], lab.hosts[2]
    lab.stop_flanneld(h3)
    lab.start_flanneld(h3, env={"PYFLANNEL_PUMP": other})
    try:
        wait_for(lambda: PUMPS[other] in log_text(lab, h3),
                 what=f"h3 on the {other} pump")
        wait_for(lambda: lab.ping(h1, h3, count=1)[0], what="ping h1 -> h3")
        transfer(lab, h1, h3)
        transfer(lab, h3, h1)
    finally:
        lab.stop_flanneld(h3)
        lab.start_flanneld(h3)
        wait_for(lambda: lab.ping(h3, h1, count=1)[0], what="h3 back on its pump")
