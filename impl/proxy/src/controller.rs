//! The proxy's I/O shell: reflectors for Services, EndpointSlices and this
//! Node feed one loop that computes the oracle's table for this node and
//! applies the difference from what the kernel holds (PXY-8). At start the
//! kernel's table is read back, so a restart rewrites nothing that is right.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node as KNode, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use signpost_model::cluster::{EndpointSlice, Node, ProxyTable, Service};
use signpost_model::mutant::Seam;
use signpost_model::spec::proxy_table;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::{nft, observed, sink};

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
}

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernel transaction failed even after a full resync.
    #[error(transparent)]
    Sink(#[from] sink::Error),
    /// The IPVS data plane failed even after a read-back and retry.
    #[error(transparent)]
    Ipvs(#[from] crate::ipvs::Error),
}

fn stream<K>(
    api: Api<K>,
    wc: watcher::Config,
    label: &'static str,
) -> (Store<K>, futures::stream::BoxStream<'static, &'static str>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let s = reflector::reflector(writer, watcher(api, wc).default_backoff())
        .filter_map(move |ev| async move {
            match ev {
                Ok(watcher::Event::InitDone) => Some(label),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some("change"),
                Ok(_) => None,
                Err(e) => {
                    warn!(kind = label, error = %e, "watch failed; retrying with backoff");
                    None
                }
            }
        })
        .boxed();
    (store, s)
}

/// The desired table from the caches (invalid objects are skipped and counted).
fn desired(
    services: &Store<KService>,
    slices: &Store<KSlice>,
    node: &Node,
    metrics: &Metrics,
    seam: &mut Seam,
) -> ProxyTable {
    let mut svcs = Vec::new();
    for s in services.state() {
        match Service::try_from(&*s) {
            Ok(s) => svcs.push(s),
            Err(e) => {
                metrics.invalid_objects.fetch_add(1, Ordering::Relaxed);
                warn!(service = %s.name_any(), error = %e, "skipping invalid Service");
            }
        }
    }
    let mut sls = Vec::new();
    for s in slices.state() {
        match EndpointSlice::try_from(&*s) {
            Ok(s) => sls.push(s),
            Err(e) => {
                metrics.invalid_objects.fetch_add(1, Ordering::Relaxed);
                warn!(slice = %s.name_any(), error = %e, "skipping invalid EndpointSlice");
            }
        }
    }
    seam.proxy_inputs(&mut svcs, &mut sls);
    let refs: Vec<&EndpointSlice> = sls.iter().collect();
    nft::normalize(seam.proxy_table(proxy_table(&svcs, &refs, node)))
}

/// Applies `want` over what the kernel holds (`have`): a partial sync, or a
/// full one when there is no table yet or a partial sync was refused.
/// Counters move after the duration is recorded, so a reader that sees a
/// new count also sees that sync's duration.
pub fn sync(
    have: &mut Option<ProxyTable>,
    want: &ProxyTable,
    node_ips: &[IpAddr],
    metrics: &Metrics,
) -> Result<(), sink::Error> {
    let started = Instant::now();
    let full = |metrics: &Metrics| -> Result<(&'static str, usize), sink::Error> {
        sink::apply(&nft::full(want, node_ips))
            .map(|()| ("full", want.len()))
            .inspect_err(|_| {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
            })
    };
    let result = match have.as_ref() {
        None => full(metrics),
        Some(old) => match nft::partial(old, want, node_ips) {
            None => Ok(("none", 0)),
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
                match sink::apply(&tx) {
                    Ok(()) => Ok(("partial", keys.len())),
                    Err(e) => {
                        metrics.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "partial sync refused; doing a full sync");
                        full(metrics)
                    }
                }
            }
        },
    };
    match result {
        Ok((kind, changed)) => {
            if kind != "none"
                && let Some(old) = have.as_ref()
            {
                crate::conntrack::forget_stale(
                    &signpost_model::reconcile::plan(want, old),
                    old,
                    metrics,
                );
            }
            *have = Some(want.clone());
            if kind != "none" {
                metrics.observe_sync(started.elapsed());
            }
            match kind {
                "full" => metrics.full_syncs.fetch_add(1, Ordering::Relaxed),
                "partial" => {
                    metrics
                        .services_rewritten
                        .fetch_add(u64::try_from(changed).unwrap_or(0), Ordering::Relaxed);
                    metrics.partial_syncs.fetch_add(1, Ordering::Relaxed)
                }
                _ => 0,
            };
            Ok(())
        }
        Err(e) => {
            *have = None;
            Err(e)
        }
    }
}

/// This node from the cache (no addresses until its object is seen).
fn this_node(nodes: &Store<KNode>, name: &str) -> Node {
    nodes
        .state()
        .first()
        .and_then(|n| Node::try_from(&**n).ok())
        .unwrap_or(Node {
            name: name.to_owned(),
            addresses: Vec::new(),
            zone: None,
        })
}

type Events = futures::stream::BoxStream<'static, &'static str>;

