//! The proxy's I/O shell: reflectors for Services, EndpointSlices and this
//! Node feed one loop that computes the oracle's table for this node and
//! applies the difference from what the kernel holds (PXY-8). At start the
//! kernel's table is read back, so a restart rewrites nothing that is right.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node as KNode, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::Store;
use signpost_model::cluster::{EndpointSlice, Node, ProxyTable, Service};
use signpost_model::mutant::Seam;
use signpost_model::spec::proxy_table;
use signpost_runtime::metrics::Counter;
use signpost_runtime::watch::{self, Config as WatchConfig};
use signpost_runtime::{Object, convert};
use tracing::{info, warn};

use crate::addresses::{Masquerade, NodePortAddresses};
use crate::isolate::{Isolate, Refused};
use crate::metrics::Metrics;
use crate::plane::nftables::{apply, build, readback};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A cache finished its initial list (again, after a relist).
    Listed(Cache),
    /// A cached object was added, changed or deleted.
    Changed,
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
                watch::Event::Apply(_) | watch::Event::Delete(_) => Some(Event::Changed),
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

/// The desired table from the caches (see [`LastGood`] for objects that do not convert).
fn desired(
    services: &Store<KService>,
    slices: &Store<KSlice>,
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

/// What one nftables sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Nothing differed.
    Nothing,
    /// The whole table was written (this many virtual services).
    Full(usize),
    /// Only these many virtual services were rewritten.
    Partial(usize),
}

