//! The incremental zone index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signpost_model::cluster::{
    AddressFamily, DnsOutcome, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Pod, PodPhase,
    Question, RData, Service,
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

/// What DNS reads of one EndpointSlice: its name (the namespace is its
/// Service's), family, ports and ready endpoints (address and hostname).
/// An [`EndpointSlice`] is rebuilt from it when the oracle's rules run.
#[derive(Debug)]
struct Slim {
    name: Box<str>,
    family: AddressFamily,
    ports: Box<[EndpointPort]>,
    /// Ready endpoints' addresses and, only if some endpoint has one, their
    /// hostnames (same order).
    ready: Box<[IpAddr]>,
    hostnames: Box<[Option<Box<str>>]>,
}

impl Slim {
    fn of(slice: EndpointSlice) -> Self {
        // What DNS does not read is not kept (DNS-4: ready endpoints only).
        let ready: Vec<Endpoint> = slice.endpoints.into_iter().filter(|e| e.ready).collect();
        let hostnames: Box<[Option<Box<str>>]> = if ready.iter().any(|e| e.hostname.is_some()) {
            ready
                .iter()
                .map(|e| e.hostname.as_deref().map(Box::from))
                .collect()
        } else {
            Box::new([])
        };
        Slim {
            name: slice.key.name.into_boxed_str(),
            family: slice.family,
            ports: slice.ports.into_boxed_slice(),
            ready: ready.iter().map(|e| e.address).collect(),
            hostnames,
        }
    }

    /// The slice as the oracle reads it.
    fn model(&self, service: &ObjectKey) -> EndpointSlice {
        EndpointSlice {
            key: ObjectKey::new(service.namespace.as_str(), &*self.name),
            service: service.name.clone(),
            family: self.family,
            ports: self.ports.to_vec(),
            endpoints: self
                .ready
                .iter()
                .enumerate()
                .map(|(i, address)| Endpoint {
                    address: *address,
                    ready: true,
                    serving: true,
                    terminating: false,
                    hostname: self
                        .hostnames
                        .get(i)
                        .and_then(|h| h.as_deref())
                        .map(str::to_owned),
                    node: None,
                    zone: None,
                    pod: None,
                })
                .collect(),
        }
    }
}

/// One Service key: the Service (once seen) and the slices naming it. Its
/// names are not stored: they are answered on demand with the oracle's
/// rules over this Service alone, which is what makes the index small.
#[derive(Debug)]
struct Held {
    key: ObjectKey,
    svc: Option<Box<Service>>,
    /// Sorted by name: where two slices hold one address, the oracle takes
    /// the endpoint of the first slice by key.
    slices: Vec<Slim>,
    /// Addresses this Service answers PTR for (ClusterIPs, ready endpoints).
    ptrs: Box<[IpAddr]>,
    /// How many names it has (DNS-2..DNS-8, endpoint names of headless Services).
    names: u32,
    /// A hash of all its names and records, to tell a change from a no-op.
    digest: u64,
    /// When its records last changed, and whether an answer has carried
    /// them since (programming latency).
    changed: Instant,
    served: AtomicBool,
}

impl Held {
    fn new(key: ObjectKey, now: Instant) -> Self {
        Held {
            key,
            svc: None,
            slices: Vec::new(),
            ptrs: Box::new([]),
            names: 0,
            digest: 0,
            changed: now,
            served: AtomicBool::new(true),
        }
    }

    fn model_slices(&self) -> Vec<EndpointSlice> {
        self.slices.iter().map(|s| s.model(&self.key)).collect()
    }
}

/// The cluster zone, maintained incrementally.
#[derive(Debug)]
pub struct ZoneIndex {
    zone: String,
    /// `.` + zone, for suffix tests on the query path.
    dot_zone: String,
    synced: bool,
    /// Services and their slices, by slot; freed slots are reused.
    held: Vec<Held>,
    free: Vec<u32>,
    slot: HashMap<ObjectKey, u32>,
    /// EndpointSlice → the slot of the Service it names.
    slice_owner: HashMap<ObjectKey, u32>,
    /// Address → a Service answering PTR for it; the rare address held by
    /// several Services has the others in `ptr_more`.
    /// (Ordered: a B-tree holds an address and a slot in less memory than
    /// a hash table, and is only read on the PTR path.)
    ptr: BTreeMap<IpAddr, u32>,
    ptr_more: HashMap<IpAddr, Vec<u32>>,
    /// Names in the zone (the sum over Services).
    names: usize,
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
            held: Vec::new(),
            free: Vec::new(),
            slot: HashMap::new(),
            slice_owner: HashMap::new(),
            ptr: BTreeMap::new(),
            ptr_more: HashMap::new(),
            names: 0,
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

