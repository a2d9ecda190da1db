//! `signpost-demo` (run as `signpost demo`): the seed's story, live. On the
//! rig's local cluster (etcd and kube-apiserver from the pinned upstream
//! build, in a node namespace with no route out) with Signpost's
//! EndpointSlice controller, DNS and proxy running as they would on a node,
//! it creates the `ent` and `voy` Services with enterprise and voyager
//! Pods, prints each step of registration as it is observed over the wire
//! (POST admitted with its ClusterIP, EndpointSlice written, DNS answering
//! the name, the proxy forwarding the ClusterIP), then lets an enterprise
//! Pod resolve `voy` through its kubelet-style resolv.conf and connect, and
//! prints which voyager Pod answered. Then it scales voyager and shows the
//! change reach the slices, DNS and the data plane.
//!
//! Everything is observed, not assumed: slices are read from the API
//! server, names are resolved by glibc (`getent`) in the Pod's network
//! namespace, connections are real TCP connections answered by the Pods'
//! echo servers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use signpost_conformance::live::{Live, Seen};
use signpost_conformance::step::PodSpec;
use signpost_conformance::sut::{ClusterChoice, DnsChoice, EndpointsChoice, ProxyChoice, Sut};
use signpost_conformance::{Error, Result};
use signpost_harness::cluster::NODE_NAME;

#[derive(Parser)]
#[command(
    name = "signpost demo",
    about = "The seed's registration and discovery story, live on a local cluster"
)]
struct Args {
    /// The proxy's data plane. On a kernel without IPVS, `ipvs` runs the
    /// node (proxy, DNS, Pods) in the kernel VM rig, the control plane and
    /// EndpointSlice controller on this machine.
    #[arg(long, default_value = "nftables")]
    dataplane: String,
    /// Voyager Pods at the start.
    #[arg(long, default_value_t = 2)]
    voyagers: usize,
    /// Voyager Pods after scaling.
    #[arg(long, default_value_t = 4)]
    scale_to: usize,
    /// How long any one step may take.
    #[arg(long, default_value_t = 30)]
    step_timeout_secs: u64,
    /// The cluster (`local`, or `kubeconfig:PATH` for the node in the VM).
    #[arg(long, default_value = "local", hide = true)]
    cluster: ClusterChoice,
    /// The node's uplink on an attached cluster (LINK/ADDRESS/PREFIX).
    #[arg(long, hide = true)]
    uplink: Option<signpost_harness::Uplink>,
}

const NS: &str = "default";
const PORT: u16 = 80;

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("signpost demo: {e}");
        std::process::exit(1);
    }
}

/// Prints one line of a step's timeline.
fn mark(t0: Instant, what: &str) {
    println!("  {:>8.1} ms  {what}", t0.elapsed().as_secs_f64() * 1e3);
}

