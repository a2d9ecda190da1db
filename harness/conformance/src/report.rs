//! Certification reports: JSON (schema `signpost.dev/conformance/v1`,
//! documented in `docs/certification/README.md`), JUnit XML (one test case
//! per rule, so CI systems show them) and one self-contained HTML page
//! (per-rule table, convergence histograms as inline SVG, failure traces).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::rules::Profile;
use crate::verdict::{RuleResult, Verdict};
use crate::{Error, Result};

/// One profile's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileSummary {
    /// Rules passed.
    pub passed: usize,
    /// Rules failed.
    pub failed: usize,
    /// Rules that fail with a listed deviation.
    pub deviations: usize,
    /// Rules nothing exercised.
    pub skipped: usize,
    /// The rules that passed (the supported features).
    pub supported: Vec<String>,
}

/// A whole certification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `signpost.dev/conformance/v1`.
    pub schema: &'static str,
    /// Who was certified.
    pub implementation: String,
    /// The components and their versions.
    pub components: BTreeMap<String, String>,
    /// The command line that reproduces it.
    pub command: String,
    /// When (UTC, RFC 3339).
    pub date: String,
    /// Wall time of the run in seconds.
    pub duration_secs: f64,
    /// What ran: scenarios, walks, features.
    pub sources: BTreeMap<String, u64>,
    /// Per profile.
    pub profiles: BTreeMap<Profile, ProfileSummary>,
    /// Per rule.
    pub rules: Vec<RuleResult>,
    /// Whether every core rule passed (or deviates with a listed reason).
    pub certified: bool,
}

impl Report {
    /// Summarises verdicts.
    pub fn new(
        implementation: String,
        components: BTreeMap<String, String>,
        command: String,
        duration_secs: f64,
        sources: BTreeMap<String, u64>,
        rules: Vec<RuleResult>,
    ) -> Report {
        let mut profiles: BTreeMap<Profile, ProfileSummary> = BTreeMap::new();
        for p in Profile::ALL {
            profiles.insert(p, ProfileSummary::default());
        }
        for r in &rules {
            let s = profiles.entry(r.profile).or_default();
            match &r.verdict {
                Verdict::Pass => {
                    s.passed += 1;
                    s.supported.push(r.rule.id.clone());
                }
                Verdict::Fail => s.failed += 1,
                Verdict::Deviation { .. } => s.deviations += 1,
                Verdict::NotApplicable => s.skipped += 1,
            }
        }
        let certified = !rules
            .iter()
            .any(|r| r.verdict == Verdict::Fail && r.profile.is_core());
        Report {
            schema: "signpost.dev/conformance/v1",
            implementation,
            components,
            command,
            date: now_rfc3339(),
            duration_secs,
            sources,
            profiles,
            rules,
            certified,
        }
    }

