//! The conformance harness on the real rig: the features on the cluster
//! world, the catalogue and model walks certifying Signpost, a broken
//! proxy's failing walk shrunk, and the mutation score. They need root and
//! the upstream binaries; with `CI=true` a missing capability fails them.

mod certify;
mod demo;
mod ipvs;
mod mutation;
mod node;

/// One live system at a time: the tests measure convergence against
/// deadlines, and two clusters on two cores would make those meaningless.
pub static RIG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Skips (outside CI only) with a clear reason; otherwise holds [`RIG`]
/// for the rest of the test.
#[macro_export]
macro_rules! require_rig {
    () => {
        if let Err(why) = signpost_harness::upstream::rig_available() {
            eprintln!("SKIPPED (not in CI): {why}");
            return;
        }
        let _rig = $crate::RIG.lock().unwrap_or_else(|e| e.into_inner());
    };
}

/// Where the tests write their reports: `reports/conformance/` of the workspace.
pub fn reports_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reports/conformance")
}
