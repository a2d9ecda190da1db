//! Gherkin step definitions for Signpost's features, written against the
//! [`Cluster`] trait so the same scenarios run against the model today and
//! against a real cluster later: a backend only implements [`Cluster`] and is
//! chosen with `SIGNPOST_WORLD` (`model` by default; the conformance harness
//! installs `cluster`, a live system, with [`install_backend`]; an unknown
//! value fails loudly).

mod model_world;
mod steps;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::IpAddr;

pub use model_world::ModelCluster;

/// What a client sees when it opens a connection to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// The connection is forwarded to one of these Pods (the set is every
    /// Pod the data plane may choose).
    Reached(BTreeSet<String>),
    /// Actively refused (PXY-3).
    Refused,
    /// Nothing handles the address: the connection would time out.
    NoRoute,
}

/// An endpoint as the features talk about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointView {
    /// The Pod's name.
    pub pod: String,
    /// `ready` condition.
    pub ready: bool,
    /// `terminating` condition.
    pub terminating: bool,
}

/// A system the features can drive: the model, or a real cluster.
pub trait Cluster: Debug + Send + Sync {
    /// POST a Service named `name` selecting `app=<app>`, port 80 → named port `http`.
    fn create_service(&mut self, name: &str, app: &str) -> Result<(), String>;
    /// DELETE a Service.
    fn delete_service(&mut self, name: &str) -> Result<(), String>;
    /// Start a ready Pod labelled `app=<app>` on `node`, serving `http` on 8080.
    fn start_pod(&mut self, name: &str, app: &str, node: &str) -> Result<(), String>;
    /// Set a Pod's Ready condition.
    fn set_ready(&mut self, pod: &str, ready: bool) -> Result<(), String>;
    /// Give a Pod a deletionTimestamp.
    fn terminate(&mut self, pod: &str) -> Result<(), String>;
    /// Remove a Pod.
    fn delete_pod(&mut self, pod: &str) -> Result<(), String>;
    /// Wait until every component has caught up with the API server.
    fn settle(&mut self) -> Result<(), String>;
    /// The ClusterIP the API server gave a Service.
    fn cluster_ip(&self, service: &str) -> Option<IpAddr>;
    /// Resolve `name` from inside `pod` with its kubelet-written resolv.conf.
    fn resolve(&mut self, pod: &str, name: &str) -> Result<Vec<IpAddr>, String>;
    /// Open a TCP connection from `pod` to `ip:port`.
    fn connect(&mut self, pod: &str, ip: IpAddr, port: u16) -> Result<Connect, String>;
    /// The endpoints the API server lists for a Service.
    fn endpoints(&self, service: &str) -> BTreeSet<EndpointView>;
}

/// The cucumber world: a backend plus what the last steps observed.
#[derive(Debug, cucumber::World)]
#[world(init = Self::from_env)]
pub struct SignpostWorld {
    /// The system under test.
    pub cluster: Box<dyn Cluster>,
    /// The last resolution.
    pub resolved: Option<Result<Vec<IpAddr>, String>>,
    /// The last connection.
    pub connected: Option<Connect>,
}

/// `SIGNPOST_WORLD` names no backend, or the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum UnknownWorld {
    /// No backend of that name.
    #[error(
        "SIGNPOST_WORLD={0}: no such backend (known: model, and cluster once a runner installs it)"
    )]
    Unknown(String),
    /// The installed backend failed to make a world.
    #[error("the {0} world could not start: {1}")]
    Failed(&'static str, String),
}

/// A backend a runner installs (the conformance harness installs the live
/// cluster world): its name and how to make a world for one scenario.
pub type Backend = (&'static str, fn() -> Result<Box<dyn Cluster>, String>);

static INSTALLED: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// Installs a backend for this process; scenarios then run on it unless
/// `SIGNPOST_WORLD` names another. Only the first call takes effect.
pub fn install_backend(backend: Backend) {
    let _ = INSTALLED.set(backend);
}

impl SignpostWorld {
    /// A world over the backend named by `SIGNPOST_WORLD`, else the installed
    /// one, else the model.
    pub fn from_env() -> Result<Self, UnknownWorld> {
        let want = std::env::var("SIGNPOST_WORLD").ok();
        let cluster: Box<dyn Cluster> = match (want.as_deref(), INSTALLED.get()) {
            (Some("model"), _) | (None, None) => Box::new(ModelCluster::new()),
            (Some(w), Some((name, make))) if w == *name => {
                make().map_err(|e| UnknownWorld::Failed(name, e))?
            }
            (None, Some((name, make))) => make().map_err(|e| UnknownWorld::Failed(name, e))?,
            (Some(other), _) => return Err(UnknownWorld::Unknown(other.to_owned())),
        };
        Ok(SignpostWorld {
            cluster,
            resolved: None,
            connected: None,
        })
    }
}
