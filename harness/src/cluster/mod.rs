//! A local control plane as a typestate fixture: `LocalCluster<Stopped>`
//! (configured) → `LocalCluster<Running>` (etcd and kube-apiserver, and
//! kube-controller-manager if asked, in a node namespace with no route out).
//! Dropping it stops every process and removes every namespace, also when a
//! test panics; the work directory (certificates, logs) is kept then and its
//! path printed.

mod image;
mod node;
mod workdir;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;

use crate::netns::{NetNs, unique};
use crate::pki::{self, Pki};
use crate::process::Daemon;
use crate::upstream;
use crate::{Error, Result};

pub use image::ImageSpec;
pub use node::{BUSYBOX_IMAGE, KUBELET_POD_RANGE, KubeletNode, PAUSE_IMAGE};
pub use workdir::WorkDir;

/// The ClusterIP range given to kube-apiserver.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Whether `ip` is in [`SERVICE_CIDR`] (10.96.0.0/12: 10.96.x.x to 10.111.x.x).
pub fn in_service_cidr(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 10 && b & 0xf0 == 96
}

/// The IPv6 ClusterIP range (the cluster is dual-stack).
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";
/// The pod bridge's IPv6 address; Pods get addresses from fd00:10:244::/64.
pub const POD_GATEWAY_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// The node's address inside its namespace (its InternalIP).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The pod bridge's address; Pods get addresses from 10.244.0.0/16.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The name of the Node object the rig registers.
pub const NODE_NAME: &str = "node-a";
/// The bridge Pods join inside the node namespace.
pub const BRIDGE: &str = "spbr0";

/// A configured, not yet started cluster.
#[derive(Debug)]
pub struct Stopped;

/// A started cluster's processes. Dropped before the namespace.
#[derive(Debug)]
pub struct Running {
    /// kubelet and containerd, if asked for: stopped first.
    node: Option<KubeletNode>,
    control: ControlPlane,
    kubeconfig: PathBuf,
    startup: Duration,
    next_pod: AtomicU32,
}

/// Where the API server is: run here, or someone else's.
#[derive(Debug)]
// One per cluster, never moved around: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum ControlPlane {
    /// etcd, kube-apiserver (and kube-controller-manager) in the node namespace.
    Local {
        scheduler: Option<Daemon>,
        kcm: Option<Daemon>,
        apiserver: Daemon,
        etcd: Daemon,
        _pki: Pki,
    },
    /// An API server reached through a kubeconfig (see [`LocalCluster::attach`]).
    Attached,
}

/// A process of a local control plane, for [`LocalCluster::freeze`] and
/// [`LocalCluster::restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlProcess {
    /// kube-apiserver.
    ApiServer,
    /// etcd.
    Etcd,
}

/// A link moved into the node namespace of an attached cluster, so the
/// node reaches its API server: its name and the address it gets there
/// (`10.0.2.15/24` for the kernel VM's user network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// The link's name (e.g. `eth0`).
    pub link: String,
    /// Its address with prefix length.
    pub addr: String,
}

impl std::str::FromStr for Uplink {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('/') {
            Some((link, addr)) if !link.is_empty() && addr.contains('/') => Ok(Uplink {
                link: link.to_owned(),
                addr: addr.to_owned(),
            }),
            _ => Err(format!(
                "{s:?}: expected LINK/ADDRESS/PREFIX, e.g. eth0/10.0.2.15/24"
            )),
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    controller_manager: bool,
    controllers: &'static str,
    apiserver_args: Vec<String>,
    echo_binary: Option<PathBuf>,
    upstream_dir: PathBuf,
    ready_timeout: Duration,
    node: bool,
    /// The control plane upstream's e2e tests expect: ServiceAccount
    /// admission, kube-scheduler, the API server on every node address.
    full: bool,
}

/// A local cluster. Field order is drop order: processes, then the
/// namespace, then the work directory.
#[derive(Debug)]
pub struct LocalCluster<S> {
    state: S,
    ns: NetNs,
    opts: Options,
    dir: WorkDir,
}

impl LocalCluster<Stopped> {
    /// A cluster named `name` (used in the work directory's name). Creates
    /// the node namespace and work directory; starts nothing.
    pub fn new(name: &str) -> Result<Self> {
        let dir = WorkDir::for_cluster(name)?;
        let ns = NetNs::create(unique("spn"))?;
        Ok(LocalCluster {
            state: Stopped,
            ns,
            opts: Options {
                controller_manager: false,
                controllers: "endpointslice,garbagecollector",
                apiserver_args: Vec::new(),
                echo_binary: std::env::var_os("SIGNPOST_ECHO_BIN").map(PathBuf::from),
                upstream_dir: upstream::bin_dir(),
                ready_timeout: Duration::from_secs(90),
                node: false,
                full: false,
            },
            dir,
        })
    }

