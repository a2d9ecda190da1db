//! The model's state: the API server's store, each watcher's queue and
//! cache, each node's kernel table, the client and the history the safety
//! properties look back on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{EndpointSlice, Pod, ProxyTable, Service};
use crate::reconcile::{WatchCache, WatchEvent};
use crate::spec::{DnsSnapshot, PodsMode};

use super::catalog::ZONE;

/// A watcher of the API server, also the unit that crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watcher {
    /// The EndpointSlice controller.
    Eps,
    /// The cluster DNS.
    Dns,
    /// The proxy of node `i`.
    Proxy(u8),
}

/// One event on a watcher's queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ev {
    /// A Service event.
    Svc(WatchEvent<Service>),
    /// A Pod event.
    Pod(WatchEvent<Pod>),
    /// An EndpointSlice event.
    Slice(WatchEvent<EndpointSlice>),
}

/// PROTO-2, PROTO-3: whether a watch is delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchStatus {
    /// Events are queued and delivered in resourceVersion order.
    Live,
    /// The watch dropped (or was compacted away): events are lost until a relist.
    Broken,
    /// The component crashed: its caches are gone until it restarts.
    Down,
}

/// A watch: its queue and status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watch {
    /// Pending events, oldest first (shared between watchers' queues).
    pub queue: VecDeque<Arc<Ev>>,
    /// Status.
    pub status: WatchStatus,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            queue: VecDeque::new(),
            status: WatchStatus::Live,
        }
    }
}

/// A stored object with its resourceVersion.
pub type Stored<T> = BTreeMap<String, (T, u64)>;

/// The API server: objects, resourceVersion counter and the ClusterIP allocator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Api {
    /// Last resourceVersion handed out.
    pub rv: u64,
    /// Services by name.
    pub services: Stored<Service>,
    /// Pods by name.
    pub pods: Stored<Pod>,
    /// EndpointSlices by name.
    pub slices: Stored<EndpointSlice>,
    /// REG-4: released ClusterIPs not yet reusable (the mitigation).
    pub quarantined: BTreeSet<IpAddr>,
}

impl Api {
    /// Services (without versions).
    pub fn service_list(&self) -> Vec<&Service> {
        self.services.values().map(|(s, _)| s).collect()
    }
    /// Pods (without versions).
    pub fn pod_list(&self) -> Vec<&Pod> {
        self.pods.values().map(|(p, _)| p).collect()
    }
    /// Slices (without versions).
    pub fn slice_list(&self) -> Vec<&EndpointSlice> {
        self.slices.values().map(|(s, _)| s).collect()
    }
    /// A list of one kind, as a relist returns it.
    pub fn list<T: Clone>(map: &Stored<T>) -> Vec<(T, u64)> {
        map.values().cloned().collect()
    }
}

/// The EndpointSlice controller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EpsController {
    /// Cached Services.
    pub services: WatchCache<Service>,
    /// Cached Pods.
    pub pods: WatchCache<Pod>,
    /// Cached slices (including its own writes).
    pub slices: WatchCache<EndpointSlice>,
}

/// The cluster DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DnsServer {
    /// Cached Services.
    pub services: WatchCache<Service>,
    /// Cached slices.
    pub slices: WatchCache<EndpointSlice>,
}

impl DnsServer {
    /// What the server answers from: its caches (DNS-18: not synced while down).
    pub fn snapshot(&self, synced: bool) -> DnsSnapshot<'_> {
        DnsSnapshot {
            zone: ZONE,
            synced,
            services: self.services.objects().collect(),
            slices: self.slices.objects().collect(),
            pods: Vec::new(),
            namespaces: BTreeSet::new(),
            pods_mode: PodsMode::Disabled,
        }
    }
}

/// A node's proxy and its kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProxyNode {
    /// Cached Services.
    pub services: WatchCache<Service>,
    /// Cached slices.
    pub slices: WatchCache<EndpointSlice>,
    /// What the kernel forwards; survives a proxy crash.
    pub kernel: ProxyTable,
}

/// What the safety properties look back on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct History {
    /// (Service name, ClusterIP) pairs ever allocated.
    pub allocated: BTreeSet<(String, IpAddr)>,
    /// (Service name, endpoint address) pairs ever written to a slice.
    pub published: BTreeSet<(String, IpAddr)>,
}

/// Faults and changes used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Used {
    /// User changes.
    pub changes: u8,
    /// Crashes.
    pub crashes: u8,
    /// Watch drops.
    pub drops: u8,
}

/// The whole model state. Components sit behind `Arc` and are copied on
/// write, so the states the checker keeps share what a step did not touch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The API server.
    pub api: Arc<Api>,
    /// The EndpointSlice controller.
    pub eps: Arc<EpsController>,
    /// The cluster DNS.
    pub dns: Arc<DnsServer>,
    /// One proxy per node.
    pub proxies: Vec<Arc<ProxyNode>>,
    /// Watches: EndpointSlice controller, DNS, then one per proxy.
    pub watches: Vec<Watch>,
    /// The client's cached answer: the name it resolved and the address.
    pub client: Option<(String, IpAddr)>,
    /// Budget used.
    pub used: Used,
    /// History for safety properties.
    pub history: Arc<History>,
}

impl State {
    fn watch_index(w: Watcher) -> usize {
        match w {
            Watcher::Eps => 0,
            Watcher::Dns => 1,
            Watcher::Proxy(i) => 2 + usize::from(i),
        }
    }

    /// The watch of a watcher.
    pub fn watch(&self, w: Watcher) -> &Watch {
        &self.watches[Self::watch_index(w)]
    }

    /// The watch of a watcher, mutably.
    pub fn watch_mut(&mut self, w: Watcher) -> &mut Watch {
        &mut self.watches[Self::watch_index(w)]
    }

    /// What the DNS serves from now.
    pub fn dns_snapshot(&self) -> DnsSnapshot<'_> {
        self.dns
            .snapshot(self.watch(Watcher::Dns).status != WatchStatus::Down)
    }

    /// The API server, for writing.
    pub fn api_mut(&mut self) -> &mut Api {
        Arc::make_mut(&mut self.api)
    }
    /// The EndpointSlice controller, for writing.
    pub fn eps_mut(&mut self) -> &mut EpsController {
        Arc::make_mut(&mut self.eps)
    }
    /// The DNS, for writing.
    pub fn dns_mut(&mut self) -> &mut DnsServer {
        Arc::make_mut(&mut self.dns)
    }
    /// Proxy `i`, for writing.
    pub fn proxy_mut(&mut self, i: usize) -> &mut ProxyNode {
        Arc::make_mut(&mut self.proxies[i])
    }
    /// The history, for writing.
    pub fn history_mut(&mut self) -> &mut History {
        Arc::make_mut(&mut self.history)
    }

    /// All watchers.
    pub fn watchers(&self) -> impl Iterator<Item = Watcher> + use<> {
        let n = u8::try_from(self.proxies.len()).unwrap_or(u8::MAX);
        [Watcher::Eps, Watcher::Dns]
            .into_iter()
            .chain((0..n).map(Watcher::Proxy))
    }

    /// Quiescent: every watch live with nothing left to deliver.
    pub fn is_quiescent(&self) -> bool {
        self.watchers().all(|w| {
            let watch = self.watch(w);
            watch.status == WatchStatus::Live && watch.queue.is_empty()
        })
    }
}
