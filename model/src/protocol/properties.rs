//! The model's properties, each named after the spec rule it checks. Safety
//! is `always`; convergence is `always` over quiescent states (stateright's
//! `eventually` is unsound on cycles); vacuity checks are `sometimes`.

use std::collections::{BTreeMap, BTreeSet};

use stateright::Property;

use crate::cluster::{Endpoint, Question, RType, ResolverLib};
use crate::spec::{
    DnsSnapshot, PodsMode, SliceShape, classify, dns_answer, endpoints_for, proxy_table, resolve,
};

use super::ProtocolModel;
use super::catalog::{self, NAMESPACE, SERVICE_PORT, ZONE};
use super::state::{State, WatchStatus, Watcher};

/// Every property name, in the order the model lists them.
pub const PROPERTIES: &[&str] = &[
    REG_UNIQUE,
    EPS_SELECTED,
    EPS_SLICE_SIZE,
    PXY_PUBLISHED,
    DNS_ALLOCATED,
    RES_INTENDED,
    EPS_CONVERGE,
    DNS_CONVERGE,
    PXY_CONVERGE,
    RES_REACH,
    V_QUIESCENT,
    V_DNS_LAGS,
    V_TERMINATING,
    V_REJECT,
    V_REUSED,
    V_CLIENT,
    V_CRASH,
    V_DROP,
    V_MISSED,
];

/// Property name.
pub const REG_UNIQUE: &str = "REG-3 ClusterIPs are unique among live Services";
/// Property name.
pub const EPS_SELECTED: &str = "EPS-12 slices only name Pods the selector matched";
/// Property name.
pub const EPS_SLICE_SIZE: &str = "EPS-9 no slice holds more than 100 endpoints";
/// Property name.
pub const PXY_PUBLISHED: &str = "PXY-9 proxies forward only to endpoints published for the Service";
/// Property name.
pub const DNS_ALLOCATED: &str = "DNS-21 DNS answers carry only ClusterIPs allocated to that name";
/// Property name.
pub const RES_INTENDED: &str = "RES-5 a connection lands on the Service the client named";
/// Property name.
pub const EPS_CONVERGE: &str = "EPS-11 at quiescence slices equal the oracle";
/// Property name.
pub const DNS_CONVERGE: &str = "DNS-20 at quiescence DNS answers equal the oracle";
/// Property name.
pub const PXY_CONVERGE: &str = "PXY-10 at quiescence every proxy table equals the oracle";
/// Property name.
pub const RES_REACH: &str = "RES-6 at quiescence a client reaches a ready Pod";
/// Property name.
pub const V_QUIESCENT: &str = "vacuity: quiescent after user changes";
/// Property name.
pub const V_DNS_LAGS: &str = "vacuity: the DNS lags the store";
/// Property name.
pub const V_TERMINATING: &str = "vacuity: a proxy falls back to a terminating endpoint";
/// Property name.
pub const V_REJECT: &str = "vacuity: a ClusterIP port rejects for lack of endpoints";
/// Property name.
pub const V_REUSED: &str = "vacuity: a released ClusterIP is reused by another Service";
/// Property name.
pub const V_CLIENT: &str = "vacuity: the client holds an answer";
/// Property name.
pub const V_CRASH: &str = "vacuity: converged after a crash and restart";
/// Property name.
pub const V_DROP: &str = "vacuity: converged after a dropped watch and relist";
/// Property name.
pub const V_MISSED: &str = "vacuity: a broken watch misses a change";

/// Quiescent: every watch live with nothing queued.
pub fn is_quiescent(s: &State) -> bool {
    s.is_quiescent()
}

