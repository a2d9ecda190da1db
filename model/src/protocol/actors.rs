//! What each actor does when it takes a step. Controllers call the shipped
//! reconcile functions ([`plan_slices`], [`plan`]) on their caches.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{ObjectKey, Question, RType};
use crate::reconcile::{SliceWrite, WatchEvent, apply_ops, plan, plan_slices};
use crate::spec::{classify, dns_answer, endpoints_for, proxy_table, resolve};

use super::catalog::{self, NAMESPACE};
use super::state::{Api, Ev, State, WatchStatus, Watcher};
use super::{Bug, Cfg};

fn subscribed(w: Watcher, ev: &Ev) -> bool {
    !matches!((w, ev), (Watcher::Dns | Watcher::Proxy(_), Ev::Pod(_)))
}

/// PROTO-1: a write is queued, in resourceVersion order, on every live watch
/// of that kind. Broken and crashed watches miss it.
fn emit(s: &mut State, ev: Ev) {
    let ev = Arc::new(ev);
    for w in s.watchers().collect::<Vec<_>>() {
        let watch = s.watch_mut(w);
        if watch.status == WatchStatus::Live && subscribed(w, &ev) {
            watch.queue.push_back(ev.clone());
        }
    }
}

fn next_rv(api: &mut Api) -> u64 {
    api.rv += 1;
    api.rv
}

impl Cfg {
    /// REG-2, REG-4: the lowest pool address not held by a live Service and
    /// not quarantined.
    pub(crate) fn free_ip(&self, s: &State) -> Option<IpAddr> {
        let used: BTreeSet<IpAddr> = s
            .api
            .service_list()
            .iter()
            .flat_map(|svc| svc.cluster_ips.ips().to_vec())
            .collect();
        (0..self.service_ips)
            .map(catalog::service_ip)
            .find(|ip| !used.contains(ip) && !s.api.quarantined.contains(ip))
    }

    /// User: POST a catalog Service; it is admitted with a fresh ClusterIP.
    pub(crate) fn create_service(&self, s: &mut State, index: usize) -> bool {
        let name = catalog::SERVICES[index].0;
        if s.api.services.contains_key(name) {
            return false;
        }
        let Some(ip) = self.free_ip(s) else {
            return false;
        };
        let svc = catalog::service(index, ip);
        let rv = next_rv(s.api_mut());
        s.api_mut()
            .services
            .insert(name.to_owned(), (svc.clone(), rv));
        s.history_mut().allocated.insert((name.to_owned(), ip));
        emit(s, Ev::Svc(WatchEvent::Applied(svc, rv)));
        true
    }

    /// User: DELETE a Service. Its slices go with it (EPS-13, owner references), its
    /// ClusterIP is released — into quarantine when the mitigation is on.
    pub(crate) fn delete_service(&self, s: &mut State, index: usize) -> bool {
        let name = catalog::SERVICES[index].0;
        let Some((svc, _)) = s.api_mut().services.remove(name) else {
            return false;
        };
        let rv = next_rv(s.api_mut());
        emit(s, Ev::Svc(WatchEvent::Deleted(svc.key.clone(), rv)));
        let owned: Vec<String> = s
            .api
            .slices
            .iter()
            .filter(|(_, (sl, _))| sl.service == name)
            .map(|(k, _)| k.clone())
            .collect();
        for slice in owned {
            s.api_mut().slices.remove(&slice);
            let rv = next_rv(s.api_mut());
            emit(
                s,
                Ev::Slice(WatchEvent::Deleted(ObjectKey::new(NAMESPACE, slice), rv)),
            );
        }
        if self.quarantine {
            s.api_mut()
                .quarantined
                .extend(svc.cluster_ips.ips().iter().copied());
        }
        true
    }

    /// User or kubelet: write a Pod (create, readiness, deletionTimestamp).
    pub(crate) fn put_pod(&self, s: &mut State, pod: crate::cluster::Pod) {
        let rv = next_rv(s.api_mut());
        s.api_mut()
            .pods
            .insert(pod.key.name.clone(), (pod.clone(), rv));
        emit(s, Ev::Pod(WatchEvent::Applied(pod, rv)));
    }

    /// Kubelet: the Pod is gone.
    pub(crate) fn delete_pod(&self, s: &mut State, index: usize) -> bool {
        let name = catalog::PODS[index].0;
        if s.api_mut().pods.remove(name).is_none() {
            return false;
        }
        let rv = next_rv(s.api_mut());
        emit(
            s,
            Ev::Pod(WatchEvent::Deleted(ObjectKey::new(NAMESPACE, name), rv)),
        );
        true
    }