/// Applies `want` over what the kernel holds (`have`): a partial sync, or a
/// full one when there is no table yet or a partial sync was refused.
/// Counters move after the duration is recorded, so a reader that sees a
/// new count also sees that sync's duration.
pub fn sync(
    have: &mut Option<ProxyTable>,
    want: &ProxyTable,
    node_ips: &[IpAddr],
    masq: &Masquerade,
    metrics: &Metrics,
) -> Result<Synced, apply::Error> {
    let started = Instant::now();
    let full = |metrics: &Metrics| -> Result<Synced, apply::Error> {
        apply::apply(&build::full(want, node_ips, masq))
            .map(|()| Synced::Full(want.len()))
            .inspect_err(|_| {
                metrics.errors.inc();
            })
    };
    let result = match have.as_ref() {
        None => full(metrics),
        Some(old) => match build::partial(old, want, node_ips) {
            None => Ok(Synced::Nothing),
            Some(tx) => {
                let keys: Vec<_> = old
                    .iter()
                    .filter(|(k, v)| want.get(k) != Some(v))
                    .map(|(k, _)| *k)
                    .chain(want.keys().filter(|k| !old.contains_key(k)).copied())
                    .collect();
                if keys.len() <= 3 {
                    info!(?keys, "partial sync");
                } else {
                    tracing::debug!(changed = keys.len(), "partial sync");
                }
                match apply::apply(&tx) {
                    Ok(()) => Ok(Synced::Partial(keys.len())),
                    Err(e) => {
                        metrics.errors.inc();
                        warn!(error = %e, "partial sync refused; doing a full sync");
                        full(metrics)
                    }
                }
            }
        },
    };
    match result {
        Ok(done) => {
            if done != Synced::Nothing
                && let Some(old) = have.as_ref()
            {
                crate::conntrack::forget_stale(
                    &signpost_model::reconcile::plan(want, old),
                    old,
                    metrics,
                );
            }
            *have = Some(want.clone());
            if done != Synced::Nothing {
                metrics.observe_sync(started.elapsed());
            }
            match done {
                Synced::Full(_) => {
                    metrics.full_syncs.inc();
                }
                Synced::Partial(changed) => {
                    metrics
                        .services_rewritten
                        .inc_by(u64::try_from(changed).unwrap_or(0));
                    metrics.partial_syncs.inc();
                }
                Synced::Nothing => {}
            }
            Ok(done)
        }
        Err(e) => {
            *have = None;
            Err(e)
        }
    }
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

/// The kernel's table as Signpost wrote it, read back (`None`: no table,
/// or it could not be read, which is logged and counted: the next sync is
/// then a full one).
/// What the kernel holds, and which of its virtual addresses it holds as
/// the node's (see [`build::node_port_ips`]); or `None` (a full sync
/// follows) when there is no table, it cannot be read, or its masquerade
/// policy is not `masq`.
fn read_back(metrics: &Metrics, masq: &Masquerade) -> Option<(ProxyTable, BTreeSet<IpAddr>)> {
    match apply::list() {
        Ok(Some(listing)) => {
            let want = [masq.exempt(false), masq.exempt(true)];
            if readback::no_masquerade(Some(&listing)).as_ref() != Some(&want) {
                info!(
                    "the table in the kernel has another masquerade policy; the next sync rewrites it whole"
                );
                return None;
            }
            Some((
                readback::table(Some(&listing)),
                readback::node_port_ips(Some(&listing)),
            ))
        }
        Ok(None) => None,
        Err(e) => {
            metrics.errors.inc();
            warn!(error = %e, "reading the table back failed; the next sync rewrites it whole");
            None
        }
    }
}

/// Runs the proxy until its watches end. A failed sync is logged, counted
/// and retried with backoff from what the kernel holds; it never ends the
/// process (a node whose proxy exits programs nothing at all).
pub async fn run(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    let (services, slices, nodes, streams) = watches(&client, &cfg, &metrics);
    let mut events = futures::stream::select_all(streams);
    // PROTO-3, PXY-8: adopt what the kernel holds instead of flushing it.
    let (mut have, mut node_port_ips) =
        signpost_runtime::blocking(|| read_back(&metrics, &cfg.masquerade)).unzip();
    info!(node = %cfg.node_name, adopted = have.as_ref().map_or(0, |t| t.len()), "signpost proxy (nftables) starting");
    let mut state = LoopState::default();
    let mut retry_in: Option<Duration> = None;
    let mut seam = Seam::with(cfg.mutant);
    let mut last_good = LastGood::default();
    let mut refused = Refused::default();
    while let Some(first) = next_event(&mut events, retry_in).await {
        let batch = batch_after(first, &mut events);
        let began = Instant::now();
        cfg.health.queued(began);
        let Action::Sync { read_back: repair } = state.step(&batch) else {
            continue;
        };
        if repair {
            // Repair drift: plan against what the kernel really holds, and
            // try refused entries again.
            (have, node_port_ips) =
                signpost_runtime::blocking(|| read_back(&metrics, &cfg.masquerade)).unzip();
            refused.clear();
        }
        let node = this_node(&nodes, &cfg.node_name, &cfg.node_port_addresses);
        let want = desired(
            &services,
            &slices,
            &node,
            &metrics,
            &mut seam,
            &mut last_good,
        );
        if let Some(t) = &have
            && node_port_ips.as_ref() != Some(&build::node_port_ips(t, &node.addresses))
        {
            // The node's addresses (or --nodeport-addresses) changed since
            // the table was written: its ClusterIP sets are split otherwise.
            info!(addresses = ?node.addresses, "the node's NodePort addresses changed; rewriting the table whole");
            have = None;
        }
        let want = refused.hold_back(&want, have.as_ref());
        // `nft` runs as a process: the runtime's other tasks (probes,
        // metrics, watches) go on while it works.
        let outcome = signpost_runtime::blocking(|| {
            match sync(&mut have, &want, &node.addresses, &cfg.masquerade, &metrics) {
                Ok(_) => Ok(()),
                // The whole table was refused: find the entries the kernel
                // refuses and program every other one.
                Err(e) => {
                    warn!(error = %e, "the kernel refused the table; finding the virtual services it refuses");
                    isolate_nft(&mut have, &want, &node.addresses, &cfg.masquerade, &metrics).map(
                        |found| {
                            report_refused(&found);
                            refused.record(found);
                        },
                    )
                }
            }
        });
        node_port_ips = have
            .as_ref()
            .map(|t| build::node_port_ips(t, &node.addresses));
        retry_in = settle(
            outcome, &refused, &mut state, &cfg, began, retry_in, &metrics,
        );
    }
    Ok(())
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

/// After the kernel refused a whole table: programs `want` entry group by
/// entry group over what the kernel holds, halving refused groups down to
/// the single virtual services it refuses ([`Isolate`]). `have` ends as the
/// kernel's table; returns the refused entries. An error only when not
/// even an empty table can be written (no `nft`, no nf_tables).
fn isolate_nft(
    have: &mut Option<ProxyTable>,
    want: &ProxyTable,
    node_ips: &[IpAddr],
    masq: &Masquerade,
    metrics: &Metrics,
) -> Result<ProxyTable, apply::Error> {
    let base = match read_back(metrics, masq) {
        // Partial steps over it split the ClusterIP sets as it does.
        Some((t, written)) if written == build::node_port_ips(&t, node_ips) => t,
        _ => {
            let empty = ProxyTable::new();
            apply::apply(&build::full(&empty, node_ips, masq)).inspect_err(|_| {
                metrics.errors.inc();
            })?;
            empty
        }
    };
    let mut search = Isolate::new(base, want);
    while let Some((from, next)) = search.attempt() {
        let taken = match build::partial(from, &next, node_ips) {
            None => true,
            Some(tx) => match apply::apply(&tx) {
                Ok(()) => true,
                Err(apply::Error::Rejected(_)) => {
                    metrics.errors.inc();
                    false
                }
                Err(e) => {
                    metrics.errors.inc();
                    *have = None;
                    return Err(e);
                }
            },
        };
        search.outcome(taken);
    }
    let nothing_taken = search.taken() == 0;
    let (applied, found) = search.finish();
    if nothing_taken && !found.is_empty() {
        // Everything was refused: is it these entries, or the data plane?
        // Rewriting what the kernel already holds tells.
        apply::apply(&build::full(&applied, node_ips, masq)).inspect_err(|_| {
            metrics.errors.inc();
            *have = None;
        })?;
    }
    *have = Some(applied);
    metrics.full_syncs.inc();
    Ok(found)
}

/// Runs the IPVS proxy until its watches end: the same caches and oracle
/// table as the nftables mode, applied as the model's `plan` ops against
/// the table read back from the kernel at start (and at every resync).
pub async fn run_ipvs(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    use crate::plane::ipvs::{IpvsSink, sysctls};
    sysctls()?;
    let (services, slices, nodes, mut streams) = watches(&client, &cfg, &metrics);
    let drain_ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some((Event::Drain, ()))
    })
    .boxed();
    streams.push(drain_ticks);
    let mut events = futures::stream::select_all(streams);
    let mut state = LoopState::default();
    let mut retry_in: Option<Duration> = None;
    let mut sink: Option<IpvsSink> = None;
    let mut have: Option<ProxyTable> = None;
    let mut seam = Seam::with(cfg.mutant);
    let mut last_good = LastGood::default();
    let mut refused = Refused::default();
    info!(node = %cfg.node_name, "signpost proxy (ipvs) starting");
    while let Some(first) = next_event(&mut events, retry_in).await {
        let batch = batch_after(first, &mut events);
        let began = Instant::now();
        if batch.iter().any(|e| *e != Event::Drain) {
            cfg.health.queued(began);
        }
        let resync = match state.step(&batch) {
            Action::Wait => continue,
            Action::FinishDraining => {
                // Graceful termination: delete destinations whose connections ended.
                if let Some(k) = sink.as_mut()
                    && k.draining() > 0
                {
                    match k.finish_draining().await {
                        Ok(n) if n > 0 => info!(deleted = n, "drained destinations removed"),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "finishing drained destinations failed"),
                    }
                }
                continue;
            }
            Action::Sync { read_back } => read_back,
        };
        let node = this_node(&nodes, &cfg.node_name, &cfg.node_port_addresses);
        let want = desired(
            &services,
            &slices,
            &node,
            &metrics,
            &mut seam,
            &mut last_good,
        );
        if resync {
            // Refused entries are tried again at every resync.
            refused.clear();
        }
        let want = refused.hold_back(&want, have.as_ref());
        if sink.is_none() {
            sink = Some(IpvsSink::connect(node.addresses.clone(), cfg.masquerade.clone()).await?);
        }
        let Some(k) = sink.as_mut() else { continue };
        if k.set_node_ips(&node.addresses) {
            info!(addresses = ?node.addresses, "the node's addresses changed");
        }
        let started = Instant::now();
        let outcome = match sync_ipvs(k, &mut have, &want, resync, &metrics).await {
            Ok(ops) => {
                if !ops.is_empty() {
                    metrics.observe_sync(started.elapsed());
                }
                Ok(())
            }
            Err(e) => {
                metrics.errors.inc();
                warn!(error = %e, "the kernel refused an ipvs sync; finding the virtual services it refuses");
                have = None;
                isolate_ipvs(k, &want, &metrics).await.map(|found| {
                    report_refused(&found);
                    refused.record(found);
                })
            }
        };
        if outcome.is_err() {
            metrics.errors.inc();
            have = None;
        }
        retry_in = settle(
            outcome, &refused, &mut state, &cfg, began, retry_in, &metrics,
        );
    }
    Ok(())
}

