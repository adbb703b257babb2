#!/usr/bin/env bash
# `make deb`: a Debian package of pyflannel that installs without reaching PyPI, built with dpkg-deb.
#
# The tree is `make install`'s (scripts/install.sh) with PREFIX=/usr, built against Debian's own
# python3.11 (/usr/bin/python3.11, whatever python is first on PATH): a private venv in
# /usr/lib/pyflannel holding pyflannel, the udp backend's compiled pump (gcc, Debian's headers) and
# every Python dependency, installed from wheels downloaded now (pinned in pyproject.toml),
# byte-compiled with its final paths. On top: the docker drop-in in /usr/lib/systemd/system (a
# package's place; /etc is the administrator's), the CNI plugin in /usr/lib/cni beside Debian's
# containernetworking-plugins, /etc/sysconfig/flanneld as a conffile, and dist/debian's maintainer
# scripts (nothing is enabled or started on install; an upgrade restarts a running flanneld).
#
#   DEB_VERSION   package version (default: pyproject's version, revision 1: 0.1.0-1)
#   DEB_OUT       where the .deb goes (default: build/); the staging tree $DEB_OUT/deb-build is
#                 removed once the package is built
#
# Installs the Debian packages it needs itself (as root), like scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=/usr/bin/python3.11
OUT=$(realpath -m "${DEB_OUT:-build}")
MAINTAINER=${DEB_MAINTAINER:-pyflannel maintainers <maintainers@pyflannel.invalid>}
APT_PACKAGES=(python3.11 python3-venv python3-dev gcc dpkg-dev)
start=$SECONDS

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deb: missing Debian packages ${missing[*]}: run as root (or apt-get install them)" >&2
    exit 1
  fi
  echo "deb: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
DEB_VERSION=${DEB_VERSION:-$version-1}
arch=$(dpkg --print-architecture)
deb=$OUT/pyflannel_${DEB_VERSION}_${arch}.deb
build=$OUT/deb-build
stage=$build/debian/pyflannel  # where dpkg-shlibdeps expects a package's tree
rm -rf "$build"
mkdir -p "$stage"

echo "deb: building pyflannel $DEB_VERSION ($arch) against $("$PYTHON" --version)"
PREFIX=/usr DESTDIR=$stage SYSCONFDIR=/etc PYTHON=$PYTHON UNITDIR=/usr/lib/systemd/system \
  DROPINDIR=/usr/lib/systemd/system/docker.service.d CNIBINDIR=/usr/lib/cni \
  PIP_ONLY_BINARY=:all: ./scripts/install.sh >/dev/null

site=$stage/usr/lib/pyflannel/lib/python3.11/site-packages
pump=$(find "$site/pyflannel/backend" -name '_fastpump*.so' | head -1)
if [ -z "$pump" ]; then
  echo "deb: the udp backend's compiled pump was not built (gcc and python3-dev?); refusing to package without it" >&2
  exit 1
fi
strip --strip-unneeded "$pump"
if grep -rqF -- "$stage" "$stage"; then
  echo "deb: the staging path is still named in: $(grep -rlF -- "$stage" "$stage" | head -3)" >&2
  exit 1
fi

doc=$stage/usr/share/doc/pyflannel
install -d "$doc" "$stage/DEBIAN"
install -m 0644 dist/debian/copyright "$doc/copyright"
gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
install -m 0755 dist/debian/postinst dist/debian/prerm dist/debian/postrm "$stage/DEBIAN/"
(cd "$stage" && find etc -type f | sed 's#^#/#' | sort) > "$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$stage/DEBIAN/md5sums"

# Depends on the libraries the compiled modules link (the pump, grpc, protobuf, ...)
mapfile -t sos < <(find "$stage" -name '*.so*' -type f)
printf 'Source: pyflannel\n\nPackage: pyflannel\nArchitecture: any\n' > "$build/debian/control"
shlibs=$(cd "$build" && dpkg-shlibdeps -O "${sos[@]}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    -e "s/@SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" dist/debian/control.in > "$stage/DEBIAN/control"

find "$stage" -type d -exec chmod 0755 {} +
mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$build"  # dpkg-deb -R unpacks the package again when needed
echo "deb: $deb ($(du -h "$deb" | cut -f1), installed $((size / 1024)) MiB) in $((SECONDS - start)) s"
echo "deb: install with: dpkg -i $deb   (needs $(dpkg-deb -f "$deb" Depends))"
