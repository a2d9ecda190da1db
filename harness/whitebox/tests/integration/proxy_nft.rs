//! `signpost proxy --mode nftables` on this machine's kernel: real TCP and
//! UDP connections from a client Pod through IPv4 and IPv6 ClusterIPs land
//! only on the oracle's backends; affinity holds; ports without endpoints
//! and unknown ports are refused; the listed ruleset equals the oracle's
//! table; UDP flows to a removed backend are forgotten (PXY-11); a restart
//! keeps every connection working; `--cleanup` removes the table.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as KNode, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use signpost_harness::deploy::Component;
use signpost_harness::process::{Daemon, workspace_binary};
use signpost_harness::{Error, LocalCluster, PodHandle, Running};
use signpost_model::cluster::{EndpointSlice, Node, ProxyTable, Service};
use signpost_model::spec::proxy_table;

use crate::{echo_bin, require_rig};

fn signpost(cluster: &LocalCluster<Running>, name: &str, args: &[&str]) -> Daemon {
    let bin = workspace_binary("signpost").expect("the signpost binary");
    // Each runs with exactly its deploy/ RBAC, as deployed.
    let component = match args[0] {
        "proxy" => Component::Proxy,
        "dns" => Component::Dns,
        _ => Component::Endpoints,
    };
    let kc = cluster.component_kubeconfig(component).unwrap();
    let mut all = vec![format!("--kubeconfig={}", kc.display())];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    Daemon::spawn(
        cluster.node_namespace(),
        name,
        &bin,
        &all,
        cluster.logs().join(format!("{name}.log")),
    )
    .unwrap()
}

/// `signpost proxy --mode nftables` for node-a, metrics on `port`.
fn start_proxy(cluster: &LocalCluster<Running>, name: &str, port: u16) -> Daemon {
    let metrics = format!("--metrics-addr=127.0.0.1:{port}");
    signpost(
        cluster,
        name,
        &["proxy", "--mode=nftables", "--node-name=node-a", &metrics],
    )
}

fn create_service(
    cluster: &LocalCluster<Running>,
    name: &str,
    app: &str,
    affinity: bool,
) -> (IpAddr, Option<IpAddr>) {
    let mut spec = json!({
        "selector": { "app": app },
        "ipFamilyPolicy": "PreferDualStack",
        "ports": [
            { "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" },
            { "name": "echo-udp", "port": 53, "targetPort": 8080, "protocol": "UDP" },
        ],
    });
    if affinity {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    let svc: KService =
        serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec })).unwrap();
    let ips = cluster
        .block_on(|client| async move {
            let api: Api<KService> = Api::namespaced(client, "default");
            api.create(&PostParams::default(), &svc)
                .await
                .unwrap()
                .spec
                .unwrap()
                .cluster_ips
                .unwrap()
        })
        .unwrap();
    let parsed: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
    (parsed[0], parsed.get(1).copied())
}

/// The oracle's table for node-a over what the API server holds.
fn oracle(cluster: &LocalCluster<Running>) -> ProxyTable {
    cluster
        .block_on(|client| async move {
            let svcs = Api::<KService>::all(client.clone())
                .list(&ListParams::default())
                .await
                .unwrap();
            let slices = Api::<KSlice>::all(client.clone())
                .list(&ListParams::default())
                .await
                .unwrap();
            let node = Api::<KNode>::all(client).get("node-a").await.unwrap();
            let svcs: Vec<Service> = svcs
                .items
                .iter()
                .filter_map(|s| Service::try_from(s).ok())
                .collect();
            let slices: Vec<EndpointSlice> = slices
                .items
                .iter()
                .filter_map(|s| EndpointSlice::try_from(s).ok())
                .collect();
            let refs: Vec<&EndpointSlice> = slices.iter().collect();
            signpost_proxy::nftables::build::normalize(proxy_table(
                &svcs,
                &refs,
                &Node::try_from(&node).unwrap(),
            ))
        })
        .unwrap()
}

/// What the kernel holds, read back from `nft -j list`.
pub(crate) fn kernel(cluster: &LocalCluster<Running>) -> Option<ProxyTable> {
    let out = cluster
        .node_namespace()
        .command("nft")
        .args(["-j", "list", "table", "inet", "signpost"])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(signpost_proxy::nftables::readback::table(Some(&v)))
}

/// Waits until the kernel holds the oracle's table and that table shows
/// `expected` (so an intermediate state both agree on does not count).
fn converge(cluster: &LocalCluster<Running>, expected: impl Fn(&ProxyTable) -> bool) -> ProxyTable {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = oracle(cluster);
        let have = kernel(cluster);
        if have.as_ref() == Some(&want) && expected(&want) {
            return want;
        }
        assert!(
            Instant::now() < deadline,
            "kernel {have:#?}\n!= oracle {want:#?}\nlogs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backends(t: &ProxyTable, ip: IpAddr, port: u16) -> usize {
    t.iter()
        .filter(|(k, _)| k.ip == ip && k.port == port)
        .map(|(_, v)| v.backends.len())
        .sum()
}

fn replies(from: &PodHandle, to: SocketAddr, n: usize, udp: bool) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let r = if udp {
                from.udp_request(to, Duration::from_secs(3))
            } else {
                from.tcp_request(to, Duration::from_secs(3))
            };
            r.unwrap_or_else(|e| panic!("{to}: {e}"))
        })
        .collect()
}

