//! Which Services an event concerns (issue 13, finding 7): a Pod event
//! touches only the Services of its namespace whose selector matches the
//! Pod's labels now or before the event (a relabelled Pod leaves one
//! Service and joins another); a Node event touches Services only when the
//! Node's zone changes (status heartbeats every few seconds do not); and a
//! reconcile reads only the Pods of its namespace. Without this, every Node
//! update requeued every Service and every Pod event its whole namespace,
//! and each reconcile scanned every Pod of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Node as KNode, Pod as KPod, Service as KService};
use kube::ResourceExt;

/// A Service key: namespace and name.
pub type Key = (String, String);

type Labels = BTreeMap<String, String>;

/// Services by namespace, with their selectors (`None`: no selector, no
/// managed endpoints), and indexed by the first pair of each selector: a
/// Service can select a Pod only if the Pod carries that pair, so a Pod
/// event looks at the Services filed under its own labels, not at every
/// Service of the namespace.
#[derive(Debug, Default)]
pub struct Services {
    by_ns: HashMap<String, BTreeMap<String, Option<Labels>>>,
    /// (namespace, label key, label value) → Services whose selector's first pair it is.
    by_first_pair: HashMap<(String, String, String), BTreeSet<String>>,
}

fn first_pair(ns: &str, sel: &Labels) -> Option<(String, String, String)> {
    sel.iter()
        .next()
        .map(|(k, v)| (ns.to_owned(), k.clone(), v.clone()))
}

impl Services {
    fn unindex(&mut self, ns: &str, name: &str, sel: Option<&Labels>) {
        if let Some(key) = sel.and_then(|s| first_pair(ns, s))
            && let Some(set) = self.by_first_pair.get_mut(&key)
        {
            set.remove(name);
            if set.is_empty() {
                self.by_first_pair.remove(&key);
            }
        }
    }

    /// Follows a Service applied.
    pub fn apply(&mut self, s: &KService) {
        let selector = s
            .spec
            .as_ref()
            .and_then(|spec| spec.selector.clone())
            .filter(|sel| !sel.is_empty());
        let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
        if let Some(key) = selector.as_ref().and_then(|sel| first_pair(&ns, sel)) {
            self.by_first_pair
                .entry(key)
                .or_default()
                .insert(name.clone());
        }
        let before = self
            .by_ns
            .entry(ns.clone())
            .or_default()
            .insert(name.clone(), selector.clone());
        if let Some(Some(b)) = before
            && Some(&b) != selector.as_ref()
        {
            self.unindex(&ns, &name, Some(&b));
            // The new selector may share the old one's first pair.
            if let Some(key) = selector.as_ref().and_then(|sel| first_pair(&ns, sel)) {
                self.by_first_pair.entry(key).or_default().insert(name);
            }
        }
    }

    /// Follows a Service deleted.
    pub fn delete(&mut self, ns: &str, name: &str) {
        let mut gone = None;
        if let Some(m) = self.by_ns.get_mut(ns) {
            gone = m.remove(name);
            if m.is_empty() {
                self.by_ns.remove(ns);
            }
        }
        if let Some(sel) = gone.flatten() {
            self.unindex(ns, name, Some(&sel));
        }
    }

    /// Services of `ns` whose selector matches any of `labels`.
    fn selecting<'a>(
        &self,
        ns: &str,
        labels: impl IntoIterator<Item = &'a Labels> + Clone,
    ) -> Vec<Key> {
        let Some(m) = self.by_ns.get(ns) else {
            return Vec::new();
        };
        let mut out = BTreeSet::new();
        for l in labels.clone() {
            for (k, v) in l {
                let Some(names) = self
                    .by_first_pair
                    .get(&(ns.to_owned(), k.clone(), v.clone()))
                else {
                    continue;
                };
                for name in names {
                    let matches = m.get(name).and_then(Option::as_ref).is_some_and(|sel| {
                        labels
                            .clone()
                            .into_iter()
                            .any(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)))
                    });
                    if matches {
                        out.insert(name.clone());
                    }
                }
            }
        }
        out.into_iter().map(|name| (ns.to_owned(), name)).collect()
    }
}

