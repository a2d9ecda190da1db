//! The incremental zone index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use signpost_model::cluster::{
    DnsOutcome, EndpointSlice, ObjectKey, Question, RData, RType, Rcode, Service,
};
use signpost_model::spec::{DnsSnapshot, PodsMode, dns_answer};

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
    /// The first full list of every kind is done (DNS-18).
    Synced,
}

/// The names one Service owns, with their records (DNS-2..DNS-8), and the
/// reverse entries of its addresses (DNS-9).
#[derive(Debug, Default, Clone)]
struct Owned {
    names: Vec<(String, Vec<RData>)>,
    cluster_ips: Vec<IpAddr>,
    endpoint_ptrs: Vec<(IpAddr, String)>,
}

/// The cluster zone, maintained incrementally.
#[derive(Debug)]
pub struct ZoneIndex {
    zone: String,
    synced: bool,
    services: HashMap<ObjectKey, Service>,
    slices: HashMap<ObjectKey, EndpointSlice>,
    slices_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    owned: HashMap<ObjectKey, Owned>,
    /// name → records; a name may be shared by no two Services (names embed the Service).
    names: HashMap<String, Vec<RData>>,
    ptr_cluster: HashMap<IpAddr, String>,
    ptr_endpoints: HashMap<IpAddr, BTreeSet<String>>,
    namespaces: HashMap<String, usize>,
}

impl ZoneIndex {
    /// An empty, not yet synced index for `zone`.
    pub fn new(zone: &str) -> Self {
        ZoneIndex {
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
            synced: false,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            owned: HashMap::new(),
            names: HashMap::new(),
            ptr_cluster: HashMap::new(),
            ptr_endpoints: HashMap::new(),
            namespaces: HashMap::new(),
        }
    }

    /// Applies one event; only the affected Service's names are recomputed.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Synced => self.synced = true,
            Change::Service(svc) => {
                let key = svc.key.clone();
                if !self.services.contains_key(&key) {
                    *self.namespaces.entry(key.namespace.clone()).or_default() += 1;
                }
                self.services.insert(key.clone(), svc);
                self.refresh(&key);
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
                self.refresh(&key);
            }
            Change::Slice(slice) => {
                let key = slice.key.clone();
                let owner = slice.service_key();
                if let Some(old) = self.slices.insert(key.clone(), slice) {
                    let old_owner = old.service_key();
                    if old_owner != owner {
                        self.slices_of
                            .entry(old_owner.clone())
                            .or_default()
                            .remove(&key);
                        self.refresh(&old_owner);
                    }
                }
                self.slices_of.entry(owner.clone()).or_default().insert(key);
                self.refresh(&owner);
            }
            Change::SliceDeleted(key) => {
                if let Some(old) = self.slices.remove(&key) {
                    let owner = old.service_key();
                    self.slices_of
                        .entry(owner.clone())
                        .or_default()
                        .remove(&key);
                    self.refresh(&owner);
                }
            }
        }
    }

    /// Recomputes the names of one Service with the oracle's own rules, run
    /// over that Service and its slices only.
    fn refresh(&mut self, key: &ObjectKey) {
        if let Some(old) = self.owned.remove(key) {
            for (name, _) in old.names {
                self.names.remove(&name);
            }
            for ip in old.cluster_ips {
                self.ptr_cluster.remove(&ip);
            }
            for (ip, target) in old.endpoint_ptrs {
                if let Some(set) = self.ptr_endpoints.get_mut(&ip) {
                    set.remove(&target);
                    if set.is_empty() {
                        self.ptr_endpoints.remove(&ip);
                    }
                }
            }
        }
        let Some(svc) = self.services.get(key) else {
            return;
        };
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect();
        let snap = DnsSnapshot {
            zone: &self.zone,
            synced: true,
            services: vec![svc],
            slices,
            pods: Vec::new(),
            namespaces: BTreeSet::new(),
            pods_mode: PodsMode::Disabled,
        };
        let fqdn = format!("{}.{}.svc.{}", svc.key.name, svc.key.namespace, self.zone);
        // The names a Service can own: itself, its `_port` and SRV names, its endpoints.
        let mut candidates = vec![fqdn.clone()];
        for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
            candidates.push(format!("_{}.{fqdn}", p.name));
            candidates.push(format!("_{}._{}.{fqdn}", p.name, p.protocol.as_lower()));
        }
        let mut endpoint_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
        for slice in &snap.slices {
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                let name = format!("{}.{fqdn}", signpost_model::spec::endpoint_dns_name(ep));
                endpoint_ips
                    .entry(ep.address)
                    .or_insert_with(|| name.clone());
                candidates.push(name);
            }
        }
        let mut owned = Owned::default();
        for name in candidates.into_iter().collect::<BTreeSet<_>>() {
            if let Some(records) = node_records(&snap, &name) {
                self.names.insert(name.clone(), records.clone());
                owned.names.push((name, records));
            }
        }
        for ip in svc.cluster_ips.ips() {
            self.ptr_cluster.insert(*ip, fqdn.clone());
            owned.cluster_ips.push(*ip);
        }
        for (ip, name) in endpoint_ips {
            self.ptr_endpoints
                .entry(ip)
                .or_default()
                .insert(name.clone());
            owned.endpoint_ptrs.push((ip, name));
        }
        self.owned.insert(key.clone(), owned);
    }

    /// Answers a question as the oracle would over the same objects.
    pub fn answer(&self, question: &Question) -> DnsOutcome {
        let name = question.normalized_name();
        let in_zone = name == self.zone || name.ends_with(&format!(".{}", self.zone));
        let reverse = signpost_model::spec::parse_reverse(&name);
        if !in_zone && reverse.is_none() {
            return DnsOutcome::Forward;
        }
        let rdatas: Option<Vec<RData>> = if let Some(ip) = reverse {
            match (self.ptr_cluster.get(&ip), self.ptr_endpoints.get(&ip)) {
                (Some(svc), _) => Some(vec![RData::Ptr(svc.clone())]),
                (None, Some(eps)) => Some(eps.iter().map(|t| RData::Ptr(t.clone())).collect()),
                (None, None) => return DnsOutcome::Forward,
            }
        } else {
            self.structural(&name)
                .or_else(|| self.names.get(&name).cloned())
        };
        signpost_model::spec::outcome(&name, rdatas, question.rtype, self.synced)
    }

    /// Zone-level names: apex, `svc`, `pod`, `dns-version`, namespaces.
    fn structural(&self, name: &str) -> Option<Vec<RData>> {
        let rest = if name == self.zone {
            ""
        } else {
            name.strip_suffix(&format!(".{}", self.zone))?
        };
        let labels: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.rsplit('.').collect()
        };
        match labels.as_slice() {
            [] | ["svc"] | ["pod"] => Some(Vec::new()),
            ["dns-version"] => Some(vec![RData::Txt(
                signpost_model::spec::DNS_SCHEMA_VERSION.to_owned(),
            )]),
            ["svc", ns] | ["pod", ns] if self.namespaces.contains_key(*ns) => Some(Vec::new()),
            _ => None,
        }
    }
}

/// The records of one name within one Service's snapshot, `None` if absent.
fn node_records(snap: &DnsSnapshot<'_>, name: &str) -> Option<Vec<RData>> {
    // Ask for ANY: the oracle returns every record of an existing name.
    match dns_answer(snap, &Question::new(name, RType::Any)) {
        DnsOutcome::Answer {
            rcode: Rcode::NoError,
            records,
        } => Some(records.into_iter().map(|r| r.data).collect()),
        _ => None,
    }
}
