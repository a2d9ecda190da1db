//! A live cluster with the systems under test running on it: the rig's
//! local control plane, the chosen proxy, DNS and EndpointSlice controller
//! in its node namespace, and the Pods scenarios start. Steps are API writes;
//! observations are packets from a client Pod's namespace.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node as KNode, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use signpost_harness::process::{Daemon, workspace_binary};
use signpost_harness::{ApiHandle, LocalCluster, PodHandle, Running};
use signpost_model::cluster::{EndpointSlice, Node, Pod, ResolvConf, Service};
use signpost_model::mutant::Mutant;

use crate::step::{PodSpec, ServiceSpec, Step};
use crate::sut::{self, DNS_ADDR, EndpointsChoice, Sut};
use crate::{Error, Result};

/// A port on the node that no Service declares, with a listener behind it:
/// a ClusterIP must not reach it (PXY-3).
pub const NODE_LISTENER_PORT: u16 = 2222;

/// What the API server holds, as the model sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices written by the controller under test.
    pub slices: Vec<EndpointSlice>,
    /// Every EndpointSlice (the proxy and DNS read them all).
    pub all_slices: Vec<EndpointSlice>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// The proxy's node.
    pub node: Option<Node>,
    /// Objects the model could not represent, with why.
    pub invalid: Vec<String>,
}

/// What a client saw when it opened a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// This Pod answered.
    Pod(String),
    /// Refused (TCP reset or ICMP port unreachable).
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// Any other error.
    Error(String),
}

/// The cluster and the systems under test. Field order is drop order:
/// component processes, Pods, the node listener, then the cluster.
#[derive(Debug)]
pub struct Live {
    proxy: Option<Daemon>,
    dns: Option<Daemon>,
    endpoints: Option<Daemon>,
    pods: BTreeMap<(String, String), PodHandle>,
    _listener: Option<Daemon>,
    cluster: LocalCluster<Running>,
    sut: Sut,
}

impl Live {
    /// Starts a local cluster and the chosen components, and waits until
    /// the DNS answers (when there is one).
    pub fn start(sut: &Sut) -> Result<Live> {
        sut.validate()?;
        let echo = workspace_binary("signpost-echo")?;
        let cluster = match &sut.cluster {
            sut::ClusterChoice::Local | sut::ClusterChoice::LocalKubelet => {
                let mut c = LocalCluster::new("conform")?;
                if sut.cluster == sut::ClusterChoice::LocalKubelet {
                    c = c.with_node();
                }
                let c = match sut.endpoints {
                    EndpointsChoice::KubeControllerManager => c.with_controller_manager(),
                    EndpointsChoice::Signpost => c.with_garbage_collector_only(),
                };
                c.echo_binary(echo.clone()).start()?
            }
            sut::ClusterChoice::Kubeconfig { path, uplink } => {
                LocalCluster::attach("conform", path, uplink.as_ref())?
                    .with_echo_binary(echo.clone())
            }
        };
        // A second Node object, so Pods can sit on another node (PXY-4).
        register_node(&cluster.api(), "node-b", "10.0.0.2")?;
        let listener = Daemon::spawn(
            cluster.node_namespace(),
            "node listener",
            &echo,
            &[
                "--name".into(),
                "node-a-host".into(),
                "--tcp".into(),
                NODE_LISTENER_PORT.to_string(),
            ],
            cluster.logs().join("node-listener.log"),
        )?;
        let mut live = Live {
            proxy: None,
            dns: None,
            endpoints: None,
            pods: BTreeMap::new(),
            _listener: Some(listener),
            cluster,
            sut: sut.clone(),
        };
        // On an attached cluster the EndpointSlice controller is the one already running there.
        if !matches!(sut.cluster, sut::ClusterChoice::Kubeconfig { .. }) {
            live.endpoints = sut::start_endpoints(&live.cluster, sut.endpoints)?;
        }
        live.proxy = sut::start_proxy(&live.cluster, &sut.proxy, sut.mutant)?;
        live.dns = sut::start_dns(&live.cluster, &sut.dns, sut.mutant)?;
        if let Some(addr) = live.dns_addr() {
            signpost_harness::dns::wait_ready(&live.cluster, addr, Duration::from_secs(60))?;
        }
        Ok(live)
    }