    /// Also run kube-controller-manager with its EndpointSlice controller and
    /// the garbage collector (which deletes slices with their Service).
    pub fn with_controller_manager(mut self) -> Self {
        self.opts.controller_manager = true;
        self.opts.controllers = "endpointslice,garbagecollector";
        self
    }

    /// Run kube-controller-manager with the garbage collector only (slices
    /// and Pods go with their owners), for clusters whose EndpointSlice
    /// controller is someone else's.
    pub fn with_garbage_collector_only(mut self) -> Self {
        self.opts.controller_manager = true;
        self.opts.controllers = "garbagecollector";
        self
    }

    /// A real node as well: containerd and kubelet in the node namespace
    /// (see [`KubeletNode`]), so Pods with `nodeName: node-a` run as
    /// containers; the kubelet writes `nameserver 10.0.0.1` (the node
    /// address, where the rig's cluster DNS listens) into their resolv.conf.
    pub fn with_node(mut self) -> Self {
        self.opts.node = true;
        self
    }

    /// The control plane a conformant cluster has, as upstream's e2e tests
    /// expect it: kube-controller-manager with its default controllers
    /// (without its EndpointSlice controller unless `endpoint_slices`, for
    /// a cluster whose EndpointSlice controller is someone else's), the
    /// ServiceAccount admission plugin with the token and root-CA
    /// controllers behind it, kube-scheduler, and the API server listening
    /// on the node address too, so Pods reach it through the `kubernetes`
    /// Service (the node namespace has no route out).
    pub fn with_full_control_plane(mut self, endpoint_slices: bool) -> Self {
        self.opts.controller_manager = true;
        self.opts.controllers = if endpoint_slices {
            "*"
        } else {
            "*,-endpointslice"
        };
        self.opts.full = true;
        self
    }

    /// An extra kube-apiserver flag.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.opts.apiserver_args.push(arg.into());
        self
    }