    /// How many names the zone holds (besides structural and reverse names,
    /// and endpoint names of Services with ClusterIPs).
    pub fn len(&self) -> usize {
        self.names
    }

    /// How many Services (and Service names only slices have named so far)
    /// the zone holds.
    pub fn services(&self) -> usize {
        self.slot.len()
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
        self.names == 0
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
    /// refresh of it, not one per change. A Service's change time is the
    /// earliest event that touched it.
    pub fn apply_batch(&mut self, changes: impl IntoIterator<Item = (Change, Instant)>) {
        self.generation += 1;
        let mut dirty: HashMap<u32, Instant> = HashMap::new();
        for (change, seen) in changes {
            self.stage(change, seen, &mut dirty);
        }
        for (id, seen) in dirty {
            self.refresh(id, seen);
        }
    }

    /// The slot of a Service key, made if new.
    fn slot_of(&mut self, key: ObjectKey, now: Instant) -> u32 {
        if let Some(&id) = self.slot.get(&key) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.held[id as usize] = Held::new(key.clone(), now);
                id
            }
            None => {
                self.held.push(Held::new(key.clone(), now));
                u32::try_from(self.held.len() - 1).expect("fewer than 2^32 Services")
            }
        };
        self.slot.insert(key, id);
        id
    }

    /// Records one event; the Services whose names it may change go to `dirty`.
    fn stage(&mut self, change: Change, seen: Instant, dirty: &mut HashMap<u32, Instant>) {
        let mut touch = |id: u32| {
            dirty
                .entry(id)
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
                let id = self.slot_of(svc.key.clone(), seen);
                let held = &mut self.held[id as usize];
                if held.svc.is_none() {
                    *self
                        .namespaces
                        .entry(held.key.namespace.clone())
                        .or_default() += 1;
                }
                held.svc = Some(Box::new(svc));
                touch(id);
            }
            Change::ServiceDeleted(key) => {
                if let Some(&id) = self.slot.get(&key) {
                    if self.held[id as usize].svc.take().is_some()
                        && let Some(n) = self.namespaces.get_mut(&key.namespace)
                    {
                        *n -= 1;
                        if *n == 0 {
                            self.namespaces.remove(&key.namespace);
                        }
                    }
                    touch(id);
                }
            }
            Change::Slice(slice) => {
                let key = slice.key.clone();
                let id = self.slot_of(slice.service_key(), seen);
                if let Some(old) = self.slice_owner.insert(key.clone(), id)
                    && old != id
                {
                    self.held[old as usize]
                        .slices
                        .retain(|s| *s.name != *key.name);
                    touch(old);
                }
                let slim = Slim::of(slice);
                let slices = &mut self.held[id as usize].slices;
                match slices.binary_search_by(|s| s.name.cmp(&slim.name)) {
                    Ok(at) => slices[at] = slim,
                    Err(at) => {
                        slices.insert(at, slim);
                        // Most Services have one slice: no room kept for four.
                        slices.shrink_to_fit();
                    }
                }
                touch(id);
            }
            Change::SliceDeleted(key) => {
                if let Some(id) = self.slice_owner.remove(&key) {
                    self.held[id as usize]
                        .slices
                        .retain(|s| *s.name != *key.name);
                    touch(id);
                }
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

    fn add_ptr(&mut self, ip: IpAddr, id: u32) {
        match self.ptr.entry(ip) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(id);
            }
            std::collections::btree_map::Entry::Occupied(o) if *o.get() != id => {
                let more = self.ptr_more.entry(ip).or_default();
                if !more.contains(&id) {
                    more.push(id);
                }
            }
            std::collections::btree_map::Entry::Occupied(_) => {}
        }
    }

    fn remove_ptr(&mut self, ip: IpAddr, id: u32) {
        if self.ptr.get(&ip) == Some(&id) {
            match self.ptr_more.get_mut(&ip).and_then(Vec::pop) {
                Some(next) => {
                    self.ptr.insert(ip, next);
                }
                None => {
                    self.ptr.remove(&ip);
                }
            }
        } else if let Some(more) = self.ptr_more.get_mut(&ip) {
            more.retain(|&o| o != id);
        }
        if self.ptr_more.get(&ip).is_some_and(Vec::is_empty) {
            self.ptr_more.remove(&ip);
        }
    }

    /// Recomputes one Service's names with the oracle's own rules, run over
    /// that Service and its slices only: how many, whether they changed, and
    /// the addresses it answers PTR for.
    fn refresh(&mut self, id: u32, seen: Instant) {
        self.refreshes += 1;
        let old = std::mem::take(&mut self.held[id as usize].ptrs);
        for ip in old {
            self.remove_ptr(ip, id);
        }
        let held = &mut self.held[id as usize];
        self.names -= held.names as usize;
        let Some(svc) = &held.svc else {
            held.names = 0;
            held.digest = 0;
            if held.slices.is_empty() {
                let key = std::mem::replace(&mut held.key, ObjectKey::new("", ""));
                self.slot.remove(&key);
                self.free.push(id);
            }
            return;
        };
        let slices = held.model_slices();
        let snap = snapshot(&self.zone, vec![&**svc], &slices);
        // Endpoint names of Services with ClusterIPs (DNS-6, for CoreDNS
        // compatibility) are rarely asked and are most of a cluster's
        // names: they are not counted or watched for change.
        let records = service_records(&snap, svc, svc.is_headless());
        let mut hasher = std::hash::DefaultHasher::new();
        records.hash(&mut hasher);
        // Never 0, which stands for "no records yet".
        let digest = hasher.finish() | 1;
        if digest != held.digest {
            held.digest = digest;
            held.changed = seen;
            held.served.store(false, Ordering::Relaxed);
        }
        held.names = u32::try_from(records.len()).unwrap_or(u32::MAX);
        self.names += held.names as usize;
        let mut ptrs: Vec<IpAddr> = svc.cluster_ips.ips().to_vec();
        ptrs.extend(held.slices.iter().flat_map(|s| s.ready.iter().copied()));
        ptrs.sort_unstable();
        ptrs.dedup();
        for ip in &ptrs {
            self.add_ptr(*ip, id);
        }
        self.held[id as usize].ptrs = ptrs.into_boxed_slice();
    }

    /// Answers a question as the oracle would over the same objects.
    pub fn answer(&self, question: &Question) -> DnsOutcome {
        self.answer_timed(question).0
    }

    /// Answers, and the first time an answer carries a Service's changed
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
            match self.reverse(ip, &name) {
                Some(r) => Some(r),
                None => return (DnsOutcome::Forward, None),
            }
        } else if let Some(r) = self.structural(&name) {
            r
        } else {
            match self.service_of(&name) {
                Some(held) => {
                    let records = self.records(&[held], &name);
                    if records.is_some()
                        && self.synced
                        && !held.served.load(Ordering::Relaxed)
                        && !held.served.swap(true, Ordering::Relaxed)
                    {
                        first_served = Some(held.changed.elapsed());
                    }
                    records
                }
                None => None,
            }
        };
        let outcome = signpost_model::spec::outcome(&name, rdatas, question.rtype, self.synced);
        (outcome, first_served)
    }

    /// The records at `name` by the oracle's rules over these Services and
    /// their slices only.
    fn records(&self, held: &[&Held], name: &str) -> Option<Vec<RData>> {
        let slices: Vec<EndpointSlice> = held.iter().flat_map(|h| h.model_slices()).collect();
        let services = held.iter().filter_map(|h| h.svc.as_deref()).collect();
        name_records(&snapshot(&self.zone, services, &slices), name)
    }

    /// DNS-9: the PTR records of an address some Service holds (as a
    /// ClusterIP or a ready endpoint); `None` if none does.
    fn reverse(&self, ip: IpAddr, name: &str) -> Option<Vec<RData>> {
        let first = *self.ptr.get(&ip)?;
        let mut owners: Vec<&Held> = std::iter::once(first)
            .chain(self.ptr_more.get(&ip).into_iter().flatten().copied())
            .map(|id| &self.held[id as usize])
            .collect();
        // The oracle looks through Services in key order.
        owners.sort_by(|a, b| a.key.cmp(&b.key));
        self.records(&owners, name)
    }

    /// The Service a name below `<svc>.<ns>.svc.<zone>` belongs to (the
    /// Service name, its endpoints, `_<proto>` and `_<port>._<proto>`).
    fn service_of(&self, name: &str) -> Option<&Held> {
        let rest = name.strip_suffix(&self.dot_zone)?;
        let mut labels = rest.rsplit('.');
        let (Some("svc"), Some(ns), Some(svc_name)) = (labels.next(), labels.next(), labels.next())
        else {
            return None;
        };
        if labels.count() > 2 {
            return None;
        }
        let id = *self.slot.get(&ObjectKey::new(ns, svc_name))?;
        let held = &self.held[id as usize];
        held.svc.as_ref().map(|_| held)
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

/// The oracle's view of some Services and their slices alone.
fn snapshot<'a>(
    zone: &'a str,
    services: Vec<&'a Service>,
    slices: &'a [EndpointSlice],
) -> DnsSnapshot<'a> {
    DnsSnapshot {
        zone,
        synced: true,
        services,
        slices: slices.iter().collect(),
        pods: Vec::new(),
        namespaces: BTreeSet::new(),
        pods_mode: PodsMode::Disabled,
    }
}