/// The caches both data planes read (Services, EndpointSlices, this Node)
/// and their event streams, plus the resync ticker.
fn watches(
    client: &Client,
    cfg: &Config,
) -> (Store<KService>, Store<KSlice>, Store<KNode>, Vec<Events>) {
    let wc = watcher::Config::default();
    let (services, s1) = stream(Api::<KService>::all(client.clone()), wc.clone(), "services");
    let (slices, s2) = stream(
        Api::<KSlice>::all(client.clone()),
        wc.clone(),
        "endpointslices",
    );
    let (nodes, s3) = stream(
        Api::<KNode>::all(client.clone()),
        wc.fields(&format!("metadata.name={}", cfg.node_name)),
        "nodes",
    );
    let resync = cfg.resync;
    let ticks = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(resync).await;
        Some(("resync", ()))
    })
    .boxed();
    (services, slices, nodes, vec![s1, s2, s3, ticks])
}

/// Runs the proxy until its watches end.
pub async fn run(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    let (services, slices, nodes, streams) = watches(&client, &cfg);
    let mut events = futures::stream::select_all(streams);
    // PROTO-3, PXY-8: adopt what the kernel holds instead of flushing it.
    let listing = sink::list()?;
    let mut have = listing.as_ref().map(|l| observed::table(Some(l)));
    info!(node = %cfg.node_name, adopted = have.as_ref().map_or(0, |t| t.len()), "signpost proxy (nftables) starting");
    let mut synced: HashSet<&'static str> = HashSet::new();
    let mut seam = Seam::with(cfg.mutant);
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while let Some(Some(ev)) = events.next().now_or_never() {
            batch.push(ev);
        }
        for ev in &batch {
            if matches!(*ev, "services" | "endpointslices" | "nodes") {
                synced.insert(ev);
            }
            if *ev == "resync" {
                // Repair drift: plan against what the kernel really holds.
                have = sink::list()?.as_ref().map(|l| observed::table(Some(l)));
            }
        }
        if synced.len() < 3 {
            continue;
        }
        let node = this_node(&nodes, &cfg.node_name);
        let want = desired(&services, &slices, &node, &metrics, &mut seam);
        if let Err(e) = sync(&mut have, &want, &node.addresses, &metrics) {
            warn!(error = %e, "sync failed; will retry with a full sync");
            tokio::time::sleep(Duration::from_millis(200)).await;
            sync(&mut have, &want, &node.addresses, &metrics)?;
        }
    }
    Ok(())
}

/// Runs the IPVS proxy until its watches end: the same caches and oracle
/// table as the nftables mode, applied as the model's `plan` ops against
/// the table read back from the kernel at start (and at every resync).
pub async fn run_ipvs(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    use crate::ipvs::{IpvsSink, sysctls};
    use signpost_model::reconcile::plan;
    sysctls()?;
    let (services, slices, nodes, mut streams) = watches(&client, &cfg);
    let drain_ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(("drain", ()))
    })
    .boxed();
    streams.push(drain_ticks);
    let mut events = futures::stream::select_all(streams);
    let mut synced: HashSet<&'static str> = HashSet::new();
    let mut sink: Option<IpvsSink> = None;
    let mut have: Option<ProxyTable> = None;
    let mut seam = Seam::with(cfg.mutant);
    info!(node = %cfg.node_name, "signpost proxy (ipvs) starting");
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while let Some(Some(ev)) = events.next().now_or_never() {
            batch.push(ev);
        }
        let mut resync = false;
        let mut drain = false;
        for ev in &batch {
            if matches!(*ev, "services" | "endpointslices" | "nodes") {
                synced.insert(ev);
            }
            resync |= *ev == "resync";
            drain |= *ev == "drain";
        }
        if synced.len() < 3 {
            continue;
        }
        if drain && batch.iter().all(|e| *e == "drain") {
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
        let node = this_node(&nodes, &cfg.node_name);
        let want = desired(&services, &slices, &node, &metrics, &mut seam);
        if sink.is_none() {
            sink = Some(IpvsSink::connect(node.addresses.clone()).await?);
        }
        let Some(k) = sink.as_mut() else { continue };
        let started = Instant::now();
        if resync || have.is_none() {
            // PROTO-3, PXY-8: plan against what the kernel really holds.
            have = Some(k.observed().await?);
        }
        let ops = plan(&want, have.as_ref().unwrap_or(&ProxyTable::new()));
        if ops.is_empty() && !resync {
            continue;
        }
        match k.apply(&ops, &want).await {
            Ok(applied) => {
                metrics.observe_sync(started.elapsed());
                metrics.partial_syncs.fetch_add(1, Ordering::Relaxed);
                for (counter, n) in metrics.ops.iter().zip(applied.ops) {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
                if ops.len() <= 3 {
                    info!(?ops, "ipvs sync");
                }
                if let Some(old) = have.as_ref() {
                    crate::conntrack::forget_stale(&ops, old, &metrics);
                }
                have = Some(want);
            }
            Err(e) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "ipvs sync failed; reading the kernel back and retrying");
                let observed = k.observed().await?;
                let ops = plan(&want, &observed);
                k.apply(&ops, &want).await?;
                crate::conntrack::forget_stale(&ops, &observed, &metrics);
                have = Some(want);
            }
        }
    }
    Ok(())
}
