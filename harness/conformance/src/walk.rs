//! Random walks through the stateright model, replayed step by step on the
//! live system. A walk is a list of choices; each choice picks one of the
//! user actions the model allows in the state the walk has reached (crashes,
//! drops and deliveries are the model's business, not the live system's),
//! and the model settles after it. proptest generates walks from a seed and,
//! when one fails on the live system, shrinks it to a minimal failing walk,
//! printed as a replayable `--walk` argument.

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use signpost_model::protocol::{Action, Cfg, ProtocolModel, catalog};
use stateright::Model;

use crate::live::Live;
use crate::run::{Options, run_steps};
use crate::step::{PodSpec, ServiceSpec, Step};
use crate::verdict::Tally;
use crate::{Error, Result};

/// One choice of a walk: which kind of user action (0: none, so that
/// shrinking towards 0 shortens a walk), and which object.
pub type Choice = (u8, u8);

/// The model the walks go through: the default cast, `changes` user changes,
/// no crashes or drops (the live system's components are not crashed by walks).
pub fn model(changes: u8) -> ProtocolModel {
    Cfg {
        changes,
        crashes: 0,
        drops: 0,
        client: false,
        ..Cfg::default()
    }
    .into_model()
}

fn is_user(a: &Action) -> bool {
    matches!(
        a,
        Action::CreateService(_)
            | Action::DeleteService(_)
            | Action::CreatePod(_)
            | Action::DeletePod(_)
            | Action::SetReady(..)
            | Action::Terminate(_)
    )
}

fn kind(a: &Action) -> u8 {
    match a {
        Action::CreateService(_) => 0,
        Action::DeleteService(_) => 1,
        Action::CreatePod(_) => 2,
        Action::DeletePod(_) => 3,
        Action::SetReady(_, true) => 4,
        Action::SetReady(_, false) => 5,
        _ => 6,
    }
}

/// The model actions a walk's choices make: each choice takes the allowed
/// user action of its kind (mod the kinds allowed) and index (mod the
/// candidates); the model settles after each.
pub fn actions(m: &ProtocolModel, choices: &[Choice]) -> Vec<Action> {
    let mut s = m.initial_state();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for &(k, i) in choices {
        if k == 0 {
            continue;
        }
        buf.clear();
        m.actions(&s, &mut buf);
        let users: Vec<Action> = buf.iter().filter(|a| is_user(a)).cloned().collect();
        if users.is_empty() {
            break;
        }
        let mut kinds: Vec<u8> = users.iter().map(kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let want = kinds[usize::from(k - 1) % kinds.len()];
        let of_kind: Vec<&Action> = users.iter().filter(|a| kind(a) == want).collect();
        let a = of_kind[usize::from(i) % of_kind.len()].clone();
        let Some(mut next) = m.next_state(&s, a.clone()) else {
            continue;
        };
        m.settle(&mut next);
        s = next;
        out.push(a);
    }
    out
}

fn pod_step(i: u8, ready: bool) -> Step {
    let (name, app, node, _) = catalog::PODS[usize::from(i)];
    Step::Pod(
        name,
        PodSpec {
            app,
            node: ["node-a", "node-b"][node % 2],
            ready,
            hostname: None,
        },
    )
}

fn service_step(i: u8) -> Step {
    let (name, app) = catalog::SERVICES[usize::from(i)];
    Step::Service(name, ServiceSpec::selecting(app))
}

/// The live steps of the model's initial state (its Pods and Services).
pub fn prefix(m: &ProtocolModel) -> Vec<Step> {
    (0..m.cfg.pods)
        .map(|i| pod_step(i, true))
        .chain((0..m.cfg.initial_services).map(service_step))
        .collect()
}

/// The live step of one model action.
pub fn to_step(a: &Action) -> Option<Step> {
    let name = |i: &u8| catalog::PODS[usize::from(*i)].0;
    Some(match a {
        Action::CreateService(i) => service_step(*i),
        Action::DeleteService(i) => Step::DeleteService(catalog::SERVICES[usize::from(*i)].0),
        Action::CreatePod(i) => pod_step(*i, true),
        Action::DeletePod(i) => Step::DeletePod(name(i)),
        Action::SetReady(i, r) => Step::SetReady(name(i), *r),
        Action::Terminate(i) => Step::Terminate(name(i)),
        _ => return None,
    })
}

/// Spells choices as a `--walk` argument: `k.i,k.i,...` (skips left out).
pub fn spell(choices: &[Choice]) -> String {
    choices
        .iter()
        .filter(|(k, _)| *k != 0)
        .map(|(k, i)| format!("{k}.{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `--walk` argument.
pub fn parse(s: &str) -> Result<Vec<Choice>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, i) = p
                .split_once('.')
                .ok_or_else(|| Error::Usage(format!("--walk: {p:?} is not K.I")))?;
            Ok((
                k.parse()
                    .map_err(|_| Error::Usage(format!("--walk: {p:?}")))?,
                i.parse()
                    .map_err(|_| Error::Usage(format!("--walk: {p:?}")))?,
            ))
        })
        .collect()
}

