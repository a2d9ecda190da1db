//! Systems under test, chosen at run time: a service proxy, a cluster DNS
//! and an EndpointSlice controller, each Signpost's, upstream's, or any
//! command line. They are processes reached only over the wire; nothing here
//! links a component.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use signpost_harness::cluster::{LocalCluster, NODE_IP, NODE_NAME, Running, Uplink};
use signpost_harness::process::{Daemon, workspace_binary};
use signpost_harness::upstream;
use signpost_model::mutant::{Component, Mutant};

use crate::{Error, Result};

/// Where the cluster DNS under test listens (the node's address; Pods
/// reach it through their default route).
pub const DNS_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(NODE_IP), 53);

/// The service proxy under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyChoice {
    /// `signpost proxy --mode nftables`.
    SignpostNftables,
    /// `signpost proxy --mode ipvs` (kernel VM rig).
    SignpostIpvs,
    /// Upstream kube-proxy `--proxy-mode=nftables`.
    KubeProxyNftables,
    /// Upstream kube-proxy `--proxy-mode=iptables` (Debian's iptables-nft).
    KubeProxyIptables,
    /// Upstream kube-proxy `--proxy-mode=ipvs` (kernel VM rig).
    KubeProxyIpvs,
    /// No proxy: proxy rules are not applicable.
    None,
    /// Any proxy: a command template with `{kubeconfig}` and `{node}`.
    Cmd(String),
}

/// The cluster DNS under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsChoice {
    /// `signpost dns`.
    Signpost,
    /// Upstream CoreDNS with the kubeadm Corefile's kubernetes block.
    CoreDns,
    /// A server already running at this address (reachable from the node).
    Addr(SocketAddr),
    /// No DNS: DNS rules are not applicable.
    None,
}

/// The EndpointSlice controller under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointsChoice {
    /// `signpost endpoints`.
    Signpost,
    /// kube-controller-manager's EndpointSlice controller.
    KubeControllerManager,
}

/// The cluster the scenarios run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChoice {
    /// The rig's local control plane (etcd + kube-apiserver in a node namespace).
    Local,
    /// The local control plane and a real node: containerd and kubelet in
    /// the node namespace, for Pods that run as containers
    /// ([`crate::live::Live::run_container`]); the fabric's Pods stay too.
    LocalKubelet,
    /// A control plane elsewhere, reached through a kubeconfig; this machine
    /// becomes its node `node-a` (the harness owns the pod network here, and
    /// `--endpoints` names the controller already running there). The
    /// kernel VM rig uses it: the host runs the control plane, the guest is
    /// the node.
    Kubeconfig {
        /// The kubeconfig.
        path: PathBuf,
        /// A link to move into the node namespace so it reaches the API server.
        uplink: Option<Uplink>,
    },
}

/// The whole system under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sut {
    /// The proxy.
    pub proxy: ProxyChoice,
    /// The DNS.
    pub dns: DnsChoice,
    /// The EndpointSlice controller.
    pub endpoints: EndpointsChoice,
    /// The cluster.
    pub cluster: ClusterChoice,
    /// A deliberate fault built into Signpost's proxy or DNS (mutation test).
    pub mutant: Option<Mutant>,
}

impl Default for Sut {
    /// Signpost's own components on a local cluster.
    fn default() -> Self {
        Sut {
            proxy: ProxyChoice::SignpostNftables,
            dns: DnsChoice::Signpost,
            endpoints: EndpointsChoice::Signpost,
            cluster: ClusterChoice::Local,
            mutant: None,
        }
    }
}

impl FromStr for ProxyChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "signpost-nftables" | "signpost" => ProxyChoice::SignpostNftables,
            "signpost-ipvs" => ProxyChoice::SignpostIpvs,
            "kube-proxy-nftables" => ProxyChoice::KubeProxyNftables,
            "kube-proxy-iptables" => ProxyChoice::KubeProxyIptables,
            "kube-proxy-ipvs" => ProxyChoice::KubeProxyIpvs,
            "none" => ProxyChoice::None,
            other => match other.strip_prefix("cmd:") {
                Some(t) if !t.trim().is_empty() => ProxyChoice::Cmd(t.to_owned()),
                _ => {
                    return Err(Error::Usage(format!(
                        "--proxy {other:?}: known are signpost-nftables, signpost-ipvs, kube-proxy-nftables, kube-proxy-iptables, kube-proxy-ipvs, none, cmd:'TEMPLATE'"
                    )));
                }
            },
        })
    }
}