/// The IPVS form of [`isolate_nft`]: the model's ops for each group of
/// entries over what the kernel holds. IPVS ops are not one transaction,
/// so a refused group may leave part of itself behind: the next sync
/// reads the kernel back (`have` is left unknown).
async fn isolate_ipvs(
    k: &mut crate::plane::ipvs::IpvsSink,
    want: &ProxyTable,
    metrics: &Metrics,
) -> Result<ProxyTable, crate::plane::ipvs::Error> {
    let base = k.observed().await?;
    let mut search = Isolate::new(base, want);
    let mut last_error = None;
    while let Some((from, next)) = search.attempt() {
        let ops = signpost_model::reconcile::plan(&next, from);
        let taken = match k.apply(&ops, &next).await {
            Ok(_) => true,
            Err(e) => {
                metrics.errors.inc();
                tracing::debug!(error = %e, "a group of virtual services was refused");
                last_error = Some(e);
                false
            }
        };
        search.outcome(taken);
    }
    let nothing_taken = search.taken() == 0;
    let found = search.finish().1;
    // Several entries and not one taken: the data plane refuses writes, not
    // these entries (a failed sync: retried, and /healthz says so).
    match last_error {
        Some(e) if nothing_taken && found.len() > 1 => Err(e),
        _ => Ok(found),
    }
}

