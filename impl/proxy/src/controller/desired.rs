//! The desired table, kept between batches: each Service's entries (the
//! oracle's [`proxy_table`] over that Service and its slices alone) are
//! recomputed only when the Service or one of its slices changed, so a
//! batch costs what it touches, not what the cluster holds. The whole
//! table is recomputed from the caches when a cache relists, at every
//! resync (repair), when this Node changes (NodePorts, `internalTrafficPolicy:
//! Local` and zones read it) and when two Services claim one virtual
//! address (the oracle's order decides; never admitted by the API server).
//!
//! An object that stops converting keeps its last good form (as
//! [`LastGood`](super::LastGood) does for whole caches); a re-created one
//! (another UID) that never converted is left out.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use signpost_model::cluster::{EndpointSlice, Node, ObjectKey, ProxyTable, Service, VirtualKey};
use signpost_model::spec::proxy_table;
use signpost_runtime::metrics::Counter;

use super::{Cache, Event};
use crate::plane::nftables::build;

/// Which entries a batch may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// The whole table was recomputed: any entry may differ.
    All,
    /// Only entries under these keys may differ.
    Keys(BTreeSet<VirtualKey>),
}

/// One object's last good form, with the UID and version it was read at.
#[derive(Debug, Clone)]
struct Good<M> {
    uid: String,
    version: Option<String>,
    model: M,
}

/// The last good forms of one kind, by namespace and name.
#[derive(Debug)]
struct Forms<M> {
    kind: &'static str,
    good: HashMap<ObjectKey, Good<M>>,
}

impl<M: Clone> Forms<M> {
    fn new(kind: &'static str) -> Self {
        Forms {
            kind,
            good: HashMap::new(),
        }
    }

    /// Reads `obj` (absent: deleted) into its form; whether the form changed.
    fn read<K, E>(&mut self, key: &ObjectKey, obj: Option<Arc<K>>, invalid: &Counter) -> bool
    where
        K: kube::Resource,
        M: for<'a> TryFrom<&'a K, Error = E>,
        E: std::fmt::Display,
    {
        let Some(obj) = obj else {
            return self.good.remove(key).is_some();
        };
        let uid = obj.uid().unwrap_or_default();
        let version = obj.meta().resource_version.clone();
        if let Some(g) = self.good.get(key)
            && g.uid == uid
            && version.is_some()
            && g.version == version
        {
            return false;
        }
        match M::try_from(&*obj) {
            Ok(model) => {
                self.good.insert(
                    key.clone(),
                    Good {
                        uid,
                        version,
                        model,
                    },
                );
                true
            }
            Err(e) => {
                invalid.inc();
                let name = signpost_runtime::display_key(&*obj);
                match self.good.get(key) {
                    Some(g) if g.uid == uid => {
                        tracing::warn!(kind = self.kind, %name, error = %e, "cannot read this version; keeping its last good state");
                        false
                    }
                    _ => {
                        tracing::warn!(kind = self.kind, %name, error = %e, "skipping an object that never converted");
                        self.good.remove(key).is_some()
                    }
                }
            }
        }
    }

    fn get(&self, key: &ObjectKey) -> Option<&M> {
        self.good.get(key).map(|g| &g.model)
    }
}

fn object_ref<K: kube::Resource<DynamicType = ()>>(key: &ObjectKey) -> ObjectRef<K> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

/// The desired table and what it was computed from.
#[derive(Debug)]
pub struct Desired {
    services: Forms<Service>,
    slices: Forms<EndpointSlice>,
    /// Service → its slices.
    slices_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Service → the keys of its entries.
    owned: HashMap<ObjectKey, Vec<VirtualKey>>,
    table: ProxyTable,
    /// The node the table was computed for (`None`: never computed).
    node: Option<Node>,
    /// Two Services claimed one key at the last computation.
    contested: bool,
}

impl Default for Desired {
    fn default() -> Self {
        Desired {
            services: Forms::new("Service"),
            slices: Forms::new("EndpointSlice"),
            slices_of: HashMap::new(),
            owned: HashMap::new(),
            table: ProxyTable::new(),
            node: None,
            contested: false,
        }
    }
}

impl Desired {
    /// The table as last computed (normalized for the data plane).
    pub fn table(&self) -> &ProxyTable {
        &self.table
    }