impl FromStr for DnsChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "signpost" => DnsChoice::Signpost,
            "coredns" => DnsChoice::CoreDns,
            "none" => DnsChoice::None,
            other => match other.strip_prefix("addr:").map(str::parse) {
                Some(Ok(a)) => DnsChoice::Addr(a),
                _ => {
                    return Err(Error::Usage(format!(
                        "--dns {other:?}: known are signpost, coredns, none, addr:IP:PORT"
                    )));
                }
            },
        })
    }
}

impl FromStr for EndpointsChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "signpost" => Ok(EndpointsChoice::Signpost),
            "kube-controller-manager" | "kcm" => Ok(EndpointsChoice::KubeControllerManager),
            other => Err(Error::Usage(format!(
                "--endpoints {other:?}: known are signpost, kube-controller-manager"
            ))),
        }
    }
}

impl FromStr for ClusterChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(ClusterChoice::Local),
            "local-kubelet" => Ok(ClusterChoice::LocalKubelet),
            other => match other.strip_prefix("kubeconfig:") {
                Some(p) => Ok(ClusterChoice::Kubeconfig {
                    path: PathBuf::from(p),
                    uplink: None,
                }),
                None => Err(Error::Usage(format!(
                    "--cluster {other:?}: known are local, local-kubelet, kubeconfig:PATH"
                ))),
            },
        }
    }
}

impl fmt::Display for ProxyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyChoice::SignpostNftables => f.write_str("signpost-nftables"),
            ProxyChoice::SignpostIpvs => f.write_str("signpost-ipvs"),
            ProxyChoice::KubeProxyNftables => f.write_str("kube-proxy-nftables"),
            ProxyChoice::KubeProxyIptables => f.write_str("kube-proxy-iptables"),
            ProxyChoice::KubeProxyIpvs => f.write_str("kube-proxy-ipvs"),
            ProxyChoice::None => f.write_str("none"),
            ProxyChoice::Cmd(t) => write!(f, "cmd:{t}"),
        }
    }
}

impl fmt::Display for DnsChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsChoice::Signpost => f.write_str("signpost"),
            DnsChoice::CoreDns => f.write_str("coredns"),
            DnsChoice::Addr(a) => write!(f, "addr:{a}"),
            DnsChoice::None => f.write_str("none"),
        }
    }
}

impl fmt::Display for EndpointsChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointsChoice::Signpost => "signpost",
            EndpointsChoice::KubeControllerManager => "kube-controller-manager",
        })
    }
}

impl EndpointsChoice {
    /// The `endpointslice.kubernetes.io/managed-by` value of its slices.
    pub fn managed_by(self) -> &'static str {
        match self {
            EndpointsChoice::Signpost => "endpoints.signpost.dev",
            EndpointsChoice::KubeControllerManager => "endpointslice-controller.k8s.io",
        }
    }
}

impl Sut {
    /// The flags that select this system (for replay commands).
    pub fn flags(&self) -> String {
        let mut s = format!(
            "--proxy {} --dns {} --endpoints {}",
            shell_quote(&self.proxy.to_string()),
            self.dns,
            self.endpoints
        );
        if let Some(m) = self.mutant {
            s.push_str(&format!(" --mutant {}", m.name()));
        }
        s
    }

    /// The implementations under test as named in `spec/deviations.md`
    /// (the `--proxy`, `--dns`, `--endpoints` values; `none` left out).
    pub fn implementations(&self) -> Vec<String> {
        let mut imps = vec![
            self.proxy.to_string(),
            self.dns.to_string(),
            self.endpoints.to_string(),
        ];
        imps.retain(|x| x != "none");
        imps
    }