    /// Where the upstream binaries are (default: [`upstream::bin_dir`]).
    pub fn upstream_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.upstream_dir = dir.into();
        self
    }

    /// The echo server binary Pods run (default: `$SIGNPOST_ECHO_BIN`).
    pub fn echo_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.opts.echo_binary = Some(path.into());
        self
    }

    /// Starts etcd and kube-apiserver (and kube-controller-manager), waits
    /// until the API server serves the `default` namespace, registers the Node.
    pub fn start(self) -> Result<LocalCluster<Running>> {
        let started = Instant::now();
        let LocalCluster { ns, opts, dir, .. } = self;
        let bin = |name: &str| upstream::binary_in(&opts.upstream_dir, name);
        let etcd_bin = bin("etcd")?;
        let apiserver_bin = bin("kube-apiserver")?;
        let kcm_bin = if opts.controller_manager {
            Some(bin("kube-controller-manager")?)
        } else {
            None
        };
        let scheduler_bin = if opts.full {
            Some(upstream::e2e_binary("kube-scheduler")?)
        } else {
            None
        };

        node_setup(&ns)?;

        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(Error::io("creating pki dir"))?;
        let ips = [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::V4(NODE_IP),
            IpAddr::from([10, 96, 0, 1]),
        ];
        let pki = pki::generate(&pki_dir, "https://127.0.0.1:6443", &ips)?;
        let logs = dir.logs();
        let s = |p: &Path| p.display().to_string();

        let etcd_args = vec![
            format!("--data-dir={}", s(&dir.path().join("etcd"))),
            "--name=default".into(),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let etcd = Daemon::spawn(&ns, "etcd", &etcd_bin, &etcd_args, logs.join("etcd.log"))?;

        let mut api_args = vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!(
                "--bind-address={}",
                if opts.full { "0.0.0.0" } else { "127.0.0.1" }
            ),
            "--secure-port=6443".into(),
            format!("--advertise-address={NODE_IP}"),
            format!("--cert-dir={}", s(&dir.path().join("apiserver-certs"))),
            format!("--tls-cert-file={}", s(&pki.server_cert)),
            format!("--tls-private-key-file={}", s(&pki.server_key)),
            format!("--client-ca-file={}", s(&pki.ca)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", s(&pki.sa_key)),
            format!("--service-cluster-ip-range={SERVICE_CIDR},{SERVICE_CIDR_V6}"),
            "--authorization-mode=RBAC".into(),
            // As some distributions run it: setting blockOwnerDeletion needs
            // `update` on the owner's finalizers, which deploy/ must grant.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ];
        if opts.full {
            // The kubelet's node name resolves nowhere in the node namespace:
            // exec, logs and port-forward go to its InternalIP.
            api_args.push("--kubelet-preferred-address-types=InternalIP".into());
            // As every conformant cluster: e2e's host-exec Pods are privileged.
            api_args.push("--allow-privileged=true".into());
        } else {
            // No service-account controller runs: Pods are plain API objects.
            api_args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        api_args.extend(opts.apiserver_args.iter().cloned());
        let apiserver = Daemon::spawn(
            &ns,
            "kube-apiserver",
            &apiserver_bin,
            &api_args,
            logs.join("kube-apiserver.log"),
        )?;

        let kubeconfig = pki.kubeconfig.clone();
        let (sa_key, ca) = (pki.sa_key.clone(), pki.ca.clone());
        let mut running = LocalCluster {
            state: Running {
                node: None,
                control: ControlPlane::Local {
                    scheduler: None,
                    kcm: None,
                    apiserver,
                    etcd,
                    _pki: pki,
                },
                kubeconfig,
                startup: Duration::ZERO,
                next_pod: AtomicU32::new(0),
            },
            ns,
            opts,
            dir,
        };
        running.wait_ready()?;
        running.state.startup = started.elapsed();
        if let Some(bin) = kcm_bin {
            let opts_controllers = running.opts.controllers;
            let kc = s(&running.state.kubeconfig);
            let mut args = vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                // The garbage collector too: slices go with their Service through owner references (EPS-13).
                format!("--controllers={}", opts_controllers),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=10257".into(),
                "--use-service-account-credentials=false".into(),
            ];
            if running.opts.full {
                args.push(format!("--service-account-private-key-file={}", s(&sa_key)));
                args.push(format!("--root-ca-file={}", s(&ca)));
            }
            let logs = running.dir.logs();
            let daemon = Daemon::spawn(
                &running.ns,
                "kube-controller-manager",
                &bin,
                &args,
                logs.join("kube-controller-manager.log"),
            )?;
            if let ControlPlane::Local { kcm, .. } = &mut running.state.control {
                *kcm = Some(daemon);
            }
        }
        if let Some(bin) = scheduler_bin {
            let kc = s(&running.state.kubeconfig);
            let args = vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=10259".into(),
            ];
            let daemon = Daemon::spawn(
                &running.ns,
                "kube-scheduler",
                &bin,
                &args,
                running.dir.logs().join("kube-scheduler.log"),
            )?;
            if let ControlPlane::Local { scheduler, .. } = &mut running.state.control {
                *scheduler = Some(daemon);
            }
        }
        running.register_node()?;
        if running.opts.node {
            let logs = running.dir.logs();
            let node = KubeletNode::start(&node::NodeConfig {
                ns: &running.ns,
                dir: running.dir.path(),
                logs: &logs,
                kubeconfig: &running.state.kubeconfig,
                upstream_dir: &running.opts.upstream_dir,
                dns: NODE_IP,
            })?;
            running.state.node = Some(node);
        }
        Ok(running)
    }
}

