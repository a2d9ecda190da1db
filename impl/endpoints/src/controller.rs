//! The controller's I/O shell: four reflectors (Services, Pods, our
//! EndpointSlices, Nodes) feed a queue of Service keys; each key is
//! reconciled with the model's pure functions and the writes are applied
//! with optimistic concurrency. A burst of events for one Service within the
//! debounce window is reconciled once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as KNode, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use signpost_model::cluster::{EndpointSlice, Pod, Service};
use signpost_model::reconcile::{SliceWrite, plan_slices_with};
use signpost_model::spec::endpoints_for;
use signpost_runtime::convert;
use signpost_runtime::watch::{self, Config as WatchConfig};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::convert::slice_object;
use crate::lease::Elector;
use crate::metrics::Metrics;
use crate::{Error, MANAGED_BY, Result};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the leader lease.
    pub lease_namespace: String,
    /// Name of the leader lease.
    pub lease_name: String,
    /// This replica's identity.
    pub identity: String,
    /// Lease duration: how long a standby waits out a silent leader.
    pub lease_duration: Duration,
    /// The leader stops writing this long after its last good renewal
    /// (less than the lease duration; kube-controller-manager's `--leader-elect-renew-deadline`).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew (`--leader-elect-retry-period`).
    pub retry_period: Duration,
    /// At most this many endpoints in one slice (`--max-endpoints-per-slice`, 1 to 1000).
    pub max_endpoints_per_slice: usize,
    /// Services reconciled at once (kube-controller-manager's
    /// `--concurrent-service-endpoint-syncs`, default 5).
    pub concurrent_syncs: usize,
    /// Extra time to gather events into a batch; every Service in a batch is
    /// reconciled once, and events that queue up during a batch are coalesced.
    pub debounce: Duration,
    /// Lead through the lease before writing (false: write at once, for a
    /// single replica, as kube-controller-manager's `--leader-elect=false`).
    pub leader_elect: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_namespace: "kube-system".into(),
            lease_name: "signpost-endpoints".into(),
            identity: crate::lease::default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            max_endpoints_per_slice: signpost_model::spec::MAX_ENDPOINTS_PER_SLICE,
            concurrent_syncs: 5,
            debounce: Duration::ZERO,
            leader_elect: true,
        }
    }
}

fn lock(r: &std::sync::Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// The indexes that route events to Services.
#[derive(Debug, Default)]
struct Routes {
    services: crate::route::Services,
    pods: crate::route::Pods,
    zones: crate::route::Zones,
}

/// A Service waiting this long for the slice cache is reported as stuck.
const STUCK_AFTER: Duration = Duration::from_secs(30);

/// A Service key: namespace and name.
type Key = (String, String);

/// The caches the controller reads; it writes nothing until each has listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cache {
    Services,
    Pods,
    EndpointSlices,
    Nodes,
}

impl Cache {
    const ALL: [Cache; 4] = [
        Cache::Services,
        Cache::Pods,
        Cache::EndpointSlices,
        Cache::Nodes,
    ];
}

/// Which object event kinds arrive on the merged stream.
enum Ev {
    Keys(Vec<Key>),
    /// One of our slices is gone (deleted by us, or by the garbage collector
    /// after its owner went): stop waiting for it in the tracker.
    SliceDeleted(Key, Vec<Key>),
    AllServices,
    Synced(Cache),
}

/// Our own writes, to tell when the slice cache has caught up with them (PROTO-4).
#[derive(Default)]
struct Tracker {
    written: HashMap<Key, (Key, u64)>,
    deleted: HashMap<Key, Key>,
}

