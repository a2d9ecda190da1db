//! Signpost certified on a local cluster: the catalogue and bounded model
//! walks (every rule they exercise passes), the Gherkin features on the
//! cluster world (cucumber's JUnit written), and a deliberately broken
//! proxy whose failing walk shrinks to a few steps.

use std::collections::BTreeMap;

use signpost_conformance::live::Live;
use signpost_conformance::report::Report;
use signpost_conformance::run::{Options, run_scenario};
use signpost_conformance::sut::Sut;
use signpost_conformance::verdict::{Tally, Verdict, judge};
use signpost_conformance::{catalogue, walk, world};
use signpost_model::mutant::Mutant;
use signpost_model::protocol::Action;

use crate::{reports_dir, require_rig};

#[test]
fn the_catalogue_and_model_walks_certify_signpost() {
    require_rig!();
    let sut = Sut::default();
    let mut live = Live::start(&sut).expect("a local cluster with Signpost's components");
    let opts = Options::default();
    let mut tally = Tally::default();
    for sc in catalogue::all() {
        run_scenario(&mut live, &sc, &opts, &mut tally).expect("the rig works");
    }
    let walks = walk::run(&mut live, 7, 3, 5, &opts, &mut tally).expect("the rig works");
    assert!(walks.minimal.is_none(), "a walk failed: {walks:?}");
    drop(live);
    let verdicts = judge(&tally, &["signpost".into()]);
    let failed: Vec<_> = verdicts
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .map(|r| (r.rule.id.clone(), r.tally.failures.clone()))
        .collect();
    assert!(failed.is_empty(), "rules failed: {failed:#?}");
    let passed = verdicts
        .iter()
        .filter(|r| r.verdict == Verdict::Pass)
        .count();
    assert!(passed >= 35, "only {passed} rules exercised and passed");
    let report = Report::new(
        sut.implementation(),
        BTreeMap::new(),
        format!("signpost-conform {}", sut.flags()),
        0.0,
        BTreeMap::from([("walks".to_owned(), walks.replayed)]),
        verdicts,
    );
    assert!(report.certified);
    let dir = reports_dir();
    report.write(&dir, "test-signpost").unwrap();
    for ext in ["json", "junit.xml", "html"] {
        let text = std::fs::read_to_string(dir.join(format!("test-signpost.{ext}"))).unwrap();
        assert!(text.contains("PXY-3"), "{ext} report names the rules");
    }
}

#[test]
fn the_features_run_on_the_cluster_world() {
    require_rig!();
    let live = Live::start(&Sut::default()).expect("a local cluster with Signpost's components");
    world::install(live);
    let junit = reports_dir().join("features-cluster.junit.xml");
    let results = world::run_features(&junit);
    drop(world::uninstall());
    let results = results.expect("the features ran");
    assert!(results.len() >= 14, "{} scenarios", results.len());
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| &r.name)
        .collect();
    assert!(
        failed.is_empty(),
        "features failed on the cluster world: {failed:#?}"
    );
    let xml = std::fs::read_to_string(&junit).expect("cucumber's JUnit report");
    assert!(xml.contains("<testsuite") && xml.contains("RES-6"), "{xml}");
}

#[test]
fn a_broken_proxys_failing_walk_shrinks_to_a_few_steps() {
    require_rig!();
    let sut = Sut {
        mutant: Some(Mutant::ProxyIgnoreReadiness),
        ..Sut::default()
    };
    let mut live = Live::start(&sut).expect("a local cluster with a broken proxy");
    let opts = Options {
        deadline: std::time::Duration::from_secs(6),
        progress: true,
        ..Options::default()
    };
    let mut tally = Tally::default();
    let out = walk::run(&mut live, 3, 16, 6, &opts, &mut tally).expect("the rig works");
    let minimal = out
        .minimal
        .expect("a walk that makes a Pod unready fails on this proxy");
    eprintln!(
        "minimal failing walk {} = {:?} after {} replays",
        walk::spell(&minimal),
        out.minimal_actions,
        out.replayed
    );
    assert!(
        out.minimal_actions.len() <= 2,
        "not shrunk: {:?}",
        out.minimal_actions
    );
    assert!(
        out.minimal_actions
            .iter()
            .any(|a| matches!(a, Action::SetReady(_, false))),
        "the minimal walk makes a Pod unready: {:?}",
        out.minimal_actions
    );
    assert!(tally.failed("PXY-2"), "the walk failed PXY-2");
}