    /// Brings the table up to date after `batch`: every object of the
    /// caches is read again when `whole` (or a cache relisted, or the node
    /// changed), else only the Services and slices the batch names.
    pub fn update(
        &mut self,
        (services, slices): (&Store<KService>, &Store<KSlice>),
        batch: &[Event],
        node: &Node,
        whole: bool,
        invalid: &Counter,
    ) -> Touched {
        let relisted = batch.iter().any(|e| matches!(e, Event::Listed(_)));
        if whole || relisted || self.contested || self.node.as_ref() != Some(node) {
            self.reload(services, slices, node, invalid);
            return Touched::All;
        }
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        for ev in batch {
            match ev {
                Event::Changed(Cache::Services, key) => {
                    self.services
                        .read(key, services.get(&object_ref(key)), invalid);
                    dirty.insert(key.clone());
                }
                Event::Changed(Cache::EndpointSlices, key) => {
                    let before = self.slices.get(key).map(EndpointSlice::service_key);
                    if self.slices.read(key, slices.get(&object_ref(key)), invalid) {
                        let after = self.slices.get(key).map(EndpointSlice::service_key);
                        for (owner, present) in [(before, false), (after, true)] {
                            let Some(owner) = owner else { continue };
                            let set = self.slices_of.entry(owner.clone()).or_default();
                            if present {
                                set.insert(key.clone());
                            } else {
                                set.remove(key);
                            }
                            if set.is_empty() {
                                self.slices_of.remove(&owner);
                            }
                            dirty.insert(owner);
                        }
                    }
                }
                _ => {}
            }
        }
        let mut keys = BTreeSet::new();
        for svc in &dirty {
            keys.extend(self.refresh(svc, node));
        }
        if self.contested {
            self.reload(services, slices, node, invalid);
            return Touched::All;
        }
        Touched::Keys(keys)
    }

    /// Recomputes one Service's entries; returns the keys they had and have.
    fn refresh(&mut self, svc: &ObjectKey, node: &Node) -> Vec<VirtualKey> {
        let mut keys = self.owned.remove(svc).unwrap_or_default();
        for k in &keys {
            self.table.remove(k);
        }
        let Some(service) = self.services.get(svc) else {
            return keys;
        };
        let own: Vec<&EndpointSlice> = self
            .slices_of
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect();
        let fragment = build::normalize(proxy_table([service], &own, node));
        let mine: Vec<VirtualKey> = fragment.keys().copied().collect();
        for (k, vs) in fragment {
            if self.table.insert(k, vs).is_some() {
                self.contested = true;
            }
        }
        keys.extend(mine.iter().copied());
        self.owned.insert(svc.clone(), mine);
        keys
    }

