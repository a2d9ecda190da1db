//! White-box integration tests of the components on the rig (they read
//! component metrics and kernel state, and use impl/ crates): they need root (namespaces) and the upstream
//! binaries from `ci/upstream`. In CI (`CI=true`) a missing capability fails
//! the test; elsewhere the test says why it does not run and returns.

mod bench;
mod dns;
mod dns_diff;
mod endpoints;
mod faults;
mod proxy_nft;
mod soak;
mod vm_ipvs;

use std::path::PathBuf;

pub use signpost_harness::require_rig;

/// The rig's echo server (built by `signpost-harness`, in the same target
/// directory: `cargo test --workspace` builds it).
pub fn echo_bin() -> PathBuf {
    signpost_harness::process::workspace_binary("signpost-echo")
        .expect("signpost-echo (cargo build -p signpost-harness)")
}
