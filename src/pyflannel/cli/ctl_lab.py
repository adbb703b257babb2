"""``flannelctl lab up|down|status|demo``: the namespace lab, as a new user meets it. ``up`` and
``status`` say where everything is (etcd, the logs, how to enter a host or a container); ``up``
never wipes a running lab unless told to (``--force``); a backend the lab cannot run is refused at
once, in one line."""

from __future__ import annotations

import argparse
import os

from ..core.errors import FlannelError


def lab_command(args: argparse.Namespace) -> int:
    from ..lab.cluster import LAB_BACKENDS, Lab
    from ..lab.demo import run_demo

    if os.geteuid() != 0:
        raise FlannelError("the lab needs root (network namespaces): run it as root")
    if args.action in ("up", "demo"):
        if args.backend not in LAB_BACKENDS:
            raise FlannelError(f"the lab cannot run backend {args.backend!r}: it runs {', '.join(LAB_BACKENDS)} "
                               "(aws-vpc and gce need their clouds; their tests use local API servers)")
        ipv6 = getattr(args, "ipv6", "") or ""
        if ipv6 and ipv6 not in ("dual", "only"):
            raise FlannelError(f"--ipv6 {ipv6}: the lab runs dual-stack (--ipv6 dual) or IPv6-only (--ipv6 only) "
                               "networks")
        if ipv6 == "dual" and args.backend not in ("vxlan", "host-gw", "wireguard"):
            raise FlannelError(f"--ipv6 dual: backend {args.backend} carries IPv4 only (as Go flannel's); "
                               "use --backend vxlan, host-gw or wireguard")
        if ipv6 == "only" and args.backend not in ("vxlan", "host-gw", "wireguard"):
            raise FlannelError(f"--ipv6 only: backend {args.backend} cannot run an IPv6-only network (as Go "
                               "flannel's); use --backend vxlan, host-gw or wireguard")
        if not 1 <= args.hosts <= 200:
            raise FlannelError(f"--hosts {args.hosts}: the lab runs 1..200 hosts")
        if args.kube:
            from ..lab import kube_apiserver

            if kube_apiserver.binary() is None:
                raise FlannelError(f"--kube: {kube_apiserver.missing()}")
        running = Lab(name=args.name).namespaces()
        if running and not args.force:
            raise FlannelError(f"a lab named {args.name} is running ({len(running)} namespaces): "
                               f"`flannelctl lab status --name {args.name}` shows it; `flannelctl lab down --name "
                               f"{args.name}` removes it, or add --force to replace it")
    if args.action == "demo":
        return run_demo(args.name, args.hosts, args.backend, args.keep, kube=args.kube)
    if args.action == "up":
        lab = Lab(name=args.name, hosts_n=args.hosts, backend=args.backend, ipv6=getattr(args, "ipv6", "") or "",
                  kube=args.kube)
        lab.up()
        _print_status(lab)
    elif args.action == "down":
        Lab(name=args.name).down()
        print(f"lab {args.name} removed")
    else:
        try:
            lab = Lab.load(args.name)
        except OSError:
            raise FlannelError(f"no lab named {args.name} is running (start one: flannelctl lab up)") from None
        _print_status(lab)
    return 0


def _print_status(lab: object) -> None:
    from ..lab.cluster import PREFIX, Lab

    assert isinstance(lab, Lab)
    stack = {"dual": ", dual stack", "only": ", IPv6-only"}.get(lab.ipv6, "")
    if lab.kube:
        kubeconfig = os.path.join(lab.state_dir, "kube", "admin.kubeconfig")
        print(f"lab {lab.name}: backend {lab.backend}{stack}, Kubernetes mode: kube-apiserver "
              f"https://198.18.0.2:6443 (admin: {kubeconfig}), state in {lab.state_dir}")
    else:
        print(f"lab {lab.name}: backend {lab.backend}{stack}, etcd {lab.etcd_endpoint} (prefix {PREFIX}), "
              f"state in {lab.state_dir}")
    for row, host in zip(lab.status(), lab.hosts, strict=True):
        print("  ".join(f"{k}={v}" for k, v in row.items()))
        print(f"    log: {lab.log_file(host)}    enter the host: ip netns exec {host.ns} bash    "
              f"its container: ip netns exec {host.container_ns} bash")
    if lab.kube:
        print(f"nodes: ip netns exec {lab.etcd_ns} curl -s --cacert {lab.state_dir}/kube/pki/ca.crt --cert "
              f"{lab.state_dir}/kube/pki/admin.crt --key {lab.state_dir}/kube/pki/admin.key "
              f"https://198.18.0.2:6443/api/v1/nodes    remove the lab: flannelctl lab down --name {lab.name}")
        return
    print(f"leases: ip netns exec {lab.etcd_ns} etcdctl --endpoints {lab.etcd_endpoint} get --prefix "
          f"{PREFIX}/subnets    remove the lab: flannelctl lab down --name {lab.name}")