    /// Restarts the proxy and DNS with another mutant (or none), keeping the cluster.
    pub fn remutate(&mut self, mutant: Option<Mutant>) -> Result<()> {
        self.sut.mutant = mutant;
        self.proxy = None;
        self.dns = None;
        self.proxy = sut::start_proxy(&self.cluster, &self.sut.proxy, mutant)?;
        self.dns = sut::start_dns(&self.cluster, &self.sut.dns, mutant)?;
        if let Some(addr) = self.dns_addr() {
            signpost_harness::dns::wait_ready(&self.cluster, addr, Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// The system under test.
    pub fn sut(&self) -> &Sut {
        &self.sut
    }

    /// Where the DNS under test answers, if there is one.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        match self.sut.dns {
            sut::DnsChoice::None => None,
            sut::DnsChoice::Addr(a) => Some(a),
            _ => Some(DNS_ADDR),
        }
    }

    /// The cluster the harness runs on.
    pub fn cluster(&self) -> &LocalCluster<Running> {
        &self.cluster
    }

    /// The component logs.
    pub fn logs(&self) -> std::path::PathBuf {
        self.cluster.logs()
    }

    /// Fails if a component process has exited.
    pub fn check_components(&mut self) -> Result<()> {
        for d in [&mut self.proxy, &mut self.dns, &mut self.endpoints]
            .into_iter()
            .flatten()
        {
            d.check_running()?;
        }
        Ok(())
    }

    /// The API server.
    pub fn api(&self) -> ApiHandle {
        self.cluster.api()
    }

    /// Creates a namespace (and the client Pod scenarios observe from).
    pub fn namespace(&mut self, ns: &str) -> Result<()> {
        let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))
            .map_err(|e| Error::Api(e.to_string()))?;
        self.api().block_on(|c| async move {
            Api::<Namespace>::all(c)
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    kube::Error::Api(s) if s.code == 409 => Ok(()),
                    e => Err(Error::Api(e.to_string())),
                })
        })??;
        self.start_pod(
            ns,
            "client",
            &PodSpec {
                app: "client",
                node: signpost_harness::cluster::NODE_NAME,
                ready: true,
                hostname: None,
            },
        )?;
        Ok(())
    }

    /// Stops the Pods of `ns` this harness started (their objects stay).
    pub fn forget_pods(&mut self, ns: &str) {
        self.pods.retain(|(n, _), _| n != ns);
    }

    /// Deletes a namespace's objects and stops its Pods.
    pub fn drop_namespace(&mut self, ns: &str) -> Result<()> {
        let ns_owned = ns.to_owned();
        // No namespace controller runs: empty it by hand, then delete it.
        self.api().block_on(|c| async move {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            let lp = ListParams::default();
            let svcs = Api::<KService>::namespaced(c.clone(), &ns_owned);
            if let Ok(list) = svcs.list(&lp).await {
                for s in list.items {
                    let _ = svcs.delete(&s.metadata.name.unwrap_or_default(), &dp).await;
                }
            }
            let _ = Api::<KPod>::namespaced(c.clone(), &ns_owned)
                .delete_collection(&dp, &lp)
                .await;
            let _ = Api::<Namespace>::all(c).delete(&ns_owned, &dp).await;
        })?;
        self.pods.retain(|(n, _), _| n != ns);
        Ok(())
    }

    /// A Pod this harness started.
    pub fn pod(&self, ns: &str, name: &str) -> Result<&PodHandle> {
        self.pods
            .get(&(ns.to_owned(), name.to_owned()))
            .ok_or_else(|| Error::Scenario(format!("no Pod {ns}/{name}")))
    }

    /// Starts a Pod of the fabric.
    pub fn start_pod(&mut self, ns: &str, name: &str, spec: &PodSpec) -> Result<()> {
        let mut b = self
            .cluster
            .pod(name)
            .namespace(ns)
            .label("app", spec.app)
            .node(spec.node)
            .ready(spec.ready)
            .port_of("http", 8080, "TCP")
            .port_of("http-udp", 8080, "UDP")
            .port_of("alt-udp", 8081, "UDP");
        if let Some((h, s)) = spec.hostname {
            b = b.hostname(h, s);
        }
        let pod = b.start()?;
        // The kubelet's resolv.conf (RES-1), where `ip netns exec` finds it.
        let conf = ResolvConf::kubelet(ns, "cluster.local", DNS_ADDR.ip());
        let dir = format!("/etc/netns/{}", pod.netns().name());
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("{dir}: {e}")))?;
        std::fs::write(format!("{dir}/resolv.conf"), conf.render())
            .map_err(|e| Error::Io(format!("{dir}/resolv.conf: {e}")))?;
        self.pods.insert((ns.to_owned(), name.to_owned()), pod);
        Ok(())
    }

    /// Applies one step in namespace `ns`.
    pub fn apply(&mut self, ns: &str, step: &Step) -> Result<()> {
        match step {
            Step::Service(name, spec) => self.apply_service(ns, name, spec),
            Step::DeleteService(name) => {
                let (ns, name) = (ns.to_owned(), (*name).to_owned());
                self.api().block_on(|c| async move {
                    Api::<KService>::namespaced(c, &ns)
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ())
                        .map_err(|e| Error::Api(e.to_string()))
                })?
            }
            Step::Pod(name, spec) => self.start_pod(ns, name, spec),
            Step::SetReady(name, r) => Ok(self.pod(ns, name)?.set_ready(*r)?),
            Step::Terminate(name) => Ok(self.pod(ns, name)?.terminate()?),
            Step::DeletePod(name) => Ok(self.pod(ns, name)?.delete()?),
        }
    }

    fn apply_service(&self, ns: &str, name: &str, spec: &ServiceSpec) -> Result<()> {
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": name, "namespace": ns },
            "spec": spec.to_json(),
        });
        let (ns, name) = (ns.to_owned(), name.to_owned());
        self.api().block_on(|c| async move {
            let api = Api::<KService>::namespaced(c, &ns);
            let pp = PatchParams::apply("signpost-conform").force();
            api.patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .map(|_| ())
                .map_err(|e| Error::Api(format!("applying Service {ns}/{name}: {e}")))
        })?
    }

    /// What the API server holds now.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let managed_by = self.sut.endpoints.managed_by();
        self.api().block_on(|c| async move {
            let lp = ListParams::default();
            let err = |e: kube::Error| Error::Api(e.to_string());
            let svcs = Api::<KService>::all(c.clone())
                .list(&lp)
                .await
                .map_err(err)?;
            let slices = Api::<KSlice>::all(c.clone()).list(&lp).await.map_err(err)?;
            let pods = Api::<KPod>::all(c.clone()).list(&lp).await.map_err(err)?;
            let nss = Api::<Namespace>::all(c.clone())
                .list(&lp)
                .await
                .map_err(err)?;
            let node = Api::<KNode>::all(c)
                .get_opt(signpost_harness::cluster::NODE_NAME)
                .await
                .map_err(err)?;
            let mut snap = Snapshot::default();
            for s in &svcs.items {
                match Service::try_from(s) {
                    Ok(v) => snap.services.push(v),
                    Err(e) => snap.invalid.push(format!("Service: {e}")),
                }
            }
            for s in &slices.items {
                let ours = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
                    .is_some_and(|v| v == managed_by);
                match EndpointSlice::try_from(s) {
                    Ok(v) => {
                        if ours {
                            snap.slices.push(v.clone());
                        }
                        snap.all_slices.push(v);
                    }
                    Err(e) => snap.invalid.push(format!("EndpointSlice: {e}")),
                }
            }
            for p in &pods.items {
                match Pod::try_from(p) {
                    Ok(v) => snap.pods.push(v),
                    Err(e) => snap.invalid.push(format!("Pod: {e}")),
                }
            }
            snap.namespaces = nss
                .items
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            snap.node = node.as_ref().and_then(|n| Node::try_from(n).ok());
            Ok::<_, Error>(snap)
        })?
    }

    /// Asks the DNS under test one question from `ns`'s client Pod.
    pub fn dns_exchange(&self, ns: &str, msg: Vec<u8>, tcp: bool) -> Result<Vec<u8>> {
        let server = self
            .dns_addr()
            .ok_or_else(|| Error::Scenario("no DNS under test".into()))?;
        let client = self.pod(ns, "client")?;
        let t = Duration::from_secs(2);
        client
            .netns()
            .within(move || {
                if tcp {
                    signpost_harness::dns::exchange_tcp(server, &msg, t)
                } else {
                    signpost_harness::dns::exchange_udp(server, &msg, t)
                }
            })?
            .map_err(|e| {
                Error::Observe(format!(
                    "DNS {server} over {}: {e}",
                    if tcp { "TCP" } else { "UDP" }
                ))
            })
    }

    /// `getent ahosts <name>` in `ns`'s client Pod (glibc, its resolv.conf).
    pub fn getent(&self, ns: &str, name: &str) -> Result<Vec<IpAddr>> {
        self.getent_from(ns, "client", name)
    }

    /// `getent ahosts <name>` in Pod `pod` of `ns`.
    pub fn getent_from(&self, ns: &str, pod: &str, name: &str) -> Result<Vec<IpAddr>> {
        let client = self.pod(ns, pod)?;
        let out = client
            .netns()
            .command("getent")
            .args(["ahosts", name])
            .output()
            .map_err(|e| Error::Io(format!("getent: {e}")))?;
        let mut ips: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        Ok(ips)
    }

    /// Opens `n` connections from `ns`'s client Pod to `to` and says what
    /// answered each. Each TCP connection and UDP datagram uses a new source port.
    pub fn connect(&self, ns: &str, to: SocketAddr, udp: bool, n: usize) -> Result<Vec<Seen>> {
        self.connect_from(ns, "client", to, udp, n)
    }

    /// As [`Live::connect`], from Pod `pod`.
    pub fn connect_from(
        &self,
        ns: &str,
        pod: &str,
        to: SocketAddr,
        udp: bool,
        n: usize,
    ) -> Result<Vec<Seen>> {
        let client = self.pod(ns, pod)?;
        Ok(client.netns().within(move || {
            (0..n)
                .map(|_| if udp { udp_once(to) } else { tcp_once(to) })
                .collect()
        })?)
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

fn classify(e: &std::io::Error) -> Seen {
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Seen::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Seen::Timeout,
        _ => Seen::Error(e.to_string()),
    }
}

