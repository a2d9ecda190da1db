//! The default bound: every property holds, every vacuity check is reached,
//! and the state count is pinned.

use signpost_model::protocol::properties::{DNS_CONVERGE, PXY_CONVERGE};
use signpost_model::protocol::{Bug, Cfg, PROPERTIES};
use stateright::{Checker, Model};

/// Pinned: a change here means the model's behaviour changed; update it
/// deliberately, with the reason in the commit message.
const DEFAULT_UNIQUE_STATES: usize = 2_998_062;

#[test]
fn default_bound_holds_every_property() {
    let cfg = Cfg::default();
    assert!(
        cfg.initial_services >= 2
            && cfg.pods >= 3
            && cfg.nodes >= 2
            && cfg.crashes >= 1
            && cfg.drops >= 1
    );
    let started = std::time::Instant::now();
    let checker = cfg.into_model().checker().threads(2).spawn_bfs().join();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "default bound: {} unique states, {} total, depth {}, {:.1}s, {:.0} states/s",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        secs,
        checker.unique_state_count() as f64 / secs
    );
    // Every always-property holds and every sometimes-property has an example.
    checker.assert_properties();
    for name in PROPERTIES {
        let found = checker.discovery(name).is_some();
        assert_eq!(found, name.starts_with("vacuity"), "property {name:?}");
    }
    assert_eq!(checker.unique_state_count(), DEFAULT_UNIQUE_STATES);
}

fn counterexample(cfg: Cfg, property: &'static str) -> Vec<String> {
    let model = cfg.into_model();
    let checker = model.clone().checker().threads(2).spawn_bfs().join();
    assert!(
        checker.discovery(property).is_some(),
        "the checker reports {property:?}"
    );
    let path = model
        .shortest_counterexample(property)
        .expect("a shortest trace");
    let trace: Vec<String> = path.iter().map(|a| model.format_action(a)).collect();
    eprintln!("{property}:\n  {}", trace.join("\n  "));
    trace
}

fn small(bug: Bug) -> Cfg {
    Cfg {
        changes: 1,
        bug,
        ..Cfg::default()
    }
}

#[test]
fn a_dns_that_ignores_deletes_is_caught() {
    let trace = counterexample(small(Bug::DnsIgnoresDeletes), DNS_CONVERGE);
    assert!(
        trace.iter().any(|s| s.starts_with("user deletes Service")),
        "{trace:#?}"
    );
    assert!(
        trace.iter().any(|s| s.contains("Dns takes its next event")),
        "{trace:#?}"
    );
}

#[test]
fn a_proxy_that_does_not_relist_after_restart_is_caught() {
    let trace = counterexample(small(Bug::ProxyNoRelistOnRestart), PXY_CONVERGE);
    assert!(
        trace
            .iter()
            .any(|s| s.starts_with("Proxy") && s.ends_with("crashes")),
        "{trace:#?}"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.starts_with("Proxy") && s.ends_with("restarts and lists")),
        "{trace:#?}"
    );
}
