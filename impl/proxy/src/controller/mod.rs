//! The proxy's I/O shell: reflectors for Services, EndpointSlices and this
//! Node feed a loop that keeps the oracle's table for this node ([`Desired`]:
//! a batch recomputes only the Services it names) and applies the
//! difference from what the kernel holds (PXY-8). At start the
//! kernel's table is read back, so a restart rewrites nothing that is right.
//! What both data planes share is here (the events, the pure [`LoopState`],
//! the caches and the desired table); each plane's loop is in its module:
//! [`run`] (nftables) and [`run_ipvs`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node as KNode, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::Client;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::Store;
use signpost_model::cluster::{EndpointSlice, Node, ObjectKey, ProxyTable, Service};
use signpost_model::mutant::Seam;
use signpost_model::spec::proxy_table;
use signpost_runtime::metrics::Counter;
use signpost_runtime::watch::{self, Config as WatchConfig};
use signpost_runtime::{Object, convert};
use tracing::warn;

use crate::addresses::{Masquerade, NodePortAddresses};
use crate::isolate::Refused;
use crate::metrics::Metrics;
use crate::plane::nftables::{apply, build};

mod desired;
mod ipvs;
mod nftables;

pub use desired::{Desired, Touched};

pub use ipvs::run_ipvs;
pub use nftables::{Synced, run, sync};

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// Period of the read-back-and-repair resync.
    pub resync: Duration,
    /// A deliberate fault for the conformance harness's mutation test
    /// (`None` in production: the seam is the identity).
    pub mutant: Option<signpost_model::mutant::Mutant>,
    /// What `/healthz` reports: fed with every queued change and applied sync.
    pub health: Arc<crate::health::Health>,
    /// Whose traffic to a ClusterIP is masqueraded (`--masquerade-all`,
    /// `--cluster-cidr`).
    pub masquerade: Masquerade,
    /// The node addresses NodePorts answer on (`--nodeport-addresses`).
    pub node_port_addresses: NodePortAddresses,
}

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernel transaction failed even after a full resync.
    #[error(transparent)]
    Sink(#[from] apply::Error),
    /// The IPVS data plane failed even after a read-back and retry.
    #[error(transparent)]
    Ipvs(#[from] crate::plane::ipvs::Error),
}

/// A cache the loop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cache {
    /// Services.
    Services,
    /// EndpointSlices.
    EndpointSlices,
    /// This Node.
    Nodes,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::Services => "services",
            Cache::EndpointSlices => "endpointslices",
            Cache::Nodes => "nodes",
        }
    }
}

/// What the control loop hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A cache finished its initial list (again, after a relist).
    Listed(Cache),
    /// A cached object (namespace and name) was added, changed or deleted.
    Changed(Cache, ObjectKey),
    /// The resync period passed: read the kernel back and repair drift.
    Resync,
    /// The drain period passed (IPVS: delete destinations that drained).
    Drain,
    /// A failed sync's backoff passed: try again from what the kernel holds.
    Retry,
}

/// What the control loop does after a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not every cache has listed yet: nothing is programmed from a partial view.
    Wait,
    /// Only drain ticks arrived: finish draining destinations, nothing else.
    FinishDraining,
    /// Compute the table and program the difference, reading the kernel
    /// back first when `read_back` (a resync, a retry, or after a failure).
    Sync {
        /// Read the kernel's table back before planning.
        read_back: bool,
    },
}

/// The control loop's state between batches: which caches have listed,
/// and whether the last sync failed. Pure: [`LoopState::step`] decides,
/// the shells ([`run`], [`run_ipvs`]) do the I/O.
#[derive(Debug, Clone, Default)]
pub struct LoopState {
    listed: BTreeSet<Cache>,
    failed: bool,
}

impl LoopState {
    /// The action for one batch of events.
    pub fn step(&mut self, batch: &[Event]) -> Action {
        for ev in batch {
            if let Event::Listed(c) = ev {
                self.listed.insert(*c);
            }
        }
        if self.listed.len() < 3 {
            return Action::Wait;
        }
        if !batch.is_empty() && batch.iter().all(|e| *e == Event::Drain) && !self.failed {
            return Action::FinishDraining;
        }
        let read_back = self.failed
            || batch
                .iter()
                .any(|e| matches!(e, Event::Resync | Event::Retry));
        Action::Sync { read_back }
    }

    /// Records a sync's outcome: after a failure the next sync reads the
    /// kernel back (the failed transaction may have left it anywhere).
    pub fn synced(&mut self, ok: bool) {
        self.failed = !ok;
    }

    /// Whether the last sync failed (a retry is due).
    pub fn failing(&self) -> bool {
        self.failed
    }
}

/// The wait before retrying a failed sync: 200 ms, doubling to 10 s.
pub fn backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => Duration::from_millis(200),
        Some(d) => (d * 2).min(Duration::from_secs(10)),
    }
}