/// Pods by namespace with the labels last seen, and indexed by label, so a
/// reconcile reads only the Pods its Service selects: reading every Pod of
/// the namespace for each Service was quadratic (at 10k Services and 30k
/// Pods the first sync had not finished after ten minutes).
#[derive(Debug, Default)]
pub struct Pods {
    by_ns: HashMap<String, BTreeMap<String, Labels>>,
    /// (namespace, label key, label value) → Pod names.
    by_label: HashMap<(String, String, String), BTreeSet<String>>,
}

impl Pods {
    fn index(&mut self, ns: &str, name: &str, labels: &Labels, add: bool) {
        for (k, v) in labels {
            let key = (ns.to_owned(), k.clone(), v.clone());
            if add {
                self.by_label
                    .entry(key)
                    .or_default()
                    .insert(name.to_owned());
            } else if let Some(set) = self.by_label.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
    }

    /// Follows a Pod applied: the Services it concerns.
    pub fn apply(&mut self, p: &KPod, services: &Services) -> Vec<Key> {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let now = p.labels().clone();
        let before = self
            .by_ns
            .entry(ns.clone())
            .or_default()
            .insert(name.clone(), now.clone());
        if let Some(b) = &before {
            self.index(&ns, &name, b, false);
        }
        self.index(&ns, &name, &now, true);
        match before {
            Some(b) => services.selecting(&ns, [&b, &now]),
            None => services.selecting(&ns, [&now]),
        }
    }

    /// Follows a Pod deleted (or gone across a relist): the Services it concerned.
    pub fn delete(&mut self, ns: &str, name: &str, services: &Services) -> Vec<Key> {
        let Some(m) = self.by_ns.get_mut(ns) else {
            return Vec::new();
        };
        let before = m.remove(name);
        if m.is_empty() {
            self.by_ns.remove(ns);
        }
        if let Some(b) = &before {
            self.index(ns, name, b, false);
        }
        before.map_or_else(Vec::new, |b| services.selecting(ns, [&b]))
    }

    /// The names of the Pods of `ns` whose labels match every pair of
    /// `selector` (none for an empty selector, which selects nothing).
    pub fn selected(&self, ns: &str, selector: &Labels) -> Vec<String> {
        let sets: Option<Vec<&BTreeSet<String>>> = selector
            .iter()
            .map(|(k, v)| self.by_label.get(&(ns.to_owned(), k.clone(), v.clone())))
            .collect();
        let Some(mut sets) = sets.filter(|s| !s.is_empty()) else {
            return Vec::new();
        };
        sets.sort_by_key(|s| s.len());
        sets[0]
            .iter()
            .filter(|name| sets[1..].iter().all(|s| s.contains(*name)))
            .cloned()
            .collect()
    }
}

/// Nodes' zones (`topology.kubernetes.io/zone`), the only Node field the
/// slices carry.
#[derive(Debug, Default)]
pub struct Zones {
    zone: HashMap<String, Option<String>>,
}

impl Zones {
    /// Follows a Node applied: whether its zone changed (then every
    /// Service may carry it).
    pub fn apply(&mut self, n: &KNode) -> bool {
        let z = n.labels().get("topology.kubernetes.io/zone").cloned();
        let had_zone = z.is_some();
        match self.zone.insert(n.name_any(), z.clone()) {
            Some(before) => before != z,
            None => had_zone,
        }
    }