/// The node inside `ns`: its address on an empty bridge (`node0`; some
/// kernels, this machine's among them, have no dummy driver), the pod
/// bridge, forwarding, and the service CIDRs routed out of `node0`.
fn node_setup(ns: &NetNs) -> Result<()> {
    // Some kernels (this machine's among them) have no dummy driver: an empty bridge holds the address as well.
    ns.ip(["link", "add", "node0", "type", "bridge"])?;
    ns.ip(["addr", "add", &format!("{NODE_IP}/32"), "dev", "node0"])?;
    ns.ip(["link", "set", "node0", "up"])?;
    ns.ip(["link", "add", BRIDGE, "type", "bridge"])?;
    // A fixed address: a bridge otherwise takes the lowest of its ports'
    // addresses, so a Pod joining could change the gateway's MAC under
    // every other Pod's ARP cache (their traffic then vanished for
    // seconds; the conformance runs saw DNS time out right after a Pod start).
    ns.ip(["link", "set", BRIDGE, "address", "02:00:0a:f4:00:01"])?;
    ns.ip(["addr", "add", &format!("{POD_GATEWAY}/16"), "dev", BRIDGE])?;
    ns.ip([
        "-6",
        "addr",
        "add",
        &format!("{POD_GATEWAY_V6}/64"),
        "dev",
        BRIDGE,
        "nodad",
    ])?;
    ns.ip(["link", "set", BRIDGE, "up"])?;
    // A node routes for its Pods, and bridged Pod traffic passes the IP
    // hooks (so a proxy's DNAT sees replies between Pods on the bridge).
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    ns.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
    ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
    // Stand-in for a node's default route: ClusterIP traffic that no
    // proxy translated is forwarded, as on a real node, out of a link
    // with no neighbours (node0 has no ports), so it goes nowhere. A
    // proxy must reject it in the forward path; an earlier `local` route
    // here hid that Signpost only rejected in input.
    ns.ip(["route", "add", SERVICE_CIDR, "dev", "node0"])?;
    ns.ip(["-6", "route", "add", SERVICE_CIDR_V6, "dev", "node0"])?;
    Ok(())
}

impl LocalCluster<Running> {
    /// A node for a control plane that runs elsewhere, reached through
    /// `kubeconfig`: the node namespace, pod bridge and routes as for a
    /// local cluster, `uplink` (if given) moved into it so the node reaches
    /// the API server, and the Node object registered (kept if it exists).
    /// The kernel VM rig uses it: the API server runs on the host and the
    /// guest is the node.
    pub fn attach(name: &str, kubeconfig: &Path, uplink: Option<&Uplink>) -> Result<Self> {
        let started = Instant::now();
        let LocalCluster { ns, opts, dir, .. } = LocalCluster::new(name)?;
        node_setup(&ns)?;
        if let Some(u) = uplink {
            crate::netns::run("ip", ["link", "set", &u.link, "netns", ns.name()])?;
            ns.ip(["addr", "add", &u.addr, "dev", &u.link])?;
            ns.ip(["link", "set", &u.link, "up"])?;
        }
        let mut cluster = LocalCluster {
            state: Running {
                node: None,
                control: ControlPlane::Attached,
                kubeconfig: kubeconfig.to_owned(),
                startup: Duration::ZERO,
                next_pod: AtomicU32::new(0),
            },
            ns,
            opts,
            dir,
        };
        cluster.wait_ready()?;
        cluster.state.startup = started.elapsed();
        cluster.register_node()?;
        Ok(cluster)
    }

