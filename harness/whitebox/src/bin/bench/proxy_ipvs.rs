//! `signpost-bench proxy-ipvs`: the IPVS proxy core in the kernel VM rig:
//! full sync of N Services × 5 endpoints from an empty kernel, read-back
//! time, one endpoint change at each N (time and IPVS messages). Then,
//! side by side in one VM against one local API server holding
//! `--side` Services × 5 endpoints: `signpost proxy --mode ipvs` and
//! upstream kube-proxy `--proxy-mode=ipvs`, each from start until the
//! kernel holds every Service, and from one EndpointSlice write until the
//! kernel shows it.

use std::path::PathBuf;
use std::time::Duration;

use signpost_harness::vm;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the benchmark.
pub fn main(args: &[String]) -> Result<(), BoxError> {
    let flag = |name: &str| crate::flag(args, name);
    let sizes = flag("--sizes").unwrap_or_else(|| "1000,10000".into());
    let side: u32 = flag("--side")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
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

    eprintln!(
        "bench proxy-ipvs: side by side with kube-proxy over {side} Services in a local cluster"
    );
    let cluster = signpost_harness::LocalCluster::new("bench-ipvs")?.start()?;
    for chunk in (0..side).step_by(1000) {
        let to = (chunk + 1000).min(side);
        cluster.block_on(|client| crate::proxy_nft::create(client, chunk, to))??;
    }
    let kc = vm::guest_kubeconfig(&cluster)?;
    let files: Vec<(PathBuf, &str)> = vec![
        (dir.join("signpost-vmtest"), "/test/signpost-vmtest"),
        (dir.join("signpost"), "/test/signpost"),
        (
            signpost_harness::upstream::binary("kube-proxy")?,
            "/test/kube-proxy",
        ),
        (kc, "/test/kubeconfig"),
    ];
    let script = format!(
        "set -e\n/test/signpost-vmtest side --services {side} --proxy signpost\n\
         /test/signpost proxy --mode ipvs --cleanup\n\
         /test/signpost-vmtest side --services {side} --proxy kube-proxy\n"
    );
    let run = vm::run_with(
        &image,
        &files,
        &script,
        // Each proxy's first sync is capped at 900 s in the guest.
        Duration::from_secs(2700),
        Some(vm::Forwards {
            netns: cluster.node_namespace(),
        }),
    )?;
    if !run.success() {
        let saved = std::env::temp_dir().join("signpost-bench-ipvs-console.log");
        let _ = std::fs::write(&saved, &run.console);
        eprintln!("console saved to {}", saved.display());
        let key_lines: Vec<&str> = run
            .console
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with("SIDE") || l.contains("error"))
            .take(30)
            .collect();
        return Err(format!(
            "the side-by-side VM run failed:\n{}\n...\n{}",
            key_lines.join("\n"),
            vm::tail(&run.console, 5)
        )
        .into());
    }
    let mut side_by_side = serde_json::Map::new();
    for line in run.console.lines().filter_map(|l| l.strip_prefix("SIDE ")) {
        println!("side by side: {line}");
        let mut it = line.split_whitespace();
        let who = it.next().unwrap_or("?").to_owned();
        let mut fields = serde_json::Map::new();
        for kv in it {
            if let Some((k, v)) = kv.split_once('=') {
                fields.insert(
                    k.into(),
                    v.parse::<f64>().map(Into::into).unwrap_or(v.into()),
                );
            }
        }
        side_by_side.insert(who, fields.into());
    }
    let ratio = |field: &str| -> Option<f64> {
        let a = side_by_side.get("signpost")?.get(field)?.as_f64()?;
        let b = side_by_side.get("kube-proxy")?.get(field)?.as_f64()?;
        Some(a / b)
    };
    let (full_ratio, change_ratio) = (ratio("full_s"), ratio("change_ms"));
    // A capped run's full_s is the cap: its ratio is a bound.
    let capped: Vec<String> = side_by_side
        .iter()
        .filter(|(_, v)| v.get("capped").is_some())
        .map(|(k, _)| k.clone())
        .collect();
    println!(
        "side by side ratios signpost/kube-proxy: start → all programmed {:.2}, one slice write → programmed {:.2}",
        full_ratio.unwrap_or(f64::NAN),
        change_ratio.unwrap_or(f64::NAN)
    );
    let report = serde_json::json!({
        "kernel": image.release,
        "vm": "qemu TCG (software emulation): absolute times are slower than on hardware",
        "signpost_ipvs_core": parsed,
        "side_by_side": {
            "services": side,
            "results": side_by_side,
            "ratio_full": full_ratio,
            "ratio_change": change_ratio,
            "capped": capped,
        },
    });
    crate::write_report(&out, &report)?;
    println!("written to {out}");
    Ok(())
}