    /// The EndpointSlice controller reconciles Services from its cache and
    /// writes the plan. PROTO-4: its cache takes its own writes at once (as
    /// the write's response), so the later echo is recognised as stale.
    fn eps_reconcile(&self, s: &mut State, names: Vec<String>) {
        for name in names {
            let key = ObjectKey::new(NAMESPACE, name.clone());
            let Some(svc) = s.eps.services.get(&key).cloned() else {
                continue;
            };
            let desired = endpoints_for(&svc, s.eps.pods.objects());
            let existing: Vec<_> = s
                .eps
                .slices
                .objects()
                .filter(|sl| sl.service == name)
                .cloned()
                .collect();
            let refs: Vec<_> = existing.iter().collect();
            for write in plan_slices(&desired, &refs) {
                self.write_slice(s, &name, write);
            }
        }
    }

    fn write_slice(&self, s: &mut State, service: &str, write: SliceWrite) {
        // A write for a Service the store no longer has is garbage-collected
        // at once: the model drops it.
        if !s.api.services.contains_key(service) {
            return;
        }
        let (ev, slice_for_history) = match write {
            SliceWrite::Create { shape, endpoints } => {
                let name = (0..)
                    .map(|n| format!("{service}-{n}"))
                    .find(|n| !s.api.slices.contains_key(n))
                    .expect("an unused slice name");
                let slice = crate::cluster::EndpointSlice {
                    key: ObjectKey::new(NAMESPACE, name.clone()),
                    service: service.to_owned(),
                    family: shape.family,
                    ports: shape.ports,
                    endpoints,
                };
                let rv = next_rv(s.api_mut());
                s.api_mut().slices.insert(name, (slice.clone(), rv));
                (WatchEvent::Applied(slice.clone(), rv), Some(slice))
            }
            SliceWrite::Update(slice) => {
                if !s.api.slices.contains_key(&slice.key.name) {
                    return;
                }
                let rv = next_rv(s.api_mut());
                s.api_mut()
                    .slices
                    .insert(slice.key.name.clone(), (slice.clone(), rv));
                (WatchEvent::Applied(slice.clone(), rv), Some(slice))
            }
            SliceWrite::Delete(key) => {
                if s.api_mut().slices.remove(&key.name).is_none() {
                    return;
                }
                let rv = next_rv(s.api_mut());
                (WatchEvent::Deleted(key, rv), None)
            }
        };
        if let Some(slice) = slice_for_history {
            for ep in &slice.endpoints {
                s.history_mut()
                    .published
                    .insert((service.to_owned(), ep.address));
            }
        }
        s.eps_mut().slices.apply(ev.clone());
        emit(s, Ev::Slice(ev));
    }

    /// A proxy programs its kernel: desired table from its cache, `plan`
    /// against what the kernel holds, apply.
    fn proxy_sync(&self, s: &mut State, i: usize) {
        let node = catalog::node(i);
        let p = s.proxy_mut(i);
        let slices: Vec<_> = p.slices.objects().collect();
        let desired = proxy_table(p.services.objects(), &slices, &node);
        let ops = plan(&desired, &p.kernel);
        apply_ops(&mut p.kernel, &ops);
    }