/// One IPVS sync: plan `want` against `have` (read back from the kernel
/// first when asked, or when nothing is known), apply the ops, forget the
/// UDP flows they cut (PXY-11). Returns the ops applied.
async fn sync_ipvs(
    k: &mut crate::plane::ipvs::IpvsSink,
    have: &mut Option<ProxyTable>,
    want: &ProxyTable,
    read_back: bool,
    metrics: &Metrics,
) -> Result<Vec<signpost_model::reconcile::ProxyOp>, crate::plane::ipvs::Error> {
    use signpost_model::reconcile::plan;
    if read_back || have.is_none() {
        // PROTO-3, PXY-8: plan against what the kernel really holds.
        *have = Some(k.observed().await?);
    }
    let old = have.take().unwrap_or_default();
    let ops = plan(want, &old);
    if ops.is_empty() && !read_back {
        *have = Some(old);
        return Ok(ops);
    }
    // (After a read-back an empty plan still applies: it unbinds addresses
    // no virtual service uses and rebuilds the nft sets if they were lost.)
    let applied = k.apply(&ops, want).await?;
    metrics.partial_syncs.inc();
    for (counter, n) in metrics.ops.iter().zip(applied.ops) {
        counter.inc_by(n);
    }
    if ops.len() <= 3 {
        info!(?ops, "ipvs sync");
    }
    signpost_runtime::blocking(|| crate::conntrack::forget_stale(&ops, &old, metrics));
    *have = Some(want.clone());
    Ok(ops)
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

    const ALL: [Event; 3] = [
        Event::Listed(Cache::Services),
        Event::Listed(Cache::EndpointSlices),
        Event::Listed(Cache::Nodes),
    ];

    #[test]
    fn nothing_is_programmed_until_every_cache_has_listed() {
        let mut s = LoopState::default();
        assert_eq!(s.step(&ALL[..2]), Action::Wait);
        assert_eq!(s.step(&[Event::Changed]), Action::Wait);
        assert_eq!(s.step(&ALL[2..]), Action::Sync { read_back: false });
        assert_eq!(s.step(&[Event::Changed]), Action::Sync { read_back: false });
    }

    #[test]
    fn resyncs_retries_and_failures_read_the_kernel_back() {
        let mut s = LoopState::default();
        s.step(&ALL);
        assert_eq!(s.step(&[Event::Resync]), Action::Sync { read_back: true });
        assert_eq!(
            s.step(&[Event::Changed, Event::Retry]),
            Action::Sync { read_back: true }
        );
        s.synced(false);
        assert!(s.failing());
        // After a failure even a drain tick resyncs, from the kernel's table.
        assert_eq!(s.step(&[Event::Drain]), Action::Sync { read_back: true });
        s.synced(true);
        assert_eq!(s.step(&[Event::Changed]), Action::Sync { read_back: false });
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
            s.step(&[Event::Drain, Event::Changed]),
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
