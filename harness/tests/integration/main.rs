//! Integration tests of the rig: they need root (namespaces) and the upstream
//! binaries from `ci/upstream`. In CI (`CI=true`) a missing capability fails
//! the test; elsewhere the test says why it does not run and returns.

mod cluster;
mod deploy;
mod fabric;

use std::path::PathBuf;

pub use signpost_harness::require_rig;

/// The echo server built with this package.
pub fn echo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signpost-echo"))
}