    /// Counts of (pass, fail, deviation, not applicable).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let n = |f: fn(&Verdict) -> bool| self.rules.iter().filter(|r| f(&r.verdict)).count();
        (
            n(|v| *v == Verdict::Pass),
            n(|v| *v == Verdict::Fail),
            n(|v| matches!(v, Verdict::Deviation { .. })),
            n(|v| *v == Verdict::NotApplicable),
        )
    }

    /// The per-rule table for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for r in &self.rules {
            let v = match &r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::NotApplicable => "n/a",
                Verdict::Deviation { .. } => "deviation",
            };
            let lat = match (r.convergence_p50, r.convergence_p99) {
                (Some(a), Some(b)) => format!("p50 {:.2}s p99 {:.2}s", a, b),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{:<9} {:<10} {:<15} {:>6} checks  {}",
                r.rule.id,
                v,
                r.profile.name(),
                r.tally.checks,
                lat
            );
        }
        let (p, f, d, na) = self.counts();
        let _ = writeln!(
            s,
            "{}: {p} pass, {f} fail, {d} deviation, {na} not applicable — {}",
            self.implementation,
            if self.certified {
                "CERTIFIED (every core rule holds)"
            } else {
                "NOT CERTIFIED (a core rule failed)"
            }
        );
        s
    }

    /// Writes `<dir>/<stem>.json`, `.junit.xml` and `.html`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        let put = |ext: &str, text: String| {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::write(&p, text).map_err(|e| Error::Io(format!("{}: {e}", p.display())))
        };
        put(
            "json",
            serde_json::to_string_pretty(self).map_err(|e| Error::Io(e.to_string()))?,
        )?;
        put("junit.xml", self.junit())?;
        put("html", self.html())
    }

    /// JUnit XML: a test suite per profile, a test case per rule.
    pub fn junit(&self) -> String {
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let (_, f, _, na) = self.counts();
        let _ = writeln!(
            s,
            "<testsuites name=\"{}\" tests=\"{}\" failures=\"{f}\" skipped=\"{na}\" time=\"{:.1}\">",
            xml(&self.implementation),
            self.rules.len(),
            self.duration_secs
        );
        for p in Profile::ALL {
            let rules: Vec<&RuleResult> = self.rules.iter().filter(|r| r.profile == p).collect();
            let sum = &self.profiles[&p];
            let _ = writeln!(
                s,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
                p.name(),
                rules.len(),
                sum.failed,
                sum.skipped
            );
            for r in rules {
                let _ = write!(
                    s,
                    "    <testcase classname=\"{}\" name=\"{} {}\"",
                    p.name(),
                    r.rule.id,
                    xml(&short(&r.rule.text, 80))
                );
                match &r.verdict {
                    Verdict::Pass => s.push_str("/>\n"),
                    Verdict::NotApplicable => {
                        s.push_str(">\n      <skipped message=\"not exercised for this system\"/>\n    </testcase>\n")
                    }
                    Verdict::Deviation { reason } => {
                        let _ = write!(
                            s,
                            ">\n      <skipped message=\"deviation: {}\"/>\n    </testcase>\n",
                            xml(reason)
                        );
                    }
                    Verdict::Fail => {
                        let first = r.tally.failures.first();
                        let _ = write!(
                            s,
                            ">\n      <failure message=\"{} of {} checks failed\">{}</failure>\n    </testcase>\n",
                            r.tally.failed,
                            r.tally.checks,
                            xml(&first.map(failure_text).unwrap_or_default())
                        );
                    }
                }
            }
            s.push_str("  </testsuite>\n");
        }
        s.push_str("</testsuites>\n");
        s
    }

    /// One self-contained HTML page.
    pub fn html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signpost conformance: {imp}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:75em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}}.pass{{background:#dfd}}.fail{{background:#fdd}}\
             .na{{color:#888}}.dev{{background:#ffd}}pre{{white-space:pre-wrap;margin:0}}</style></head><body>\
             <h1>Signpost conformance report</h1><p><b>{imp}</b> — {verdict}</p><p>{date}, {dur:.0} s. Reproduce: <code>{cmd}</code></p><ul>",
            imp = xml(&self.implementation),
            verdict = if self.certified {
                "certified: every core rule holds"
            } else {
                "<b>not certified</b>: a core rule failed"
            },
            date = xml(&self.date),
            dur = self.duration_secs,
            cmd = xml(&self.command)
        );
        for (k, v) in &self.components {
            let _ = write!(s, "<li>{}: {}</li>", xml(k), xml(v));
        }
        s.push_str("</ul><h2>Profiles</h2><table><tr><th>profile</th><th>passed</th><th>failed</th><th>deviations</th><th>not applicable</th></tr>");
        for (p, sum) in &self.profiles {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                p.name(),
                sum.passed,
                sum.failed,
                sum.deviations,
                sum.skipped
            );
        }
        s.push_str("</table><h2>Rules</h2><table><tr><th>rule</th><th>verdict</th><th>checks</th><th>convergence</th><th>text</th></tr>");
        for r in &self.rules {
            let (class, v) = match &r.verdict {
                Verdict::Pass => ("pass", "pass".to_owned()),
                Verdict::Fail => (
                    "fail",
                    format!("FAIL ({} of {})", r.tally.failed, r.tally.checks),
                ),
                Verdict::NotApplicable => ("na", "not applicable".to_owned()),
                Verdict::Deviation { reason } => ("dev", format!("deviation: {}", xml(reason))),
            };
            let _ = write!(
                s,
                "<tr class=\"{class}\"><td><a href=\"#{id}\">{id}</a></td><td>{v}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.tally.checks,
                histogram(&r.tally.convergence),
                xml(&r.rule.text),
                id = r.rule.id
            );
        }
        s.push_str("</table><h2>Failures</h2>");
        for r in self.rules.iter().filter(|r| r.tally.failed > 0) {
            let _ = write!(s, "<h3 id=\"{}\">{}</h3>", r.rule.id, r.rule.id);
            for f in &r.tally.failures {
                let _ = write!(s, "<pre>{}</pre><hr>", xml(&failure_text(f)));
            }
        }
        s.push_str("</body></html>\n");
        s
    }
}

