//! Verdicts per spec rule: what was checked, what failed (with evidence,
//! the step trace and a replay command), and how long the system took to
//! converge after each step.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::Check;
use crate::rules::{self, Deviation, Profile, Rule};

/// One failed check.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The scenario.
    pub scenario: String,
    /// The steps up to and including the one after which it failed.
    pub trace: Vec<String>,
    /// What was checked.
    pub what: String,
    /// Expected and observed.
    pub evidence: String,
    /// A command that runs that scenario again.
    pub replay: String,
}

/// What was seen of one rule.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleTally {
    /// Checks that exercised it.
    pub checks: u64,
    /// Those that failed at the deadline (the first few kept).
    pub failures: Vec<Failure>,
    /// How many failed in all.
    pub failed: u64,
    /// Seconds from a step to the first observation in which every check passed.
    pub convergence: Vec<f64>,
    /// The rules each failed check exercised (to trace a failure to a
    /// deviation of another rule the same check exercised).
    #[serde(skip)]
    pub failed_with: Vec<Vec<String>>,
}

/// Every rule's tally.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// By rule ID.
    pub rules: BTreeMap<String, RuleTally>,
}

impl Tally {
    /// Records the checks after a step: converged after `secs` if all passed.
    pub fn record(&mut self, checks: &[Check], secs: Option<f64>, ctx: &Failure) {
        let mut touched = std::collections::BTreeSet::new();
        for c in checks {
            for r in &c.rules {
                let t = self.rules.entry((*r).to_owned()).or_default();
                t.checks += 1;
                touched.insert(*r);
                if !c.ok {
                    t.failed += 1;
                    t.failed_with
                        .push(c.rules.iter().map(|x| (*x).to_owned()).collect());
                    if t.failures.len() < 5 {
                        t.failures.push(Failure {
                            what: c.what.clone(),
                            evidence: c.evidence.clone(),
                            ..ctx.clone()
                        });
                    }
                }
            }
        }
        if let Some(s) = secs {
            for r in touched {
                if let Some(t) = self.rules.get_mut(r) {
                    t.convergence.push(s);
                }
            }
        }
    }

    /// Whether `rule` has failed so far.
    pub fn failed(&self, rule: &str) -> bool {
        self.rules.get(rule).is_some_and(|t| t.failed > 0)
    }
}

/// The verdict on one rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// Some check failed.
    Fail,
    /// Nothing here exercises it for this system.
    NotApplicable,
    /// It fails, and spec/deviations.md says why that is accepted.
    Deviation {
        /// The listed reason.
        reason: String,
    },
}

/// A rule with its verdict and figures.
#[derive(Debug, Clone, Serialize)]
pub struct RuleResult {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// Its profile.
    pub profile: Profile,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// What was seen.
    #[serde(flatten)]
    pub tally: RuleTally,
    /// Convergence p50 in seconds.
    pub convergence_p50: Option<f64>,
    /// Convergence p99 in seconds.
    pub convergence_p99: Option<f64>,
}

/// A percentile of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i.min(v.len() - 1)).copied()
}

/// Verdicts on every rule of the spec, given the tally and the names of the
/// implementations under test (for deviations).
pub fn judge(tally: &Tally, implementations: &[String]) -> Vec<RuleResult> {
    let devs: Vec<Deviation> = rules::deviations();
    let listed = |id: &str| {
        devs.iter()
            .find(|d| d.rule == id && implementations.contains(&d.implementation))
    };
    rules::all()
        .into_iter()
        .map(|rule| {
            let t = tally.rules.get(&rule.id).cloned().unwrap_or_default();
            let verdict = if t.checks == 0 {
                Verdict::NotApplicable
            } else if t.failed == 0 {
                Verdict::Pass
            } else if let Some(d) = listed(&rule.id) {
                Verdict::Deviation {
                    reason: format!("{}: {}", d.implementation, d.reason),
                }
            } else if t
                .failed_with
                .iter()
                .all(|rs| rs.iter().any(|r| listed(r).is_some()))
            {
                // Every failed check also exercised a rule with a listed deviation.
                let mut by: Vec<&str> = t
                    .failed_with
                    .iter()
                    .filter_map(|rs| rs.iter().find(|r| listed(r).is_some()))
                    .map(String::as_str)
                    .collect();
                by.sort_unstable();
                by.dedup();
                Verdict::Deviation {
                    reason: format!(
                        "every failed check follows from the deviation of {}",
                        by.join(", ")
                    ),
                }
            } else {
                Verdict::Fail
            };
            RuleResult {
                profile: rules::profile(&rule.id),
                convergence_p50: percentile(&t.convergence, 0.5),
                convergence_p99: percentile(&t.convergence, 0.99),
                rule,
                verdict,
                tally: t,
            }
        })
        .collect()
}
