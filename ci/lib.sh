# Shared helpers for ci/ scripts: stage timing and the shared caches.
# shellcheck shell=bash

export SIGNPOST_CACHE=${SIGNPOST_CACHE:-$HOME/.cache/signpost}
# A target dir outside the clone, so CI's fresh clones reuse compiled crates.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SIGNPOST_CACHE/target}
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export PATH="$HOME/.cargo/bin:$PATH"

stage() {
  local name=$1
  shift
  local t0 t1 rc
  t0=$(date +%s)
  echo "==> [$name] $*"
  set +e
  "$@"
  rc=$?
  set -e
  t1=$(date +%s)
  echo "==> [$name] $( [ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)" ) in $((t1 - t0))s"
  return $rc
}