    /// The echo server binary Pods run (for an attached cluster).
    pub fn with_echo_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.opts.echo_binary = Some(path.into());
        self
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let ControlPlane::Local {
                etcd, apiserver, ..
            } = &mut self.state.control
            {
                etcd.check_running()?;
                apiserver.check_running()?;
            }
            // /readyz: every post-start hook done, the bootstrap RBAC roles
            // among them (least-privilege clients need system:basic-user).
            let ok = self.block_on(|client| async move {
                let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                    return false;
                };
                let ns: Api<Namespace> = Api::all(client.clone());
                client
                    .request_text(req)
                    .await
                    .is_ok_and(|t| t.trim() == "ok")
                    && ns.get("default").await.is_ok()
            });
            if matches!(ok, Ok(true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "kube-apiserver".into(),
                    secs: self.opts.ready_timeout.as_secs(),
                    logs: self.dir.logs(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A control-plane fault: `apiserver` or `etcd` frozen (SIGSTOP: its
    /// connections stay open and nothing answers) or thawed (SIGCONT).
    /// Only for a local control plane.
    pub fn freeze(&self, which: ControlProcess, frozen: bool) -> Result<()> {
        let ControlPlane::Local {
            apiserver, etcd, ..
        } = &self.state.control
        else {
            return Err(Error::Kubeconfig(
                "an attached cluster's control plane is not ours to freeze".into(),
            ));
        };
        let d = match which {
            ControlProcess::ApiServer => apiserver,
            ControlProcess::Etcd => etcd,
        };
        d.signal(if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        });
        Ok(())
    }

    /// A control-plane fault: `apiserver` or `etcd` killed (SIGKILL) and
    /// started again with the same flags and data; returns once the API
    /// server is ready again, with how long that took from the kill.
    pub fn restart(&mut self, which: ControlProcess) -> Result<Duration> {
        let started = Instant::now();
        let ControlPlane::Local {
            apiserver, etcd, ..
        } = &mut self.state.control
        else {
            return Err(Error::Kubeconfig(
                "an attached cluster's control plane is not ours to restart".into(),
            ));
        };
        match which {
            ControlProcess::ApiServer => apiserver.respawn(&self.ns)?,
            ControlProcess::Etcd => etcd.respawn(&self.ns)?,
        }
        self.wait_ready()?;
        Ok(started.elapsed())
    }

    fn register_node(&self) -> Result<()> {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": NODE_NAME, "labels": { "kubernetes.io/hostname": NODE_NAME } },
        }))
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let status = serde_json::json!({ "status": {
            "addresses": [{ "type": "InternalIP", "address": NODE_IP.to_string() }],
            "conditions": [{ "type": "Ready", "status": "True", "reason": "SignpostRig" }],
        }});
        self.block_on(|client| async move {
            let nodes: Api<Node> = Api::all(client);
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                // An attached cluster's control plane may have registered it.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            nodes
                .patch_status(
                    NODE_NAME,
                    &Default::default(),
                    &kube::api::Patch::Merge(&status),
                )
                .await?;
            Ok::<_, Error>(())
        })?
    }

    /// Runs an async function with an admin client, on a thread inside the
    /// node namespace (where the API server listens).
    pub fn block_on<F, Fut, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(kube::Client) -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        self.api().block_on(f)
    }

    /// A detached handle to the API server (admin credentials, the node
    /// namespace), for values that outlive a borrow of the cluster.
    pub fn api(&self) -> ApiHandle {
        ApiHandle {
            kubeconfig: self.state.kubeconfig.clone(),
            netns: self.ns.name().to_owned(),
        }
    }

    /// The admin kubeconfig (server `https://127.0.0.1:6443`, reachable inside the node namespace).
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// A kubeconfig with a token of `component`'s ServiceAccount, after
    /// applying its RBAC from `deploy/`: what a component under test runs
    /// with, so it has exactly the rights its deployment grants.
    pub fn component_kubeconfig(&self, component: crate::deploy::Component) -> Result<PathBuf> {
        let admin = self.state.kubeconfig.clone();
        let out = self
            .logs()
            .join(format!("{}.kubeconfig", component.service_account()));
        self.block_on(|client| async move {
            crate::deploy::component_kubeconfig(&client, &admin, component, &out).await
        })?
    }

    /// Reads a sample from the Prometheus endpoint `127.0.0.1:<port>/metrics`
    /// inside the node namespace, summed over its label sets (for example
    /// kube-proxy's per-IP-family series).
    pub fn metric(&self, port: u16, name: &str) -> Option<f64> {
        self.ns
            .within(|| crate::process::local_metric(port, name))
            .ok()
            .flatten()
    }

    /// `GET path` from `127.0.0.1:<port>` inside the node namespace (a
    /// component's `/healthz`, `/readyz`): status and body.
    pub fn http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        self.ns
            .within(|| crate::process::local_get(port, path))
            .ok()
            .flatten()
    }

    /// `GET path` at `addr` from the node namespace: a probe at the node's
    /// (for a hostNetwork Pod, the Pod's) address, where a kubelet sends it.
    pub fn http_get_at(&self, addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
        self.ns
            .within(|| crate::process::http_get_at(addr, path))
            .ok()
            .flatten()
    }

    /// The node namespace.
    pub fn node_namespace(&self) -> &NetNs {
        &self.ns
    }

    /// Where the processes' logs are.
    pub fn logs(&self) -> PathBuf {
        self.dir.logs()
    }

    /// Time from `start` to a ready API server.
    pub fn startup_time(&self) -> Duration {
        self.state.startup
    }

    /// PIDs of the control-plane processes.
    pub fn pids(&self) -> Vec<u32> {
        match &self.state.control {
            ControlPlane::Local {
                scheduler,
                kcm,
                apiserver,
                etcd,
                ..
            } => {
                let mut p = vec![etcd.pid(), apiserver.pid()];
                p.extend(kcm.as_ref().map(Daemon::pid));
                p.extend(scheduler.as_ref().map(Daemon::pid));
                p
            }
            ControlPlane::Attached => Vec::new(),
        }
    }

    /// The echo server binary for Pods.
    pub(crate) fn echo_binary(&self) -> Result<PathBuf> {
        self.opts
            .echo_binary
            .clone()
            .filter(|p| p.is_file())
            .ok_or_else(|| Error::MissingBinary {
                name: "signpost-echo".into(),
                dir: self
                    .opts
                    .echo_binary
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("$SIGNPOST_ECHO_BIN (unset)")),
            })
    }

    /// The next Pod addresses: 10.244.x.y and fd00:10:244::n, skipping the gateway.
    pub(crate) fn next_pod_ip(&self) -> (Ipv4Addr, std::net::Ipv6Addr) {
        let n = self.state.next_pod.fetch_add(1, Ordering::Relaxed);
        let host = n + 2;
        let v4 = Ipv4Addr::new(
            10,
            244,
            u8::try_from(host / 250).unwrap_or(255),
            u8::try_from(host % 250).unwrap_or(0) + 1,
        );
        let v6 = std::net::Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            0,
            0,
            0,
            0,
            u16::try_from(host).unwrap_or(u16::MAX),
        );
        (v4, v6)
    }

    /// The real node, if the cluster was started [`LocalCluster::with_node`].
    pub fn kubelet_node(&self) -> Option<&KubeletNode> {
        self.state.node.as_ref()
    }

    /// The work directory.
    pub(crate) fn workdir(&self) -> &WorkDir {
        &self.dir
    }
}

