//! Differential test: `signpost dns` and CoreDNS (kubernetes plugin,
//! `pods insecure`, `ttl 30`) over the same cluster answer the same
//! questions with the same response code and the same answer set (TTL and
//! order ignored). Every difference must be one spec/dns.md lists as
//! intended, with its rule.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::{Namespace, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use signpost_harness::cluster::NODE_IP;
use signpost_harness::dns::{self, start_coredns, start_signpost, wait_ready};
use signpost_harness::{LocalCluster, Running};

use crate::dns::{create_service, wait_endpoints};
use crate::{echo_bin, require_rig};

fn reverse(ip: IpAddr) -> String {
    format!("{}.", signpost_model::spec::reverse_name(ip))
}

/// Every name worth asking about, from what the API server holds.
fn names(cluster: &LocalCluster<Running>) -> BTreeSet<String> {
    let (svcs, slices) = cluster
        .block_on(|client| async move {
            (
                Api::<KService>::all(client.clone())
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items,
                Api::<KSlice>::all(client)
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items,
            )
        })
        .unwrap();
    let z = "cluster.local.";
    let mut out: BTreeSet<String> = [
        z.to_owned(),
        format!("svc.{z}"),
        format!("pod.{z}"),
        format!("dns-version.{z}"),
        format!("nope.{z}"),
        format!("nope.default.svc.{z}"),
        format!("nope.nope.svc.{z}"),
        format!("a.b.c.default.svc.{z}"),
    ]
    .into();
    for ns in ["default", "prod", "empty", "nonexistent"] {
        out.insert(format!("{ns}.svc.{z}"));
        out.insert(format!("{ns}.pod.{z}"));
        out.insert(format!("10-244-0-7.{ns}.pod.{z}"));
        out.insert(format!("fd00-10-244--7.{ns}.pod.{z}"));
        out.insert(format!("not-an-ip.{ns}.pod.{z}"));
    }
    for s in &svcs {
        let ns = s.metadata.namespace.clone().unwrap();
        let name = s.metadata.name.clone().unwrap();
        let fqdn = format!("{name}.{ns}.svc.{z}");
        let spec = s.spec.clone().unwrap();
        for p in spec.ports.unwrap_or_default() {
            let proto = p
                .protocol
                .unwrap_or_else(|| "TCP".into())
                .to_ascii_lowercase();
            if let Some(pn) = p.name.filter(|n| !n.is_empty()) {
                out.insert(format!("_{pn}._{proto}.{fqdn}"));
                out.insert(format!("_{pn}.{fqdn}"));
                out.insert(format!("_{pn}._sctp.{fqdn}"));
                out.insert(format!("_{proto}.{fqdn}"));
            }
        }
        for ip in spec.cluster_ips.unwrap_or_default() {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                out.insert(reverse(ip));
            }
        }
        out.insert(fqdn.to_uppercase());
        out.insert(format!("x.{fqdn}"));
        out.insert(fqdn);
    }
    for sl in &slices {
        let ns = sl.metadata.namespace.clone().unwrap();
        let Some(svc) = sl
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        for e in sl.endpoints.iter().flatten() {
            for a in &e.addresses {
                let ip: IpAddr = a.parse().unwrap();
                out.insert(reverse(ip));
                let label = e
                    .hostname
                    .clone()
                    .unwrap_or_else(|| a.replace(['.', ':'], "-"));
                // An IPv6 address ending in `::` gives a label ending in `-`;
                // ask that and the spelling with a `0` after it (DNS-6).
                if label.ends_with('-') {
                    out.insert(format!("{label}0.{svc}.{ns}.svc.{z}"));
                }
                out.insert(format!("{label}.{svc}.{ns}.svc.{z}"));
            }
        }
    }
    out
}

const TYPES: [RecordType; 8] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::TXT,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::NS,
];