pub(super) fn all() -> Vec<Property<ProtocolModel>> {
    vec![
        Property::always(REG_UNIQUE, |_, s: &State| cluster_ips_unique(s)),
        Property::always(EPS_SELECTED, |_, s: &State| slices_name_selected_pods(s)),
        Property::always(EPS_SLICE_SIZE, |_, s: &State| slices_within_limit(s)),
        Property::always(PXY_PUBLISHED, |_, s: &State| {
            proxies_forward_to_published(s)
        }),
        Property::always(DNS_ALLOCATED, |_, s: &State| dns_carries_allocated(s)),
        Property::always(RES_INTENDED, |m: &ProtocolModel, s: &State| {
            connection_lands_on_named_service(m, s)
        }),
        Property::always(EPS_CONVERGE, |_, s: &State| {
            !s.is_quiescent() || slices_converged(s)
        }),
        Property::always(DNS_CONVERGE, |_, s: &State| {
            !s.is_quiescent() || dns_converged(s)
        }),
        Property::always(PXY_CONVERGE, |_, s: &State| {
            !s.is_quiescent() || proxies_converged(s)
        }),
        Property::always(RES_REACH, |m: &ProtocolModel, s: &State| {
            !s.is_quiescent() || client_reaches_ready_pod(m, s)
        }),
        Property::sometimes(V_QUIESCENT, |_, s: &State| {
            s.is_quiescent() && s.used.changes > 0
        }),
        Property::sometimes(V_DNS_LAGS, |_, s: &State| {
            dns_service_names(s) != store_service_names(s)
        }),
        Property::sometimes(V_TERMINATING, |_, s: &State| forwards_to_terminating(s)),
        Property::sometimes(V_REJECT, |_, s: &State| some_port_rejects(s)),
        Property::sometimes(V_REUSED, |_, s: &State| clusterip_reused(s)),
        Property::sometimes(V_CLIENT, |_, s: &State| s.client.is_some()),
        Property::sometimes(V_CRASH, |_, s: &State| {
            s.is_quiescent() && s.used.crashes > 0
        }),
        Property::sometimes(V_DROP, |_, s: &State| s.is_quiescent() && s.used.drops > 0),
        Property::sometimes(V_MISSED, |_, s: &State| broken_watch_missed_change(s)),
    ]
}

fn slices_within_limit(s: &State) -> bool {
    s.api
        .slice_list()
        .iter()
        .all(|sl| sl.endpoints.len() <= crate::spec::MAX_ENDPOINTS_PER_SLICE)
}

fn some_port_rejects(s: &State) -> bool {
    s.proxies
        .iter()
        .any(|p| p.kernel.values().any(|v| v.rejects()))
}

fn cluster_ips_unique(s: &State) -> bool {
    let mut seen = BTreeSet::new();
    s.api
        .service_list()
        .iter()
        .flat_map(|svc| svc.cluster_ips.ips().to_vec())
        .all(|ip| seen.insert(ip))
}

fn slices_name_selected_pods(s: &State) -> bool {
    s.api.slice_list().iter().all(|slice| {
        slice.endpoints.iter().all(|ep| {
            catalog::pod_by_ip(ep.address).is_some_and(|p| catalog::selects(&slice.service, p))
        })
    })
}

fn proxies_forward_to_published(s: &State) -> bool {
    s.proxies.iter().all(|p| {
        p.kernel.iter().all(|(key, vs)| {
            vs.backends.iter().all(|b| {
                s.history.allocated.iter().any(|(name, ip)| {
                    *ip == key.ip && s.history.published.contains(&(name.clone(), b.ip()))
                })
            })
        })
    })
}

fn dns_carries_allocated(s: &State) -> bool {
    s.dns.services.objects().all(|svc| {
        svc.cluster_ips
            .ips()
            .iter()
            .all(|ip| s.history.allocated.contains(&(svc.key.name.clone(), *ip)))
    })
}

fn client_node(m: &ProtocolModel) -> usize {
    catalog::PODS[catalog::CLIENT.0].2 % usize::from(m.cfg.nodes)
}

/// RES-5: if the client connected with its cached answer now, every backend
/// the kernel could pick is a Pod of the Service it named.
fn connection_lands_on_named_service(m: &ProtocolModel, s: &State) -> bool {
    let Some((name, ip)) = &s.client else {
        return true;
    };
    let kernel = &s.proxies[client_node(m)].kernel;
    kernel
        .iter()
        .filter(|(k, _)| k.ip == *ip && k.port == SERVICE_PORT)
        .flat_map(|(_, vs)| vs.backends.iter())
        .all(|b| catalog::pod_by_ip(b.ip()).is_some_and(|p| catalog::selects(name, p)))
}

fn slices_converged(s: &State) -> bool {
    let pods = s.api.pod_list();
    let mut actual: BTreeMap<String, BTreeMap<SliceShape, BTreeSet<Endpoint>>> = BTreeMap::new();
    for slice in s.api.slice_list() {
        let shape = SliceShape {
            family: slice.family,
            ports: slice.ports.clone(),
        };
        actual
            .entry(slice.service.clone())
            .or_default()
            .entry(shape)
            .or_default()
            .extend(slice.endpoints.iter().cloned());
    }
    let expected: BTreeMap<String, BTreeMap<SliceShape, BTreeSet<Endpoint>>> = s
        .api
        .service_list()
        .into_iter()
        .map(|svc| {
            (
                svc.key.name.clone(),
                endpoints_for(svc, pods.iter().copied()),
            )
        })
        .filter(|(_, eps)| !eps.is_empty())
        .collect();
    actual == expected
}

