//! Watches that feed the zone index: Services, EndpointSlices, Namespaces
//! and (for verified pod records) Pods. Each watch turns its events into
//! [`Change`]s; after a relist, objects that vanished while the watch was
//! down are deleted (PROTO-2). One task applies changes in batches under the
//! index's write lock. While the API server is unreachable the watches retry
//! with backoff and the index keeps answering from what it had.
//! An object that cannot be read is logged, counted and skipped; what the
//! index had for it stays.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace as KNamespace, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::Api;
use kube::{Client, ResourceExt};
use signpost_model::cluster::{EndpointSlice, ObjectKey, Pod, Service};
use signpost_model::spec::PodsMode;
use signpost_runtime::{Object, watch};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::Change;
use crate::server::{Shared, epoch_secs};

enum Msg {
    Change(Change, Instant),
    ListDone(&'static str),
}

fn key_of<K: kube::Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Runs one watch, sending its changes until the receiver goes away.
async fn watch_kind<K: Object>(
    api: Api<K>,
    kind: &'static str,
    convert: fn(&K) -> Result<Change, String>,
    deleted: fn(ObjectKey) -> Change,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
) {
    let mut stream = watch::events(
        api,
        watch::Config::default(),
        kind,
        shared.metrics.watch_errors.clone(),
    );
    let mut known = watch::Known::default();
    let invalid = &shared.metrics.invalid_objects;
    while let Some(ev) = stream.next().await {
        let gone = known.observe(&ev);
        let ok = match ev {
            watch::Event::Init => true,
            watch::Event::InitApply(obj) | watch::Event::Apply(obj) => {
                match signpost_runtime::convert::read_with(&obj, kind, invalid, convert) {
                    Some(c) => tx.send(Msg::Change(c, Instant::now())).await.is_ok(),
                    None => true,
                }
            }
            watch::Event::InitDone => {
                let mut ok = true;
                for (ns, name) in gone {
                    let c = deleted(ObjectKey::new(ns, name));
                    ok = ok && tx.send(Msg::Change(c, Instant::now())).await.is_ok();
                }
                ok && tx.send(Msg::ListDone(kind)).await.is_ok()
            }
            watch::Event::Delete(obj) => {
                let c = deleted(key_of(&obj));
                tx.send(Msg::Change(c, Instant::now())).await.is_ok()
            }
        };
        if !ok {
            return;
        }
    }
}

fn service(s: &KService) -> Result<Change, String> {
    Service::try_from(s)
        .map(Change::Service)
        .map_err(|e| e.to_string())
}

fn slice(s: &KSlice) -> Result<Change, String> {
    EndpointSlice::try_from(s)
        .map(Change::Slice)
        .map_err(|e| e.to_string())
}

fn namespace(n: &KNamespace) -> Result<Change, String> {
    Ok(Change::Namespace(n.name_any()))
}

fn pod(p: &KPod) -> Result<Change, String> {
    Pod::try_from(p).map(Change::Pod).map_err(|e| e.to_string())
}

/// A change as the mutation seam lets it through (unchanged in production).
fn through_seam(seam: &signpost_model::mutant::Seam, c: Change) -> Option<Change> {
    if seam.mutant().is_none() {
        return Some(c);
    }
    match c {
        Change::Service(s) => Some(Change::Service(seam.dns_service(s))),
        Change::Slice(s) => Some(Change::Slice(seam.dns_slice(s))),
        Change::ServiceDeleted(_) if !seam.dns_forgets_deleted_services() => None,
        other => Some(other),
    }
}

/// Changes queued between the watches and the index at most (one batch).
const QUEUE: usize = 1024;

/// A batch this large is a list or a burst: once the queue is drained
/// after it, freed memory is given back.
const BURST: usize = 256;

/// Watches the cluster and keeps `shared.index` current until the client's
/// watches end (they retry forever, so in practice: until cancelled).
pub async fn run(client: Client, shared: Arc<Shared>, pods_mode: PodsMode) {
    // Bounded: a watch listing many objects waits for the index to take
    // them instead of queueing the whole list (its peak would stay as
    // the process's memory).
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let mut kinds: Vec<&'static str> = vec!["services", "endpointslices", "namespaces"];
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_kind(
        Api::<KService>::all(client.clone()),
        "services",
        service,
        Change::ServiceDeleted,
        tx.clone(),
        shared.clone(),
    ));
    tasks.spawn(watch_kind(
        Api::<KSlice>::all(client.clone()),
        "endpointslices",
        slice,
        Change::SliceDeleted,
        tx.clone(),
        shared.clone(),
    ));
    tasks.spawn(watch_kind(
        Api::<KNamespace>::all(client.clone()),
        "namespaces",
        namespace,
        |k| Change::NamespaceDeleted(k.name),
        tx.clone(),
        shared.clone(),
    ));
    if pods_mode == PodsMode::Verified {
        kinds.push("pods");
        tasks.spawn(watch_kind(
            Api::<KPod>::all(client.clone()),
            "pods",
            pod,
            Change::PodDeleted,
            tx.clone(),
            shared.clone(),
        ));
    }
    drop(tx);
    let mut listed: HashSet<&'static str> = HashSet::new();
    let mut synced = false;
    let mut batch = Vec::new();
    let mut trim_due = false;
    // A batch is applied under one write lock, each Service it touches
    // recomputed once; batches are bounded so queries wait briefly.
    while rx.recv_many(&mut batch, QUEUE).await > 0 {
        let mut newly_synced = false;
        trim_due |= batch.len() >= BURST;
        let mut changes = Vec::with_capacity(batch.len());
        for msg in batch.drain(..) {
            match msg {
                Msg::Change(c, seen) => {
                    if let Some(c) = through_seam(&shared.seam, c) {
                        changes.push((c, seen));
                    }
                }
                Msg::ListDone(kind) => {
                    listed.insert(kind);
                    if !synced && kinds.iter().all(|k| listed.contains(k)) {
                        changes.push((Change::Synced, Instant::now()));
                        synced = true;
                        newly_synced = true;
                    }
                }
            }
        }
        {
            let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
            // The serial moves with the zone, under the same lock: a
            // negative answer kept in wire form (its SOA carries the
            // serial) is dropped with the generation that wrote it.
            shared.serial.store(epoch_secs(), Ordering::Relaxed);
            index.apply_batch(changes);
            shared
                .metrics
                .zone_names
                .set(i64::try_from(index.len()).unwrap_or(i64::MAX));
        }
        // A list or a burst leaves decoded objects freed behind it: once
        // the queue is drained, their pages go back.
        trim_due |= newly_synced;
        if trim_due && rx.is_empty() {
            trim_due = false;
            let returned = crate::memory::give_back_freed();
            debug!(returned, "freed memory given back after a burst of changes");
        }
        if newly_synced {
            shared.metrics.synced.set(1);
            info!(
                names = shared.metrics.zone_names.get(),
                "first full sync done; answering for the cluster zone"
            );
        }
    }
    tasks.shutdown().await;
}