    /// Reads every cached object and recomputes the whole table: each
    /// Service's entries, merged (the oracle's whole table where two
    /// Services claim one key).
    fn reload(
        &mut self,
        services: &Store<KService>,
        slices: &Store<KSlice>,
        node: &Node,
        invalid: &Counter,
    ) {
        fn keyed<K: kube::Resource>(objs: Vec<Arc<K>>) -> HashMap<ObjectKey, Arc<K>> {
            objs.into_iter()
                .map(|o| {
                    (
                        ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any()),
                        o,
                    )
                })
                .collect()
        }
        let (svc_objs, slice_objs) = (keyed(services.state()), keyed(slices.state()));
        // Gone from the cache: forgotten.
        self.services.good.retain(|k, _| svc_objs.contains_key(k));
        self.slices.good.retain(|k, _| slice_objs.contains_key(k));
        for (k, o) in svc_objs {
            self.services.read(&k, Some(o), invalid);
        }
        for (k, o) in slice_objs {
            self.slices.read(&k, Some(o), invalid);
        }
        self.slices_of.clear();
        for (k, g) in &self.slices.good {
            self.slices_of
                .entry(g.model.service_key())
                .or_default()
                .insert(k.clone());
        }
        self.owned.clear();
        self.table.clear();
        self.contested = false;
        let keys: Vec<ObjectKey> = self.services.good.keys().cloned().collect();
        for k in &keys {
            self.refresh(k, node);
        }
        if self.contested {
            let all: Vec<&EndpointSlice> = self.slices.good.values().map(|g| &g.model).collect();
            self.table = build::normalize(proxy_table(
                self.services.good.values().map(|g| &g.model),
                &all,
                node,
            ));
        }
        self.node = Some(node.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event as WEvent;
    use serde_json::json;

    use super::*;

    fn svc(name: &str, ip: &str, node_port: Option<u16>, version: u32) -> KService {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "default", "uid": format!("u-{name}"),
                          "resourceVersion": version.to_string() },
            "spec": { "type": if node_port.is_some() { "NodePort" } else { "ClusterIP" },
                      "clusterIP": ip, "clusterIPs": [ip], "selector": { "app": name },
                      "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                                  "nodePort": node_port }] }
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, addrs: &[&str], version: u32) -> KSlice {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "default", "uid": format!("u-{name}"),
                          "resourceVersion": version.to_string(),
                          "labels": { "kubernetes.io/service-name": service } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": addrs.iter().map(|a| json!({ "addresses": [a], "conditions": { "ready": true }, "nodeName": "node-a" })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn node(addr: &str) -> Node {
        Node {
            name: "node-a".into(),
            addresses: vec![addr.parse::<IpAddr>().unwrap()],
            zone: None,
        }
    }

    /// The oracle over everything cached, as the data plane holds it.
    fn whole(services: &Store<KService>, slices: &Store<KSlice>, node: &Node) -> ProxyTable {
        let svcs: Vec<Service> = services
            .state()
            .iter()
            .map(|s| Service::try_from(&**s).unwrap())
            .collect();
        let sls: Vec<EndpointSlice> = slices
            .state()
            .iter()
            .map(|s| EndpointSlice::try_from(&**s).unwrap())
            .collect();
        let refs: Vec<&EndpointSlice> = sls.iter().collect();
        build::normalize(proxy_table(&svcs, &refs, node))
    }

    enum Step {
        Svc(Box<KService>),
        SvcGone(&'static str),
        Slice(Box<KSlice>),
        SliceGone(&'static str),
        Node(&'static str),
    }

    #[test]
    fn an_incremental_table_equals_the_whole_table_and_names_what_changed() {
        let (services, mut sw): (Store<KService>, Writer<KService>) =
            kube::runtime::reflector::store();
        let (slices, mut lw): (Store<KSlice>, Writer<KSlice>) = kube::runtime::reflector::store();
        let invalid = Counter::default();
        let mut desired = Desired::default();
        let mut node = node("192.168.0.2");
        let key = |name: &str| ObjectKey::new("default", name);
        let steps = vec![
            Step::Svc(Box::new(svc("voy", "10.96.0.10", None, 1))),
            Step::Slice(Box::new(slice(
                "voy-1",
                "voy",
                &["10.244.0.5", "10.244.0.6"],
                2,
            ))),
            Step::Svc(Box::new(svc("web", "10.96.0.11", Some(30080), 3))),
            Step::Slice(Box::new(slice("web-1", "web", &["10.244.0.7"], 4))),
            Step::Slice(Box::new(slice("voy-1", "voy", &["10.244.0.5"], 5))),
            // A slice moves to another Service: both change.
            Step::Slice(Box::new(slice("voy-1", "web", &["10.244.0.5"], 6))),
            Step::Slice(Box::new(slice("voy-2", "voy", &["10.244.0.9"], 7))),
            Step::Node("192.168.0.3"),
            Step::Svc(Box::new(svc("voy", "10.96.0.12", None, 8))),
            Step::SliceGone("web-1"),
            Step::SvcGone("web"),
            Step::Slice(Box::new(slice("voy-3", "voy", &["10.244.0.10"], 9))),
        ];
        // Everything listed, then one change per batch.
        lw.apply_watcher_event(&WEvent::Init);
        lw.apply_watcher_event(&WEvent::InitDone);
        sw.apply_watcher_event(&WEvent::Init);
        sw.apply_watcher_event(&WEvent::InitDone);
        let first = desired.update((&services, &slices), &[], &node, true, &invalid);
        assert_eq!(first, Touched::All);
        for (i, step) in steps.into_iter().enumerate() {
            let before = desired.table().clone();
            let ev = match step {
                Step::Svc(s) => {
                    let k = key(&s.name_any());
                    sw.apply_watcher_event(&WEvent::Apply(*s));
                    Some(Event::Changed(Cache::Services, k))
                }
                Step::SvcGone(n) => {
                    let s = services.get(&object_ref(&key(n))).unwrap();
                    sw.apply_watcher_event(&WEvent::Delete((*s).clone()));
                    Some(Event::Changed(Cache::Services, key(n)))
                }
                Step::Slice(s) => {
                    let k = key(&s.name_any());
                    lw.apply_watcher_event(&WEvent::Apply(*s));
                    Some(Event::Changed(Cache::EndpointSlices, k))
                }
                Step::SliceGone(n) => {
                    let s = slices.get(&object_ref(&key(n))).unwrap();
                    lw.apply_watcher_event(&WEvent::Delete((*s).clone()));
                    Some(Event::Changed(Cache::EndpointSlices, key(n)))
                }
                Step::Node(a) => {
                    node = super::tests::node(a);
                    None
                }
            };
            let batch: Vec<Event> = ev.into_iter().collect();
            let touched = desired.update((&services, &slices), &batch, &node, false, &invalid);
            let want = whole(&services, &slices, &node);
            assert_eq!(desired.table(), &want, "step {i}");
            match touched {
                Touched::All => {
                    assert!(batch.is_empty(), "step {i}: only the node change is whole")
                }
                Touched::Keys(keys) => {
                    assert!(!keys.is_empty(), "step {i}");
                    for (k, vs) in &want {
                        if !keys.contains(k) {
                            assert_eq!(before.get(k), Some(vs), "step {i}: {k:?} changed unnamed");
                        }
                    }
                    for k in before.keys() {
                        assert!(
                            want.contains_key(k) || keys.contains(k),
                            "step {i}: {k:?} went unnamed"
                        );
                    }
                }
            }
        }
    }
}
