#!/usr/bin/env bash
# Builds the real kube-apiserver (pinned) into .cache/kubeapiserver for the kube-mode tests
# (tests/e2e/test_kube_*.py) and the lab's --kube. Called by setup.sh; safe to re-run: only the
# first run builds (~4 min on 2 cores, ~1.6 GB of memory), later runs find the binary and return at once.
#
# How: a tiny module of our own (.cache/kubeapiserver/src) requires k8s.io/kubernetes at $VERSION,
# with a `replace` line pointing each k8s.io staging module (v0.0.0 in kubernetes' go.mod) at the
# matching published v0.x release, and `go build`s kubernetes' own cmd/kube-apiserver main package
# from the Go module proxy.
#
#   .cache/kubeapiserver/bin/kube-apiserver   the API server
#   .cache/kubeapiserver/mod, build           GOMODCACHE, GOCACHE
#   .cache/kubeapiserver/status               why there is no binary (read by the tests' skip line)
#
# Without Go >= 1.26 or when the download or build fails: one message naming what is missing;
# setup carries on and the kube tests skip. With PYFLANNEL_REQUIRE_KUBE_APISERVER=1 (CI) it fails.
set -uo pipefail
cd "$(dirname "$0")/.."

WHAT=kube-apiserver
VERSION=v1.36.3
STAGING_VERSION=v0.${VERSION#v1.}
CACHE=${KUBEAPISERVER_CACHE:-$PWD/.cache/kubeapiserver}  # another folder: to time a build from nothing
BIN=$CACHE/bin/kube-apiserver
SKIPS="the kube-mode tests will skip"
REQUIRE=PYFLANNEL_REQUIRE_KUBE_APISERVER
source scripts/go-env.sh  # exits here when built already; give_up, need_go, start_build, built

need_go 26 "kubernetes $VERSION"

start_build "building kube-apiserver $VERSION into .cache/kubeapiserver (first time only, several minutes)"
export GOTOOLCHAIN=local CGO_ENABLED=0
: > "$log"
gomod=$(go mod download -json "k8s.io/kubernetes@$VERSION" 2>>"$log" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || give_up "go mod download k8s.io/kubernetes@$VERSION failed (network or module proxy; see .cache/kubeapiserver/build.log): $(grep -m1 -E 'error|dial|Forbidden' "$log")"

src=$CACHE/src
rm -rf "$src" && mkdir -p "$src"
{
  echo "module pyflannel.invalid/kubeapiserver"
  echo
  echo "go $(sed -n 's/^go //p' "$gomod")"
  echo
  echo "require k8s.io/kubernetes $VERSION"
  echo
  echo "replace ("
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$gomod"
  echo ")"
} > "$src/go.mod"
# -mod=mod: go build adds the requirements and go.sum lines of exactly the packages it compiles (go
# mod tidy would also fetch every test-only and other-OS module). -trimpath, -s -w: no paths, no
# symbol or DWARF tables (a smaller binary, a shorter link). KUBEAPISERVER_GCFLAGS (default
# all=-N -l: no optimisation, no inlining) makes the compile shorter; the API server of a lab
# with a few nodes does not need the speed.
gcflags=${KUBEAPISERVER_GCFLAGS-all=-N -l}
if ! (cd "$src" && go build -mod=mod -trimpath -ldflags "-s -w" -gcflags "$gcflags" -o "$BIN" \
        k8s.io/kubernetes/cmd/kube-apiserver) >>"$log" 2>&1; then
  give_up "go build of kube-apiserver $VERSION failed (see .cache/kubeapiserver/build.log): $(grep -m1 -E 'error|cannot|Forbidden|dial|not found' "$log")"
fi
built
