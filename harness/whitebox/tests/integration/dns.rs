//! `signpost dns` against a local cluster with real clients: `dig` over UDP
//! and TCP, the glibc resolver (`getent ahosts`) inside a Pod namespace with
//! a kubelet-style resolv.conf, forwarding to a real upstream server, loop
//! refusal, truncation, SERVFAIL before the first sync and answers while
//! the API server is unreachable.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, ListParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use signpost_harness::cluster::NODE_IP;
use signpost_harness::dns::{self, start_signpost, wait_ready};
use signpost_harness::netns::NetNs;
use signpost_harness::{LocalCluster, Running};
use signpost_model::cluster::ResolvConf;

use crate::{echo_bin, require_rig};

/// Creates a Service from its spec in `ns`; returns its ClusterIPs.
pub fn create_service(
    cluster: &LocalCluster<Running>,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Vec<IpAddr> {
    let svc: KService =
        serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec })).unwrap();
    let ns = ns.to_owned();
    cluster
        .block_on(|client| async move {
            let api: Api<KService> = Api::namespaced(client, &ns);
            api.create(&PostParams::default(), &svc)
                .await
                .unwrap()
                .spec
                .unwrap()
                .cluster_ips
                .unwrap_or_default()
        })
        .unwrap()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Creates an EndpointSlice written by hand (for a Service without selector).
pub fn create_slice(cluster: &LocalCluster<Running>, ns: &str, slice: serde_json::Value) {
    let slice: KSlice = serde_json::from_value(slice).unwrap();
    let ns = ns.to_owned();
    cluster
        .block_on(|client| async move {
            Api::<KSlice>::namespaced(client, &ns)
                .create(&PostParams::default(), &slice)
                .await
                .unwrap();
        })
        .unwrap();
}