fn store_snapshot(s: &State) -> DnsSnapshot<'_> {
    DnsSnapshot {
        zone: ZONE,
        synced: true,
        services: s.api.service_list(),
        slices: s.api.slice_list(),
        pods: Vec::new(),
        namespaces: BTreeSet::new(),
        pods_mode: PodsMode::Disabled,
    }
}

fn dns_converged(s: &State) -> bool {
    let served = s.dns_snapshot();
    let truth = store_snapshot(s);
    catalog::SERVICES.iter().all(|(name, _)| {
        let fqdn = format!("{name}.{NAMESPACE}.svc.{ZONE}");
        let srv = format!("_http._tcp.{fqdn}");
        [
            Question::new(&fqdn, RType::A),
            Question::new(&fqdn, RType::Aaaa),
            Question::new(srv, RType::Srv),
        ]
        .iter()
        .all(|q| dns_answer(&served, q) == dns_answer(&truth, q))
    })
}

fn proxies_converged(s: &State) -> bool {
    let slices = s.api.slice_list();
    s.proxies
        .iter()
        .enumerate()
        .all(|(i, p)| p.kernel == proxy_table(s.api.service_list(), &slices, &catalog::node(i)))
}

/// RES-6: each live Service with a usable endpoint resolves from the client
/// to its ClusterIP, and the client's node forwards it only to Pods the
/// Service selects: ready ones when any is ready.
fn client_reaches_ready_pod(m: &ProtocolModel, s: &State) -> bool {
    let served = s.dns_snapshot();
    let conf = catalog::client_resolv_conf();
    let kernel = &s.proxies[client_node(m)].kernel;
    s.api.service_list().iter().all(|svc| {
        let name = &svc.key.name;
        let selected: Vec<_> = s
            .api
            .pod_list()
            .into_iter()
            .filter(|p| catalog::pod_index(&p.key.name).is_some_and(|i| catalog::selects(name, i)))
            .collect();
        let any_ready = selected.iter().any(|p| p.ready && !p.terminating);
        let any_usable = any_ready || selected.iter().any(|p| p.ready && p.terminating);
        if !any_usable {
            return true;
        }
        let res = resolve(&conf, name, ResolverLib::Glibc, |n| {
            classify(&dns_answer(&served, &Question::new(n, RType::A)))
        });
        let Ok(ips) = res.result else { return false };
        if ips != svc.cluster_ips.ips() {
            return false;
        }
        let backends: Vec<_> = kernel
            .iter()
            .filter(|(k, _)| k.ip == ips[0] && k.port == SERVICE_PORT)
            .flat_map(|(_, v)| v.backends.iter())
            .collect();
        !backends.is_empty()
            && backends.iter().all(|b| {
                selected
                    .iter()
                    .any(|p| p.ips.contains(&b.ip()) && (!any_ready || (p.ready && !p.terminating)))
            })
    })
}

fn dns_service_names(s: &State) -> BTreeSet<String> {
    s.dns
        .services
        .objects()
        .map(|svc| svc.key.name.clone())
        .collect()
}

fn store_service_names(s: &State) -> BTreeSet<String> {
    s.api.services.keys().cloned().collect()
}

fn forwards_to_terminating(s: &State) -> bool {
    s.proxies.iter().any(|p| {
        p.kernel.values().flat_map(|v| v.backends.iter()).any(|b| {
            s.api
                .pod_list()
                .iter()
                .any(|pod| pod.terminating && pod.ips.contains(&b.ip()))
        })
    })
}

fn clusterip_reused(s: &State) -> bool {
    s.api.service_list().iter().any(|svc| {
        svc.cluster_ips.ips().iter().any(|ip| {
            s.history
                .allocated
                .iter()
                .any(|(other, old)| old == ip && *other != svc.key.name)
        })
    })
}

fn broken_watch_missed_change(s: &State) -> bool {
    s.watchers().any(|w| {
        s.watch(w).status == WatchStatus::Broken
            && match w {
                Watcher::Dns => dns_service_names(s) != store_service_names(s),
                Watcher::Proxy(i) => {
                    let p = &s.proxies[usize::from(i)];
                    p.services.objects().count() != s.api.services.len()
                        || p.slices.objects().ne(s.api.slice_list())
                }
                Watcher::Eps => s.eps.pods.objects().ne(s.api.pod_list()),
            }
    })
}