/// The differences spec/dns.md lists as intended ("Intended differences from
/// CoreDNS"), by the rule that justifies each; `None` for any other.
fn intended(
    name: &str,
    rtype: RecordType,
    ours: &dns::Answer,
    theirs: &dns::Answer,
) -> Option<&'static str> {
    let reverse = name.ends_with(".in-addr.arpa.") || name.ends_with(".ip6.arpa.");
    let nodata = |a: &dns::Answer| a.rcode == "NoError" && a.records.is_empty();
    let first_label = name.split('.').next().unwrap_or("");
    let labels = name.trim_end_matches('.').split('.').count();
    match rtype {
        // 1. CoreDNS answers an SOA question NOERROR for any name of its zones,
        //    existing or not; Signpost keeps existence the same for every type.
        RecordType::SOA if nodata(theirs) && ours.rcode == "NXDomain" => Some("DNS-13"),
        // 2. A name that is not Signpost's is forwarded (to a dead upstream here);
        //    CoreDNS, with no forward plugin in this Corefile, answers on its own.
        _ if reverse && ours.rcode == "ServFail" => Some("DNS-19"),
        // 3. A reverse name of a known address exists (it has a PTR): other
        //    types are NODATA; CoreDNS hands them to the next plugin (SERVFAIL here).
        t if reverse && t != RecordType::PTR && nodata(ours) && theirs.rcode == "ServFail" => {
            Some("DNS-9")
        }
        // 4. An ExternalName is a CNAME for every type; CoreDNS gives NODATA
        //    for SRV, TXT, PTR, SOA, NS.
        _ if ours.records.iter().any(|r| r.1 == "CNAME") && nodata(theirs) => Some("DNS-10"),
        // 5. `_<proto>.<svc>` is an empty non-terminal above `_<port>._<proto>.<svc>`
        //    (RFC 8020); CoreDNS says NXDOMAIN.
        _ if first_label.starts_with('_')
            && labels == 6
            && nodata(ours)
            && theirs.rcode == "NXDomain" =>
        {
            Some("DNS-7")
        }
        // 6. Pod records are addresses only; CoreDNS adds an SRV record with port 0.
        RecordType::SRV if name.contains(".pod.cluster.local.") && nodata(ours) => Some("DNS-15"),
        // 7. Signpost serves no NS at the apex: which Service fronts the
        //    cluster DNS is deployment configuration, not registry data.
        RecordType::NS if name == "cluster.local." && nodata(ours) => Some("DNS-1"),
        _ => None,
    }
}

