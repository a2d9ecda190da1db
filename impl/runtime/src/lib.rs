//! The runtime shell of Signpost's components. `signpost endpoints`,
//! `signpost proxy` and `signpost dns` differ in what they reconcile; how
//! they watch the API server, read what it sends, count, log, answer
//! probes and stop is the same and lives here:
//!
//! - [`watch`]: kube watches with backoff, errors logged and counted, and
//!   the keys that vanished across a relist ([`watch::Known`]);
//! - [`convert`]: API object → model conversion with invalid objects
//!   logged and counted, and the last good form of an object kept
//!   ([`convert::LastGood`]);
//! - [`metrics`]: metrics through `prometheus-client`, one histogram bucket
//!   convention in seconds, OpenMetrics text;
//! - [`http`]: `/healthz`, `/readyz`, `/metrics` on hyper with timeouts and
//!   a connection limit;
//! - [`log`]: `--log-format text|json` and `-v`;
//! - [`shutdown`]: SIGTERM / SIGINT;
//! - [`blocking`]: running a blocking call (a process, a blocking netlink
//!   socket) from async code without stalling the runtime's other tasks.

pub mod convert;
pub mod duration;
pub mod http;
pub mod log;
pub mod metrics;
pub mod shutdown;
pub mod watch;

/// What a watched API object must be (every k8s-openapi top-level kind is).
pub trait Object:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Runs `f`, which blocks (waits for a process such as `nft`, or on a
/// blocking netlink socket), from async code. On a multi-threaded runtime
/// the worker's other tasks (probes, metrics, watches) move to another
/// thread while it blocks ([`tokio::task::block_in_place`]); elsewhere (a
/// current-thread runtime in a test, or no runtime) `f` just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// `namespace/name` of an object, for logs.
pub fn display_key<K: kube::Resource>(obj: &K) -> String {
    let m = obj.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or("")),
        None => m.name.clone().unwrap_or_default(),
    }
}