fn rv(obj: &KSlice) -> u64 {
    obj.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Tracker {
    /// True when the cache shows every write we made for `service`.
    fn caught_up(&mut self, service: &Key, slices: &Store<KSlice>) -> bool {
        let mut ok = true;
        self.written.retain(|slice, (svc, written)| {
            if svc != service {
                return true;
            }
            let seen = slices
                .get(&ObjectRef::new(&slice.1).within(&slice.0))
                .map_or(0, |s| rv(&s));
            if seen < *written {
                ok = false;
            }
            seen < *written
        });
        self.deleted.retain(|slice, svc| {
            if svc != service {
                return true;
            }
            let present = slices
                .get(&ObjectRef::new(&slice.1).within(&slice.0))
                .is_some();
            ok &= !present;
            present
        });
        ok
    }
}

struct Ctx {
    client: Client,
    services: Store<KService>,
    pods: Store<KPod>,
    slices: Store<KSlice>,
    nodes: Store<KNode>,
    metrics: Arc<Metrics>,
    /// Held only between awaits, never across one.
    tracker: std::sync::Mutex<Tracker>,
    /// Which Pods a namespace has, fed by the Pod watch.
    routes: Arc<std::sync::Mutex<Routes>>,
    max_per_slice: usize,
    /// Checked before every write.
    fence: Fence,
}

impl Ctx {
    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Until when this replica may write: the renew deadline counted from its
/// last successful renewal (from when that request was sent). Every write
/// checks it first, so a leader that was frozen past its deadline (SIGSTOP,
/// a long pause of its VM) writes nothing once it runs again, even before
/// its renew loop sees the deadline passed and steps down.
#[derive(Debug, Clone)]
pub struct Fence(Arc<std::sync::Mutex<Option<tokio::time::Instant>>>);

impl Fence {
    /// No leader election: always open.
    pub fn open() -> Self {
        Fence(Arc::new(std::sync::Mutex::new(None)))
    }

    /// Open until `until`.
    pub fn until(until: tokio::time::Instant) -> Self {
        Fence(Arc::new(std::sync::Mutex::new(Some(until))))
    }

    /// Moves the deadline (after a renewal).
    pub fn extend(&self, until: tokio::time::Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    /// `Err(Fenced)` once the deadline has passed.
    pub fn check(&self) -> Result<()> {
        match *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(until) if tokio::time::Instant::now() >= until => Err(Error::Fenced),
            _ => Ok(()),
        }
    }
}

/// The Service a slice of ours belongs to.
fn owner(s: &KSlice) -> Vec<Key> {
    s.labels()
        .get("kubernetes.io/service-name")
        .map(|n| vec![(s.namespace().unwrap_or_default(), n.clone())])
        .unwrap_or_default()
}

/// One slice watch event as the loop's events. A slice that vanished
/// across a relist (no Delete is sent for it) is reported as deleted, so
/// the tracker stops waiting for it: without this a slice of ours deleted
/// while the watch was down (by the garbage collector, by hand) kept its
/// Service waiting for ever (StaleCache).
fn translate(known: &mut watch::Known, ev: watch::Event<KSlice>) -> Vec<Ev> {
    let mut out: Vec<Ev> = known
        .observe(&ev)
        .into_iter()
        .map(|slice| Ev::SliceDeleted(slice, Vec::new()))
        .collect();
    match ev {
        watch::Event::Delete(o) => out.push(Ev::SliceDeleted(
            (o.namespace().unwrap_or_default(), o.name_any()),
            owner(&o),
        )),
        watch::Event::Apply(o) => out.push(Ev::Keys(owner(&o))),
        watch::Event::InitDone => out.push(Ev::Synced(Cache::EndpointSlices)),
        watch::Event::Init | watch::Event::InitApply(_) => {}
    }
    out
}

/// Runs the controller: waits to become leader, then reconciles until the
/// lease is lost (an error) or the watches end.
pub async fn run(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<()> {
    if !cfg.leader_elect {
        info!(identity = %cfg.identity, "leader election off: writing at once");
        metrics.leader.set(1);
        return reconcile_loop(client, &cfg, metrics, Fence::open()).await;
    }
    let elector = Elector::new(
        Api::namespaced(client.clone(), &cfg.lease_namespace),
        &cfg.lease_name,
        &cfg.identity,
        cfg.lease_duration,
    );
    let retry = cfg.retry_period;
    loop {
        // A standby (again): campaign until the lease is ours. An API
        // server that does not answer is waited out, not a reason to exit.
        let fence = loop {
            let sent = tokio::time::Instant::now();
            match elector.try_acquire_or_renew().await {
                Ok(true) => break Fence::until(sent + cfg.renew_deadline),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "trying for the lease failed; trying again"),
            }
            tokio::time::sleep(retry).await;
        };
        info!(identity = %cfg.identity, lease = %cfg.lease_name, "became leader");
        metrics.leader.set(1);
        let renew = hold(cfg.renew_deadline, retry, &cfg.lease_name, &fence, || {
            elector.try_acquire_or_renew()
        });
        let result = tokio::select! {
            r = reconcile_loop(client.clone(), &cfg, metrics.clone(), fence.clone()) => r,
            e = renew => Err(e),
        };
        metrics.leader.set(0);
        match result {
            // Writing stopped with the reconcile loop (dropped above); this
            // replica stands by again, as a restarted one would, without
            // the restart (an API server away past the renew deadline
            // would otherwise end every replica).
            Err(Error::LostLease(name)) => {
                warn!(lease = %name, "lost the leader lease; standing by");
            }
            other => return other,
        }
    }
}

/// Keeps renewing every `retry`; returns (the reason to stop writing) when
/// a renewal is refused or when no renewal succeeded for `budget` (the
/// renew deadline, shorter than the lease), counted also while one attempt
/// hangs: nobody may take over before the full lease duration, so the
/// leader stops first.
async fn hold<F, Fut>(
    budget: Duration,
    retry: Duration,
    name: &str,
    fence: &Fence,
    mut renew: F,
) -> Error
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(retry).await;
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout_at(last + budget, renew()).await {
            Ok(Ok(true)) => {
                last = sent;
                fence.extend(sent + budget);
            }
            Ok(Ok(false)) => return Error::LostLease(name.to_owned()),
            Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
            Err(_) => {
                warn!("a lease renewal hung past the renew deadline; stepping down");
                return Error::LostLease(name.to_owned());
            }
        }
        if last.elapsed() > budget {
            return Error::LostLease(name.to_owned());
        }
    }
}