/// The API server as seen from inside the node namespace, with admin credentials.
#[derive(Debug, Clone)]
pub struct ApiHandle {
    kubeconfig: PathBuf,
    netns: String,
}

impl ApiHandle {
    /// Runs an async function with an admin client on a thread inside the
    /// node namespace.
    pub fn block_on<F, Fut, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(kube::Client) -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        let kubeconfig = self.kubeconfig.clone();
        crate::netns::within_named(&self.netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("building a runtime"))?;
            rt.block_on(async move {
                let client = admin_client(&kubeconfig).await?;
                Ok(f(client).await)
            })
        })?
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

/// An admin client from a kubeconfig file.
pub async fn admin_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(cfg)?)
}

#[cfg(test)]
mod service_cidr_tests {
    use super::*;

    #[test]
    fn the_service_cidr_test_matches_the_range_given_to_the_api_server() {
        assert_eq!(SERVICE_CIDR, "10.96.0.0/12");
        for (ip, inside) in [
            ("10.96.0.1", true),
            ("10.111.255.254", true),
            ("10.112.0.1", false),
            ("10.95.255.255", false),
            ("11.96.0.1", false),
        ] {
            assert_eq!(in_service_cidr(ip.parse().unwrap()), inside, "{ip}");
        }
    }
}
