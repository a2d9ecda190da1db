//! Integration tests of the rig: they need root (namespaces) and the upstream
//! binaries from `ci/upstream`. In CI (`CI=true`) a missing capability fails
//! the test; elsewhere the test says why it does not run and returns.

mod cluster;
mod fabric;

use std::path::PathBuf;

/// Whether this machine can run the rig (see the rig's own check).
pub fn rig_available() -> Result<(), String> {
    signpost_harness::upstream::rig_available()
}

/// Skips (outside CI only) with a clear reason.
#[macro_export]
macro_rules! require_rig {
    () => {
        if let Err(why) = $crate::rig_available() {
            eprintln!("SKIPPED (not in CI): {why}");
            return;
        }
    };
}

/// The echo server built with this package.
pub fn echo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signpost-echo"))
}
