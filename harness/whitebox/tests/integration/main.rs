//! White-box integration tests of the components on the rig (they read
//! component metrics and kernel state, and use impl/ crates): they need root (namespaces) and the upstream
//! binaries from `ci/upstream`. In CI (`CI=true`) a missing capability fails
//! the test; elsewhere the test says why it does not run and returns.

mod dns;
mod dns_diff;
mod endpoints;
mod proxy_nft;
mod vm_ipvs;

use std::path::PathBuf;

/// Whether this machine can run the rig; `Err` says why not. In CI a
/// missing capability is a failure, never a skip.
pub fn rig_available() -> Result<(), String> {
    let root = nix::unistd::geteuid().is_root();
    let upstream = signpost_harness::upstream::binary("kube-apiserver");
    let why = match (root, upstream) {
        (true, Ok(_)) => return Ok(()),
        (false, _) => "needs root for network namespaces".to_owned(),
        (true, Err(e)) => e.to_string(),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the cluster rig cannot run: {why}");
    }
    Err(why)
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

/// The rig's echo server (built by `signpost-harness`, in the same target
/// directory: `cargo test --workspace` builds it).
pub fn echo_bin() -> PathBuf {
    signpost_harness::process::workspace_binary("signpost-echo")
        .expect("signpost-echo (cargo build -p signpost-harness)")
}