fn refused(from: &PodHandle, to: SocketAddr) -> bool {
    match from.tcp_request(to, Duration::from_secs(3)) {
        Err(Error::Io { source, .. }) => source.kind() == ErrorKind::ConnectionRefused,
        _ => false,
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn nftables_proxy_routes_real_connections_over_ipv4_and_ipv6() {
    require_rig!();
    let cluster = LocalCluster::new("nft")
        .unwrap()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    let _eps = signpost(
        &cluster,
        "signpost-endpoints",
        &["endpoints", "--metrics-addr=127.0.0.1:10280"],
    );
    let _proxy = start_proxy(&cluster, "signpost-proxy", 10281);
    let v0 = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .start()
        .unwrap();
    let v1 = cluster
        .pod("voyager-1")
        .label("app", "voy")
        .start()
        .unwrap();
    let client = cluster
        .pod("enterprise-0")
        .label("app", "ent")
        .start()
        .unwrap();
    let (voy4, voy6) = create_service(&cluster, "voy", "voy", false);
    let (aff4, _) = create_service(&cluster, "aff", "voy", true);
    let (empty4, empty6) = create_service(&cluster, "empty", "nobody", false);
    let voy6 = voy6.expect("a dual-stack Service gets an IPv6 ClusterIP");
    let table = converge(&cluster, |t| {
        backends(t, voy4, 80) == 2 && backends(t, voy6, 80) == 2 && backends(t, aff4, 80) == 2
    });
    assert!(table.len() >= 10, "{table:#?}");

    let both = set(&["voyager-0", "voyager-1"]);
    assert_eq!(
        replies(&client, SocketAddr::new(voy4, 80), 40, false),
        both,
        "TCP over IPv4"
    );
    assert_eq!(
        replies(&client, SocketAddr::new(voy4, 53), 40, true),
        both,
        "UDP over IPv4"
    );
    assert_eq!(
        replies(&client, SocketAddr::new(voy6, 80), 40, false),
        both,
        "TCP over IPv6"
    );
    assert_eq!(
        replies(&client, SocketAddr::new(voy6, 53), 40, true),
        both,
        "UDP over IPv6"
    );
    assert_eq!(
        replies(&client, SocketAddr::new(aff4, 80), 15, false).len(),
        1,
        "ClientIP affinity"
    );
    // Hairpin: a backend reaching its own Service.
    assert!(replies(&v0, SocketAddr::new(voy4, 80), 20, false).is_subset(&both));
    // No endpoints, and a port the Service does not have: refused, not dropped.
    assert!(
        refused(&client, SocketAddr::new(empty4, 80)),
        "no endpoints → reject"
    );
    assert!(
        refused(&client, SocketAddr::new(empty6.unwrap(), 80)),
        "no endpoints → reject (IPv6)"
    );
    assert!(
        refused(&client, SocketAddr::new(voy4, 81)),
        "unknown port → reject"
    );

    // PXY-11: UDP flows (one source port each) pinned to voyager-0 over
    // IPv4 and IPv6, and one pinned to voyager-1.
    let pin = |to: SocketAddr, want: &str, first: u16| -> u16 {
        (first..first + 200)
            .find(|p| {
                client
                    .udp_request_from(*p, to, Duration::from_secs(3))
                    .unwrap()
                    == want
                    && (0..3).all(|_| {
                        client
                            .udp_request_from(*p, to, Duration::from_secs(3))
                            .unwrap()
                            == want
                    })
            })
            .unwrap_or_else(|| panic!("no source port reached {want} through {to}"))
    };
    let (dns4, dns6) = (SocketAddr::new(voy4, 53), SocketAddr::new(voy6, 53));
    let to_v0_4 = pin(dns4, "voyager-0", 41000);
    let to_v0_6 = pin(dns6, "voyager-0", 42000);
    let to_v1_4 = pin(dns4, "voyager-1", 43000);
    let udp_entries_to = |pod: &PodHandle| -> usize {
        let (ip4, ip6) = (IpAddr::V4(pod.ip()), IpAddr::V6(pod.ip6()));
        cluster
            .node_namespace()
            .within(|| {
                signpost_proxy::conntrack::Conntrack::open()
                    .unwrap()
                    .entries(|e| {
                        e.protocol == 17
                            && e.orig_dst.port() == 53
                            && (e.reply_src.ip() == ip4 || e.reply_src.ip() == ip6)
                    })
                    .unwrap()
                    .len()
            })
            .unwrap()
    };
    let (stale, kept) = (udp_entries_to(&v0), udp_entries_to(&v1));
    assert!(
        stale >= 2 && kept >= 1,
        "conntrack holds the pinned flows ({stale}, {kept})"
    );
    // The kernel filters the dump PXY-11 uses: for voyager-0 behind voy's
    // IPv4 address it returns exactly what a full dump, filtered here, has.
    let key4 = signpost_model::cluster::VirtualKey {
        ip: voy4,
        protocol: signpost_model::cluster::Protocol::Udp,
        port: 53,
    };
    let b0 = SocketAddr::new(IpAddr::V4(v0.ip()), 8080);
    let (filtered, everything) = cluster
        .node_namespace()
        .within(|| {
            let mut ct = signpost_proxy::conntrack::Conntrack::open().unwrap();
            (
                ct.kernel_filtered(&key4, &b0).unwrap(),
                ct.entries(|_| true).unwrap(),
            )
        })
        .unwrap();
    let by_hand: Vec<_> = everything
        .iter()
        .filter(|e| e.carries(&key4, &b0))
        .collect();
    assert!(!by_hand.is_empty() && by_hand.len() < everything.len());
    assert_eq!(
        filtered.iter().collect::<Vec<_>>(),
        by_hand,
        "the kernel's filtered dump differs from the full dump filtered here"
    );

    // Steps: readiness and termination move traffic as the oracle says.
    v0.set_ready(false).unwrap();
    converge(&cluster, |t| backends(t, voy4, 80) == 1);
    let deleted = "signpost_proxy_conntrack_entries_deleted_total";
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.metric(10281, deleted) < Some(stale as f64) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster.metric(10281, deleted),
        Some(stale as f64),
        "every UDP entry to the removed backend, and only those, deleted"
    );
    assert_eq!(
        udp_entries_to(&v0),
        0,
        "no UDP flow still goes to voyager-0"
    );
    assert_eq!(udp_entries_to(&v1), kept, "flows to voyager-1 untouched");
    for (port, to) in [(to_v0_4, dns4), (to_v0_6, dns6), (to_v1_4, dns4)] {
        assert_eq!(
            client
                .udp_request_from(port, to, Duration::from_secs(3))
                .unwrap(),
            "voyager-1",
            "the flow from port {port} to {to} after voyager-0 left"
        );
    }
    assert_eq!(
        replies(&client, SocketAddr::new(voy4, 80), 20, false),
        set(&["voyager-1"])
    );
    v1.terminate().unwrap();
    let v1_ip = SocketAddr::new(IpAddr::V4(v1.ip()), 8080);
    converge(&cluster, |t| {
        t.iter()
            .any(|(k, v)| k.ip == voy4 && k.port == 80 && v.backends.contains(&v1_ip))
    });
    assert_eq!(
        replies(&client, SocketAddr::new(voy4, 80), 20, false),
        set(&["voyager-1"]),
        "serving-terminating fallback"
    );
    v1.set_ready(false).unwrap();
    converge(&cluster, |t| backends(t, voy4, 80) == 0);
    assert!(
        refused(&client, SocketAddr::new(voy4, 80)),
        "nothing usable → reject"
    );
    v0.set_ready(true).unwrap();
    converge(&cluster, |t| backends(t, voy6, 80) == 1);
    assert_eq!(
        replies(&client, SocketAddr::new(voy6, 80), 20, false),
        set(&["voyager-0"])
    );
}

#[test]
fn a_proxy_restart_keeps_every_connection_and_cleanup_removes_the_table() {
    require_rig!();
    let cluster = LocalCluster::new("nft-restart")
        .unwrap()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    let _eps = signpost(
        &cluster,
        "signpost-endpoints",
        &["endpoints", "--metrics-addr=127.0.0.1:10280"],
    );
    let mut proxy = start_proxy(&cluster, "signpost-proxy-1", 10281);
    let _v0 = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .start()
        .unwrap();
    let _v1 = cluster
        .pod("voyager-1")
        .label("app", "voy")
        .start()
        .unwrap();
    let client = cluster
        .pod("enterprise-0")
        .label("app", "ent")
        .start()
        .unwrap();
    let (voy4, _) = create_service(&cluster, "voy", "voy", false);
    // Wait for the API server's own `kubernetes` Service too, so nothing is
    // still arriving when the proxy is restarted.
    let kubernetes: IpAddr = "10.96.0.1".parse().unwrap();
    let before = converge(&cluster, |t| {
        backends(t, voy4, 80) == 2 && backends(t, kubernetes, 443) == 1
    });

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    std::thread::scope(|s| {
        let (stop2, ok2, failed2, client) = (stop.clone(), ok.clone(), failed.clone(), &client);
        s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match client.tcp_request(SocketAddr::new(voy4, 80), Duration::from_secs(2)) {
                    Ok(_) => ok2.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("{:.3}s connection failed: {e}", t0.elapsed().as_secs_f64());
                        failed2.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        eprintln!("{:.3}s killing the proxy", t0.elapsed().as_secs_f64());
        proxy.kill();
        std::thread::sleep(Duration::from_millis(1000));
        eprintln!("{:.3}s restarting the proxy", t0.elapsed().as_secs_f64());
        proxy = start_proxy(&cluster, "signpost-proxy-2", 10282);
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::Relaxed);
    });
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("across the restart: {ok} connections succeeded, {failed} failed");
    assert!(ok > 50, "too few connections ({ok}) to mean anything");
    assert_eq!(failed, 0, "connections failed across the restart");
    let after = converge(&cluster, |t| backends(t, voy4, 80) == 2);
    let voy = |t: &ProxyTable| {
        t.iter()
            .filter(|(k, _)| k.ip == voy4)
            .map(|(k, v)| (*k, v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(voy(&after), voy(&before));
    let log = std::fs::read_to_string(cluster.logs().join("signpost-proxy-2.log")).unwrap();
    assert!(log.contains("adopted"), "{log}");
    // PXY-8: the restarted proxy adopted the kernel's table: no full sync, nothing rewritten.
    let m = |n: &str| cluster.metric(10282, n);
    eprintln!(
        "proxy-2: full {:?} partial {:?} rewritten {:?} errors {:?}",
        m("signpost_proxy_full_syncs_total"),
        m("signpost_proxy_partial_syncs_total"),
        m("signpost_proxy_services_rewritten_total"),
        m("signpost_proxy_errors_total")
    );
    assert_eq!(
        cluster.metric(10282, "signpost_proxy_full_syncs_total"),
        Some(0.0),
        "{log}"
    );
    assert_eq!(
        cluster.metric(10282, "signpost_proxy_services_rewritten_total"),
        Some(0.0),
        "{log}"
    );
    drop(proxy);

    // An administrator's save and restore: the table as `nft list` prints
    // it loads again with `nft -f` and is the same table.
    let ns = cluster.node_namespace();
    let saved = ns
        .command("nft")
        .args(["list", "table", "inet", "signpost"])
        .output()
        .unwrap();
    assert!(saved.status.success());
    let file = cluster.logs().join("saved.nft");
    std::fs::write(&file, &saved.stdout).unwrap();
    let before_restore = kernel(&cluster);
    let del = ns
        .command("nft")
        .args(["delete", "table", "inet", "signpost"])
        .output()
        .unwrap();
    assert!(del.status.success());
    let restored = ns.command("nft").arg("-f").arg(&file).output().unwrap();
    assert!(
        restored.status.success(),
        "nft -f refused the listed table: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(kernel(&cluster), before_restore);

    let bin = workspace_binary("signpost").unwrap();
    let out = cluster
        .node_namespace()
        .command(&bin)
        .args(["proxy", "--cleanup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kernel(&cluster).is_none(), "--cleanup left the table");
}

/// The IPVS plane's reject, ClusterIP and hairpin sets change over netlink (one batch,
/// no `nft` process) on this kernel's nftables: after each step the sets
/// `nft` lists are exactly the wanted elements; a refused batch changes
/// nothing and says why.
#[test]
fn ipvs_nft_sets_change_element_by_element_over_netlink() {
    use signpost_harness::netns::{NetNs, unique};
    use signpost_model::cluster::Protocol;
    use signpost_proxy::ipvs::{NFT_TABLE, NftElements, nft_base};
    require_rig!();
    let ns = NetNs::create(unique("nftnl")).unwrap();
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        nft_base(&signpost_proxy::addresses::Masquerade::default()).as_bytes(),
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let listed = || -> BTreeSet<String> {
        let out = ns
            .command("nft")
            .args(["-j", "list", "table", "inet", NFT_TABLE])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut got = BTreeSet::new();
        for item in v["nftables"].as_array().unwrap() {
            let Some(set) = item.get("set") else { continue };
            if set["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("no_masq"))
            {
                // The masquerade policy, not elements of the table.
                continue;
            }
            for e in set["elem"].as_array().into_iter().flatten() {
                let parts: Vec<String> = match e.as_str() {
                    // A plain address (vips_v4/v6).
                    Some(a) => vec![a.to_owned()],
                    None => e["concat"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                        .collect(),
                };
                got.insert(format!(
                    "{} {}",
                    set["name"].as_str().unwrap(),
                    parts.join(" . ")
                ));
            }
        }
        got
    };
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let steps = [
        NftElements {
            reject: [
                (ip("10.96.0.1"), Protocol::Tcp, 80),
                (ip("fd00::1"), Protocol::Udp, 53),
            ]
            .into(),
            hairpin: [ip("10.244.0.1"), ip("fd00:10:244::1")].into(),
            vips: [ip("10.96.0.1"), ip("fd00::1")].into(),
        },
        NftElements {
            reject: [
                (ip("fd00::1"), Protocol::Udp, 53),
                (ip("10.96.0.2"), Protocol::Sctp, 9),
            ]
            .into(),
            hairpin: [ip("10.244.0.2"), ip("fd00:10:244::1")].into(),
            vips: [ip("fd00::1"), ip("10.96.0.2")].into(),
        },
        // Big enough to need several messages in one datagram.
        NftElements {
            reject: Default::default(),
            hairpin: (1..=1500u16)
                .map(|i| IpAddr::from([0xfd00, 10, 244, 0, 0, 0, 1, i]))
                .collect(),
            vips: Default::default(),
        },
        NftElements::default(),
    ];
    let render = |e: &NftElements| -> BTreeSet<String> {
        let fam = |ip: &IpAddr| if ip.is_ipv4() { "v4" } else { "v6" };
        e.reject
            .iter()
            .map(|(a, p, port)| format!("reject_{} {a} . {} . {port}", fam(a), p.as_lower()))
            .chain(
                e.hairpin
                    .iter()
                    .map(|a| format!("hairpin_{} {a} . {a}", fam(a))),
            )
            .chain(e.vips.iter().map(|a| format!("vips_{} {a}", fam(a))))
            .collect()
    };
    let mut have = NftElements::default();
    for want in &steps {
        let sent = ns
            .within(|| signpost_proxy::ipvs::sets::apply(&have, want))
            .unwrap()
            .unwrap();
        assert!(sent >= 1);
        assert_eq!(listed(), render(want));
        have = want.clone();
    }
    // Deleting an element that is not there: refused as a whole.
    let stale = NftElements {
        reject: [(ip("10.96.0.9"), Protocol::Tcp, 1)].into(),
        ..NftElements::default()
    };
    let want = NftElements {
        hairpin: [ip("10.244.0.3")].into(),
        vips: [ip("10.96.0.3")].into(),
        ..NftElements::default()
    };
    let err = ns
        .within(|| signpost_proxy::ipvs::sets::apply(&stale, &want))
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(
        listed(),
        BTreeSet::new(),
        "a refused batch applied part of itself"
    );
}

/// A data plane that refuses every write (here: `nft` transactions fail
/// while a fault file exists, through a wrapper first on the proxy's PATH;
/// listing still works) does not end the proxy: it logs, counts and
/// retries with backoff, and once the kernel takes writes again it programs
/// what changed meanwhile. (Before the fix the second failed sync in a row
/// ended the process, so one refused Service crash-looped every node.)
#[test]
fn a_proxy_survives_a_refusing_data_plane_and_catches_up() {
    require_rig!();
    let (cluster, _eps) = cluster_with_endpoints("nft-fault", 10280);
    let dir = tempfile::tempdir().unwrap();
    let (mut proxy, fault) = proxy_behind_faulty_nft(&cluster, dir.path(), 10281, &[]);
    std::fs::write(&fault, "").unwrap();
    let _v0 = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .start()
        .unwrap();
    let (vip, _) = create_service(&cluster, "voy", "voy", false);
    // Several refused syncs (the first one and its retries).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proxy
            .check_running()
            .expect("the proxy keeps running while nft refuses");
        let errors = cluster
            .metric(10281, "signpost_proxy_errors_total")
            .unwrap_or(0.0);
        if errors >= 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {errors} errors counted; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        kernel(&cluster).is_none(),
        "nothing was written while refused"
    );
    proxy
        .check_running()
        .expect("still running after repeated failures");
    // Changes have waited past the 2 s timeout: /healthz says so (503), as
    // kube-proxy's does, so a probe or a load balancer sees this node.
    let health = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = cluster.http_get(10281, "/healthz");
            if got.as_ref().is_some_and(|(code, _)| *code == want) {
                return got.unwrap().1;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz never answered {want}: last {got:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let body = health(503);
    assert!(body.contains("not in the kernel"), "{body}");
    // The kernel takes writes again: the proxy catches up on its own.
    std::fs::remove_file(&fault).unwrap();
    let t = converge(&cluster, |t| backends(t, vip, 80) == 1);
    assert_eq!(backends(&t, vip, 80), 1);
    health(200);
    proxy.check_running().expect("running after recovery");
}

/// A local cluster with `signpost endpoints` (metrics on `port`).
fn cluster_with_endpoints(name: &str, port: u16) -> (LocalCluster<Running>, Daemon) {
    let cluster = LocalCluster::new(name)
        .unwrap()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    let metrics = format!("--metrics-addr=127.0.0.1:{port}");
    let eps = signpost(&cluster, "signpost-endpoints", &["endpoints", &metrics]);
    (cluster, eps)
}

/// `signpost proxy --mode nftables` for node-a (metrics on `port`) with a
/// wrapper first on its PATH that, while the returned fault file exists,
/// refuses every `nft` transaction (`-f`) containing the file's text (all
/// of them when it is empty), and while `hold` exists in `dir` makes every
/// transaction wait; listing always works. The proxy runs with one
/// runtime worker (`TOKIO_WORKER_THREADS=1`), so a blocked worker shows.
fn proxy_behind_faulty_nft(
    cluster: &LocalCluster<Running>,
    dir: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> (Daemon, std::path::PathBuf) {
    let fault = dir.join("refuse-writes");
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("nft is installed");
    let wrapper = dir.join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# Fault injection: while {f} exists, refuse transactions (-f) holding its text.\n\
             for a in \"$@\"; do if [ \"$a\" = -f ]; then while [ -e {h} ]; do touch {h}.waiting; sleep 0.05; done; fi; done\n\
             for a in \"$@\"; do if [ \"$a\" = -f ] && [ -e {f} ]; then\n\
             input=$(cat); pattern=$(cat {f})\n\
             case \"$input\" in *\"$pattern\"*) echo 'Error: injected fault: transaction refused' >&2; exit 1;; esac\n\
             printf '%s' \"$input\" | exec {real} \"$@\"\n\
             fi; done\n\
             exec {real} \"$@\"\n",
            f = fault.display(),
            h = dir.join("hold").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "PATH={}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bin = workspace_binary("signpost").unwrap();
    let mut args: Vec<String> = vec![
        path,
        "TOKIO_WORKER_THREADS=1".into(),
        bin.display().to_string(),
        format!(
            "--kubeconfig={}",
            cluster
                .component_kubeconfig(Component::Proxy)
                .unwrap()
                .display()
        ),
        "proxy".into(),
        "--mode=nftables".into(),
        // The fault wrapper stands in for the `nft` program, so the proxy
        // writes through it (the netlink writer's refusals are tested on
        // the kernel itself in `both_writers_program_the_same_table`).
        "--nft-writer=nft".into(),
        "--node-name=node-a".into(),
        format!("--metrics-addr=127.0.0.1:{port}"),
        "--healthz-timeout-secs=2".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let proxy = Daemon::spawn(
        cluster.node_namespace(),
        "signpost-proxy",
        std::path::Path::new("/usr/bin/env"),
        &args,
        cluster.logs().join("signpost-proxy.log"),
    )
    .unwrap();
    (proxy, fault)
}

/// Issue 13, finding 5: one Service the kernel refuses (here: every
/// transaction writing its ClusterIP is refused) costs only that Service.
/// The others — existing and created after it — are programmed, the
/// refused one is counted in `signpost_proxy_services_refused` and
/// logged, and it is programmed at the next resync once the kernel takes
/// it. (Before the fix every sync after it was refused whole: the Service
/// created later never reached the kernel.)
#[test]
fn one_refused_service_leaves_every_other_one_programmed() {
    require_rig!();
    let (cluster, _eps) = cluster_with_endpoints("nft-refuse", 10282);
    let dir = tempfile::tempdir().unwrap();
    let bad: IpAddr = "10.96.200.200".parse().unwrap();
    let (mut proxy, fault) =
        proxy_behind_faulty_nft(&cluster, dir.path(), 10283, &["--resync-secs=3"]);
    std::fs::write(&fault, bad.to_string()).unwrap();
    let _v0 = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .start()
        .unwrap();
    let (before, _) = create_service(&cluster, "voy", "voy", false);
    let fixed: KService = serde_json::from_value(json!({
        "metadata": { "name": "refused" },
        "spec": { "clusterIP": bad.to_string(), "selector": { "app": "voy" },
                  "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }] },
    }))
    .unwrap();
    cluster
        .block_on(|client| async move {
            Api::<KService>::namespaced(client, "default")
                .create(&PostParams::default(), &fixed)
                .await
                .unwrap();
        })
        .unwrap();
    let (after, _) = create_service(&cluster, "ent", "voy", false);
    let mut wait_for = |what: &str, ok: &dyn Fn(&ProxyTable, f64) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            proxy.check_running().expect("the proxy keeps running");
            let t = kernel(&cluster).unwrap_or_default();
            let refused = cluster
                .metric(10283, "signpost_proxy_services_refused")
                .unwrap_or(-1.0);
            if ok(&t, refused) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: kernel {t:#?}, refused {refused}; logs in {}",
                cluster.logs().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let t = wait_for(
        "the others programmed, the refused one counted",
        &|t, refused| backends(t, before, 80) == 1 && backends(t, after, 80) == 1 && refused == 1.0,
    );
    assert!(t.keys().all(|k| k.ip != bad), "{t:#?}");
    // A change to another Service still goes through while one is refused.
    let _v1 = cluster
        .pod("voyager-1")
        .label("app", "voy")
        .start()
        .unwrap();
    wait_for("a later change programmed", &|t, _| {
        backends(t, before, 80) == 2 && backends(t, after, 80) == 2
    });
    let log = std::fs::read_to_string(cluster.logs().join("signpost-proxy.log")).unwrap();
    assert!(
        log.contains("the kernel refuses this virtual service") && log.contains("10.96.200.200"),
        "the refused Service is logged"
    );
    // The kernel takes it again: the next resync programs it.
    std::fs::remove_file(&fault).unwrap();
    wait_for(
        "the refused one programmed after a resync",
        &|t, refused| backends(t, bad, 80) == 2 && refused == 0.0,
    );
    converge(&cluster, |t| backends(t, bad, 80) == 2);
    // A data plane that refuses everything is not "one refused Service":
    // the change stays queued and /healthz says so.
    std::fs::write(&fault, "").unwrap();
    create_service(&cluster, "late", "voy", false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = cluster.http_get(10283, "/healthz");
        if got.as_ref().is_some_and(|(code, _)| *code == 503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {got:?} while nft refused every write"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 13, finding 11: `nft` runs as a process; while it works the
/// proxy's other tasks go on. Here every transaction is held (the wrapper
/// waits on a file) and the proxy has a single runtime worker: `/metrics`
/// still answers. (The loop runs on the thread of `main`'s `block_on`,
/// not on a worker, so this held before `signpost_runtime::blocking` too;
/// the test keeps it so should the loop ever be spawned onto a worker.)
#[test]
fn probes_are_answered_while_nft_works() {
    require_rig!();
    let (cluster, _eps) = cluster_with_endpoints("nft-hold", 10284);
    let dir = tempfile::tempdir().unwrap();
    let (mut proxy, _) = proxy_behind_faulty_nft(&cluster, dir.path(), 10285, &[]);
    // The first sync done: the table exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    while kernel(&cluster).is_none() {
        assert!(Instant::now() < deadline, "no first sync");
        std::thread::sleep(Duration::from_millis(100));
    }
    let syncs = |c: &LocalCluster<Running>| {
        c.metric(10285, "signpost_proxy_partial_syncs_total")
            .unwrap_or(0.0)
            + c.metric(10285, "signpost_proxy_full_syncs_total")
                .unwrap_or(0.0)
    };
    let before = syncs(&cluster);
    std::fs::write(dir.path().join("hold"), "").unwrap();
    let _v0 = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .start()
        .unwrap();
    let (vip, _) = create_service(&cluster, "voy", "voy", false);
    // Wait until the proxy is inside a held transaction.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path().join("hold.waiting").exists() {
        assert!(
            Instant::now() < deadline,
            "the proxy never reached nft; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Held for a while: probes and metrics are answered all along.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let got = cluster.http_get(10285, "/metrics");
        assert!(
            got.as_ref().is_some_and(|(code, _)| *code == 200),
            "/metrics not answered while nft works: {got:?}"
        );
        assert_eq!(syncs(&cluster), before, "the held sync is not done yet");
    }
    std::fs::remove_file(dir.path().join("hold")).unwrap();
    let t = converge(&cluster, |t| backends(t, vip, 80) == 1);
    assert_eq!(backends(&t, vip, 80), 1);
    proxy.check_running().expect("running");
}

/// A Service without a selector (port http 80 → 8080) and its slice
/// written by hand with one ready endpoint, both carrying `labels`; the
/// slice's ports are `ports`. Returns the ClusterIP.
fn hand_service(
    cluster: &LocalCluster<Running>,
    name: &str,
    labels: serde_json::Value,
    ports: serde_json::Value,
    address: &str,
) -> IpAddr {
    let svc: KService = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }] },
    }))
    .unwrap();
    let mut slice_labels = labels;
    slice_labels["kubernetes.io/service-name"] = json!(name);
    let slice: KSlice = serde_json::from_value(json!({
        "metadata": { "name": format!("{name}-1"), "labels": slice_labels },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": [{ "addresses": [address], "conditions": { "ready": true } }],
    }))
    .unwrap();
    cluster
        .block_on(|client| async move {
            let created = Api::<KService>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &svc)
                .await
                .unwrap();
            Api::<KSlice>::namespaced(client, "default")
                .create(&PostParams::default(), &slice)
                .await
                .expect("the API server admits the slice");
            created.spec.unwrap().cluster_ip.unwrap()
        })
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn an_admitted_slice_port_without_a_number_keeps_the_rest_of_the_slice() {
    require_rig!();
    let cluster = LocalCluster::new("nft-nilport").unwrap().start().unwrap();
    let _proxy = start_proxy(&cluster, "signpost-proxy", 10281);
    // One of the slice's ports has no number: the API server admits it.
    let vip = hand_service(
        &cluster,
        "ext",
        json!({}),
        json!([
            { "name": "any", "protocol": "TCP" },
            { "name": "http", "port": 8080, "protocol": "TCP" },
        ]),
        "10.244.0.77",
    );
    // The endpoint behind port http is programmed (the whole slice was
    // rejected before, so the ClusterIP had no backend).
    let t = converge(&cluster, |t| backends(t, vip, 80) == 1);
    assert_eq!(backends(&t, vip, 80), 1);
    assert_eq!(
        cluster.metric(10281, "signpost_proxy_invalid_objects_total"),
        Some(0.0),
        "nothing about the slice is invalid"
    );
}

#[test]
fn a_service_labelled_for_another_proxy_is_left_to_it() {
    require_rig!();
    let cluster = LocalCluster::new("nft-proxyname").unwrap().start().unwrap();
    let _proxy = start_proxy(&cluster, "signpost-proxy", 10281);
    let http = json!([{ "name": "http", "port": 8080, "protocol": "TCP" }]);
    let theirs = hand_service(
        &cluster,
        "theirs",
        json!({ "service.kubernetes.io/service-proxy-name": "other-proxy" }),
        http.clone(),
        "10.244.0.78",
    );
    let mine = hand_service(&cluster, "mine", json!({}), http, "10.244.0.79");
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        let t = kernel(&cluster).unwrap_or_default();
        if backends(&t, mine, 80) == 1 {
            break t;
        }
        assert!(Instant::now() < deadline, "mine never programmed: {t:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Programmed after theirs was created, so theirs was seen and skipped.
    assert!(
        table.keys().all(|k| k.ip != theirs),
        "a Service labelled for another proxy was programmed: {table:#?}"
    );
}

/// Issue 13, finding 11, in the kernel: a client stuck to a backend (an
/// element in that backend's affinity set) stays stuck when another backend
/// joins the Service. Before, the partial sync deleted and recreated every
/// affinity set of the Service, so every sticky client was reshuffled.
#[test]
fn a_sticky_client_stays_stuck_when_a_backend_joins() {
    use signpost_harness::netns::{NetNs, unique};
    use signpost_model::cluster::{VirtualKey, VirtualService};
    use signpost_proxy::nftables::{TABLE, build};
    require_rig!();
    let ns = NetNs::create(unique("sticky")).unwrap();
    let nft = |input: String| {
        let mut c = ns.command("nft");
        c.args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "nft refused: {err}");
    };
    let key = VirtualKey {
        ip: "10.96.0.1".parse().unwrap(),
        protocol: signpost_model::cluster::Protocol::Tcp,
        port: 80,
    };
    let a: SocketAddr = "10.244.0.2:8080".parse().unwrap();
    let b: SocketAddr = "10.244.0.3:8080".parse().unwrap();
    let sticky = |backends: &[SocketAddr]| VirtualService {
        backends: backends.iter().copied().collect(),
        affinity_timeout: Some(600),
    };
    let old: ProxyTable = [(key, sticky(&[a]))].into();
    let new: ProxyTable = [(key, sticky(&[a, b]))].into();
    let script = signpost_proxy::nftables::script::script;
    nft(script(&build::full(
        &old,
        &[],
        &signpost_proxy::addresses::Masquerade::default(),
    )));
    // The client 10.244.0.9 is stuck to a (as the endpoint chain's update would record).
    let set_a = build::affinity_set(&key, &a);
    let st = ns
        .command("nft")
        .args(["add", "element", "inet", TABLE, &set_a, "{ 10.244.0.9 }"])
        .status()
        .unwrap();
    assert!(st.success());
    nft(script(&build::partial(&old, &new, &[]).unwrap()));
    let out = ns
        .command("nft")
        .args(["list", "set", "inet", TABLE, &set_a])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("10.244.0.9"),
        "the sticky client was forgotten:\n{listing}"
    );
    // The new backend's chain and set are there, and the service chain
    // chooses between both.
    let out = ns
        .command("nft")
        .args(["list", "chain", "inet", TABLE, &build::service_chain(&key)])
        .output()
        .unwrap();
    let chain = String::from_utf8_lossy(&out.stdout);
    assert_eq!(chain.matches("numgen random mod 2").count(), 1, "{chain}");
    assert!(chain.contains(&build::affinity_set(&key, &b)), "{chain}");
}

/// `--masquerade-all`, `--cluster-cidr` and `--nodeport-addresses` in the
/// kernel: the backend sees the client's own address, or the node's, as
/// the policy says, and the NodePort answers only on the node addresses
/// allowed. Each phase restarts the proxy with another policy over the
/// table the last one left, so a restart must notice that the table it
/// adopts was written under another policy.
#[test]
fn masquerading_and_node_port_addresses_follow_the_flags() {
    use signpost_harness::cluster::NODE_IP;
    require_rig!();
    let (cluster, _eps) = cluster_with_endpoints("nft-masq", 10280);
    let _voy = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .peer_port(9090)
        .start()
        .unwrap();
    let client = cluster
        .pod("enterprise-0")
        .label("app", "ent")
        .start()
        .unwrap();
    let svc: KService = serde_json::from_value(json!({
        "metadata": { "name": "voy" },
        "spec": {
            "type": "NodePort",
            "selector": { "app": "voy" },
            "ports": [{ "name": "peer", "port": 80, "targetPort": 9090, "protocol": "TCP" }],
        },
    }))
    .unwrap();
    let (vip, node_port) = cluster
        .block_on(|c| async move {
            let spec = Api::<KService>::namespaced(c, "default")
                .create(&PostParams::default(), &svc)
                .await
                .unwrap()
                .spec
                .unwrap();
            let port = spec.ports.unwrap()[0].node_port.unwrap();
            (
                spec.cluster_ip.unwrap().parse::<IpAddr>().unwrap(),
                u16::try_from(port).unwrap(),
            )
        })
        .unwrap();
    let cluster_ip = SocketAddr::new(vip, 80);
    let node_port = SocketAddr::new(IpAddr::V4(NODE_IP), node_port);
    let me = client.ip().to_string();
    // The source voyager-0 sees for a connection from the client.
    let seen = |to: SocketAddr| -> Option<String> {
        let reply = client.tcp_request(to, Duration::from_secs(2)).ok()?;
        let (pod, peer) = reply.split_once(' ')?;
        assert_eq!(pod, "voyager-0", "{reply}");
        Some(peer.to_owned())
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what}; logs in {}",
                cluster.logs().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Each proxy took over the last one's table without a refused
    // transaction: a table written under other flags is rewritten whole.
    let clean = |p: Daemon| {
        assert_eq!(
            cluster.metric(10281, "signpost_proxy_errors_total"),
            Some(0.0),
            "a refused transaction; logs in {}",
            cluster.logs().display()
        );
        drop(p);
    };
    let phase = AtomicU64::new(0);
    let proxy = |extra: &[&str]| {
        let mut args = vec!["proxy", "--mode=nftables", "--node-name=node-a"];
        args.extend_from_slice(extra);
        let n = phase.fetch_add(1, Ordering::Relaxed) + 1;
        signpost(&cluster, &format!("signpost-proxy-{n}"), &args)
    };

    // Default: the backend sees the client; the NodePort answers on the node.
    let p = proxy(&[]);
    wait_for("by default the backend sees the client's address", &|| {
        seen(cluster_ip).as_deref() == Some(me.as_str())
    });
    wait_for("the NodePort answers on the node's address", &|| {
        seen(node_port).is_some()
    });
    clean(p);

    // Everyone masqueraded.
    let p = proxy(&["--masquerade-all"]);
    wait_for("--masquerade-all hides the client's address", &|| {
        seen(cluster_ip).is_some_and(|peer| peer != me)
    });
    clean(p);

    // Only the NodePort addresses change: NodePorts only on an address the
    // node lacks, so the node's address carries none.
    let p = proxy(&["--masquerade-all", "--nodeport-addresses=192.0.2.0/24"]);
    wait_for("no NodePort outside --nodeport-addresses", &|| {
        refused(&client, node_port)
    });
    assert!(seen(cluster_ip).is_some_and(|peer| peer != me));
    clean(p);

    // The client's range is the cluster's: not masqueraded; NodePort back.
    let cidr = format!("{NODE_IP}/32");
    let p = proxy(&[
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
        &format!("--nodeport-addresses={cidr}"),
    ]);
    wait_for("a client inside --cluster-cidr keeps its address", &|| {
        seen(cluster_ip).as_deref() == Some(me.as_str())
    });
    wait_for(
        "the NodePort answers on an address inside --nodeport-addresses",
        &|| seen(node_port).is_some(),
    );
    clean(p);

    // The client's range is not the cluster's: masqueraded.
    let p = proxy(&["--cluster-cidr=10.99.0.0/16"]);
    wait_for("a client outside --cluster-cidr is masqueraded", &|| {
        seen(cluster_ip).is_some_and(|peer| peer != me)
    });
    clean(p);
}

/// The netlink writer and `nft -f` (the script writer) program the same table: the same
/// transactions (full syncs under each masquerade policy, then partial
/// syncs that add, change, reject and remove virtual services of both
/// families, sticky ones included) written one way in one namespace and the
/// other way in another are listed by `nft` identically. A batch the kernel
/// refuses changes nothing and names the refused command.
#[test]
fn both_writers_program_the_same_table() {
    use signpost_harness::netns::{NetNs, unique};
    use signpost_model::cluster::{Protocol, VirtualKey, VirtualService};
    use signpost_proxy::addresses::Masquerade;
    use signpost_proxy::nftables::build;
    use signpost_proxy::nftables::ruleset::{Cmd, Elem, Stmt, Tx};
    use signpost_proxy::nftables::wire;
    require_rig!();
    let by_netlink = NetNs::create(unique("wnl")).unwrap();
    let by_nft = NetNs::create(unique("wnft")).unwrap();
    let key = |ip: &str, protocol, port| VirtualKey {
        ip: ip.parse().unwrap(),
        protocol,
        port,
    };
    let vs = |backends: &[&str], affinity: Option<u32>| VirtualService {
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        affinity_timeout: affinity,
    };
    let node_ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
    let t0: ProxyTable = [
        (
            key("10.96.0.10", Protocol::Tcp, 80),
            vs(
                &["10.244.0.2:8080", "10.244.0.3:8080", "10.244.0.4:8080"],
                None,
            ),
        ),
        (
            key("10.96.0.11", Protocol::Udp, 53),
            vs(&["10.244.0.5:53"], Some(10800)),
        ),
        (
            key("fd00:10:96::10", Protocol::Tcp, 80),
            vs(
                &["[fd00:10:244::2]:8080", "[fd00:10:244::3]:8080"],
                Some(60),
            ),
        ),
        (key("10.96.0.12", Protocol::Tcp, 80), vs(&[], None)),
        (
            key("10.0.0.1", Protocol::Tcp, 30080),
            vs(&["10.244.0.2:8080"], None),
        ),
        (
            key("10.96.0.13", Protocol::Sctp, 9),
            vs(&["10.244.0.2:9"], None),
        ),
    ]
    .into();
    let mut t1 = t0.clone();
    t1.insert(
        key("10.96.0.11", Protocol::Udp, 53),
        vs(&["10.244.0.5:53", "10.244.0.6:53"], Some(10800)),
    );
    t1.insert(key("10.96.0.10", Protocol::Tcp, 80), vs(&[], None));
    t1.insert(
        key("10.96.0.12", Protocol::Tcp, 80),
        vs(&["10.244.0.7:80"], None),
    );
    t1.remove(&key("10.96.0.13", Protocol::Sctp, 9));
    t1.insert(
        key("fd00:10:96::11", Protocol::Udp, 53),
        vs(&["[fd00:10:244::4]:53"], None),
    );
    let policies = [
        Masquerade::default(),
        Masquerade {
            all: false,
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
        },
        Masquerade {
            all: true,
            cluster_cidrs: Vec::new(),
        },
    ];
    // The table as `nft -j` lists it, without rule handles, and with each
    // set's elements sorted (a hashed set lists them in hash order); rules
    // keep their order.
    let listing = |ns: &NetNs| -> Vec<serde_json::Value> {
        let out = ns
            .command("nft")
            .args(["-j", "list", "table", "inet", "signpost"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut objects: Vec<serde_json::Value> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("metainfo").is_none())
            .cloned()
            .collect();
        for o in &mut objects {
            for kind in ["rule", "set", "map", "chain", "table"] {
                if let Some(body) = o.get_mut(kind).and_then(|b| b.as_object_mut()) {
                    body.remove("handle");
                    if let Some(elems) = body.get_mut("elem").and_then(|e| e.as_array_mut()) {
                        elems.sort_by_key(|e| e.to_string());
                    }
                }
            }
        }
        assert!(
            objects.len() > 20,
            "too small a table to compare: {objects:?}"
        );
        objects
    };
    // `nft -f -` in a namespace.
    let nft_f = |ns: &NetNs, input: &[u8]| {
        let mut child = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        child.wait_with_output().unwrap()
    };
    let write = |tx: &Tx| {
        by_netlink
            .within(|| wire::send(tx))
            .unwrap()
            .unwrap_or_else(|e| panic!("netlink writer: {e:?}"));
        let out = nft_f(
            &by_nft,
            signpost_proxy::nftables::script::script(tx).as_bytes(),
        );
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (a, b) = (listing(&by_netlink), listing(&by_nft));
        if let Some(i) = (0..a.len().max(b.len())).find(|i| a.get(*i) != b.get(*i)) {
            panic!(
                "object {i} differs:\n netlink: {}\n nft:     {}",
                a.get(i).map_or("(none)".into(), ToString::to_string),
                b.get(i).map_or("(none)".into(), ToString::to_string)
            );
        }
    };
    for masq in &policies {
        write(&build::full(&t0, &node_ips, masq));
        eprintln!("full sync under {masq:?}: the same table");
    }
    write(&build::partial(&t0, &t1, &node_ips).unwrap());
    write(&build::partial(&t1, &t0, &node_ips).unwrap());
    // An endpoint change of a service without affinity: map elements only.
    let mut t0b = t0.clone();
    t0b.insert(
        key("10.96.0.10", Protocol::Tcp, 80),
        vs(&["10.244.0.3:8080", "10.244.0.8:8080"], None),
    );
    write(&build::partial(&t0, &t0b, &node_ips).unwrap());
    write(&build::partial(&t0b, &t0, &node_ips).unwrap());
    write(&build::partial(&t0, &ProxyTable::new(), &node_ips).unwrap());
    write(&build::partial(&ProxyTable::new(), &t1, &node_ips).unwrap());
    // The table read back is the table written.
    let listed = by_netlink
        .command("nft")
        .args(["-j", "list", "table", "inet", "signpost"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        signpost_proxy::nftables::readback::table(Some(&v)),
        build::normalize(t1.clone())
    );
    // What `nft list` prints of it is a script nft reads back (an
    // administrator's save and restore).
    let saved = by_netlink
        .command("nft")
        .args(["list", "table", "inet", "signpost"])
        .output()
        .unwrap();
    let restored = NetNs::create(unique("wrst")).unwrap();
    let out = nft_f(&restored, &saved.stdout);
    assert!(
        out.status.success(),
        "nft could not restore its own listing: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&saved.stdout)
    );
    assert_eq!(listing(&restored), listing(&by_netlink));

    // A refused batch: nothing of it applies, and the refusal names the command.
    let before = listing(&by_netlink);
    let bad = Tx(vec![
        Cmd::AddElems(
            "cluster-ips-v4".into(),
            vec![Elem::Addr("10.96.9.9".parse().unwrap())],
        ),
        Cmd::AddRule("no-such-chain".into(), vec![Stmt::Masquerade]),
    ]);
    let err = by_netlink.within(|| wire::send(&bad)).unwrap().unwrap_err();
    let wire::Failure::Refused(why) = err else {
        panic!("not a refusal: {err:?}")
    };
    assert!(why.contains("add rule to chain no-such-chain"), "{why}");
    assert_eq!(
        listing(&by_netlink),
        before,
        "a refused batch changed the table"
    );
}