#[test]
fn signpost_answers_as_coredns() {
    require_rig!();
    let cluster = LocalCluster::new("dnsdiff")
        .unwrap()
        .with_controller_manager()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    for ns in ["prod", "empty"] {
        let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
        cluster
            .block_on(|client| async move {
                Api::<Namespace>::all(client)
                    .create(&PostParams::default(), &n)
                    .await
                    .unwrap();
            })
            .unwrap();
    }
    let _web0 = cluster.pod("web-0").label("app", "web").start().unwrap();
    let _web1 = cluster.pod("web-1").label("app", "web").start().unwrap();
    let _sts0 = cluster
        .pod("sts-0")
        .label("app", "sts")
        .hostname("sts-0", "sts")
        .start()
        .unwrap();
    let _sts1 = cluster
        .pod("sts-1")
        .label("app", "sts")
        .hostname("sts-1", "sts")
        .start()
        .unwrap();
    let _slow = cluster
        .pod("slow-0")
        .label("app", "slow")
        .ready(false)
        .start()
        .unwrap();
    let _api = cluster
        .pod("api-0")
        .namespace("prod")
        .label("app", "api")
        .start()
        .unwrap();
    let dual = "PreferDualStack";
    let specs = [
        (
            "default",
            "web",
            json!({ "selector": { "app": "web" }, "ipFamilyPolicy": dual,
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080 },
                      { "name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP" }] }),
        ),
        (
            "default",
            "plain",
            json!({ "selector": { "app": "web" }, "ports": [{ "port": 81, "targetPort": 8080 }] }),
        ),
        (
            "default",
            "sts",
            json!({ "selector": { "app": "sts" }, "clusterIP": "None", "ipFamilyPolicy": dual,
            "ports": [{ "name": "http", "port": 8080 }] }),
        ),
        (
            "default",
            "hl",
            json!({ "selector": { "app": "web" }, "clusterIP": "None",
            "ports": [{ "name": "http", "port": 8080 }, { "name": "alt", "port": 8081, "targetPort": 8080 }] }),
        ),
        (
            "default",
            "hl-unnamed",
            json!({ "selector": { "app": "web" }, "clusterIP": "None",
            "ports": [{ "port": 8080 }] }),
        ),
        (
            "default",
            "slow",
            json!({ "selector": { "app": "slow" }, "clusterIP": "None",
            "ports": [{ "name": "http", "port": 8080 }] }),
        ),
        (
            "default",
            "ext",
            json!({ "type": "ExternalName", "externalName": "example.org" }),
        ),
        (
            "default",
            "lonely",
            json!({ "ports": [{ "name": "http", "port": 80 }] }),
        ),
        (
            "prod",
            "api",
            json!({ "selector": { "app": "api" }, "ports": [{ "name": "grpc", "port": 9090, "targetPort": 8080 }] }),
        ),
        (
            "prod",
            "api-hl",
            json!({ "selector": { "app": "api" }, "clusterIP": "None", "ipFamilyPolicy": dual,
            "ports": [{ "name": "grpc", "port": 9090, "targetPort": 8080 }] }),
        ),
    ];
    for (ns, name, spec) in specs {
        create_service(&cluster, ns, name, spec);
    }
    // A Service without selector whose slice is written by hand, with an
    // IPv6 address ending in `::` (its endpoint name ends in `--0`).
    create_service(
        &cluster,
        "default",
        "manual",
        json!({ "clusterIP": "None", "ipFamilyPolicy": dual, "ports": [{ "name": "http", "port": 8080 }] }),
    );
    let manual: KSlice = serde_json::from_value(json!({
        "metadata": { "name": "manual-v6", "labels": { "kubernetes.io/service-name": "manual" } },
        "addressType": "IPv6",
        "endpoints": [
            { "addresses": ["fd00:10:244:1::"], "conditions": { "ready": true } },
            { "addresses": ["fd00:10:244:1::5"], "conditions": { "ready": true } },
        ],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    }))
    .unwrap();
    cluster
        .block_on(|client| async move {
            Api::<KSlice>::namespaced(client, "default")
                .create(&PostParams::default(), &manual)
                .await
                .unwrap();
        })
        .unwrap();
    wait_endpoints(&cluster, "default", "web", 4);
    wait_endpoints(&cluster, "default", "sts", 4);
    wait_endpoints(&cluster, "default", "hl", 2);
    wait_endpoints(&cluster, "prod", "api-hl", 2);

    let ours: SocketAddr = SocketAddr::new(IpAddr::V4(NODE_IP), 53);
    let theirs: SocketAddr = SocketAddr::new(IpAddr::V4(NODE_IP), 1053);
    let _signpost = start_signpost(
        &cluster,
        "dns",
        ours,
        10282,
        &["--pods=insecure", "--ttl=30", "--upstream=127.0.0.1:1"],
    )
    .unwrap();
    let _coredns = start_coredns(&cluster, "coredns", 1053).unwrap();
    wait_ready(&cluster, ours, Duration::from_secs(30)).unwrap();
    wait_ready(&cluster, theirs, Duration::from_secs(60)).unwrap();

    let names = names(&cluster);
    let mut asked = 0;
    let mut agreed_with_records = 0;
    let mut unexplained = Vec::new();
    let mut explained: BTreeSet<&'static str> = BTreeSet::new();
    for name in &names {
        let answers: Vec<(RecordType, dns::Answer, dns::Answer)> = TYPES
            .iter()
            .map(|t| {
                (
                    *t,
                    dns::query(&cluster, ours, name, *t, false).unwrap(),
                    dns::query(&cluster, theirs, name, *t, false).unwrap(),
                )
            })
            .collect();
        // CoreDNS says the name exists for some type.
        let theirs_exists = answers.iter().any(|(_, _, b)| b.rcode == "NoError");
        for (t, a, b) in &answers {
            asked += 1;
            if (&a.rcode, &a.records) == (&b.rcode, &b.records) {
                agreed_with_records += usize::from(!a.records.is_empty());
                continue;
            }
            let rule = intended(name, *t, a, b).or_else(|| {
                // CoreDNS answers NXDOMAIN for a type of a name it answers
                // NOERROR for other types; Signpost says NODATA for all.
                (theirs_exists
                    && b.rcode == "NXDomain"
                    && a.rcode == "NoError"
                    && a.records.is_empty())
                .then_some("DNS-13")
            });
            match rule {
                Some(rule) => {
                    explained.insert(rule);
                }
                None => unexplained.push(format!(
                    "{name} {t}:\n  signpost {} {:?}\n  coredns  {} {:?}",
                    a.rcode, a.records, b.rcode, b.records
                )),
            }
        }
    }
    eprintln!(
        "{asked} questions over {} names, {agreed_with_records} agreeing non-empty answers; intended differences seen: {explained:?}",
        names.len()
    );
    assert!(asked > 500, "only {asked} questions");
    assert!(
        agreed_with_records > 100,
        "only {agreed_with_records} non-empty answers agree"
    );
    assert!(
        unexplained.is_empty(),
        "{} unexplained differences:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}
