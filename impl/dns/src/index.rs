//! The incremental zone index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signpost_model::cluster::{
    DnsOutcome, EndpointSlice, ObjectKey, Pod, PodPhase, Question, RData, Service,
};
use signpost_model::spec::{DnsSnapshot, PodsMode, name_records, pod_label_ip, service_records};

/// One watch event the index takes.
#[derive(Debug, Clone)]
pub enum Change {
    /// A Service was added or modified.
    Service(Service),
    /// A Service was deleted.
    ServiceDeleted(ObjectKey),
    /// An EndpointSlice was added or modified.
    Slice(EndpointSlice),
    /// An EndpointSlice was deleted.
    SliceDeleted(ObjectKey),
    /// A Namespace exists (DNS-14).
    Namespace(String),
    /// A Namespace was deleted.
    NamespaceDeleted(String),
    /// A Pod was added or modified (verified pod records, DNS-15).
    Pod(Pod),
    /// A Pod was deleted.
    PodDeleted(ObjectKey),
    /// The first full list of every kind is done (DNS-18).
    Synced,
}

/// The records of one name, with when they last changed and whether an
/// answer has carried them since (programming latency).
#[derive(Debug)]
struct Entry {
    records: Box<[RData]>,
    changed: Instant,
    served: AtomicBool,
}

/// The names one Service owns, with their records (DNS-2..DNS-8), and the
/// reverse entries of its addresses (DNS-9).
#[derive(Debug, Default, Clone)]
struct Owned {
    names: Vec<Arc<str>>,
    cluster_ips: Vec<IpAddr>,
    endpoint_ptrs: Vec<(IpAddr, Arc<str>)>,
}

/// The cluster zone, maintained incrementally.
#[derive(Debug)]
pub struct ZoneIndex {
    zone: String,
    /// `.` + zone, for suffix tests on the query path.
    dot_zone: String,
    synced: bool,
    services: HashMap<ObjectKey, Service>,
    slices: HashMap<ObjectKey, EndpointSlice>,
    /// Service → its slices, sorted by key (usually one or two: a Vec).
    slices_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    owned: HashMap<ObjectKey, Owned>,
    /// name → records; a name may be shared by no two Services (names embed the Service).
    names: HashMap<Arc<str>, Entry>,
    ptr_cluster: HashMap<IpAddr, Arc<str>>,
    /// Endpoint address → endpoint names, sorted (usually one).
    ptr_endpoints: HashMap<IpAddr, Vec<Arc<str>>>,
    /// Services per namespace.
    namespaces: HashMap<String, usize>,
    /// Namespaces seen as objects.
    namespace_objects: BTreeSet<String>,
    pods_mode: PodsMode,
    pod_ips: HashMap<ObjectKey, Vec<IpAddr>>,
    /// (namespace, address) → how many Pods there have it.
    pod_addrs: HashMap<(String, IpAddr), usize>,
    /// Services recomputed so far (one per Service a batch touched).
    refreshes: u64,
    /// Batches applied so far: an answer computed at one generation holds
    /// as long as the generation is unchanged.
    generation: u64,
}

impl ZoneIndex {
    /// An empty, not yet synced index for `zone`, without pod records.
    pub fn new(zone: &str) -> Self {
        Self::with_pods(zone, PodsMode::Disabled)
    }

    /// An empty, not yet synced index for `zone` answering pod records in `pods_mode`.
    pub fn with_pods(zone: &str, pods_mode: PodsMode) -> Self {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        ZoneIndex {
            dot_zone: format!(".{zone}"),
            zone,
            synced: false,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            owned: HashMap::new(),
            names: HashMap::new(),
            ptr_cluster: HashMap::new(),
            ptr_endpoints: HashMap::new(),
            namespaces: HashMap::new(),
            namespace_objects: BTreeSet::new(),
            pods_mode,
            pod_ips: HashMap::new(),
            pod_addrs: HashMap::new(),
            refreshes: 0,
            generation: 0,
        }
    }

    /// The zone, lower-case without trailing dot.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Whether the first full sync happened (DNS-18).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// How many names the zone holds (besides structural and reverse names).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// How many times a Service's names were recomputed.
    pub fn refreshes(&self) -> u64 {
        self.refreshes
    }

