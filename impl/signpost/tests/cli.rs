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

#[test]
fn json_logs_are_one_object_per_line() {
    // kubeadm's Corefile makes `signpost dns` log a note per plugin it
    // reads as something else (errors, log, reload, ...) before it connects;
    // the kubeconfig then fails, so the run ends there.
    let dir = tempfile_dir();
    let corefile = dir.join("Corefile");
    std::fs::write(&corefile, signpost_dns::corefile::KUBEADM_DEFAULT).unwrap();
    let out = signpost()
        .args([
            "--log-format",
            "json",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .args(["dns", "--corefile"])
        .arg(&corefile)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "no log lines; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(v["message"].is_string(), "{l}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_kube_proxy_configuration_with_an_unimplemented_field_is_refused_by_name() {
    let dir = tempfile_dir();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\ndetectLocalMode: BridgeInterface\n",
    )
    .unwrap();
    let out = signpost()
        .args([
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "proxy",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("detectLocalMode") && !err.contains("nonexistent"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "signpost-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