    /// Follows a Node deleted: whether it had a zone.
    pub fn delete(&mut self, name: &str) -> bool {
        self.zone.remove(name).flatten().is_some()
    }
}

/// Namespaces with a Service: a set for tests.
pub fn namespaces(s: &Services) -> BTreeSet<String> {
    s.by_ns.keys().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, app: Option<&str>) -> KService {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "ns" },
            "spec": { "selector": app.map(|a| serde_json::json!({ "app": a })) },
        }))
        .unwrap()
    }

    fn pod(name: &str, app: &str) -> KPod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "ns", "labels": { "app": app } },
        }))
        .unwrap()
    }

    fn node(name: &str, zone: Option<&str>, heartbeat: &str) -> KNode {
        let mut labels = serde_json::Map::new();
        if let Some(z) = zone {
            labels.insert("topology.kubernetes.io/zone".into(), z.into());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels, "annotations": { "beat": heartbeat } },
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_event_concerns_only_the_services_that_select_it_now_or_before() {
        let mut services = Services::default();
        for i in 0..20 {
            services.apply(&svc(&format!("s{i}"), Some(&format!("app{i}"))));
        }
        services.apply(&svc("no-selector", None));
        let key = |n: &str| ("ns".to_owned(), n.to_owned());
        let mut pods = Pods::default();
        assert_eq!(pods.apply(&pod("p", "app3"), &services), [key("s3")]);
        // Relabelled from app3 to app7: both Services, no other.
        let mut moved = pods.apply(&pod("p", "app7"), &services);
        moved.sort();
        assert_eq!(moved, [key("s3"), key("s7")]);
        let app7: Labels = [("app".to_owned(), "app7".to_owned())].into();
        assert_eq!(pods.selected("ns", &app7), ["p"]);
        assert!(pods.selected("other", &app7).is_empty());
        assert_eq!(pods.delete("ns", "p", &services), [key("s7")]);
        assert!(pods.selected("ns", &app7).is_empty());
        assert!(pods.by_label.is_empty(), "a deleted Pod left index entries");
        services.delete("ns", "s7");
        assert!(pods.apply(&pod("q", "app7"), &services).is_empty());
        // A Service whose selector changes is filed under the new one only.
        services.apply(&svc("s7", Some("app3")));
        services.apply(&svc("s7", Some("app8")));
        assert!(
            pods.apply(&pod("r", "app3"), &services)
                .iter()
                .all(|k| k.1 != "s7")
        );
        assert_eq!(
            pods.apply(&pod("t", "app8"), &services),
            [key("s7"), key("s8")]
        );
        assert_eq!(namespaces(&services), BTreeSet::from(["ns".to_owned()]));
    }

    #[test]
    fn node_heartbeats_concern_no_service_and_a_zone_change_all() {
        let mut z = Zones::default();
        assert!(!z.apply(&node("a", None, "1")), "a new node without a zone");
        assert!(!z.apply(&node("a", None, "2")), "a heartbeat");
        assert!(z.apply(&node("a", Some("z1"), "3")), "the zone appears");
        assert!(!z.apply(&node("a", Some("z1"), "4")), "a heartbeat");
        assert!(z.apply(&node("a", Some("z2"), "5")), "the zone moves");
        assert!(
            z.apply(&node("b", Some("z1"), "1")),
            "a new node with a zone"
        );
        assert!(z.delete("b"));
        assert!(!z.delete("nope"));
    }

    #[test]
    fn a_reconcile_reads_only_the_pods_its_selector_picks() {
        let services = Services::default();
        let mut pods = Pods::default();
        let labelled = |name: &str, labels: serde_json::Value| -> KPod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "namespace": "ns", "labels": labels },
            }))
            .unwrap()
        };
        pods.apply(
            &labelled("a", serde_json::json!({ "app": "x", "tier": "web" })),
            &services,
        );
        pods.apply(&labelled("b", serde_json::json!({ "app": "x" })), &services);
        pods.apply(
            &labelled("c", serde_json::json!({ "app": "y", "tier": "web" })),
            &services,
        );
        let sel = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(pods.selected("ns", &sel(&[("app", "x")])), ["a", "b"]);
        assert_eq!(
            pods.selected("ns", &sel(&[("app", "x"), ("tier", "web")])),
            ["a"]
        );
        assert_eq!(
            pods.selected("other", &sel(&[("app", "x")])),
            Vec::<String>::new()
        );
        assert!(
            pods.selected("ns", &sel(&[])).is_empty(),
            "an empty selector selects nothing"
        );
        assert!(pods.selected("ns", &sel(&[("app", "z")])).is_empty());
        // Relabelled: it leaves x and joins y.
        pods.apply(&labelled("b", serde_json::json!({ "app": "y" })), &services);
        assert_eq!(pods.selected("ns", &sel(&[("app", "x")])), ["a"]);
        assert_eq!(pods.selected("ns", &sel(&[("app", "y")])), ["b", "c"]);
        pods.delete("ns", "c", &services);
        assert_eq!(pods.selected("ns", &sel(&[("app", "y")])), ["b"]);
        assert!(pods.by_label.keys().all(|(_, k, v)| k != "tier"
            || v != "web"
            || pods.by_label[&("ns".to_owned(), k.clone(), v.clone())].contains("a")));
    }
}
