//! Signpost's conformance harness: certifies any service proxy, cluster DNS
//! and EndpointSlice controller against the model, rule by rule.
//!
//! Black box by construction: this crate depends on `signpost-model` (the
//! oracle), `signpost-features` and the rig (`signpost-harness`), and on no
//! `impl/` crate. Systems under test are processes chosen at run time
//! ([`sut`]) and reached only over the wire.
//!
//! - [`sut`]: which proxy / DNS / EndpointSlice controller, and how each starts;
//! - [`live`]: the cluster with them running, steps as API writes, wire observations;
//! - [`step`]: the one step vocabulary all scenario sources speak;
//! - [`catalogue`]: hand-written scenarios per spec section;
//! - [`walk`]: random walks of the stateright model, replayed and shrunk;
//! - [`world`]: the Gherkin features' `Cluster` on a live system;
//! - [`check`]: observations compared with the oracle, tagged by rule;
//! - [`run`]: steps, convergence deadlines, latencies;
//! - [`mutation`]: the mutation score over Signpost's mutants;
//! - [`verdict`], [`rules`]: per-rule verdicts, profiles, deviations;
//! - [`report`]: JSON, JUnit XML and a self-contained HTML page;
//! - [`e2e`]: upstream's sig-network e2e tests against a stack on the rig's real node;
//! - [`vm`]: IPVS proxies on a kernel without IPVS, certified in the kernel VM rig.

pub mod catalogue;
pub mod check;
pub mod container;
pub mod e2e;
pub mod live;
pub mod mutation;
pub mod report;
pub mod rules;
pub mod run;
pub mod step;
pub mod sut;
pub mod verdict;
pub mod vm;
pub mod walk;
pub mod world;

/// What can go wrong while certifying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad command line.
    #[error("{0}")]
    Usage(String),
    /// Something this machine or harness cannot run (yet), and why.
    #[error("not supported here: {0}")]
    Unsupported(String),
    /// The rig failed.
    #[error(transparent)]
    Rig(#[from] signpost_harness::Error),
    /// The API server refused or failed a request.
    #[error("API server: {0}")]
    Api(String),
    /// A scenario asked for something that does not exist.
    #[error("scenario: {0}")]
    Scenario(String),
    /// An observation could not be made.
    #[error("observing: {0}")]
    Observe(String),
    /// A file could not be written.
    #[error("{0}")]
    Io(String),
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
