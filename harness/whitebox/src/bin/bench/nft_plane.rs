//! `signpost-bench nft-plane [--sizes 1000,10000,50000] [--changes K]`:
//! Signpost's nftables data plane alone, without an API server (whose
//! Service creation slows to about 10 per second past 30k Services here,
//! so the proxy benchmark cannot reach 50k in reasonable time): in a
//! scratch network namespace, a full sync of N virtual services × 5
//! backends, then K single-endpoint changes, each planned as the proxy
//! plans a change of known keys (`build::partial_keys` over the table's
//! census: the entries under them alone) and
//! committed (`wire`) and timed apart, with the kernel's share of each
//! commit. Shows how a sync's cost grows with the table.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use serde_json::json;
use signpost_harness::netns::{NetNs, unique};
use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};
use signpost_proxy::addresses::Masquerade;
use signpost_proxy::nftables::census::{self, Census};
use signpost_proxy::nftables::{build, wire};

use super::percentile;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn table(n: u32) -> ProxyTable {
    (0..n)
        .map(|i| {
            let key = VirtualKey {
                ip: IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)),
                protocol: Protocol::Tcp,
                port: 80,
            };
            let backends: BTreeSet<SocketAddr> = (0..5)
                .map(|e| SocketAddr::from((Ipv4Addr::from(0x0a80_0000 + i * 5 + e), 8080)))
                .collect();
            (
                key,
                VirtualService {
                    backends,
                    affinity_timeout: None,
                },
            )
        })
        .collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Plans and commits `tx` (on a thread inside the namespace, as the proxy
/// runs): (planning ms, commit ms).
fn commit(plan: impl FnOnce() -> build::Tx) -> Result<(f64, f64), BoxError> {
    let t = Instant::now();
    let tx = plan();
    let planned = ms(t);
    let t = Instant::now();
    wire::send(&tx).map_err(|e| format!("the kernel refused the sync: {e:?}"))?;
    Ok((planned, ms(t)))
}

pub fn main(args: &[String]) -> Result<(), BoxError> {
    let flag = |name: &str| crate::flag(args, name);
    let sizes: Vec<u32> = flag("--sizes")
        .unwrap_or_else(|| "1000,10000,50000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let changes: usize = flag("--changes")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(21);
    let out = flag("--out").unwrap_or_else(|| "reports/bench-nft-plane.json".into());
    let mut report = serde_json::Map::new();
    for n in sizes {
        let ns = NetNs::create(unique("spb"))?;
        let figures = ns.within(|| run(n, changes))??;
        let (plan_full, commit_full, p50_plan, p50_commit, max_plan, max_commit) = figures;
        eprintln!(
            "bench nft-plane: {n:>6} addresses × 5 backends: full sync planned in {plan_full:.1} ms, committed in {commit_full:.1} ms; one endpoint change (p50 of {changes}) planned in {p50_plan:.2} ms, committed in {p50_commit:.2} ms"
        );
        let (table_full, table_p50, table_max) = controller(n, changes)?;
        eprintln!(
            "bench nft-plane: {n:>6} Services: the proxy's desired table computed whole in {table_full:.1} ms; after one slice change (p50 of {changes}) in {table_p50:.3} ms"
        );
        report.insert(
            n.to_string(),
            json!({
                "full_plan_ms": plan_full,
                "full_commit_ms": commit_full,
                "one_change_plan_p50_ms": p50_plan,
                "one_change_commit_p50_ms": p50_commit,
                "one_change_plan_max_ms": max_plan,
                "one_change_commit_max_ms": max_commit,
                "desired_full_ms": table_full,
                "desired_one_change_p50_ms": table_p50,
                "desired_one_change_max_ms": table_max,
            }),
        );
        crate::write_report(&out, &serde_json::Value::Object(report.clone()))?;
    }
    Ok(())
}

/// The proxy's own share of a change, before any planning: its desired
/// table ([`Desired`]) over caches of `n` Services with a slice of 5
/// endpoints each, computed whole, then kept up to date after `changes`
/// single-slice changes: (whole ms, p50 ms, max ms).
fn controller(n: u32, changes: usize) -> Result<(f64, f64, f64), BoxError> {
    use k8s_openapi::api::core::v1::Service as KService;
    use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event as WEvent;
    use signpost_model::cluster::{Node, ObjectKey};
    use signpost_proxy::controller::{Cache, Desired, Event};

    let ip = |base: u32, i: u32| Ipv4Addr::from(base + i).to_string();
    let slice = |i: u32, endpoints: u32, version: u32| -> Result<KSlice, BoxError> {
        let eps: Vec<_> = (0..endpoints)
            .map(|e| json!({ "addresses": [ip(0x0a80_0000, i * 5 + e)], "conditions": { "ready": true }, "nodeName": "node-a" }))
            .collect();
        Ok(serde_json::from_value(json!({
            "metadata": { "name": format!("s{i}-0"), "namespace": "default", "uid": format!("us{i}"),
                          "resourceVersion": version.to_string(),
                          "labels": { "kubernetes.io/service-name": format!("s{i}") } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": eps,
        }))?)
    };
    let (services, mut sw) = reflector::store::<KService>();
    let (slices, mut lw) = reflector::store::<KSlice>();
    for i in 0..n {
        let svc: KService = serde_json::from_value(json!({
            "metadata": { "name": format!("s{i}"), "namespace": "default", "uid": format!("u{i}"), "resourceVersion": "1" },
            "spec": { "type": "ClusterIP", "clusterIP": ip(0x0a60_0000, i), "clusterIPs": [ip(0x0a60_0000, i)],
                      "selector": { "app": format!("s{i}") },
                      "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }] }
        }))?;
        sw.apply_watcher_event(&WEvent::Apply(svc));
        lw.apply_watcher_event(&WEvent::Apply(slice(i, 5, 1)?));
    }
    let node = Node {
        name: "node-a".into(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))],
        zone: None,
    };
    let invalid = signpost_proxy::metrics::Metrics::default().invalid_objects;
    let mut desired = Desired::default();
    let t = Instant::now();
    desired.update((&services, &slices), &[], &node, true, &invalid);
    let whole = ms(t);
    if desired.table().len() != n as usize {
        return Err(format!("{} entries for {n} Services", desired.table().len()).into());
    }
    let mut each = Vec::new();
    for c in 0..changes {
        let i = u32::try_from((c * 7919) % n as usize)?;
        let version = u32::try_from(c)? + 2;
        lw.apply_watcher_event(&WEvent::Apply(slice(
            i,
            if c % 2 == 0 { 4 } else { 5 },
            version,
        )?));
        let batch = [Event::Changed(
            Cache::EndpointSlices,
            ObjectKey::new("default", format!("s{i}-0")),
        )];
        let t = Instant::now();
        desired.update((&services, &slices), &batch, &node, false, &invalid);
        each.push(ms(t));
    }
    each.sort_by(f64::total_cmp);
    Ok((
        whole,
        percentile(&each, 0.5),
        each.last().copied().unwrap_or(f64::NAN),
    ))
}

/// Figures of one size: full plan and commit, p50 and max of a change's
/// plan and commit (ms).
type Figures = (f64, f64, f64, f64, f64, f64);

fn run(n: u32, changes: usize) -> Result<Figures, BoxError> {
    let base = table(n);
    let (plan_full, commit_full) = commit(|| build::full(&base, &[], &Masquerade::default()))?;
    // One endpoint of one address changes, then changes back, K times,
    // each over another address.
    let (mut plan_one, mut commit_one) = (Vec::new(), Vec::new());
    let mut have = base.clone();
    let mut census = Census::of(&have);
    for c in 0..changes {
        let key = *base
            .keys()
            .nth((c * 7919) % base.len())
            .ok_or("an empty table")?;
        let mut want = have.clone();
        if let Some(vs) = want.get_mut(&key) {
            if vs.backends.len() == 5 {
                vs.backends.pop_first();
            } else {
                vs.backends = base[&key].backends.clone();
            }
        }
        // Planned as the proxy plans a change it knows the keys of: from
        // the entries under them and the census of the table.
        let keys = BTreeSet::from([key]);
        let (p, k) =
            commit(|| build::partial_keys(&have, &want, &keys, &census, &[]).unwrap_or_default())?;
        plan_one.push(p);
        commit_one.push(k);
        census.update(&census::changes_among(&have, &want, &keys));
        have = want;
    }
    plan_one.sort_by(f64::total_cmp);
    commit_one.sort_by(f64::total_cmp);
    Ok((
        plan_full,
        commit_full,
        percentile(&plan_one, 0.5),
        percentile(&commit_one, 0.5),
        plan_one.last().copied().unwrap_or(f64::NAN),
        commit_one.last().copied().unwrap_or(f64::NAN),
    ))
}
