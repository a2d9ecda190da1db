//! `signpost-bench proxy-ipvs`: the IPVS proxy core in the kernel VM rig:
//! full sync of N Services × 5 endpoints from an empty kernel, read-back
//! time, one endpoint change at each N (time and IPVS messages).
//!
//! kube-proxy `--proxy-mode=ipvs` is not measured beside it: it needs an
//! API server, and the VM has no network device by design; see the README.

use std::path::PathBuf;
use std::time::Duration;

use signpost_harness::vm;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the benchmark.
pub fn main(args: &[String]) -> Result<(), BoxError> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes = flag("--sizes").unwrap_or_else(|| "1000,10000".into());
    let out = flag("--out").unwrap_or_else(|| "reports/bench-proxy-ipvs.json".into());
    let dir = std::env::current_exe()?
        .parent()
        .ok_or("no target dir")?
        .to_path_buf();
    let vmtest = dir.join("signpost-vmtest");
    if !vmtest.is_file() {
        return Err(format!(
            "{} missing: cargo build --release -p signpost-harness",
            vmtest.display()
        )
        .into());
    }
    eprintln!("bench proxy-ipvs: building/reusing the VM image");
    let image = vm::image()?;
    eprintln!("bench proxy-ipvs: booting the VM, sizes {sizes}");
    let files: Vec<(PathBuf, &str)> = vec![(vmtest, "/test/signpost-vmtest")];
    let script = format!("/test/signpost-vmtest bench --sizes {sizes}\n");
    let run = vm::run(&image, &files, &script, Duration::from_secs(1800))?;
    for line in run.console.lines().filter(|l| l.starts_with("bench ipvs:")) {
        println!("{line}");
    }
    if !run.success() {
        return Err(format!("the VM bench failed:\n{}", vm::tail(&run.console, 40)).into());
    }
    let json = run
        .console
        .lines()
        .find_map(|l| l.strip_prefix("BENCH-JSON "))
        .ok_or("no BENCH-JSON line")?;
    let parsed: serde_json::Value = serde_json::from_str(json)?;
    let report = serde_json::json!({
        "kernel": image.release,
        "vm": "qemu TCG (software emulation): absolute times are slower than on hardware",
        "signpost_ipvs": parsed,
        "kube_proxy_ipvs": null,
        "kube_proxy_note": "not measured: kube-proxy needs an API server and the VM has no network device",
    });
    if let Some(d) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {out}");
    Ok(())
}
