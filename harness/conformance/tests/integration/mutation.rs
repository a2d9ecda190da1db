//! The mutation score in CI: every mutant of Signpost's proxy and DNS is
//! caught by the rule it breaks.

use signpost_conformance::live::Live;
use signpost_conformance::mutation::score;
use signpost_conformance::run::Options;
use signpost_conformance::sut::Sut;
use signpost_model::mutant::Mutant;

use crate::require_rig;

#[test]
fn every_mutant_is_caught_by_the_rule_it_breaks() {
    require_rig!();
    let mut live =
        Live::start(&Sut::default()).expect("a local cluster with Signpost's components");
    let opts = Options {
        deadline: std::time::Duration::from_secs(8),
        ..Options::default()
    };
    let results = score(&mut live, &Mutant::ALL, &opts).expect("the rig works");
    let caught = results.iter().filter(|r| r.caught).count();
    println!(
        "mutation score: {caught}/{} mutants caught by the rule they break",
        results.len()
    );
    for r in &results {
        println!("  {r}");
    }
    assert!(results.len() >= 16);
    let missed: Vec<String> = results
        .iter()
        .filter(|r| !r.caught)
        .map(|r| r.to_string())
        .collect();
    assert!(missed.is_empty(), "mutants missed: {missed:#?}");
}