    /// Moves on with every batch applied (even an empty one): answers kept
    /// from an earlier generation may be stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the zone holds no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Applies one event seen now.
    pub fn apply(&mut self, change: Change) {
        self.apply_at(change, Instant::now());
    }

    /// Applies one event seen at `seen`; only the affected Service's names
    /// are recomputed.
    pub fn apply_at(&mut self, change: Change, seen: Instant) {
        self.apply_batch([(change, seen)]);
    }

    /// Applies events in order, then recomputes each Service they touched
    /// once: a burst of changes to one large headless Service costs one
    /// refresh of it, not one per change. A name's change time is the
    /// earliest event that touched its Service.
    pub fn apply_batch(&mut self, changes: impl IntoIterator<Item = (Change, Instant)>) {
        self.generation += 1;
        let mut dirty: HashMap<ObjectKey, Instant> = HashMap::new();
        for (change, seen) in changes {
            self.stage(change, seen, &mut dirty);
        }
        for (key, seen) in dirty {
            self.refresh(&key, seen);
        }
    }

    /// Records one event; the Services whose names it may change go to `dirty`.
    fn stage(&mut self, change: Change, seen: Instant, dirty: &mut HashMap<ObjectKey, Instant>) {
        let mut touch = |key: ObjectKey| {
            dirty
                .entry(key)
                .and_modify(|t| *t = (*t).min(seen))
                .or_insert(seen);
        };
        match change {
            Change::Synced => self.synced = true,
            Change::Namespace(ns) => {
                self.namespace_objects.insert(ns);
            }
            Change::NamespaceDeleted(ns) => {
                self.namespace_objects.remove(&ns);
            }
            Change::Pod(pod) => {
                self.remove_pod(&pod.key);
                for ip in &pod.ips {
                    *self
                        .pod_addrs
                        .entry((pod.key.namespace.clone(), *ip))
                        .or_default() += 1;
                }
                self.pod_ips.insert(pod.key, pod.ips);
            }
            Change::PodDeleted(key) => self.remove_pod(&key),
            Change::Service(mut svc) => {
                svc.selector = None;
                let key = svc.key.clone();
                if !self.services.contains_key(&key) {
                    *self.namespaces.entry(key.namespace.clone()).or_default() += 1;
                }
                self.services.insert(key.clone(), svc);
                touch(key);
            }
            Change::ServiceDeleted(key) => {
                if self.services.remove(&key).is_some()
                    && let Some(n) = self.namespaces.get_mut(&key.namespace)
                {
                    *n -= 1;
                    if *n == 0 {
                        self.namespaces.remove(&key.namespace);
                    }
                }
                touch(key);
            }
            Change::Slice(mut slice) => {
                // What DNS does not read is not kept.
                slice.endpoints.retain(|e| e.ready);
                for e in &mut slice.endpoints {
                    e.node = None;
                    e.zone = None;
                    e.pod = None;
                }
                slice.endpoints.shrink_to_fit();
                let key = slice.key.clone();
                let owner = slice.service_key();
                if let Some(old) = self.slices.insert(key.clone(), slice) {
                    let old_owner = old.service_key();
                    if old_owner != owner {
                        self.unlink_slice(&old_owner, &key);
                        touch(old_owner);
                    }
                }
                // Sorted by key: where two slices hold one address, the
                // oracle takes the endpoint of the first slice by key.
                let list = self.slices_of.entry(owner.clone()).or_default();
                if let Err(at) = list.binary_search(&key) {
                    list.insert(at, key);
                }
                touch(owner);
            }
            Change::SliceDeleted(key) => {
                if let Some(old) = self.slices.remove(&key) {
                    let owner = old.service_key();
                    self.unlink_slice(&owner, &key);
                    touch(owner);
                }
            }
        }
    }

    fn unlink_slice(&mut self, owner: &ObjectKey, slice: &ObjectKey) {
        if let Some(list) = self.slices_of.get_mut(owner) {
            list.retain(|k| k != slice);
            if list.is_empty() {
                self.slices_of.remove(owner);
            }
        }
    }

