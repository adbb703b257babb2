"""flanneld -ip-masq end to end: flannel's rules installed, restored after a flush, and a container
reaching a host outside the overlay under its host's address."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyflannel.lab.cluster import GATEWAY, Lab
from pyflannel.lab.netns import in_ns, sh

from .helpers import log_text, subnet_of, wait_for


@pytest.fixture(scope="module")
def lab(make_lab) -> Iterator[Lab]:
    with make_lab("pftx", 2, config='{"Network": "10.0.0.0/16"}', extra=("-ip-masq", "-iptables-resync=1"),
                  wait=20) as lab:
        yield lab


def nat_rules(lab: Lab, h) -> str:
    return sh(in_ns(h.ns, "iptables", "-t", "nat", "-S")).stdout


def test_subnet_env_and_docker_opts(lab: Lab) -> None:
    h = lab.hosts[0]
    with open(lab.subnet_file(h)) as f:
        assert "FLANNEL_IPMASQ=true\n" in f.read()
    assert "--ip-masq=false" in h.docker_opts, "flannel masquerades, so docker must not"


def test_flannels_rules_are_installed(lab: Lab) -> None:
    h = lab.hosts[0]
    rules = nat_rules(lab, h)
    assert "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG" in rules
    assert f"-A FLANNEL-POSTRTG -s {subnet_of(h)} -d 10.0.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN" \
        in rules


def test_a_flushed_chain_comes_back(lab: Lab) -> None:
    h = lab.hosts[0]
    before = nat_rules(lab, h)
    sh(in_ns(h.ns, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"))
    wait_for(lambda: nat_rules(lab, h) == before, timeout=5, what="the rules restored")
    wait_for(lambda: "rules were changed by someone else: restored them" in log_text(lab, h), timeout=5,
             what="flanneld to say so")


def test_container_reaches_outside_masqueraded(lab: Lab) -> None:
    h1, h2 = lab.hosts
    # the underlay gateway has no route back to 10.0.0.0/16: only a masqueraded ping can be answered
    out = sh(in_ns(h1.container_ns, "ping", "-c", "2", "-W", "2", GATEWAY), check=False)
    assert out.returncode == 0, out.stdout
    assert lab.ping(h1, h2, 2)[0], "container to container still works (not masqueraded)"
