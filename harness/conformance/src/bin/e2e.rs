//! `signpost-e2e`: upstream's own sig-network e2e tests (Services, DNS)
//! against upstream's stack (kube-proxy nftables, CoreDNS,
//! kube-controller-manager) and Signpost's, each on a fresh local cluster
//! with a real node, and a table comparing them test by test.
//!
//! Needs `ci/upstream` and `ci/upstream-e2e` (ci/e2e runs both).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use signpost_conformance::e2e::{self, Selection, Stack};
use signpost_conformance::{Error, Result};

#[derive(Parser)]
#[command(
    name = "signpost-e2e",
    about = "Run upstream's sig-network e2e tests against upstream's stack and Signpost's, and compare"
)]
struct Args {
    /// Stacks to run, in order (upstream, signpost).
    #[arg(long, value_delimiter = ',', default_value = "upstream,signpost")]
    stacks: Vec<String>,
    /// Ginkgo focus (a regular expression over test names).
    #[arg(long, default_value = e2e::DEFAULT_FOCUS)]
    focus: String,
    /// The skip list: PATTERN<TAB>REASON per line.
    #[arg(long, default_value = "harness/conformance/e2e-skips.tsv")]
    skip_file: PathBuf,
    /// Where reports go (<out>/<stack>/ and <out>/comparison.{md,json}).
    #[arg(long, default_value = "reports/e2e")]
    out: PathBuf,
    /// Ginkgo's limit for one stack's suite, in minutes.
    #[arg(long, default_value_t = 120)]
    timeout_minutes: u64,
    /// Exit 1 if Signpost fails a test upstream passes.
    #[arg(long)]
    require_parity: bool,
}

fn main() {
    let args = Args::parse();
    signpost_harness::netns::clean_up_on_signals("signpost-e2e");
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("signpost-e2e: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> Result<i32> {
    let t0 = Instant::now();
    let stacks = args
        .stacks
        .iter()
        .map(|s| s.parse::<Stack>())
        .collect::<Result<Vec<_>>>()?;
    let skips =
        e2e::parse_skips(&std::fs::read_to_string(&args.skip_file).map_err(|e| {
            Error::Usage(format!("--skip-file {}: {e}", args.skip_file.display()))
        })?)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::Io(format!("creating {}: {e}", args.out.display())))?;
    let selected = e2e::selected(&args.focus, &args.out)?;
    let excluded = e2e::exclusions(&selected, &skips)?;
    eprintln!(
        "signpost-e2e: {} tests selected by {:?}, {} excluded by {}; {} to run per stack",
        selected.len(),
        args.focus,
        excluded.len(),
        args.skip_file.display(),
        selected.len() - excluded.len()
    );
    let sel = Selection {
        focus: args.focus.clone(),
        skips,
        out: args.out.clone(),
        timeout: Duration::from_secs(args.timeout_minutes * 60),
    };
    let mut runs = Vec::new();
    for stack in stacks {
        let results = e2e::run_stack(stack, &sel)?;
        runs.push((stack, results));
    }
    let (md, json) = e2e::compare(&runs, &excluded);
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))
    };
    write("comparison.md", md.clone())?;
    write(
        "comparison.json",
        serde_json::to_string_pretty(&json).expect("JSON values serialize"),
    )?;
    println!("{md}");
    eprintln!(
        "signpost-e2e: done in {:.0}s; {}",
        t0.elapsed().as_secs_f64(),
        args.out.join("comparison.md").display()
    );
    let regressions: Vec<&str> = json["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["upstream"]["outcome"] == "passed" && t["signpost"]["outcome"] == "failed")
        .filter_map(|t| t["test"].as_str())
        .collect();
    for r in &regressions {
        eprintln!("signpost-e2e: upstream passes, Signpost fails: {r}");
    }
    Ok(if args.require_parity && !regressions.is_empty() {
        1
    } else {
        0
    })
}