    fn remove_pod(&mut self, key: &ObjectKey) {
        for ip in self.pod_ips.remove(key).unwrap_or_default() {
            let k = (key.namespace.clone(), ip);
            if let Some(n) = self.pod_addrs.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.pod_addrs.remove(&k);
                }
            }
        }
    }

    /// Recomputes the names of one Service with the oracle's own rules, run
    /// over that Service and its slices only.
    fn refresh(&mut self, key: &ObjectKey, seen: Instant) {
        self.refreshes += 1;
        let mut previous: HashMap<Arc<str>, Entry> = HashMap::new();
        if let Some(old) = self.owned.remove(key) {
            for name in old.names {
                if let Some(e) = self.names.remove(&name) {
                    previous.insert(name, e);
                }
            }
            for ip in old.cluster_ips {
                self.ptr_cluster.remove(&ip);
            }
            for (ip, target) in old.endpoint_ptrs {
                if let Some(set) = self.ptr_endpoints.get_mut(&ip) {
                    set.retain(|t| *t != target);
                    if set.is_empty() {
                        self.ptr_endpoints.remove(&ip);
                    }
                }
            }
        }
        let Some(svc) = self.services.get(key) else {
            return;
        };
        let snap = snapshot_of(&self.zone, &self.slices_of, &self.slices, svc);
        let fqdn = format!("{}.{}.svc.{}", svc.key.name, svc.key.namespace, self.zone);
        let mut endpoint_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
        for slice in &snap.slices {
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                endpoint_ips.entry(ep.address).or_insert_with(|| {
                    format!("{}.{fqdn}", signpost_model::spec::endpoint_dns_name(ep))
                });
            }
        }
        // Endpoint names of Services with ClusterIPs (DNS-6, for CoreDNS
        // compatibility) are rarely asked and are most of a cluster's
        // names: they are answered on demand.
        let mut owned = Owned::default();
        for (name, records) in service_records(&snap, svc, svc.is_headless()) {
            // A name whose records did not change keeps its change time.
            let entry = match previous.remove(name.as_str()) {
                Some(e) if *e.records == *records => e,
                _ => Entry {
                    records: records.into_boxed_slice(),
                    changed: seen,
                    served: AtomicBool::new(false),
                },
            };
            let name: Arc<str> = name.into();
            self.names.insert(name.clone(), entry);
            owned.names.push(name);
        }
        // Reverse targets share the names' strings.
        let shared = |names: &HashMap<Arc<str>, Entry>, n: &str| -> Arc<str> {
            names
                .get_key_value(n)
                .map_or_else(|| Arc::from(n), |(k, _)| k.clone())
        };
        for ip in svc.cluster_ips.ips() {
            self.ptr_cluster.insert(*ip, shared(&self.names, &fqdn));
            owned.cluster_ips.push(*ip);
        }
        for (ip, name) in endpoint_ips {
            let name = shared(&self.names, &name);
            let set = self.ptr_endpoints.entry(ip).or_default();
            if let Err(at) = set.binary_search(&name) {
                set.insert(at, name.clone());
            }
            owned.endpoint_ptrs.push((ip, name));
        }
        self.owned.insert(key.clone(), owned);
    }

    /// Answers a question as the oracle would over the same objects.
    pub fn answer(&self, question: &Question) -> DnsOutcome {
        self.answer_timed(question).0
    }

    /// Answers, and the first time an answer carries a name's changed
    /// records, says how long after the change was seen that was.
    pub fn answer_timed(&self, question: &Question) -> (DnsOutcome, Option<Duration>) {
        let name = question.normalized_name();
        let in_zone = name == self.zone || name.ends_with(&self.dot_zone);
        let reverse = signpost_model::spec::parse_reverse(&name);
        if !in_zone && reverse.is_none() {
            return (DnsOutcome::Forward, None);
        }
        let mut first_served = None;
        let rdatas: Option<Vec<RData>> = if let Some(ip) = reverse {
            match (self.ptr_cluster.get(&ip), self.ptr_endpoints.get(&ip)) {
                (Some(svc), _) => Some(vec![RData::Ptr(svc.to_string())]),
                (None, Some(eps)) => Some(eps.iter().map(|t| RData::Ptr(t.to_string())).collect()),
                (None, None) => return (DnsOutcome::Forward, None),
            }
        } else if let Some(r) = self.structural(&name) {
            r
        } else {
            match self.names.get(name.as_str()) {
                Some(e) => {
                    if self.synced
                        && !e.served.load(Ordering::Relaxed)
                        && !e.served.swap(true, Ordering::Relaxed)
                    {
                        first_served = Some(e.changed.elapsed());
                    }
                    Some(e.records.to_vec())
                }
                None => self.on_demand(&name),
            }
        };
        let outcome = signpost_model::spec::outcome(&name, rdatas, question.rtype, self.synced);
        (outcome, first_served)
    }

    /// An endpoint name of a Service with ClusterIPs, through the oracle's
    /// rules over that Service and its slices.
    fn on_demand(&self, name: &str) -> Option<Vec<RData>> {
        let rest = name.strip_suffix(&self.dot_zone)?;
        let mut labels = rest.rsplit('.');
        let (Some("svc"), Some(ns), Some(svc_name), Some(_label), None) = (
            labels.next(),
            labels.next(),
            labels.next(),
            labels.next(),
            labels.next(),
        ) else {
            return None;
        };
        let key = ObjectKey::new(ns, svc_name);
        let svc = self.services.get(&key)?;
        if svc.is_headless() {
            return None;
        }
        let snap = snapshot_of(&self.zone, &self.slices_of, &self.slices, svc);
        name_records(&snap, name)
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.namespace_objects.contains(ns) || self.namespaces.contains_key(ns)
    }

    /// Zone-level names: apex, `svc`, `pod`, `dns-version`, namespaces, pods.
    /// `None`: not structural; `Some(None)`: structural and missing.
    fn structural(&self, name: &str) -> Option<Option<Vec<RData>>> {
        let rest = if name == self.zone {
            ""
        } else {
            name.strip_suffix(&self.dot_zone)?
        };
        // At most three labels below the zone are structural: no allocation.
        let mut it = rest.rsplit('.');
        if rest.is_empty() {
            it.next();
        }
        let labels = [it.next(), it.next(), it.next(), it.next()];
        let present = |r: Vec<RData>| Some(Some(r));
        let n = labels.iter().take_while(|l| l.is_some()).count();
        let l: [&str; 3] = [
            labels[0].unwrap_or(""),
            labels[1].unwrap_or(""),
            labels[2].unwrap_or(""),
        ];
        let labels: &[&str] = if n > 3 { &[] } else { &l[..n] };
        if n > 3 {
            return None;
        }
        match labels {
            [] | ["svc"] | ["pod"] => present(Vec::new()),
            ["dns-version"] => present(vec![RData::Txt(
                signpost_model::spec::DNS_SCHEMA_VERSION.to_owned(),
            )]),
            ["svc", ns] | ["pod", ns] if self.namespace_exists(ns) => present(Vec::new()),
            ["pod", ns, label] => Some(self.pod_records(ns, label)),
            _ => None,
        }
    }

    /// DNS-15, through the oracle's rules over this namespace and its Pods at that address.
    fn pod_records(&self, ns: &str, label: &str) -> Option<Vec<RData>> {
        if !self.namespace_exists(ns) {
            return None;
        }
        let ip = pod_label_ip(label)?;
        let holder = Pod {
            key: ObjectKey::new(ns, "_"),
            labels: BTreeMap::new(),
            ips: vec![ip],
            node: None,
            phase: PodPhase::Running,
            ready: true,
            terminating: false,
            hostname: None,
            subdomain: None,
            ports: Vec::new(),
        };
        let known = self.pod_addrs.contains_key(&(ns.to_owned(), ip));
        let snap = DnsSnapshot {
            zone: &self.zone,
            synced: true,
            services: Vec::new(),
            slices: Vec::new(),
            pods: if known { vec![&holder] } else { Vec::new() },
            namespaces: [ns].into(),
            pods_mode: self.pods_mode,
        };
        name_records(&snap, &format!("{label}.{ns}.pod.{}", self.zone))
    }
}

/// The oracle's view of one Service: it and its slices, in key order
/// (fields passed apart so the index can be written while it is read).
fn snapshot_of<'a>(
    zone: &'a str,
    slices_of: &'a HashMap<ObjectKey, Vec<ObjectKey>>,
    slices: &'a HashMap<ObjectKey, EndpointSlice>,
    svc: &'a Service,
) -> DnsSnapshot<'a> {
    DnsSnapshot {
        zone,
        synced: true,
        services: vec![svc],
        slices: slices_of
            .get(&svc.key)
            .into_iter()
            .flatten()
            .filter_map(|k| slices.get(k))
            .collect(),
        pods: Vec::new(),
        namespaces: BTreeSet::new(),
        pods_mode: PodsMode::Disabled,
    }
}