/// The next event: from the streams, or [`Event::Retry`] once `retry_in`
/// passes with nothing else arriving. `None` when the streams end.
async fn next_event(
    events: &mut futures::stream::SelectAll<Events>,
    retry_in: Option<Duration>,
) -> Option<Event> {
    match retry_in {
        None => events.next().await,
        Some(d) => match tokio::time::timeout(d, events.next()).await {
            Ok(ev) => ev,
            Err(_) => Some(Event::Retry),
        },
    }
}

/// Everything already queued after `first`.
fn batch_after(first: Event, events: &mut futures::stream::SelectAll<Events>) -> Vec<Event> {
    let mut batch = vec![first];
    while let Some(Some(ev)) = events.next().now_or_never() {
        batch.push(ev);
    }
    batch
}

fn stream<K: Object>(
    api: Api<K>,
    wc: WatchConfig,
    cache: Cache,
    errors: Counter,
) -> (Store<K>, Events) {
    let (store, s) = watch::reflect(api, wc, cache.name(), errors);
    let s = s
        .filter_map(move |ev| async move {
            match ev {
                watch::Event::InitDone => Some(Event::Listed(cache)),
                watch::Event::Apply(o) | watch::Event::Delete(o) => Some(Event::Changed(
                    cache,
                    ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any()),
                )),
                watch::Event::Init | watch::Event::InitApply(_) => None,
            }
        })
        .boxed();
    (store, s)
}

/// The last form of each cached object that converted. An object the
/// model cannot read (admitted by the API server, refused by the
/// conversion) keeps its last good state instead of vanishing from the
/// table, which would delete its virtual services or backends on every
/// node; the DNS index does the same.
#[derive(Debug)]
pub struct LastGood {
    services: convert::LastGood<Service>,
    slices: convert::LastGood<EndpointSlice>,
}

impl Default for LastGood {
    fn default() -> Self {
        LastGood {
            services: convert::LastGood::new("Service"),
            slices: convert::LastGood::new("EndpointSlice"),
        }
    }
}

/// The desired table computed whole from the caches, through the
/// mutation seam (see [`LastGood`] for objects that do not convert).
fn desired_whole(
    (services, slices): (&Store<KService>, &Store<KSlice>),
    node: &Node,
    metrics: &Metrics,
    seam: &mut Seam,
    last: &mut LastGood,
) -> ProxyTable {
    let mut svcs = last
        .services
        .convert_all(services.state(), &metrics.invalid_objects);
    let mut sls = last
        .slices
        .convert_all(slices.state(), &metrics.invalid_objects);
    seam.proxy_inputs(&mut svcs, &mut sls);
    let refs: Vec<&EndpointSlice> = sls.iter().collect();
    build::normalize(seam.proxy_table(proxy_table(&svcs, &refs, node)))
}

/// This node and the table it should hold, from the caches (Services,
/// EndpointSlices, Nodes).
fn node_and_table(
    (services, slices, nodes): (&Store<KService>, &Store<KSlice>, &Store<KNode>),
    cfg: &Config,
    metrics: &Metrics,
    seam: &mut Seam,
    last: &mut LastGood,
) -> (Node, ProxyTable) {
    let node = this_node(nodes, &cfg.node_name, &cfg.node_port_addresses);
    let want = desired_whole((services, slices), &node, metrics, seam, last);
    (node, want)
}

/// This node from the cache (no addresses until its object is seen), with
/// the addresses NodePorts answer on (`--nodeport-addresses`).
fn this_node(nodes: &Store<KNode>, name: &str, node_ports: &NodePortAddresses) -> Node {
    let mut node = nodes
        .state()
        .first()
        .and_then(|n| Node::try_from(&**n).ok())
        .unwrap_or(Node {
            name: name.to_owned(),
            addresses: Vec::new(),
            zone: None,
        });
    node.addresses = node_ports.select(&node.addresses);
    node
}

type Events = futures::stream::BoxStream<'static, Event>;

/// The label selector of the objects this proxy programs: none labelled
/// `service.kubernetes.io/service-proxy-name` (meant for another proxy)
/// or `service.kubernetes.io/headless`.
pub const NOT_OURS_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The caches both data planes read (Services, EndpointSlices, this Node)
/// and their event streams, plus the resync ticker.
fn watches(
    client: &Client,
    cfg: &Config,
    metrics: &Metrics,
) -> (Store<KService>, Store<KSlice>, Store<KNode>, Vec<Events>) {
    let wc = WatchConfig::default();
    // As kube-proxy: a Service labelled for another proxy is that proxy's
    // (its slices carry the label too), and headless ones have nothing to program.
    let ours = WatchConfig::default().labels(NOT_OURS_SELECTOR);
    let (services, s1) = stream(
        Api::<KService>::all(client.clone()),
        ours.clone(),
        Cache::Services,
        metrics.watch_errors.clone(),
    );
    let (slices, s2) = stream(
        Api::<KSlice>::all(client.clone()),
        ours,
        Cache::EndpointSlices,
        metrics.watch_errors.clone(),
    );
    let (nodes, s3) = stream(
        Api::<KNode>::all(client.clone()),
        wc.fields(&format!("metadata.name={}", cfg.node_name)),
        Cache::Nodes,
        metrics.watch_errors.clone(),
    );
    let resync = cfg.resync;
    let ticks = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(resync).await;
        Some((Event::Resync, ()))
    })
    .boxed();
    (services, slices, nodes, vec![s1, s2, s3, ticks])
}