/// Polls `f` every few milliseconds until it gives a value.
fn until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::Observe(format!(
                "{what}: not seen within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(a: &Args) -> Result<()> {
    let proxy = match a.dataplane.as_str() {
        "nftables" => ProxyChoice::SignpostNftables,
        "ipvs" => ProxyChoice::SignpostIpvs,
        other => {
            return Err(Error::Usage(format!(
                "--dataplane {other}: nftables or ipvs"
            )));
        }
    };
    if a.voyagers == 0 || a.scale_to < a.voyagers {
        return Err(Error::Usage(
            "need 1 or more voyagers, and --scale-to at least that".into(),
        ));
    }
    let mut cluster = a.cluster.clone();
    if let ClusterChoice::Kubeconfig { uplink, .. } = &mut cluster {
        uplink.clone_from(&a.uplink);
    }
    if proxy == ProxyChoice::SignpostIpvs && !signpost_conformance::sut::ipvs_here() {
        if !matches!(cluster, ClusterChoice::Local | ClusterChoice::LocalKubelet) {
            return Err(Error::Unsupported(
                "--dataplane ipvs: this kernel has no IPVS".into(),
            ));
        }
        println!(
            "signpost demo: this kernel has no IPVS; the node runs in the kernel VM rig (qemu), the control plane here"
        );
        let guest = [
            "--dataplane".to_owned(),
            "ipvs".to_owned(),
            format!("--voyagers={}", a.voyagers),
            format!("--scale-to={}", a.scale_to),
            format!("--step-timeout-secs={}", a.step_timeout_secs),
        ];
        return match signpost_conformance::vm::demo(&guest)? {
            0 => Ok(()),
            code => Err(Error::Observe(format!(
                "the demo in the VM failed (exit {code})"
            ))),
        };
    }
    let sut = Sut {
        proxy,
        dns: DnsChoice::Signpost,
        endpoints: EndpointsChoice::Signpost,
        cluster,
        ..Sut::default()
    };
    let timeout = Duration::from_secs(a.step_timeout_secs);
    let started = Instant::now();
    match &sut.cluster {
        ClusterChoice::Local | ClusterChoice::LocalKubelet => println!(
            "signpost demo: starting a local cluster (etcd, kube-apiserver) and Signpost's endpoints, dns and proxy ({})",
            a.dataplane
        ),
        ClusterChoice::Kubeconfig { path, .. } => println!(
            "signpost demo: the node of the cluster in {}: starting Signpost's dns and proxy ({})",
            path.display(),
            a.dataplane
        ),
    }
    let mut live = Live::start(&sut)?;
    println!(
        "  cluster and components up in {:.1} s; logs in {}",
        started.elapsed().as_secs_f64(),
        live.logs().display()
    );

    // The Pods first: they exist before their Services, as Deployments' do.
    live.namespace(NS)?;
    let pod = |app| PodSpec {
        app,
        node: NODE_NAME,
        ready: true,
        hostname: None,
    };
    live.start_pod(NS, "enterprise-1", &pod("enterprise"))?;
    for i in 1..=a.voyagers {
        live.start_pod(NS, &format!("voyager-{i}"), &pod("voyager"))?;
    }
    let ips: Vec<String> = (1..=a.voyagers)
        .map(|i| {
            let n = format!("voyager-{i}");
            live.pod(NS, &n).map(|p| format!("{n} {}", p.ip()))
        })
        .collect::<Result<_>>()?;
    println!(
        "Pods: enterprise-1 {} (app=enterprise); {} (app=voyager)",
        live.pod(NS, "enterprise-1")?.ip(),
        ips.join(", ")
    );

    register(&live, "ent", "enterprise", 1, timeout, false)?;
    let voy_ip = register(&live, "voy", "voyager", a.voyagers, timeout, true)?;

    // The enterprise Pod's view: its resolv.conf, glibc's resolver, a TCP connection.
    let ent = live.pod(NS, "enterprise-1")?;
    let conf_path = format!("/etc/netns/{}/resolv.conf", ent.netns().name());
    let conf =
        std::fs::read_to_string(&conf_path).map_err(|e| Error::Io(format!("{conf_path}: {e}")))?;
    println!("enterprise-1's resolv.conf (as a kubelet writes it):");
    for l in conf.lines() {
        println!("    {l}");
    }
    let resolved = live.getent_from(NS, "enterprise-1", "voy")?;
    println!(
        "enterprise-1: getent ahosts voy -> {}",
        resolved
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(ip) = resolved.first().copied() else {
        return Err(Error::Observe("voy did not resolve in enterprise-1".into()));
    };
    if ip != voy_ip {
        return Err(Error::Observe(format!(
            "voy resolved to {ip}, its ClusterIP is {voy_ip}"
        )));
    }
    let reply = live.connect_from(NS, "enterprise-1", SocketAddr::new(ip, PORT), false, 1)?;
    match reply.first() {
        Some(Seen::Pod(p)) => {
            println!("enterprise-1: connect voy:{PORT} ({ip}:{PORT}) -> answered by {p}")
        }
        other => return Err(Error::Observe(format!("connecting to voy: {other:?}"))),
    }

    // Scale voyager: new Pods become endpoints, the headless name lists
    // them, and the ClusterIP spreads connections over all of them.
    println!(
        "scaling voyager from {} to {} Pods:",
        a.voyagers, a.scale_to
    );
    let t0 = Instant::now();
    for i in a.voyagers + 1..=a.scale_to {
        live.start_pod(NS, &format!("voyager-{i}"), &pod("voyager"))?;
    }
    mark(
        t0,
        &format!("{} Pods started, Ready", a.scale_to - a.voyagers),
    );
    let n = a.scale_to;
    until(timeout, "slices", || {
        Ok((ready_endpoints(&live, "voy")? >= n).then_some(()))
    })?;
    mark(t0, &format!("EndpointSlice of voy: {n} ready endpoints"));
    let listed = until(timeout, "headless DNS", || {
        let got = live.getent_from(NS, "enterprise-1", "voy-pods")?;
        Ok((got.len() >= n).then_some(got))
    })?;
    mark(
        t0,
        &format!(
            "DNS: voy-pods (headless) -> {}",
            listed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let to = SocketAddr::new(voy_ip, PORT);
    let spread = until(timeout, "every voyager behind the ClusterIP", || {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for s in live.connect_from(NS, "enterprise-1", to, false, 8 * n)? {
            if let Seen::Pod(p) = s {
                *seen.entry(p).or_default() += 1;
            }
        }
        Ok((seen.len() >= n).then_some(seen))
    })?;
    mark(
        t0,
        &format!(
            "proxy: {to} -> {} ({} connections)",
            spread
                .iter()
                .map(|(p, c)| format!("{p} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            8 * n
        ),
    );
    let last = live.connect_from(NS, "enterprise-1", to, false, 1)?;
    match last.first() {
        Some(Seen::Pod(p)) => println!("enterprise-1: connect voy:{PORT} -> answered by {p}"),
        other => return Err(Error::Observe(format!("connecting to voy: {other:?}"))),
    }
    println!(
        "done in {:.1} s; tearing the cluster down",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Ready endpoints in the slices of Service `svc`.
fn ready_endpoints(live: &Live, svc: &str) -> Result<usize> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    live.api().block_on(|c| async move {
        let slices = Api::<KSlice>::namespaced(c, NS)
            .list(&lp)
            .await
            .map_err(|e| Error::Api(e.to_string()))?;
        Ok(slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .count())
    })?
}

/// Creates Service `name` selecting `app` and prints its registration
/// timeline; `headless_too` also creates `<name>-pods`, a headless Service
/// over the same Pods. Returns the ClusterIP.
fn register(
    live: &Live,
    name: &str,
    app: &str,
    pods: usize,
    timeout: Duration,
    headless_too: bool,
) -> Result<IpAddr> {
    println!("registering Service {name} (selector app={app}, port {PORT} -> 8080):");
    let svc = |name: &str, headless: bool| {
        let mut spec = json!({
            "selector": { "app": app },
            "ports": [{ "name": "http", "port": PORT, "targetPort": 8080, "protocol": "TCP" }],
        });
        if headless {
            spec["clusterIP"] = json!("None");
        }
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": NS }, "spec": spec })
    };
    let t0 = Instant::now();
    let obj: KService =
        serde_json::from_value(svc(name, false)).map_err(|e| Error::Api(e.to_string()))?;
    let created = live.api().block_on(|c| async move {
        Api::<KService>::namespaced(c, NS)
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| Error::Api(format!("creating Service {name}: {e}")))
    })??;
    let ip: IpAddr = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::Observe(format!("Service {name} came back without a ClusterIP")))?;
    mark(
        t0,
        &format!(
            "POST admitted: ClusterIP {ip} allocated in the same request (the API server's allocator)"
        ),
    );
    if headless_too {
        let h: KService = serde_json::from_value(svc(&format!("{name}-pods"), true))
            .map_err(|e| Error::Api(e.to_string()))?;
        live.api().block_on(|c| async move {
            Api::<KService>::namespaced(c, NS)
                .create(&PostParams::default(), &h)
                .await
                .map(|_| ())
                .map_err(|e| Error::Api(format!("creating the headless Service: {e}")))
        })??;
    }
    until(timeout, "slices", || {
        Ok((ready_endpoints(live, name)? >= pods).then_some(()))
    })?;
    mark(
        t0,
        &format!("EndpointSlice written by signpost endpoints: {pods} ready endpoint(s)"),
    );
    let fqdn = format!("{name}.{NS}.svc.cluster.local");
    until(timeout, "DNS", || {
        Ok(live
            .getent_from(NS, "client", &fqdn)?
            .contains(&ip)
            .then_some(()))
    })?;
    mark(t0, &format!("DNS: {fqdn} -> {ip} (signpost dns)"));
    let to = SocketAddr::new(ip, PORT);
    let who = until(timeout, "the data plane", || {
        Ok(match live.connect_from(NS, "client", to, false, 1)?.pop() {
            Some(Seen::Pod(p)) => Some(p),
            _ => None,
        })
    })?;
    mark(
        t0,
        &format!("proxy programmed: {to} answered by {who} (signpost proxy)"),
    );
    Ok(ip)
}
