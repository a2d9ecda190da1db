//! Runs scenarios on a live system: after each step, observe until every
//! check passes or the convergence deadline passes; the time to the first
//! fully passing observation is the step's convergence latency.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Result;
use crate::catalogue::Scenario;
use crate::check::observe;
use crate::live::Live;
use crate::step::Step;
use crate::verdict::{Failure, Tally};

/// How scenarios run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a step may take to converge before its failing checks count.
    pub deadline: Duration,
    /// Stop a scenario as soon as this rule has failed (the mutation test).
    pub stop_on: Option<&'static str>,
    /// Print a line per step.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            deadline: Duration::from_secs(20),
            stop_on: None,
            progress: true,
        }
    }
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// Runs `steps` in a fresh namespace named after `name`; returns whether every
/// check passed. `replay` is the command printed with failures.
pub fn run_steps(
    live: &mut Live,
    name: &str,
    steps: &[Step],
    opts: &Options,
    tally: &mut Tally,
    replay: &str,
) -> Result<bool> {
    let ns = format!("{name}-{}", RUN.fetch_add(1, Ordering::Relaxed));
    live.namespace(&ns)?;
    let mut trace = Vec::new();
    let mut all_ok = true;
    let mut named = std::collections::BTreeSet::new();
    for step in steps {
        live.apply(&ns, step)?;
        if let Step::Service(name, _) = step {
            named.insert(*name);
        }
        trace.push(step.to_string());
        let t0 = Instant::now();
        let ctx = Failure {
            scenario: name.to_owned(),
            trace: trace.clone(),
            what: String::new(),
            evidence: String::new(),
            replay: replay.to_owned(),
        };
        loop {
            live.check_components()?;
            let snap = live.snapshot()?;
            let checks = observe(live, &ns, &snap, &named);
            let elapsed = t0.elapsed();
            if checks.iter().all(|c| c.ok) {
                tally.record(&checks, Some(elapsed.as_secs_f64()), &ctx);
                if opts.progress {
                    eprintln!(
                        "  {name}: {step} → {} checks pass after {:.2}s",
                        checks.len(),
                        elapsed.as_secs_f64()
                    );
                }
                break;
            }
            if elapsed > opts.deadline {
                tally.record(&checks, None, &ctx);
                all_ok = false;
                if opts.progress {
                    let bad: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
                    eprintln!(
                        "  {name}: {step} → {} of {} checks FAIL after {:.0}s, first: {}: {}",
                        bad.len(),
                        checks.len(),
                        opts.deadline.as_secs_f64(),
                        bad[0].what,
                        bad[0].evidence
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if opts.stop_on.is_some_and(|r| tally.failed(r)) {
            break;
        }
    }
    live.drop_namespace(&ns)?;
    Ok(all_ok)
}

/// Runs one catalogue scenario.
pub fn run_scenario(
    live: &mut Live,
    sc: &Scenario,
    opts: &Options,
    tally: &mut Tally,
) -> Result<bool> {
    if opts.progress {
        eprintln!("scenario {} (written for {})", sc.name, sc.focus.join(" "));
    }
    let replay = format!(
        "signpost-conform {} --scenario {}",
        live.sut().flags(),
        sc.name
    );
    run_steps(live, sc.name, &sc.steps, opts, tally, &replay)
}