/// Waits until the slices of `service` in `ns` hold `n` ready addresses.
pub fn wait_endpoints(cluster: &LocalCluster<Running>, ns: &str, service: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ns2, svc) = (ns.to_owned(), service.to_owned());
        let got = cluster
            .block_on(|client| async move {
                Api::<KSlice>::namespaced(client, &ns2)
                    .list(
                        &ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")),
                    )
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count()
            })
            .unwrap();
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{service}: {got} ready endpoints, want {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dig(cluster: &LocalCluster<Running>, args: &[&str]) -> String {
    let out: Output = cluster
        .node_namespace()
        .command("dig")
        .args(["+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (bind9-dnsutils) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(cluster: &LocalCluster<Running>, server: &str, args: &[&str]) -> BTreeSet<String> {
    let mut all = vec![server, "+short"];
    all.extend(args);
    dig(cluster, &all)
        .lines()
        .map(|l| l.trim().trim_end_matches('.').to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
}

/// `/etc/netns/<pod>/resolv.conf`, removed on drop.
struct PodResolvConf(PathBuf);

impl PodResolvConf {
    fn write(pod: &NetNs, conf: &ResolvConf) -> Self {
        let dir = PathBuf::from("/etc/netns").join(pod.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), conf.render()).unwrap();
        PodResolvConf(dir)
    }
}

impl Drop for PodResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn getent(pod: &NetNs, db: &str, name: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", pod.name(), "getent", db, name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn real_clients_resolve_cluster_names() {
    require_rig!();
    let cluster = LocalCluster::new("dns")
        .unwrap()
        .with_controller_manager()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    let voy_pod = cluster.pod("voy-0").label("app", "voy").start().unwrap();
    let db0 = cluster
        .pod("db-0")
        .label("app", "db")
        .hostname("db-0", "db")
        .start()
        .unwrap();
    let db1 = cluster
        .pod("db-1")
        .label("app", "db")
        .hostname("db-1", "db")
        .start()
        .unwrap();
    let voy = create_service(
        &cluster,
        "default",
        "voy",
        json!({ "selector": { "app": "voy" }, "ipFamilyPolicy": "PreferDualStack",
                "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }),
    );
    create_service(
        &cluster,
        "default",
        "db",
        json!({ "selector": { "app": "db" }, "clusterIP": "None", "ipFamilyPolicy": "PreferDualStack",
                "ports": [{ "name": "http", "port": 8080 }] }),
    );
    // A headless Service with 60 hand-written endpoints: its answer exceeds 512 bytes.
    create_service(
        &cluster,
        "default",
        "big",
        json!({ "clusterIP": "None", "ports": [{ "name": "http", "port": 80 }] }),
    );
    let big: Vec<String> = (1..=60).map(|i| format!("10.244.9.{i}")).collect();
    create_slice(
        &cluster,
        "default",
        json!({
            "metadata": { "name": "big-1", "labels": { "kubernetes.io/service-name": "big" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }],
            "endpoints": big.iter().map(|a| json!({ "addresses": [a], "conditions": { "ready": true } })).collect::<Vec<_>>(),
        }),
    );
    wait_endpoints(&cluster, "default", "voy", 2);
    wait_endpoints(&cluster, "default", "db", 4);

    // The upstream for other names: another Signpost DNS serving zone upstream.test.
    let _upstream = start_signpost(
        &cluster,
        "dns-upstream",
        SocketAddr::new(IpAddr::V4(NODE_IP), 5300),
        10290,
        &["--zone=upstream.test", "--upstream=127.0.0.1:1"],
    )
    .unwrap();
    let mut server = start_signpost(
        &cluster,
        "dns",
        SocketAddr::new(IpAddr::V4(NODE_IP), 53),
        10282,
        &[
            "--upstream=10.0.0.1:5300",
            "--pods=insecure",
            "--cache-secs=30",
        ],
    )
    .unwrap();
    let main: SocketAddr = SocketAddr::new(IpAddr::V4(NODE_IP), 53);
    wait_ready(&cluster, main, Duration::from_secs(30)).unwrap();
    wait_ready(
        &cluster,
        SocketAddr::new(IpAddr::V4(NODE_IP), 5300),
        Duration::from_secs(30),
    )
    .ok(); // its zone is upstream.test: dns-version.cluster.local is forwarded and fails; checked below
    server.check_running().unwrap();
    let at = "@10.0.0.1";
    let fqdn = "voy.default.svc.cluster.local";
    let v4: BTreeSet<String> = voy
        .iter()
        .filter(|i| i.is_ipv4())
        .map(|i| i.to_string())
        .collect();
    let v6: BTreeSet<String> = voy
        .iter()
        .filter(|i| i.is_ipv6())
        .map(|i| i.to_string())
        .collect();
    assert_eq!(v6.len(), 1, "the cluster is dual-stack: {voy:?}");

    // dig over UDP and TCP.
    assert_eq!(short(&cluster, at, &[fqdn, "A"]), v4);
    assert_eq!(short(&cluster, at, &["+tcp", fqdn, "A"]), v4);
    assert_eq!(short(&cluster, at, &[fqdn, "AAAA"]), v6);
    assert_eq!(
        short(&cluster, at, &["VOY.Default.SVC.cluster.LOCAL.", "A"]),
        v4,
        "case-insensitive (DNS-12)"
    );
    assert_eq!(
        short(&cluster, at, &[&format!("_http._tcp.{fqdn}"), "SRV"]),
        [format!("0 50 80 {fqdn}")].into(),
        "dual-stack: two address × port pairs (DNS-8)"
    );
    let db_ips: BTreeSet<String> = [db0.ip().to_string(), db1.ip().to_string()].into();
    assert_eq!(
        short(&cluster, at, &["db.default.svc.cluster.local", "A"]),
        db_ips
    );
    assert_eq!(
        short(
            &cluster,
            at,
            &["+tcp", "db-0.db.default.svc.cluster.local", "A"]
        ),
        [db0.ip().to_string()].into()
    );
    assert_eq!(
        short(&cluster, at, &["db-1.db.default.svc.cluster.local", "AAAA"]),
        [db1.ip6().to_string()].into()
    );
    assert_eq!(
        short(&cluster, at, &["-x", &v4.iter().next().unwrap().clone()]),
        [fqdn.to_owned()].into()
    );
    assert_eq!(
        short(&cluster, at, &["-x", &v6.iter().next().unwrap().clone()]),
        [fqdn.to_owned()].into(),
        "IPv6 PTR"
    );
    assert_eq!(
        short(&cluster, at, &["dns-version.cluster.local", "TXT"]),
        ["\"1.1.0\"".to_owned()].into()
    );
    let dashed = voy_pod.ip().to_string().replace('.', "-");
    assert_eq!(
        short(
            &cluster,
            at,
            &[&format!("{dashed}.default.pod.cluster.local"), "A"]
        ),
        [voy_pod.ip().to_string()].into(),
        "pod records, insecure mode"
    );
    let nx = dig(&cluster, &[at, "nope.default.svc.cluster.local", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(
        nx.contains("SOA"),
        "a negative answer carries the SOA: {nx}"
    );
    let nodata = dig(&cluster, &[at, fqdn, "TXT"]);
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    let any = dig(&cluster, &[at, fqdn, "ANY"]);
    assert!(any.contains("ANSWER: 1,"), "ANY is minimal: {any}");
    let axfr = dig(&cluster, &[at, "cluster.local", "AXFR"]);
    assert!(axfr.contains("Transfer failed"), "AXFR refused: {axfr}");

    // Truncation: without EDNS 60 addresses do not fit in 512 bytes.
    let trunc = dig(
        &cluster,
        &[
            at,
            "+noedns",
            "+ignore",
            "big.default.svc.cluster.local",
            "A",
        ],
    );
    assert!(trunc.contains(" tc"), "TC set: {trunc}");
    let all = short(
        &cluster,
        at,
        &["+tcp", "big.default.svc.cluster.local", "A"],
    );
    assert_eq!(
        all,
        big.iter().cloned().collect::<BTreeSet<_>>(),
        "TCP carries all 60"
    );
    let edns = short(
        &cluster,
        at,
        &["+bufsize=4096", "big.default.svc.cluster.local", "A"],
    );
    assert_eq!(edns.len(), 60, "EDNS0 payload 4096 carries all 60 over UDP");

    // Forwarding: a name outside the zone goes to the upstream server.
    assert_eq!(
        short(&cluster, at, &["voy.default.svc.upstream.test", "A"]),
        v4
    );
    let forwarded = cluster
        .metric(10282, "signpost_dns_forwarded_total")
        .unwrap();
    assert!(forwarded >= 1.0);
    // Asked again (over TCP) within its TTL: from the cache, not upstream.
    assert_eq!(
        short(
            &cluster,
            at,
            &["+tcp", "voy.default.svc.upstream.test", "A"]
        ),
        v4
    );
    assert_eq!(
        cluster.metric(10282, "signpost_dns_forwarded_total"),
        Some(forwarded),
        "a cached answer is not forwarded again"
    );
    assert!(
        cluster
            .metric(10282, "signpost_dns_cache_hits_total")
            .unwrap()
            >= 1.0
    );

    // The glibc resolver in a Pod, with the kubelet's resolv.conf.
    let client = cluster
        .pod("client")
        .label("app", "client")
        .start()
        .unwrap();
    let _conf = PodResolvConf::write(
        client.netns(),
        &ResolvConf::kubelet("default", "cluster.local", IpAddr::V4(NODE_IP)),
    );
    let all_voy: BTreeSet<String> = v4.union(&v6).cloned().collect();
    for name in [
        "voy",
        "voy.default",
        "voy.default.svc",
        "voy.default.svc.cluster.local",
        "voy.default.svc.cluster.local.",
    ] {
        assert_eq!(
            getent(client.netns(), "ahosts", name),
            all_voy,
            "getent ahosts {name}"
        );
    }
    assert_eq!(
        getent(client.netns(), "ahostsv4", "db-0.db"),
        [db0.ip().to_string()].into()
    );
    assert!(getent(client.netns(), "ahosts", "nope").is_empty());

    // Metrics: queries by type and rcode, latency, programming latency.
    assert!(cluster.metric(10282, "signpost_dns_queries_total").unwrap() > 20.0);
    assert!(
        cluster
            .metric(10282, "signpost_dns_request_duration_seconds_count")
            .unwrap()
            > 20.0
    );
    assert!(
        cluster
            .metric(10282, "signpost_dns_programming_duration_seconds_count")
            .unwrap()
            >= 1.0
    );

    // While the API server is unreachable, answers continue from the last known state.
    let apiserver = cluster.pids()[1];
    kill(
        Pid::from_raw(i32::try_from(apiserver).unwrap()),
        Signal::SIGSTOP,
    )
    .unwrap();
    let during = short(&cluster, at, &[fqdn, "A"]);
    let during_db = short(&cluster, at, &["+tcp", "db.default.svc.cluster.local", "A"]);
    kill(
        Pid::from_raw(i32::try_from(apiserver).unwrap()),
        Signal::SIGCONT,
    )
    .unwrap();
    assert_eq!(during, v4);
    assert_eq!(during_db, db_ips);
    server.check_running().unwrap();
}

/// The HTTP status of GET `path` on 127.0.0.1:`port` in the node namespace.
fn http_status(cluster: &LocalCluster<Running>, port: u16, path: &str) -> u16 {
    cluster.http_get(port, path).map_or(0, |(code, _)| code)
}

#[test]
fn servfail_until_synced_and_loops_refused() {
    require_rig!();
    let cluster = LocalCluster::new("dnsloop").unwrap().start().unwrap();
    create_service(
        &cluster,
        "default",
        "voy",
        json!({ "ports": [{ "name": "http", "port": 80 }] }),
    );
    // A kubeconfig whose server does not answer: never synced.
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let dead = cluster.logs().join("dead.kubeconfig");
    let server_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .unwrap();
    std::fs::write(
        &dead,
        text.replace(server_line, "    server: https://127.0.0.1:1"),
    )
    .unwrap();
    let bin = signpost_harness::process::workspace_binary("signpost").unwrap();
    let _unsynced = signpost_harness::process::Daemon::spawn(
        cluster.node_namespace(),
        "dns-unsynced",
        &bin,
        &[
            format!("--kubeconfig={}", dead.display()),
            "dns".into(),
            "--listen=127.0.0.1:5400".into(),
            "--metrics-addr=127.0.0.1:10291".into(),
            "--upstream=127.0.0.1:1".into(),
        ],
        cluster.logs().join("dns-unsynced.log"),
    )
    .unwrap();
    let unsynced: SocketAddr = "127.0.0.1:5400".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match dns::query(
            &cluster,
            unsynced,
            "voy.default.svc.cluster.local.",
            hickory_proto::rr::RecordType::A,
            false,
        ) {
            Ok(a) => break a,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        answer.rcode, "ServFail",
        "SERVFAIL before the first sync (DNS-18)"
    );
    assert_eq!(
        http_status(&cluster, 10291, "/readyz"),
        503,
        "not ready before the first sync"
    );
    assert_eq!(http_status(&cluster, 10291, "/healthz"), 200);

    // A server whose upstream is itself: the loop is refused, logged, counted.
    let _looping = start_signpost(
        &cluster,
        "dns-loop",
        "127.0.0.1:5353".parse().unwrap(),
        10292,
        &["--upstream=127.0.0.1:5353"],
    )
    .unwrap();
    let looping: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    wait_ready(&cluster, looping, Duration::from_secs(30)).unwrap();
    for tcp in [false, true] {
        let a = dns::query(
            &cluster,
            looping,
            "example.org.",
            hickory_proto::rr::RecordType::A,
            tcp,
        )
        .unwrap();
        assert_eq!(
            a.rcode, "Refused",
            "a forwarding loop is refused (tcp: {tcp})"
        );
    }
    assert!(
        cluster
            .metric(10292, "signpost_dns_forward_loops_total")
            .unwrap()
            >= 1.0
    );
    let log = std::fs::read_to_string(cluster.logs().join("dns-loop.log")).unwrap();
    assert!(log.contains("loop"), "the loop is logged");
    // And it keeps answering for the cluster.
    let a = dns::query(
        &cluster,
        looping,
        "voy.default.svc.cluster.local.",
        hickory_proto::rr::RecordType::A,
        false,
    )
    .unwrap();
    assert_eq!(a.rcode, "NoError");
    assert_eq!(a.records.len(), 1);
}

#[test]
fn lameduck_keeps_answering_with_readyz_503_then_exits() {
    require_rig!();
    let cluster = LocalCluster::new("dnsduck").unwrap().start().unwrap();
    create_service(
        &cluster,
        "default",
        "voy",
        json!({ "ports": [{ "name": "http", "port": 80 }] }),
    );
    let addr: SocketAddr = "127.0.0.1:5410".parse().unwrap();
    let mut server = start_signpost(
        &cluster,
        "dns-duck",
        addr,
        10293,
        &["--upstream=127.0.0.1:1", "--lameduck-secs=3"],
    )
    .unwrap();
    wait_ready(&cluster, addr, Duration::from_secs(30)).unwrap();
    assert_eq!(http_status(&cluster, 10293, "/readyz"), 200);
    let asked = || {
        dns::query(
            &cluster,
            addr,
            "voy.default.svc.cluster.local.",
            hickory_proto::rr::RecordType::A,
            false,
        )
    };
    let t0 = Instant::now();
    server.terminate();
    // Within the lameduck: not ready, yet every query is answered.
    let deadline = t0 + Duration::from_secs(2);
    let mut seen_503 = false;
    let mut answered = 0;
    while Instant::now() < deadline {
        seen_503 |= http_status(&cluster, 10293, "/readyz") == 503;
        let a = asked().expect("answered during lameduck");
        assert_eq!(a.rcode, "NoError");
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_503, "/readyz never went 503 after SIGTERM");
    assert!(
        server.wait_exit(Duration::from_millis(10)).is_none(),
        "exited before its lameduck"
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the lameduck");
    eprintln!(
        "lameduck: {answered} queries answered after SIGTERM; exited {status} after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(status.success(), "clean exit: {status}");
    assert!(t0.elapsed() >= Duration::from_secs(3));
}

#[test]
fn the_kubeadm_corefile_runs_signpost_dns() {
    require_rig!();
    let cluster = LocalCluster::new("dnscorefile").unwrap().start().unwrap();
    create_service(
        &cluster,
        "default",
        "lb",
        json!({ "clusterIP": "None", "ports": [{ "name": "http", "port": 80 }] }),
    );
    create_slice(
        &cluster,
        "default",
        json!({
            "metadata": { "name": "lb-1", "labels": { "kubernetes.io/service-name": "lb" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }],
            "endpoints": (1..=3).map(|i| json!({ "addresses": [format!("10.244.7.{i}")], "conditions": { "ready": true } })).collect::<Vec<_>>(),
        }),
    );
    // The Corefile as kubeadm writes it; only its resolv.conf is the
    // test's (loopback, where nothing answers), so nothing leaves the rig.
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        signpost_dns::corefile::KUBEADM_DEFAULT
            .replace("/etc/resolv.conf", &resolv.display().to_string()),
    )
    .unwrap();
    let _dns = start_signpost(
        &cluster,
        "dns-corefile",
        "127.0.0.1:1".parse().unwrap(),
        1,
        &[&format!("--corefile={}", corefile.display())],
    )
    .unwrap();
    let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
    wait_ready(&cluster, server, Duration::from_secs(30)).unwrap();
    // kubeadm's plugins, on kubeadm's ports: /health 8080, /ready 8181, /metrics 9153.
    assert_eq!(http_status(&cluster, 8080, "/health"), 200);
    assert_eq!(http_status(&cluster, 8181, "/ready"), 200);
    // And on the address a kubelet probe arrives at (the Pod's), not only loopback.
    for (port, path) in [(8080, "/health"), (8181, "/ready")] {
        let got = cluster.http_get_at(SocketAddr::new(IpAddr::V4(NODE_IP), port), path);
        assert_eq!(got.map(|(c, _)| c), Some(200), "{path} at {NODE_IP}:{port}");
    }
    assert!(cluster.metric(9153, "signpost_dns_queries_total").is_some());
    // ttl 30 from the kubernetes block.
    let out = dig(
        &cluster,
        &[
            "@127.0.0.1",
            "+noall",
            "+answer",
            "lb.default.svc.cluster.local",
            "A",
        ],
    );
    let ttls: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ttls, BTreeSet::from(["30"]), "{out}");
    // loadbalance: the first address changes from query to query.
    let firsts: BTreeSet<String> = (0..6)
        .map(|_| {
            dig(
                &cluster,
                &["@127.0.0.1", "+short", "lb.default.svc.cluster.local", "A"],
            )
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
        })
        .collect();
    assert_eq!(
        firsts.len(),
        3,
        "every address comes first in turn: {firsts:?}"
    );
    // Its log names what it took as a no-op.
    let log = std::fs::read_to_string(cluster.logs().join("dns-corefile.log")).unwrap();
    assert!(log.contains("reload"), "{log}");
}