async fn reconcile_loop(
    client: Client,
    cfg: &Config,
    metrics: Arc<Metrics>,
    fence: Fence,
) -> Result<()> {
    let debounce = cfg.debounce;
    let wc = WatchConfig::default();
    let routes: Arc<std::sync::Mutex<Routes>> = Arc::default();
    let (services, svc_stream) = watch::reflect(
        Api::<KService>::all(client.clone()),
        wc.clone(),
        "services",
        metrics.watch_errors.clone(),
    );
    let (r, mut known) = (routes.clone(), watch::Known::default());
    let svc_stream = svc_stream
        .flat_map(move |ev| {
            let mut rt = lock(&r);
            let mut out = Vec::new();
            for (ns, name) in known.observe(&ev) {
                rt.services.delete(&ns, &name);
            }
            match ev {
                watch::Event::InitApply(s) => rt.services.apply(&s),
                watch::Event::Apply(s) => {
                    rt.services.apply(&s);
                    out.push(Ev::Keys(vec![(
                        s.namespace().unwrap_or_default(),
                        s.name_any(),
                    )]));
                }
                watch::Event::Delete(s) => {
                    let key = (s.namespace().unwrap_or_default(), s.name_any());
                    rt.services.delete(&key.0, &key.1);
                    out.push(Ev::Keys(vec![key]));
                }
                watch::Event::InitDone => out.push(Ev::Synced(Cache::Services)),
                watch::Event::Init => {}
            }
            futures::stream::iter(out)
        })
        .boxed();
    let (pods, pod_stream) = watch::reflect(
        Api::<KPod>::all(client.clone()),
        wc.clone(),
        "pods",
        metrics.watch_errors.clone(),
    );
    let (r, mut known) = (routes.clone(), watch::Known::default());
    let pod_stream = pod_stream
        .flat_map(move |ev| {
            let mut guard = lock(&r);
            let rt = &mut *guard;
            let mut keys = Vec::new();
            for (ns, name) in known.observe(&ev) {
                keys.extend(rt.pods.delete(&ns, &name, &rt.services));
            }
            let mut out = Vec::new();
            match ev {
                watch::Event::InitApply(p) => {
                    keys.extend(rt.pods.apply(&p, &rt.services));
                }
                watch::Event::Apply(p) => keys.extend(rt.pods.apply(&p, &rt.services)),
                watch::Event::Delete(p) => keys.extend(rt.pods.delete(
                    &p.namespace().unwrap_or_default(),
                    &p.name_any(),
                    &rt.services,
                )),
                watch::Event::InitDone => out.push(Ev::Synced(Cache::Pods)),
                watch::Event::Init => {}
            }
            if !keys.is_empty() {
                out.insert(0, Ev::Keys(keys));
            }
            futures::stream::iter(out)
        })
        .boxed();
    let slice_wc = wc.clone().labels(&format!(
        "endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
    ));
    let (slices, slice_stream) = watch::reflect(
        Api::<KSlice>::all(client.clone()),
        slice_wc,
        "endpointslices",
        metrics.watch_errors.clone(),
    );
    let mut known = watch::Known::default();
    let slice_stream = slice_stream
        .flat_map(move |ev| futures::stream::iter(translate(&mut known, ev)))
        .boxed();
    let (nodes, node_stream) = watch::reflect(
        Api::<KNode>::all(client.clone()),
        wc,
        "nodes",
        metrics.watch_errors.clone(),
    );
    let (r, mut known) = (routes.clone(), watch::Known::default());
    let node_stream = node_stream
        .filter_map(move |ev| {
            let mut rt = lock(&r);
            let mut all = false;
            for (_, name) in known.observe(&ev) {
                all |= rt.zones.delete(&name);
            }
            let out = match ev {
                watch::Event::InitApply(n) => {
                    rt.zones.apply(&n);
                    None
                }
                watch::Event::Apply(n) => (rt.zones.apply(&n) || all).then_some(Ev::AllServices),
                watch::Event::Delete(n) => {
                    (rt.zones.delete(&n.name_any()) || all).then_some(Ev::AllServices)
                }
                watch::Event::InitDone => Some(Ev::Synced(Cache::Nodes)),
                watch::Event::Init => None,
            };
            futures::future::ready(out)
        })
        .boxed();

    let (requeue_tx, requeue_rx) = mpsc::unbounded_channel::<Key>();
    let requeue_stream = futures::stream::unfold(requeue_rx, |mut rx| async move {
        rx.recv().await.map(|k| (Ev::Keys(vec![k]), rx))
    })
    .boxed();
    let mut events = futures::stream::select_all([
        svc_stream,
        pod_stream,
        slice_stream,
        node_stream,
        requeue_stream,
    ]);

    let concurrency = cfg.concurrent_syncs.max(1);
    let ctx = Ctx {
        client,
        services,
        pods,
        slices,
        nodes,
        metrics,
        tracker: std::sync::Mutex::new(Tracker::default()),
        routes,
        max_per_slice: cfg.max_endpoints_per_slice,
        fence,
    };
    let mut synced: HashSet<Cache> = HashSet::new();
    let mut pending: BTreeSet<Key> = BTreeSet::new();
    // Services whose last reconcile waited for the slice cache, since when.
    let mut waiting: HashMap<Key, Instant> = HashMap::new();
    let mut warned: HashSet<Key> = HashSet::new();
    loop {
        // Collect a batch: block for the first event, then take what arrives within the debounce window.
        let first = events.next().await;
        let Some(first) = first else { return Ok(()) };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + debounce;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.next()).await {
            batch.push(ev);
        }
        for ev in batch {
            match ev {
                Ev::Keys(keys) => pending.extend(keys),
                Ev::SliceDeleted(slice, keys) => {
                    ctx.tracker().written.remove(&slice);
                    pending.extend(keys);
                }
                Ev::AllServices => pending.extend(
                    ctx.services
                        .state()
                        .iter()
                        .map(|s| (s.namespace().unwrap_or_default(), s.name_any())),
                ),
                Ev::Synced(kind) => {
                    synced.insert(kind);
                    pending.extend(
                        ctx.services
                            .state()
                            .iter()
                            .map(|s| (s.namespace().unwrap_or_default(), s.name_any())),
                    );
                }
            }
        }
        // Acting on a partial list would delete endpoints of Pods not yet seen.
        if synced.len() < Cache::ALL.len() {
            continue;
        }
        // Up to --concurrent-syncs Services at once; the keys are distinct,
        // so no two reconciles of one Service overlap.
        let ctx_ref = &ctx;
        let mut done = futures::stream::iter(std::mem::take(&mut pending))
            .map(|key| async move {
                let started = Instant::now();
                let result = reconcile(ctx_ref, &key).await;
                ctx_ref.metrics.observe_sync(started.elapsed());
                (key, started, result)
            })
            .buffer_unordered(concurrency);
        while let Some((key, started, result)) = done.next().await {
            if matches!(result, Err(Error::StaleCache(_))) {
                let since = *waiting.entry(key.clone()).or_insert(started);
                if started.duration_since(since) > STUCK_AFTER && warned.insert(key.clone()) {
                    warn!(service = %format!("{}/{}", key.0, key.1), waited = ?started.duration_since(since), "still waiting for the slice cache to show our writes");
                }
            } else {
                waiting.remove(&key);
                warned.remove(&key);
            }
            match result {
                Ok(()) => {}
                Err(e) => {
                    match &e {
                        Error::Conflict(_) => ctx.metrics.conflicts.inc(),
                        Error::StaleCache(_) => 0,
                        Error::Fenced => ctx.metrics.fenced.inc(),
                        _ => ctx.metrics.errors.inc(),
                    };
                    debug!(service = %format!("{}/{}", key.0, key.1), error = %e, "requeue");
                    let tx = requeue_tx.clone();
                    let delay = if matches!(e, Error::Conflict(_) | Error::StaleCache(_)) {
                        50
                    } else {
                        1000
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let _ = tx.send(key);
                    });
                }
            }
        }
        drop(done);
        // Services deleted while waiting are not waiting any more.
        waiting
            .retain(|(ns, name), _| ctx.services.get(&ObjectRef::new(name).within(ns)).is_some());
        ctx.metrics.waiting_on_cache.set(waiting.len() as i64);
        let longest = waiting
            .values()
            .map(|t| t.elapsed().as_secs())
            .max()
            .unwrap_or(0);
        ctx.metrics
            .longest_wait_seconds
            .set(i64::try_from(longest).unwrap_or(i64::MAX));
    }
}

