# Shared helpers for ci/ scripts: stage timing and the shared caches.
# shellcheck shell=bash

export SIGNPOST_CACHE=${SIGNPOST_CACHE:-$HOME/.cache/signpost}
# A target dir outside the clone, so CI's fresh clones reuse compiled crates.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SIGNPOST_CACHE/target}
export GOFLAGS=${GOFLAGS:--buildvcs=false}
# CI builds from scratch clones: incremental artifacts only pile up in the
# shared target dir (they had reached 10 GB and filled the disk), so CI
# builds without them and drops any left from earlier runs.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
  rm -rf "$CARGO_TARGET_DIR/debug/incremental" "$CARGO_TARGET_DIR/release/incremental"
fi
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