    /// The implementation's name in reports.
    pub fn implementation(&self) -> String {
        let signpost = matches!(
            self.proxy,
            ProxyChoice::SignpostNftables | ProxyChoice::SignpostIpvs | ProxyChoice::None
        ) && matches!(self.dns, DnsChoice::Signpost | DnsChoice::None)
            && self.endpoints == EndpointsChoice::Signpost;
        let upstream = matches!(
            self.proxy,
            ProxyChoice::KubeProxyNftables
                | ProxyChoice::KubeProxyIptables
                | ProxyChoice::KubeProxyIpvs
                | ProxyChoice::None
        ) && matches!(self.dns, DnsChoice::CoreDns | DnsChoice::None)
            && self.endpoints == EndpointsChoice::KubeControllerManager;
        match (signpost, upstream, self.mutant) {
            (_, _, Some(m)) => format!("signpost (mutant {})", m.name()),
            (true, _, None) => "signpost".into(),
            (_, true, None) => "kubernetes upstream".into(),
            _ => "mixed".into(),
        }
    }

    /// Whether the proxy is an IPVS one and this kernel has no IPVS, so the
    /// run goes to the kernel VM rig.
    pub fn needs_vm(&self) -> bool {
        self.proxy.is_ipvs() && !ipvs_here()
    }

    /// Checks that this system can run here, before anything starts.
    pub fn validate(&self) -> Result<()> {
        if let ClusterChoice::Kubeconfig { path, .. } = &self.cluster {
            if !path.is_file() {
                return Err(Error::Usage(format!(
                    "--cluster kubeconfig:{}: no such file",
                    path.display()
                )));
            }
            if self.needs_vm() {
                return Err(Error::Unsupported(format!(
                    "--proxy {} on --cluster kubeconfig: this kernel has no IPVS, and the kernel VM rig brings its own control plane (use --cluster local)",
                    self.proxy
                )));
            }
        }
        if self.needs_vm() {
            signpost_harness::vm::available().map_err(|why| {
                Error::Unsupported(format!(
                    "--proxy {}: this kernel has no IPVS and the kernel VM rig cannot run: {why}",
                    self.proxy
                ))
            })?;
        }
        if let Some(m) = self.mutant {
            let ok = match m.component() {
                Component::Proxy => matches!(
                    self.proxy,
                    ProxyChoice::SignpostNftables | ProxyChoice::SignpostIpvs
                ),
                Component::Dns => self.dns == DnsChoice::Signpost,
            };
            if !ok {
                return Err(Error::Usage(format!(
                    "--mutant {} is built into Signpost's {}; choose it",
                    m.name(),
                    match m.component() {
                        Component::Proxy => "proxy (--proxy signpost-nftables or signpost-ipvs)",
                        Component::Dns => "DNS (--dns signpost)",
                    }
                )));
            }
        }
        Ok(())
    }
}

impl ProxyChoice {
    /// An IPVS proxy (needs a kernel with IPVS).
    pub fn is_ipvs(&self) -> bool {
        matches!(self, ProxyChoice::SignpostIpvs | ProxyChoice::KubeProxyIpvs)
    }
}

