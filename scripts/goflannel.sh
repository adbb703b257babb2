#!/usr/bin/env bash
# Builds Go flannel (the original, pinned) into .cache/goflannel for the tests that run it beside
# pyflannel (tests/e2e/test_goflannel_*.py). Called by setup.sh; safe to re-run: only the first run
# builds (a few minutes), later runs find the binary and return at once.
#
#   .cache/goflannel/bin/flannel   the Go flanneld
#   .cache/goflannel/mod/...       GOMODCACHE: flannel's module, with dist/mk-docker-opts.sh
#   .cache/goflannel/build         GOCACHE
#   .cache/goflannel/status        why there is no binary (read by the tests' skip message)
#
# Without a Go toolchain >= 1.25, or when the download or build fails: one message naming what is
# missing and how to install it; setup carries on and those tests skip. With
# PYFLANNEL_REQUIRE_GO_FLANNEL=1 (CI) it fails instead.
set -uo pipefail
cd "$(dirname "$0")/.."

WHAT="Go flannel"
VERSION=v0.28.9
MODULE=github.com/flannel-io/flannel
CACHE=$PWD/.cache/goflannel
BIN=$CACHE/bin/flannel
SKIPS="the tests running Go flannel beside pyflannel will skip"
REQUIRE=PYFLANNEL_REQUIRE_GO_FLANNEL
source scripts/go-env.sh  # exits here when built already; give_up, need_go, start_build, built

need_go 25 "flannel $VERSION"
command -v gcc >/dev/null || give_up "gcc not found (flannel's udp proxy is cgo): apt-get install gcc"

start_build "building Go flannel $VERSION into .cache/goflannel (first time only, a few minutes)"
export GOBIN=$CACHE/bin CGO_ENABLED=1
LDFLAGS="-X $MODULE/pkg/version.Version=$VERSION"
if go install -ldflags "$LDFLAGS" "$MODULE@$VERSION" >"$log" 2>&1; then
  how="go install $MODULE@$VERSION"
elif grep -q 'tencentcloud-sdk-go/tencentcloud/vpc@.*403 Forbidden' "$log" \
    && [ -f "$GOMODCACHE/$MODULE@$VERSION/main.go" ]; then
  # The Go module proxy answers 403 for this one module (the Tencent Cloud VPC SDK, needed only by
  # flannel's tencent-vpc backend). Build the same module, from its own go.mod and go.sum, with
  # that one blank import dropped: every other backend, udp, vxlan and host-gw included, is the
  # original code.
  src=$CACHE/src
  rm -rf "$src" && mkdir -p "$src" && cp -r "$GOMODCACHE/$MODULE@$VERSION" "$src/flannel" && chmod -R u+w "$src"
  sed -i '\#"'"$MODULE"'/pkg/backend/tencentvpc"#d' "$src/flannel/main.go"
  if (cd "$src/flannel" && go build -ldflags "$LDFLAGS" -o "$BIN" .) >>"$log" 2>&1; then
    how="go build of $MODULE@$VERSION without the tencent-vpc backend (its SDK module is refused by the module proxy)"
    rm -rf "$src"
  else
    give_up "go build of $MODULE@$VERSION failed (see .cache/goflannel/build.log): $(grep -m1 -E 'error|cannot|Forbidden' "$log")"
  fi
else
  give_up "go install $MODULE@$VERSION failed (network or module proxy; see .cache/goflannel/build.log): $(grep -m1 -E 'error|cannot|Forbidden|dial' "$log")"
fi
echo "$how" > "$CACHE/bin/flannel.how"
built "$how"
