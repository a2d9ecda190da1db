//! The mutation score: every mutant of Signpost's proxy and DNS
//! ([`signpost_model::mutant`]) run through the catalogue until the rule it
//! breaks fails. A mutant is caught only by its own rule; other rules it
//! also breaks are reported beside it.

use std::time::Instant;

use signpost_model::mutant::Mutant;

use crate::Result;
use crate::catalogue;
use crate::live::Live;
use crate::run::{Options, run_scenario};
use crate::verdict::Tally;

/// What the harness made of one mutant.
#[derive(Debug, Clone)]
pub struct MutantResult {
    /// The mutant.
    pub mutant: Mutant,
    /// Whether its rule failed.
    pub caught: bool,
    /// Other rules that failed with it.
    pub also: Vec<String>,
    /// Seconds it took.
    pub secs: f64,
}

impl std::fmt::Display for MutantResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<34} {:<7} {} ({:.0}s)",
            self.mutant.name(),
            self.mutant.rule(),
            if self.caught { "caught" } else { "MISSED" },
            self.secs
        )?;
        if !self.also.is_empty() {
            write!(f, ", also failed: {}", self.also.join(" "))?;
        }
        Ok(())
    }
}

/// Runs `mutants` on `live` (Signpost's proxy and DNS restarted with each),
/// then restarts them without a mutant.
pub fn score(live: &mut Live, mutants: &[Mutant], opts: &Options) -> Result<Vec<MutantResult>> {
    let mut out = Vec::new();
    for &m in mutants {
        let t0 = Instant::now();
        live.remutate(Some(m))?;
        let mut tally = Tally::default();
        let o = Options {
            stop_on: Some(m.rule()),
            ..opts.clone()
        };
        for sc in catalogue::all() {
            run_scenario(live, &sc, &o, &mut tally)?;
            if tally.failed(m.rule()) {
                break;
            }
        }
        let r = MutantResult {
            mutant: m,
            caught: tally.failed(m.rule()),
            also: tally
                .rules
                .iter()
                .filter(|(r, t)| t.failed > 0 && r.as_str() != m.rule())
                .map(|(r, _)| r.clone())
                .collect(),
            secs: t0.elapsed().as_secs_f64(),
        };
        eprintln!("mutant {r}");
        out.push(r);
    }
    live.remutate(None)?;
    Ok(out)
}