    /// Delivers the oldest queued event to a watcher and lets it react.
    pub(crate) fn deliver(&self, s: &mut State, w: Watcher) -> bool {
        let Some(ev) = s.watch_mut(w).queue.pop_front() else {
            return false;
        };
        let ev = Arc::unwrap_or_clone(ev);
        match w {
            Watcher::Eps => {
                let names: Vec<String> = match ev {
                    Ev::Svc(e) => {
                        let name = match &e {
                            WatchEvent::Applied(svc, _) => svc.key.name.clone(),
                            WatchEvent::Deleted(k, _) => k.name.clone(),
                            WatchEvent::Relisted(_) => String::new(),
                        };
                        if s.eps_mut().services.apply(e) {
                            vec![name]
                        } else {
                            Vec::new()
                        }
                    }
                    Ev::Pod(e) => {
                        if s.eps_mut().pods.apply(e) {
                            s.eps
                                .services
                                .objects()
                                .map(|svc| svc.key.name.clone())
                                .collect()
                        } else {
                            Vec::new()
                        }
                    }
                    Ev::Slice(e) => {
                        s.eps_mut().slices.apply(e);
                        Vec::new()
                    }
                };
                self.eps_reconcile(s, names);
            }
            Watcher::Dns => match ev {
                Ev::Svc(WatchEvent::Deleted(..)) if self.bug == Bug::DnsIgnoresDeletes => {}
                Ev::Svc(e) => {
                    s.dns_mut().services.apply(e);
                }
                Ev::Slice(e) => {
                    s.dns_mut().slices.apply(e);
                }
                Ev::Pod(_) => {}
            },
            Watcher::Proxy(i) => {
                let i = usize::from(i);
                let changed = match ev {
                    Ev::Svc(e) => s.proxy_mut(i).services.apply(e),
                    Ev::Slice(e) => s.proxy_mut(i).slices.apply(e),
                    Ev::Pod(_) => false,
                };
                if changed {
                    self.proxy_sync(s, i);
                }
            }
        }
        true
    }

    /// PROTO-2, PROTO-3: a watcher lists everything afresh (after a dropped
    /// watch, or on restart) and reconciles all of it.
    pub(crate) fn relist(&self, s: &mut State, w: Watcher, restart: bool) {
        let services = Api::list(&s.api.services);
        let slices = Api::list(&s.api.slices);
        s.watch_mut(w).status = WatchStatus::Live;
        s.watch_mut(w).queue.clear();
        match w {
            Watcher::Eps => {
                s.eps_mut().services.apply(WatchEvent::Relisted(services));
                let pods = Api::list(&s.api.pods);
                s.eps_mut().pods.apply(WatchEvent::Relisted(pods));
                s.eps_mut().slices.apply(WatchEvent::Relisted(slices));
                let names = s
                    .eps
                    .services
                    .objects()
                    .map(|svc| svc.key.name.clone())
                    .collect();
                self.eps_reconcile(s, names);
            }
            Watcher::Dns => {
                s.dns_mut().services.apply(WatchEvent::Relisted(services));
                s.dns_mut().slices.apply(WatchEvent::Relisted(slices));
            }
            Watcher::Proxy(i) => {
                let i = usize::from(i);
                if !(restart && self.bug == Bug::ProxyNoRelistOnRestart) {
                    s.proxy_mut(i)
                        .services
                        .apply(WatchEvent::Relisted(services));
                    s.proxy_mut(i).slices.apply(WatchEvent::Relisted(slices));
                }
                self.proxy_sync(s, i);
            }
        }
    }

    /// A component crashes: its caches and queue are gone; a proxy's kernel stays.
    pub(crate) fn crash(&self, s: &mut State, w: Watcher) {
        let watch = s.watch_mut(w);
        watch.status = WatchStatus::Down;
        watch.queue.clear();
        match w {
            Watcher::Eps => s.eps = Default::default(),
            Watcher::Dns => s.dns = Default::default(),
            Watcher::Proxy(i) => {
                let p = s.proxy_mut(usize::from(i));
                p.services = Default::default();
                p.slices = Default::default();
            }
        }
    }

    /// The client resolves its target's short name through the cluster DNS
    /// with its kubelet-written resolv.conf (glibc) and keeps the first address.
    pub(crate) fn client_resolve(&self, s: &mut State) -> bool {
        let snap = s.dns_snapshot();
        let name = catalog::CLIENT.1;
        let res = resolve(
            &catalog::client_resolv_conf(),
            name,
            crate::cluster::ResolverLib::Glibc,
            |n| classify(&dns_answer(&snap, &Question::new(n, RType::A))),
        );
        match res.result {
            Ok(ips) => {
                let ip = ips[0];
                s.client = Some((name.to_owned(), ip));
                true
            }
            Err(_) => false,
        }
    }

    /// REG-4: a quarantined address may be released once no DNS answer can
    /// still carry it: the DNS has no Service with it, and no client holds it.
    /// This is the model's reading of "quarantine longer than the DNS TTL plus
    /// the watch propagation bound".
    pub(crate) fn may_release(&self, s: &State, ip: IpAddr) -> bool {
        s.api.quarantined.contains(&ip)
            && !s
                .dns
                .services
                .objects()
                .any(|svc| svc.cluster_ips.ips().contains(&ip))
            && s.client.as_ref().is_none_or(|(_, held)| *held != ip)
    }
}