/// EPS-11: make one Service's slices equal the oracle's endpoints.
async fn reconcile(ctx: &Ctx, key: &Key) -> Result<()> {
    let (ns, name) = key;
    let Some(svc) = ctx.services.get(&ObjectRef::new(name).within(ns)) else {
        // Deleted: its slices go with it through their owner references (EPS-13).
        return Ok(());
    };
    if !ctx.tracker().caught_up(key, &ctx.slices) {
        return Err(Error::StaleCache(format!("{ns}/{name}")));
    }
    // EPS-10: an object that cannot be read is logged, counted and skipped.
    let invalid = &ctx.metrics.invalid_objects;
    let Some(model_svc) = convert::read::<_, Service, _>(&*svc, "Service", invalid) else {
        return Ok(());
    };
    // Only the Pods the selector picks are read (the model filters again).
    let selector = svc
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.clone())
        .unwrap_or_default();
    let names = ctx
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pods
        .selected(ns, &selector);
    let pods: Vec<Pod> = names
        .iter()
        .filter_map(|n| ctx.pods.get(&ObjectRef::new(n).within(ns)))
        .filter_map(|p| convert::read(&*p, "Pod", invalid))
        .collect();
    let zones: BTreeMap<String, String> = ctx
        .nodes
        .state()
        .iter()
        .filter_map(|n| {
            n.labels()
                .get("topology.kubernetes.io/zone")
                .map(|z| (n.name_any(), z.clone()))
        })
        .collect();
    let mut desired = endpoints_for(&model_svc, &pods);
    for eps in desired.values_mut() {
        *eps = std::mem::take(eps)
            .into_iter()
            .map(|mut e| {
                e.zone = e.node.as_ref().and_then(|n| zones.get(n).cloned());
                e
            })
            .collect();
    }
    let mut originals: HashMap<String, Arc<KSlice>> = HashMap::new();
    let mut existing: Vec<EndpointSlice> = Vec::new();
    for s in ctx.slices.state().iter().filter(|s| {
        s.namespace().as_deref() == Some(ns)
            && s.labels().get("kubernetes.io/service-name") == Some(name)
    }) {
        match EndpointSlice::try_from(&**s) {
            Ok(m) => {
                originals.insert(s.name_any(), s.clone());
                existing.push(m);
            }
            Err(e) => {
                warn!(slice = %s.name_any(), error = %e, "deleting a malformed slice of ours");
                delete(ctx, key, &s.name_any(), s.resource_version()).await?;
            }
        }
    }
    let refs: Vec<&EndpointSlice> = existing.iter().collect();
    for write in plan_slices_with(&desired, &refs, ctx.max_per_slice) {
        let api: Api<KSlice> = Api::namespaced(ctx.client.clone(), ns);
        match write {
            SliceWrite::Create { shape, endpoints } => {
                let obj = slice_object(&svc, None, shape.family, &shape.ports, &endpoints)?;
                ctx.fence.check()?;
                let created = match api.create(&PostParams::default(), &obj).await {
                    Ok(c) => c,
                    // Another writer created this very slice (a second
                    // leader, or our own create whose answer was lost):
                    // re-read instead of duplicating it.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        return Err(Error::Conflict(format!(
                            "{ns}/{}",
                            obj.metadata.name.unwrap_or_default()
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                ctx.tracker().written.insert(
                    (ns.clone(), created.name_any()),
                    (key.clone(), rv(&created)),
                );
                ctx.metrics.writes.inc();
            }
            SliceWrite::Update(slice) => {
                let original = &originals[&slice.key.name];
                let version = original.resource_version().unwrap_or_default();
                let obj = slice_object(
                    &svc,
                    Some((&slice.key.name, &version)),
                    slice.family,
                    &slice.ports,
                    &slice.endpoints,
                )?;
                ctx.fence.check()?;
                match api
                    .replace(&slice.key.name, &PostParams::default(), &obj)
                    .await
                {
                    Ok(updated) => {
                        ctx.tracker().written.insert(
                            (ns.clone(), updated.name_any()),
                            (key.clone(), rv(&updated)),
                        );
                        ctx.metrics.writes.inc();
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        return Err(Error::Conflict(slice.key.to_string()));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SliceWrite::Delete(k) => {
                let version = originals.get(&k.name).and_then(|o| o.resource_version());
                delete(ctx, key, &k.name, version).await?;
            }
        }
    }
    Ok(())
}

async fn delete(ctx: &Ctx, key: &Key, slice: &str, version: Option<String>) -> Result<()> {
    ctx.fence.check()?;
    let api: Api<KSlice> = Api::namespaced(ctx.client.clone(), &key.0);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: version,
            uid: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(slice, &dp).await {
        Ok(_) => {
            ctx.tracker()
                .deleted
                .insert((key.0.clone(), slice.to_owned()), key.clone());
            ctx.metrics.writes.inc();
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Err(Error::Conflict(format!("{}/{slice}", key.0)))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Duration, Error, Fence, Instant, Result, hold};

    #[test]
    fn a_slice_gone_across_a_relist_no_longer_holds_its_service() {
        use super::{Ev, KSlice, Key, Tracker, translate, watch};
        use kube::runtime::reflector;
        let slice = |name: &str, rv: &str| -> KSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "namespace": "default", "resourceVersion": rv,
                              "labels": { "kubernetes.io/service-name": "voy" } },
                "addressType": "IPv4", "endpoints": [],
            }))
            .unwrap()
        };
        let (slices, _w2) = reflector::store::<KSlice>();
        let svc: Key = ("default".into(), "voy".into());
        let mut known = watch::Known::default();
        let mut tracker = Tracker::default();
        // The watch shows voy-a; we wrote voy-b (rv 7) and then the watch
        // broke; meanwhile voy-b was deleted. The relist shows only voy-a.
        for ev in [
            watch::Event::Init,
            watch::Event::InitApply(slice("voy-a", "3")),
            watch::Event::InitDone,
            watch::Event::Apply(slice("voy-b", "7")),
        ] {
            translate(&mut known, ev);
        }
        tracker
            .written
            .insert(("default".into(), "voy-b".into()), (svc.clone(), 8));
        assert!(!tracker.caught_up(&svc, &slices), "waits for its write");
        let mut out = Vec::new();
        for ev in [
            watch::Event::Init,
            watch::Event::InitApply(slice("voy-a", "3")),
            watch::Event::InitDone,
        ] {
            out.extend(translate(&mut known, ev));
        }
        for ev in out {
            if let Ev::SliceDeleted(s, _) = ev {
                tracker.written.remove(&s);
            }
        }
        assert!(
            tracker.caught_up(&svc, &slices),
            "still waiting for a slice that is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_at_the_renew_deadline_and_a_renewal_reopens_it() {
        let now = tokio::time::Instant::now();
        let fence = Fence::until(now + Duration::from_secs(4));
        assert!(fence.check().is_ok());
        // Frozen for 5 s: nothing renewed, the next write is refused.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(fence.check(), Err(Error::Fenced)));
        fence.extend(tokio::time::Instant::now() + Duration::from_secs(4));
        assert!(fence.check().is_ok());
        assert!(Fence::open().check().is_ok());
    }

    #[tokio::test]
    async fn a_hung_renewal_stops_the_leader_at_the_renew_deadline() {
        let lease = Duration::from_millis(600);
        let retry = Duration::from_millis(50);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        // Two renewals succeed, the third never returns (an API server
        // that accepted the connection and went silent).
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            hold(lease * 2 / 3, retry, "l", &Fence::open(), || {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n < 2 {
                        Ok(true)
                    } else {
                        std::future::pending::<Result<bool>>().await
                    }
                }
            }),
        )
        .await
        .expect("the leader steps down while its renewal hangs");
        assert!(matches!(stopped, Error::LostLease(_)));
        // Within two thirds of the lease after the last renewal.
        assert!(started.elapsed() < retry * 3 + lease * 2 / 3 + Duration::from_millis(200));
    }

    #[test]
    fn two_replicas_started_alike_get_different_default_identities() {
        // Same process ID (1 in every container), same host image: the
        // old default `signpost-endpoints-<pid>` was equal, so both renewed.
        let a = super::Config::default().identity;
        let b = super::Config::default().identity;
        assert_ne!(a, b, "replicas would share a lease identity");
    }
}
