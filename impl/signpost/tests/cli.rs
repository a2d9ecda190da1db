//! The binary's command line: help, and a clear error for a bad kubeconfig.
//! (Its integration tests also make cargo build `target/*/signpost`, which
//! the harness's cluster tests run.)

use std::process::Command;

fn signpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
}

#[test]
fn help_lists_the_components() {
    let out = signpost().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("endpoints"), "{text}");
}

#[test]
fn a_missing_kubeconfig_is_a_clear_error() {
    let out = signpost()
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "endpoints"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
}