fn failure_text(f: &crate::verdict::Failure) -> String {
    format!(
        "scenario {}\nsteps:\n  {}\nchecked: {}\n{}\nreplay: {}",
        f.scenario,
        f.trace.join("\n  "),
        f.what,
        f.evidence,
        f.replay
    )
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Convergence samples as a small inline SVG histogram (log-spaced bins
/// from 10 ms to 30 s), with p50/p99 beside it.
fn histogram(samples: &[f64]) -> String {
    if samples.is_empty() {
        return String::new();
    }
    const BINS: usize = 12;
    let (lo, hi) = (0.01f64.ln(), 30f64.ln());
    let mut counts = [0usize; BINS];
    for &x in samples {
        let f = ((x.max(0.01).ln() - lo) / (hi - lo) * BINS as f64) as usize;
        counts[f.min(BINS - 1)] += 1;
    }
    let max = *counts.iter().max().unwrap_or(&1).max(&1) as f64;
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"96\" height=\"20\" viewBox=\"0 0 96 20\">",
    );
    for (i, c) in counts.iter().enumerate() {
        let h = (*c as f64 / max * 18.0).round();
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"7\" height=\"{h}\" fill=\"#36c\"/>",
            i * 8,
            20.0 - h
        );
    }
    svg.push_str("</svg>");
    let p = |q| crate::verdict::percentile(samples, q).unwrap_or(0.0);
    format!(
        "{svg} p50 {:.2}s p99 {:.2}s (n={})",
        p(0.5),
        p(0.99),
        samples.len()
    )
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Failure, Tally, judge};

    #[test]
    fn reports_say_what_failed_in_every_format() {
        let mut t = Tally::default();
        let ctx = Failure {
            scenario: "s".into(),
            trace: vec!["apply Service voy".into()],
            what: String::new(),
            evidence: String::new(),
            replay: "signpost-conform --scenario s".into(),
        };
        let checks = vec![
            crate::check::Check {
                rules: vec!["PXY-3"],
                what: "TCP to 10.96.0.9:80".into(),
                ok: false,
                evidence: "expected [Refused], observed [Timeout]".into(),
            },
            crate::check::Check {
                rules: vec!["DNS-2"],
                what: "voy A".into(),
                ok: true,
                evidence: String::new(),
            },
        ];
        t.record(&checks, None, &ctx);
        let r = Report::new(
            "x".into(),
            BTreeMap::new(),
            "cmd".into(),
            1.0,
            BTreeMap::new(),
            judge(&t, &["x".into()]),
        );
        assert!(!r.certified);
        let (p, f, _, _) = r.counts();
        assert_eq!((p, f), (1, 1));
        assert!(
            r.junit()
                .contains("<failure message=\"1 of 1 checks failed\">")
        );
        assert!(r.html().contains("expected [Refused], observed [Timeout]"));
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(json["profiles"]["proxy-core"]["failed"], 1);
        assert!(now_rfc3339().starts_with("20"));
    }
}