fn tcp_once(to: SocketAddr) -> Seen {
    let started = Instant::now();
    let mut s = match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let _ = s.set_read_timeout(Some(
        CONNECT_TIMEOUT
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(200)),
    ));
    let mut buf = String::new();
    match s.read_to_string(&mut buf) {
        Ok(_) if !buf.trim().is_empty() => Seen::Pod(buf.trim().to_owned()),
        Ok(_) => Seen::Error("connection closed without a reply".into()),
        Err(e) => classify(&e),
    }
}

fn udp_once(to: SocketAddr) -> Seen {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return Seen::Error(e.to_string()),
    };
    // A connected socket hears ICMP port unreachable as ECONNREFUSED.
    if let Err(e) = s.connect(to) {
        return classify(&e);
    }
    let _ = s.set_read_timeout(Some(CONNECT_TIMEOUT));
    if let Err(e) = s.send(b"hello\n") {
        return classify(&e);
    }
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) => Seen::Pod(String::from_utf8_lossy(&buf[..n]).trim().to_owned()),
        Err(e) => classify(&e),
    }
}

fn register_node(api: &ApiHandle, name: &str, ip: &str) -> Result<()> {
    let node: KNode = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
    }))
    .map_err(|e| Error::Api(e.to_string()))?;
    let status = json!({ "status": {
        "addresses": [{ "type": "InternalIP", "address": ip }],
        "conditions": [{ "type": "Ready", "status": "True", "reason": "SignpostRig" }],
    }});
    let name = name.to_owned();
    api.block_on(|c| async move {
        let nodes: Api<KNode> = Api::all(c);
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::Api(e.to_string())),
        }
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| Error::Api(e.to_string()))?;
        Ok(())
    })?
}
