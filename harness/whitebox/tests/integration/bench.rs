//! A benchmark stopped by a signal (Ctrl-C, or a timeout's SIGTERM) leaves
//! no namespace behind: `signpost-bench` removes this run's namespaces
//! (and every process in them) before it exits.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signpost_harness::netns;

use crate::require_rig;

/// The namespaces whose names carry `pid` as [`netns::unique`] writes it.
fn of(pid: u32) -> Vec<String> {
    let mark = format!("{}x", pid % 100_000);
    netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.get(3..).is_some_and(|rest| rest.starts_with(&mark)))
        .collect()
}

#[test]
fn a_signalled_benchmark_removes_its_namespaces() {
    require_rig!();
    // The data-plane benchmark at 50k addresses runs for seconds inside a
    // namespace of its own.
    let mut child = Command::new(env!("CARGO_BIN_EXE_signpost-bench"))
        .args([
            "nft-plane",
            "--sizes",
            "50000",
            "--changes",
            "100000",
            "--out",
        ])
        .arg(std::env::temp_dir().join("signpost-bench-signal-test.json"))
        .spawn()
        .expect("signpost-bench");
    let pid = child.id();
    let started = Instant::now();
    while of(pid).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the benchmark never created its namespace"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the benchmark ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let left = of(pid);
    // Whatever happened, nothing of this run stays on the machine.
    for name in &left {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    assert!(left.is_empty(), "left behind after SIGTERM: {left:?}");
    assert_eq!(status.code(), Some(130), "{status}");
}
