#!/usr/bin/env bash
# `make install`: pyflannel into $DESTDIR$PREFIX, the way an operator deploys flannel.
#   $PREFIX/lib/pyflannel      a venv with pyflannel and its pinned dependencies
#   $PREFIX/bin/{flanneld,mk-docker-opts,flannelctl}   small wrappers into that venv
#   $UNITDIR/flanneld.service, $DROPINDIR/flannel.conf (docker's drop-in)
#   $SYSCONFDIR/sysconfig/flanneld   (the article's three variables; never overwritten)
#   $CNIBINDIR/flannel         the CNI plugin
# Wrappers call the venv's python by its final path, and nothing in the venv names the DESTDIR
# staging tree (scripts, pyvenv.cfg and the byte-compiled files carry the final paths), so a
# staging tree can be moved: `make deb` (scripts/deb.sh) packages one. The venv holds pyflannel and
# its dependencies only (pip and setuptools are removed: it is an application, not a place to pip
# into). PIP_* variables reach pip (deb.sh: PIP_ONLY_BINARY, every dependency from a wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
[ -z "$DESTDIR" ] || DESTDIR=$(realpath -m "$DESTDIR")
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
CNIBINDIR=${CNIBINDIR:-/opt/cni/bin}
DROPINDIR=${DROPINDIR:-/etc/systemd/system/docker.service.d}
PYTHON=${PYTHON:-python3}
BINDIR=$PREFIX/bin
LIBDIR=$PREFIX/lib/pyflannel

install -d "$DESTDIR$BINDIR" "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/sysconfig" \
  "$DESTDIR$DROPINDIR" "$DESTDIR$CNIBINDIR"
venv=$DESTDIR$LIBDIR
"$PYTHON" -m venv --clear "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-compile .
"$venv/bin/python" -m pip uninstall -q -y pip setuptools
rm -f "$venv"/bin/pip* "$venv"/bin/Activate.ps1
if [ -n "$DESTDIR" ]; then  # the staging path out of scripts, activate* and pyvenv.cfg
  grep -rlIF -- "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -r sed -i "s#$venv#$LIBDIR#g"
  find "$venv" -name direct_url.json -delete  # names the build tree
fi
# byte-compiled now, naming the final paths (tracebacks), so nothing is written there at run time
final=()
[ -z "$DESTDIR" ] || final=(-s "$DESTDIR" -p /)
"$venv/bin/python" -m compileall -q -j0 "${final[@]}" "$venv/lib" >/dev/null

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
install -m 0644 dist/systemd/docker.service.d/flannel.conf "$DESTDIR$DROPINDIR/flannel.conf"
if [ ! -e "$DESTDIR$SYSCONFDIR/sysconfig/flanneld" ]; then
  install -m 0644 dist/sysconfig/flanneld "$DESTDIR$SYSCONFDIR/sysconfig/flanneld"
else
  echo "install: keeping the existing $DESTDIR$SYSCONFDIR/sysconfig/flanneld"
fi
echo "install: pyflannel in $DESTDIR$PREFIX; next: edit $SYSCONFDIR/sysconfig/flanneld, then" \
     "systemctl daemon-reload && systemctl enable --now flanneld"