/// Replays one walk on the live system; true if every check passed.
pub fn replay(
    live: &mut Live,
    m: &ProtocolModel,
    choices: &[Choice],
    opts: &Options,
    tally: &mut Tally,
) -> Result<bool> {
    let acts = actions(m, choices);
    let mut steps = prefix(m);
    steps.extend(acts.iter().filter_map(to_step));
    let cmd = format!(
        "signpost-conform {} --steps {} --walk {}",
        live.sut().flags(),
        m.cfg.changes,
        spell(choices)
    );
    if opts.progress {
        eprintln!("walk {} ({} model actions)", spell(choices), acts.len());
    }
    run_steps(live, "walk", &steps, opts, tally, &cmd)
}

/// What a run of walks found.
#[derive(Debug, Clone)]
pub struct WalkOutcome {
    /// Walks replayed (including shrinking attempts).
    pub replayed: u64,
    /// The minimal failing walk, if one failed.
    pub minimal: Option<Vec<Choice>>,
    /// Its model actions.
    pub minimal_actions: Vec<Action>,
}

/// Generates `walks` walks of at most `steps` choices from `seed`, replays each on
/// the live system, and shrinks the first failing one.
pub fn run(
    live: &mut Live,
    seed: u64,
    walks: u32,
    steps: u8,
    opts: &Options,
    tally: &mut Tally,
) -> Result<WalkOutcome> {
    let m = model(steps);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let config = Config {
        cases: walks,
        failure_persistence: None,
        max_shrink_iters: 24,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let n = usize::from(steps);
    // Walks of 1..=steps choices: shrinking first drops choices, then turns
    // them into 0 (none) and indexes towards 0, so a minimal walk is short.
    let strategy = proptest::collection::vec((0u8..8, 0u8..4), 1..=n);
    let replayed = std::cell::Cell::new(0u64);
    let failure = std::cell::RefCell::new(None::<Error>);
    let live_cell = std::cell::RefCell::new(live);
    let tally_cell = std::cell::RefCell::new(tally);
    let result = runner.run(&strategy, |choices| {
        replayed.set(replayed.get() + 1);
        let mut live = live_cell.borrow_mut();
        let mut scratch = Tally::default();
        // The first pass records into the report; shrinking attempts only decide.
        let first = replayed.get() <= u64::from(walks);
        let mut t = tally_cell.borrow_mut();
        let sink: &mut Tally = if first { &mut t } else { &mut scratch };
        match replay(&mut live, &m, &choices, opts, sink) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TestCaseError::fail(spell(&choices))),
            Err(e) => {
                *failure.borrow_mut() = Some(e);
                Err(TestCaseError::fail("rig error"))
            }
        }
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    let minimal = match result {
        Ok(()) => None,
        Err(TestError::Fail(_, choices)) => Some(choices),
        Err(TestError::Abort(why)) => return Err(Error::Scenario(format!("walks aborted: {why}"))),
    };
    let minimal_actions = minimal
        .as_deref()
        .map(|c| actions(&m, c))
        .unwrap_or_default();
    Ok(WalkOutcome {
        replayed: replayed.get(),
        minimal,
        minimal_actions,
    })
}
