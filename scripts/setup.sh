#!/usr/bin/env bash
# Installs what pyflannel needs on a fresh Debian 12 machine (as root): Debian packages that are
# missing, then a venv at ./.venv with pyflannel and its pinned dependencies. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc + python3-dev build the udp backend's compiled packet pump (without them: the pure-Python one);
# debootstrap makes the Debian 12 root the package test installs `make deb`'s package into;
# wireguard-go + wireguard-tools: the wireguard backend where the kernel has no WireGuard;
# curl + openssl: the kube-apiserver build and the lab API server's certificates
APT_PACKAGES=(gcc python3-dev etcd-server etcd-client iproute2 iptables nftables iputils-ping tcpdump net-tools iperf3 procps systemd containernetworking-plugins debootstrap wireguard-go wireguard-tools curl openssl)
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs Debian packages, and the lab needs network namespaces)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 127.0.0.1:2379; the lab and the tests run
# their own, so that one is left alone (it never sees our traffic).

stamp="$VENV/.pyflannel-installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pump_changed=0
for f in src/pyflannel/backend/_*.c src/pyflannel/backend/_*.h; do  # the pump and every header it includes
  [ "$f" -nt "$stamp" ] && pump_changed=1
done
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$pump_changed" = 1 ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
# Go flannel, for the tests that run it beside pyflannel (first time only; skips with one message
# when no Go >= 1.25)
./scripts/goflannel.sh
# kube-apiserver, for the kube-mode tests (first time only, ~4 min and ~1.6 GB of memory on 2 cores;
# skips with one message when no Go >= 1.26)
./scripts/kubeapiserver.sh
echo "setup: ok ($("$VENV/bin/python" --version), etcd $(etcd --version | awk 'NR==1{print $3}'))"
