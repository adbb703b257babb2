#!/usr/bin/env bash
# `make install`: pyflannel into $DESTDIR$PREFIX, the way an operator deploys flannel.
#   $PREFIX/lib/pyflannel      a venv with pyflannel and its pinned dependencies
#   $PREFIX/bin/{flanneld,mk-docker-opts,flannelctl}   small wrappers into that venv
#   $UNITDIR/flanneld.service, /etc/systemd/system/docker.service.d/flannel.conf
#   $SYSCONFDIR/sysconfig/flanneld   (the article's three variables; never overwritten)
#   $CNIBINDIR/flannel         the CNI plugin
# Wrappers call the venv's python by its final path, so a DESTDIR staging tree can be moved.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
CNIBINDIR=${CNIBINDIR:-/opt/cni/bin}
PYTHON=${PYTHON:-python3}
BINDIR=$PREFIX/bin
LIBDIR=$PREFIX/lib/pyflannel

install -d "$DESTDIR$BINDIR" "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/sysconfig" \
  "$DESTDIR/etc/systemd/system/docker.service.d" "$DESTDIR$CNIBINDIR"
"$PYTHON" -m venv --clear "$DESTDIR$LIBDIR"
"$DESTDIR$LIBDIR/bin/pip" install -q --disable-pip-version-check .

wrapper() {  # name module target
  cat > "$3" <<WRAP
#!/bin/sh
exec $LIBDIR/bin/python -m pyflannel.cli.$2 "\$@"
WRAP
  chmod 0755 "$3"
}
wrapper flanneld flanneld "$DESTDIR$BINDIR/flanneld"
wrapper mk-docker-opts mk_docker_opts "$DESTDIR$BINDIR/mk-docker-opts"
wrapper flannelctl flannelctl "$DESTDIR$BINDIR/flannelctl"
if [ -f src/pyflannel/cli/cni.py ]; then
  wrapper flannel cni "$DESTDIR$CNIBINDIR/flannel"
fi

sed "s#@BINDIR@#$BINDIR#g" dist/systemd/flanneld.service.in > "$DESTDIR$UNITDIR/flanneld.service"
chmod 0644 "$DESTDIR$UNITDIR/flanneld.service"
install -m 0644 dist/systemd/docker.service.d/flannel.conf "$DESTDIR/etc/systemd/system/docker.service.d/flannel.conf"
if [ ! -e "$DESTDIR$SYSCONFDIR/sysconfig/flanneld" ]; then
  install -m 0644 dist/sysconfig/flanneld "$DESTDIR$SYSCONFDIR/sysconfig/flanneld"
else
  echo "install: keeping the existing $DESTDIR$SYSCONFDIR/sysconfig/flanneld"
fi
echo "install: pyflannel in $DESTDIR$PREFIX; next: edit $SYSCONFDIR/sysconfig/flanneld, then" \
     "systemctl daemon-reload && systemctl enable --now flanneld"
