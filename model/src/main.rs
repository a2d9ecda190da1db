//! `signpost-model`: runs the protocol model check at chosen bounds, with
//! progress, or serves stateright's Explorer on localhost.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use signpost_model::protocol::{Bug, Cfg, PROPERTIES, ProtocolModel};
use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, Model};

#[derive(Parser)]
#[command(
    name = "signpost-model",
    about = "Model-check Signpost's registration and discovery protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BugArg {
    None,
    DnsIgnoresDeletes,
    ProxyNoRelistOnRestart,
}

#[derive(Subcommand)]
enum Command {
    /// Check every property at the given bounds.
    Check {
        /// Nodes (1..=2), each with a proxy.
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Pods in play (1..=4).
        #[arg(long, default_value_t = 3)]
        pods: u8,
        /// Services live at the start (of ent, voy, ent-v2).
        #[arg(long, default_value_t = 2)]
        services: u8,
        /// Size of the ClusterIP pool.
        #[arg(long, default_value_t = 2)]
        service_ips: u8,
        /// User changes.
        #[arg(long, default_value_t = 2)]
        changes: u8,
        /// Component crashes.
        #[arg(long, default_value_t = 1)]
        crashes: u8,
        /// Dropped watches.
        #[arg(long, default_value_t = 1)]
        drops: u8,
        /// Turn the ClusterIP quarantine (the stale-DNS mitigation) off.
        #[arg(long)]
        no_quarantine: bool,
        /// Inject a broken component.
        #[arg(long, value_enum, default_value = "none")]
        bug: BugArg,
        /// Checker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Serve stateright's Explorer on this address (for example localhost:3000) instead of checking.
        #[arg(long)]
        explore: Option<String>,
        /// Stop after this many seconds (the run is then reported as not exhaustive).
        #[arg(long)]
        time_cap: Option<u64>,
        /// Write the figures (bound, states, states/s, seconds, exhaustive or not) as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// A name for the bound in the JSON (for example "default").
        #[arg(long, default_value = "custom")]
        label: String,
    },
}

struct Progress {
    start: Instant,
    last: (Instant, usize),
}

impl Reporter<ProtocolModel> for Progress {
    fn report_checking(&mut self, d: ReportData) {
        let now = Instant::now();
        let rate = (d.unique_states - self.last.1) as f64
            / now.duration_since(self.last.0).as_secs_f64().max(1e-3);
        self.last = (now, d.unique_states);
        let overall = d.unique_states as f64 / self.start.elapsed().as_secs_f64().max(1e-3);
        eprintln!(
            "{} unique {:>10}  total {:>11}  depth {:>3}  {:>9.0} states/s (now {:.0}){}",
            if d.done { "done " } else { "check" },
            d.unique_states,
            d.total_states,
            d.max_depth,
            overall,
            rate,
            if d.done {
                format!("  in {:.1}s", d.duration.as_secs_f64())
            } else {
                String::new()
            }
        );
    }

    fn report_discoveries(
        &mut self,
        model: &ProtocolModel,
        discoveries: std::collections::BTreeMap<&'static str, ReportDiscovery<ProtocolModel>>,
    ) {
        let mut out = std::io::stdout().lock();
        for name in PROPERTIES {
            match discoveries.get(name) {
                Some(d) => {
                    let _ = writeln!(out, "{:<9} {name}", format!("{}", d.classification));
                    if d.classification.to_string() == "counterexample" {
                        for (i, action) in d.path.clone().into_actions().iter().enumerate() {
                            let _ = writeln!(
                                out,
                                "            {:>2}. {}",
                                i + 1,
                                model.format_action(action)
                            );
                        }
                    }
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<9} {name}",
                        if name.starts_with("vacuity") {
                            "MISSING"
                        } else {
                            "holds"
                        }
                    );
                }
            }
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_secs(2)
    }
}

fn main() -> anyhow::Result<()> {
    let Cli {
        command:
            Command::Check {
                nodes,
                pods,
                services,
                service_ips,
                changes,
                crashes,
                drops,
                no_quarantine,
                bug,
                threads,
                explore,
                time_cap,
                json,
                label,
            },
    } = Cli::parse();
    let cfg = Cfg {
        nodes,
        pods,
        initial_services: services,
        service_ips,
        changes,
        crashes,
        drops,
        quarantine: !no_quarantine,
        client: true,
        bug: match bug {
            BugArg::None => Bug::None,
            BugArg::DnsIgnoresDeletes => Bug::DnsIgnoresDeletes,
            BugArg::ProxyNoRelistOnRestart => Bug::ProxyNoRelistOnRestart,
        },
    };
    let cfg_text = format!("{cfg:?}");
    println!("model: {cfg_text}");
    let model = cfg.into_model();
    if let Some(addr) = explore {
        println!("Explorer on http://{addr}/");
        model.checker().threads(threads).serve(addr.as_str());
        return Ok(());
    }
    let start = Instant::now();
    let mut progress = Progress {
        start,
        last: (start, 0),
    };
    let mut builder = model.checker().threads(threads);
    if let Some(cap) = time_cap {
        builder = builder.timeout(Duration::from_secs(cap));
    }
    let checker = builder.spawn_bfs().join_and_report(&mut progress);
    let failed = checker
        .discoveries()
        .keys()
        .filter(|n| !n.starts_with("vacuity"))
        .count()
        + PROPERTIES
            .iter()
            .filter(|n| n.starts_with("vacuity") && checker.discovery(n).is_none())
            .count();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "unique states {}, total {}, depth {}, {:.1}s, {:.0} unique states/s",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        secs,
        checker.unique_state_count() as f64 / secs
    );
    // A run that ends before its cap has seen every state.
    let exhaustive = time_cap.is_none_or(|cap| secs + 1.0 < cap as f64);
    if !exhaustive {
        println!("stopped at the time cap: not exhaustive");
    }
    if let Some(path) = json {
        let figures = serde_json::json!({
            "bound": label,
            "config": format!("{cfg_text}"),
            "unique_states": checker.unique_state_count(),
            "total_states": checker.state_count(),
            "max_depth": checker.max_depth(),
            "seconds": secs,
            "states_per_second": checker.unique_state_count() as f64 / secs,
            "threads": threads,
            "complete": exhaustive,
            "failed_properties": failed,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} properties failed");
    }
    Ok(())
}