/// After a sync, in either plane: the refused gauge, the loop's state,
/// health, and when to retry (`None` once it worked).
fn settle<E: std::fmt::Display>(
    outcome: Result<(), E>,
    refused: &Refused,
    state: &mut LoopState,
    cfg: &Config,
    began: Instant,
    retry_in: Option<Duration>,
    metrics: &Metrics,
) -> Option<Duration> {
    metrics
        .services_refused
        .set(i64::try_from(refused.len()).unwrap_or(i64::MAX));
    match outcome {
        Ok(()) => {
            state.synced(true);
            cfg.health.applied(began);
            None
        }
        Err(e) => {
            state.synced(false);
            let wait = backoff(retry_in);
            warn!(error = %e, retry_in = ?wait, "sync failed; retrying from the kernel's state");
            Some(wait)
        }
    }
}

/// Logs each virtual service the kernel refused (it stays out of the
/// kernel until its wanted state changes or the next resync).
fn report_refused(found: &ProxyTable) {
    for key in found.keys() {
        warn!(ip = %key.ip, protocol = ?key.protocol, port = key.port,
            "the kernel refuses this virtual service; it is left out and every other one is programmed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(uid: &str, address: &str) -> Arc<KSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "voy-1", "namespace": "default", "uid": uid,
                              "labels": { "kubernetes.io/service-name": "voy" } },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": [{ "addresses": [address] }],
            }))
            .unwrap(),
        )
    }

    #[test]
    fn an_object_that_stops_converting_keeps_its_last_good_state() {
        let metrics = Metrics::default();
        let mut last = LastGood::default();
        let good = last
            .slices
            .convert_all(vec![slice("u1", "10.244.0.5")], &metrics.invalid_objects);
        assert_eq!(good.len(), 1);
        // The same object, now unreadable: its last good form stays.
        let kept = last
            .slices
            .convert_all(vec![slice("u1", "banana")], &metrics.invalid_objects);
        assert_eq!(kept, good);
        assert_eq!(metrics.invalid_objects.get(), 1);
        // A re-created object (another UID) that never converted is skipped.
        let other = last
            .slices
            .convert_all(vec![slice("u2", "banana")], &metrics.invalid_objects);
        assert!(other.is_empty());
        // Gone from the cache: forgotten, so it does not come back.
        assert!(
            last.slices
                .convert_all(vec![slice("u1", "banana")], &metrics.invalid_objects)
                .is_empty()
        );
    }

    fn changed() -> Event {
        Event::Changed(Cache::Services, ObjectKey::new("default", "voy"))
    }

    const ALL: [Event; 3] = [
        Event::Listed(Cache::Services),
        Event::Listed(Cache::EndpointSlices),
        Event::Listed(Cache::Nodes),
    ];

    #[test]
    fn nothing_is_programmed_until_every_cache_has_listed() {
        let mut s = LoopState::default();
        assert_eq!(s.step(&ALL[..2]), Action::Wait);
        assert_eq!(s.step(&[changed()]), Action::Wait);
        assert_eq!(s.step(&ALL[2..]), Action::Sync { read_back: false });
        assert_eq!(s.step(&[changed()]), Action::Sync { read_back: false });
    }

    #[test]
    fn resyncs_retries_and_failures_read_the_kernel_back() {
        let mut s = LoopState::default();
        s.step(&ALL);
        assert_eq!(s.step(&[Event::Resync]), Action::Sync { read_back: true });
        assert_eq!(
            s.step(&[changed(), Event::Retry]),
            Action::Sync { read_back: true }
        );
        s.synced(false);
        assert!(s.failing());
        // After a failure even a drain tick resyncs, from the kernel's table.
        assert_eq!(s.step(&[Event::Drain]), Action::Sync { read_back: true });
        s.synced(true);
        assert_eq!(s.step(&[changed()]), Action::Sync { read_back: false });
    }

    #[test]
    fn drain_ticks_alone_only_finish_draining() {
        let mut s = LoopState::default();
        s.step(&ALL);
        assert_eq!(
            s.step(&[Event::Drain, Event::Drain]),
            Action::FinishDraining
        );
        assert_eq!(
            s.step(&[Event::Drain, changed()]),
            Action::Sync { read_back: false }
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let next = backoff(d);
            seen.push(next.as_millis());
            d = Some(next);
        }
        assert_eq!(seen, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    }
}
