//! The stale-DNS hazard (spec/hazards.md): without the ClusterIP quarantine
//! the checker finds a client that resolved `voy` reaching `ent-v2`'s Pods;
//! with it, the property holds.

use signpost_model::protocol::Cfg;
use stateright::{Checker, Model};

use signpost_model::protocol::properties::{RES_INTENDED as PROPERTY, V_REUSED};

fn hazard_bound(quarantine: bool) -> Cfg {
    // Two changes (delete voy, create ent-v2) are what the hazard needs; no
    // crashes or drops, so the search is small and the trace minimal.
    Cfg {
        changes: 2,
        crashes: 0,
        drops: 0,
        quarantine,
        ..Cfg::default()
    }
}

#[test]
fn without_quarantine_a_stale_answer_reaches_another_service() {
    let model = hazard_bound(false).into_model();
    let checker = model.clone().checker().spawn_bfs().join();
    assert!(
        checker.discovery(PROPERTY).is_some(),
        "the checker finds the stale-DNS hazard"
    );
    let path = model
        .shortest_counterexample(PROPERTY)
        .expect("a shortest trace");
    let trace: Vec<String> = path.iter().map(|a| model.format_action(a)).collect();
    eprintln!("stale-DNS trace:\n  {}", trace.join("\n  "));
    // The minimal trace (BFS, one thread): the order is pinned in spec/hazards.md.
    assert_eq!(
        trace,
        [
            "user deletes Service voy",
            "user creates Service ent-v2",
            "Eps takes its next event",
            "Eps takes its next event",
            "Eps takes its next event",
            "Proxy(0) takes its next event",
            "Proxy(0) takes its next event",
            "Proxy(0) takes its next event",
            "Proxy(0) takes its next event",
            "client resolves voy",
        ]
    );
}

#[test]
fn with_quarantine_the_property_holds() {
    let checker = hazard_bound(true).into_model().checker().spawn_bfs().join();
    checker.assert_no_discovery(PROPERTY);
    assert!(checker.discovery(V_REUSED).is_some());
    eprintln!(
        "hazard bound with quarantine: {} unique states",
        checker.unique_state_count()
    );
}