/// Whether this kernel has IPVS (loading the module if it can).
pub fn ipvs_here() -> bool {
    let p = Path::new("/proc/net/ip_vs");
    if !p.exists() {
        let _ = std::process::Command::new("modprobe")
            .args(["-q", "ip_vs"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    p.exists()
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The metrics port Signpost's proxy listens on inside the node.
const PROXY_METRICS: u16 = 10281;

/// Starts the proxy under test in the cluster's node namespace.
pub fn start_proxy(
    cluster: &LocalCluster<Running>,
    choice: &ProxyChoice,
    mutant: Option<Mutant>,
) -> Result<Option<Daemon>> {
    let kc = cluster.kubeconfig().display().to_string();
    let log = |n: &str| cluster.logs().join(format!("{n}.log"));
    let (name, bin, args): (&str, PathBuf, Vec<String>) = match choice {
        ProxyChoice::None => return Ok(None),
        ProxyChoice::SignpostNftables | ProxyChoice::SignpostIpvs => {
            let mode = if *choice == ProxyChoice::SignpostIpvs {
                "ipvs"
            } else {
                "nftables"
            };
            // Signpost's proxy runs with exactly deploy/'s RBAC.
            let kc = cluster.component_kubeconfig(signpost_harness::deploy::Component::Proxy)?;
            let mut args = vec![
                format!("--kubeconfig={}", kc.display()),
                "proxy".into(),
                format!("--mode={mode}"),
                format!("--node-name={NODE_NAME}"),
                format!("--metrics-addr=127.0.0.1:{PROXY_METRICS}"),
            ];
            if let Some(m) = mutant.filter(|m| m.component() == Component::Proxy) {
                args.push(format!("--mutant={}", m.name()));
            }
            ("signpost-proxy", workspace_binary("signpost")?, args)
        }
        ProxyChoice::KubeProxyNftables
        | ProxyChoice::KubeProxyIptables
        | ProxyChoice::KubeProxyIpvs => {
            let mode = match choice {
                ProxyChoice::KubeProxyNftables => "nftables",
                ProxyChoice::KubeProxyIptables => "iptables",
                _ => "ipvs",
            };
            let mut args = vec![
                format!("--kubeconfig={kc}"),
                format!("--proxy-mode={mode}"),
                format!("--hostname-override={NODE_NAME}"),
                "--metrics-bind-address=127.0.0.1:10249".into(),
                "--healthz-bind-address=127.0.0.1:10256".into(),
                "--conntrack-max-per-core=0".into(),
                "--cluster-cidr=10.244.0.0/16".into(),
            ];
            if mode == "ipvs" {
                args.push("--ipvs-scheduler=rr".into());
            }
            ("kube-proxy", upstream::binary("kube-proxy")?, args)
        }
        ProxyChoice::Cmd(template) => {
            let line = template
                .replace("{kubeconfig}", &kc)
                .replace("{node}", NODE_NAME);
            (
                "proxy-cmd",
                PathBuf::from("/bin/sh"),
                vec!["-c".into(), line],
            )
        }
    };
    Ok(Some(Daemon::spawn(
        cluster.node_namespace(),
        name,
        &bin,
        &args,
        log(name),
    )?))
}

/// Starts the DNS under test in the node namespace, serving [`DNS_ADDR`].
pub fn start_dns(
    cluster: &LocalCluster<Running>,
    choice: &DnsChoice,
    mutant: Option<Mutant>,
) -> Result<Option<Daemon>> {
    match choice {
        DnsChoice::None | DnsChoice::Addr(_) => Ok(None),
        DnsChoice::Signpost => {
            let mut extra = vec![
                "--pods=insecure".to_owned(),
                // Nothing outside the cluster zone is asked; a dead upstream keeps it so.
                "--upstream=127.0.0.1:5399".to_owned(),
            ];
            if let Some(m) = mutant.filter(|m| m.component() == Component::Dns) {
                extra.push(format!("--mutant={}", m.name()));
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            Ok(Some(signpost_harness::dns::start_signpost(
                cluster,
                "signpost-dns",
                DNS_ADDR,
                10282,
                &extra,
            )?))
        }
        DnsChoice::CoreDns => Ok(Some(signpost_harness::dns::start_coredns(
            cluster, "coredns", 53,
        )?)),
    }
}

/// Starts Signpost's EndpointSlice controller (kube-controller-manager's
/// is started with the cluster).
pub fn start_endpoints(
    cluster: &LocalCluster<Running>,
    choice: EndpointsChoice,
) -> Result<Option<Daemon>> {
    if choice != EndpointsChoice::Signpost {
        return Ok(None);
    }
    let kc = cluster.component_kubeconfig(signpost_harness::deploy::Component::Endpoints)?;
    let args = vec![
        format!("--kubeconfig={}", kc.display()),
        "endpoints".into(),
        "--metrics-addr=127.0.0.1:10280".into(),
    ];
    Ok(Some(Daemon::spawn(
        cluster.node_namespace(),
        "signpost-endpoints",
        &workspace_binary("signpost")?,
        &args,
        cluster.logs().join("signpost-endpoints.log"),
    )?))
}

/// The version a component reports (`--version`), for reports.
pub fn version_of(bin: &Path, flag: &str) -> String {
    std::process::Command::new(bin)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
