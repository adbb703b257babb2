# The prelude scripts/goflannel.sh and scripts/kubeapiserver.sh share (sourced, not run): the
# "built already?" check, the one give-up message, the Go version check and the caches.
#
# The sourcing script sets first:
#   WHAT      what it builds, for the messages ("Go flannel", "kube-apiserver")
#   VERSION   the pinned version
#   CACHE     its folder (.cache/<name>): bin/, mod (GOMODCACHE), build (GOCACHE), build.log, status
#   BIN       the binary; $BIN.version holds the VERSION it was built at
#   SKIPS     what skips without it ("the kube-mode tests will skip")
#   REQUIRE   the variable that, set to 1 (CI), makes setup fail instead of skipping
#
# Sourcing it ends the script at once (exit 0) when $BIN is there at $VERSION. Else it gives:
#   give_up WHY       one message, remembered in $CACHE/status for the tests' skip line; exit
#   need_go MINOR WHO give up unless go >= 1.MINOR is on PATH (WHO: what needs it, for the message)
#   start_build MSG   say MSG, export the caches, start the clock; sets log (build.log) and start
#   built HOW         stamp $BIN with $VERSION, clear the status, say how long it took

STAMP=$BIN.version
mkdir -p "$CACHE/bin"

if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  rm -f "$CACHE/status"
  exit 0
fi

give_up() {
  echo "setup: $WHAT $VERSION not built: $1; $SKIPS" >&2
  echo "$1" > "$CACHE/status"
  if [ "${!REQUIRE:-}" = 1 ]; then
    echo "setup: $REQUIRE=1: failing instead" >&2
    exit 1
  fi
  exit 0
}

need_go() {
  local install_go="install Go >= 1.$1 from https://go.dev/dl/ (Debian 12's golang-go is 1.19) and put it on PATH, then re-run make setup"
  command -v go >/dev/null || give_up "no Go toolchain found (go is not on PATH): $install_go"
  local goversion
  goversion=$(go env GOVERSION 2>/dev/null)
  if ! [[ $goversion =~ ^go1\.([0-9]+) ]] || [ "${BASH_REMATCH[1]}" -lt "$1" ]; then
    give_up "${goversion:-go} is too old ($2 needs Go >= 1.$1): $install_go"
  fi
}

start_build() {
  # -modcacherw: so that rm -rf .cache works
  export GOMODCACHE=$CACHE/mod GOCACHE=$CACHE/build GOFLAGS=-modcacherw
  log=$CACHE/build.log
  echo "setup: $1"
  start=$SECONDS
  rm -f "$BIN"
}

built() {
  echo "$VERSION" > "$STAMP"
  rm -f "$CACHE/status"
  echo "setup: $WHAT $VERSION built in $((SECONDS - start)) s${1:+ ($1)}"
}
