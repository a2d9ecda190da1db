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

#[test]
fn durations_out_of_range_are_refused_before_anything_runs() {
    // --resync-secs 0 made the proxy's resync ticker fire without pause (a
    // busy loop); a huge --lease-duration overflowed the renew deadline's
    // arithmetic and panicked. Both are refused by the parser now, with the
    // flag named, before any kubeconfig is read.
    for args in [
        &["proxy", "--resync-secs", "0"][..],
        &["proxy", "--healthz-timeout-secs", "0"][..],
        &["endpoints", "--lease-duration", "18446744073709551615"][..],
        &["endpoints", "--lease-duration", "0"][..],
    ] {
        let out = signpost()
            .args(["--kubeconfig", "/nonexistent/kubeconfig"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(args[1]), "{args:?}: the flag is named: {err}");
        assert!(
            !err.contains("nonexistent"),
            "{args:?}: refused before reading the kubeconfig: {err}"
        );
    }
}
