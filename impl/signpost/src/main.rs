//! `signpost`: one binary for Signpost's cluster components:
//! `signpost endpoints` (the EndpointSlice controller),
//! `signpost proxy --mode nftables|ipvs` (the service proxy) and
//! `signpost dns` (the cluster DNS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod proxyconfig;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signpost_endpoints::metrics::Metrics;
use signpost_runtime::shutdown::signal as shutdown;
use signpost_runtime::{duration, http};

#[derive(Parser)]
#[command(
    name = "signpost",
    version,
    about = "Kubernetes Service registration and discovery, model-checked"
)]
struct Cli {
    /// Path to a kubeconfig; without it, in-cluster configuration (or the default kubeconfig).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    log: signpost_runtime::log::Args,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the EndpointSlice controller.
    Endpoints {
        /// This replica's identity in the leader lease (default: the Pod's name
        /// from $POD_NAME or $HOSTNAME, an underscore and 128 random bits).
        #[arg(long)]
        identity: Option<String>,
        /// Namespace of the leader lease.
        #[arg(
            long,
            alias = "leader-elect-resource-namespace",
            default_value = "kube-system"
        )]
        lease_namespace: String,
        /// Name of the leader lease.
        #[arg(
            long,
            alias = "leader-elect-resource-name",
            default_value = "signpost-endpoints"
        )]
        lease_name: String,
        /// Lease duration: a standby takes over after the leader has been
        /// silent this long (Go duration or seconds, 1s to 1h;
        /// kube-controller-manager's `--leader-elect-lease-duration`).
        #[arg(long, alias = "leader-elect-lease-duration", default_value = "15s", value_parser = duration::within(Duration::from_secs(1), Duration::from_secs(3600)))]
        lease_duration: Duration,
        /// The leader stops writing this long after its last good renewal;
        /// less than --lease-duration (default: two thirds of it).
        #[arg(long, alias = "leader-elect-renew-deadline", value_parser = duration::within(Duration::from_millis(100), Duration::from_secs(3600)))]
        renew_deadline: Option<Duration>,
        /// Time between attempts to acquire or renew the lease (default: a
        /// fifth of --lease-duration).
        #[arg(long, alias = "leader-elect-retry-period", value_parser = duration::within(Duration::from_millis(50), Duration::from_secs(600)))]
        retry_period: Option<Duration>,
        /// Also wait this long for more events before reconciling a batch
        /// (events that queue up while a batch is reconciled are always
        /// coalesced; kube-controller-manager's
        /// `--endpointslice-updates-batch-period`). Go duration, or milliseconds
        /// for --debounce-ms.
        #[arg(long = "endpointslice-updates-batch-period", value_parser = duration::within(Duration::ZERO, Duration::from_secs(60)))]
        batch_period: Option<Duration>,
        /// As --endpointslice-updates-batch-period, in milliseconds.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        debounce_ms: u64,
        /// Services reconciled at once (1 to 100; kube-controller-manager's
        /// `--concurrent-service-endpoint-syncs`).
        #[arg(long, alias = "concurrent-service-endpoint-syncs", default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=100))]
        concurrent_syncs: u8,
        /// At most this many endpoints in one EndpointSlice (1 to 1000).
        #[arg(long, default_value_t = signpost_model::spec::MAX_ENDPOINTS_PER_SLICE, value_parser = max_per_slice)]
        max_endpoints_per_slice: usize,
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, default_value = "127.0.0.1:10280")]
        metrics_addr: SocketAddr,
        /// Another address for /healthz and /readyz (and /metrics), e.g. the
        /// Pod address the kubelet probes.
        #[arg(long)]
        healthz_addr: Option<SocketAddr>,
        /// Lead through the lease before writing; `--leader-elect=false`
        /// writes at once (one replica only).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
    },
    /// Run the service proxy on this node.
    Proxy {
        /// The data plane.
        #[arg(long, alias = "proxy-mode", value_enum, default_value = "nftables")]
        mode: ProxyMode,
        /// This node's name (default: $NODE_NAME, then the hostname).
        #[arg(long, alias = "hostname-override")]
        node_name: Option<String>,
        /// Remove everything Signpost programmed and exit.
        #[arg(long)]
        cleanup: bool,
        /// Time between read-back-and-repair resyncs (1s to 24h; Go
        /// duration or seconds; kube-proxy's `--sync-period`).
        #[arg(long, alias = "sync-period", default_value = "60s", value_parser = duration::within(Duration::from_secs(1), Duration::from_secs(86_400)))]
        resync_secs: Duration,
        /// `/healthz` answers 503 once a change has waited this long without
        /// reaching the kernel (default: twice --resync-secs, as kube-proxy's
        /// is twice its sync period).
        #[arg(long, value_parser = duration::within(Duration::from_secs(1), Duration::from_secs(172_800)))]
        healthz_timeout_secs: Option<Duration>,
        /// Address for /healthz and /metrics (kube-proxy's
        /// `--metrics-bind-address`).
        #[arg(
            long,
            alias = "metrics-bind-address",
            default_value = "127.0.0.1:10281"
        )]
        metrics_addr: SocketAddr,
        /// Another address for /healthz (and /metrics), e.g. `0.0.0.0:10256`
        /// for the kubelet's probe and load balancers (kube-proxy's
        /// `--healthz-bind-address`).
        #[arg(long, alias = "healthz-bind-address")]
        healthz_addr: Option<SocketAddr>,
        /// Masquerade all traffic to ClusterIPs (kube-proxy's
        /// `--masquerade-all`). By default a backend sees its client's
        /// address; hairpin and NodePort traffic are always masqueraded.
        #[arg(long)]
        masquerade_all: bool,
        /// The cluster's Pod ranges, comma-separated: traffic to a ClusterIP
        /// from outside them (the node, off the cluster) is masqueraded
        /// (kube-proxy's `--cluster-cidr`).
        #[arg(long)]
        cluster_cidr: Option<String>,
        /// NodePorts answer only on the node's InternalIPs inside these
        /// ranges: comma-separated CIDRs and/or `primary` (the first
        /// InternalIP of each family). Default: every InternalIP
        /// (kube-proxy's `--nodeport-addresses`).
        #[arg(long, value_delimiter = ',')]
        nodeport_addresses: Vec<String>,
        /// How the nftables data plane writes to the kernel: `netlink` (one
        /// nf_tables batch per sync, the default) or `nft` (JSON through the
        /// `nft` program first on PATH).
        #[arg(long, value_enum, default_value = "netlink")]
        nft_writer: NftWriter,
        /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1):
        /// its mode, hostnameOverride, syncPeriod, metricsBindAddress,
        /// healthzBindAddress, masqueradeAll, clusterCIDR and
        /// nodePortAddresses replace the flags above; a field Signpost
        /// does not implement is an error naming it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Build in a deliberate fault (the conformance harness's mutation test).
        #[arg(long, hide = true)]
        mutant: Option<signpost_model::mutant::Mutant>,
    },
    /// Run the cluster DNS.
    Dns(DnsArgs),
    /// The seed's story, live on a local cluster: registration step by step,
    /// then enterprise resolves and reaches voyager (runs the rig's
    /// `signpost-demo` from beside this binary; needs root and the upstream
    /// build: `ci/demo`).
    Demo {
        /// Flags for the demo (see `signpost demo --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PodsArg {
    /// No pod records.
    Disabled,
    /// Any dashed address answers with itself.
    Insecure,
    /// Only addresses of Pods in that namespace answer (watches Pods).
    Verified,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NftWriter {
    /// One nf_tables netlink batch per sync.
    Netlink,
    /// An nft script through `nft -f -`.
    Nft,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProxyMode {
    /// nftables (one `inet signpost` table).
    Nftables,
    /// IPVS (virtual services over generic netlink, addresses on kube-ipvs0, an `inet signpost-ipvs` table).
    Ipvs,
}

/// A client for the API server, saying who it is in its User-Agent
/// (`signpost-endpoints/0.1.0 (<identity>)`, as client-go's components
/// do), so the API server's audit log and managedFields tell replicas and
/// components apart.
async fn client(
    kubeconfig: Option<PathBuf>,
    component: &str,
    detail: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let mut agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    if let Some(d) = detail {
        agent.push_str(&format!(" ({d})"));
    }
    config.headers.push((
        ::http::header::USER_AGENT,
        ::http::HeaderValue::from_str(&agent)
            .with_context(|| format!("a User-Agent of {agent:?}"))?,
    ));
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    signpost_runtime::log::init(&cli.log);
    match cli.command {
        Command::Endpoints {
            identity,
            lease_namespace,
            lease_name,
            lease_duration,
            renew_deadline,
            retry_period,
            batch_period,
            debounce_ms,
            concurrent_syncs,
            max_endpoints_per_slice,
            metrics_addr,
            healthz_addr,
            leader_elect,
        } => {
            let renew_deadline = renew_deadline.unwrap_or(lease_duration * 2 / 3);
            if renew_deadline >= lease_duration {
                anyhow::bail!(
                    "--renew-deadline {renew_deadline:?} must be less than --lease-duration {lease_duration:?}"
                );
            }
            let identity = identity.unwrap_or_else(signpost_endpoints::lease::default_identity);
            let client = client(cli.kubeconfig, "signpost-endpoints", Some(&identity)).await?;
            let metrics = Arc::new(Metrics::default());
            let cfg = signpost_endpoints::Config {
                lease_namespace,
                lease_name,
                identity,
                lease_duration,
                renew_deadline,
                retry_period: retry_period.unwrap_or(lease_duration / 5),
                max_endpoints_per_slice,
                concurrent_syncs: usize::from(concurrent_syncs),
                debounce: batch_period.unwrap_or(Duration::from_millis(debounce_ms)),
                leader_elect,
            };
            let render = metrics.clone();
            let handlers = http::Handlers::metrics_only(Arc::new(move || render.render()));
            let server = serve_all(metrics_addr, healthz_addr, handlers).await?;
            tracing::info!(%metrics_addr, identity = %cfg.identity, "signpost endpoints starting");
            let elector = signpost_endpoints::lease::Elector::new(
                kube::Api::namespaced(client.clone(), &cfg.lease_namespace),
                &cfg.lease_name,
                &cfg.identity,
                cfg.lease_duration,
            );
            tokio::select! {
                r = signpost_endpoints::run(client, cfg, metrics) => r.context("endpoints controller stopped")?,
                r = server => r.context("metrics server panicked")?.context("metrics server stopped")?,
                _ = shutdown() => {
                    // The controller is stopped (dropped): hand the lease over now.
                    match tokio::time::timeout(Duration::from_secs(5), elector.release()).await {
                        Ok(Ok(true)) => tracing::info!("released the lease; shutting down"),
                        Ok(Ok(false)) => tracing::info!("not the leader; shutting down"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed; a standby waits it out"),
                        Err(_) => tracing::warn!("releasing the lease timed out; a standby waits it out"),
                    }
                }
            }
        }
        Command::Proxy {
            mut mode,
            mut node_name,
            cleanup,
            mut resync_secs,
            healthz_timeout_secs,
            mut metrics_addr,
            mut healthz_addr,
            mut masquerade_all,
            mut cluster_cidr,
            mut nodeport_addresses,
            nft_writer,
            config,
            mutant,
        } => {
            signpost_proxy::nftables::apply::use_writer(match nft_writer {
                NftWriter::Netlink => signpost_proxy::nftables::apply::Writer::Netlink,
                NftWriter::Nft => signpost_proxy::nftables::apply::Writer::Nft,
            });
            let mut kubeconfig = cli.kubeconfig;
            if let Some(path) = &config {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let pc = proxyconfig::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
                for note in &pc.notes {
                    tracing::info!(config = %path.display(), "{note}");
                }
                match pc.mode.as_deref() {
                    Some("ipvs") => mode = ProxyMode::Ipvs,
                    Some(_) => mode = ProxyMode::Nftables,
                    None => {}
                }
                node_name = pc.hostname_override.or(node_name);
                resync_secs = pc.sync_period.unwrap_or(resync_secs);
                metrics_addr = pc.metrics_bind_address.unwrap_or(metrics_addr);
                healthz_addr = pc.healthz_bind_address.or(healthz_addr);
                kubeconfig = kubeconfig.or(pc.kubeconfig);
                masquerade_all |= pc.masquerade_all;
                cluster_cidr = pc.cluster_cidr.or(cluster_cidr);
                if let Some(list) = pc.node_port_addresses {
                    nodeport_addresses = list;
                }
            }
            let masquerade = signpost_proxy::addresses::Masquerade {
                all: masquerade_all,
                cluster_cidrs: signpost_proxy::addresses::parse_cidrs(
                    cluster_cidr.as_deref().unwrap_or_default(),
                )
                .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?,
            };
            let node_port_addresses = signpost_proxy::addresses::NodePortAddresses::parse(
                nodeport_addresses.iter().map(String::as_str),
            )
            .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?;
            if cleanup {
                cleanup_all().await?;
                return Ok(());
            }
            let node_name = match node_name.or_else(|| {
                std::env::var("NODE_NAME")
                    .ok()
                    .filter(|n| !n.trim().is_empty())
            }) {
                Some(n) => n,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
                    .trim()
                    .to_owned(),
            };
            let client = client(kubeconfig, "signpost-proxy", None).await?;
            let metrics = Arc::new(signpost_proxy::metrics::Metrics::default());
            let render = metrics.clone();
            // kube-proxy's healthz timeout is twice its sync period.
            let timeout = healthz_timeout_secs.unwrap_or(2 * resync_secs);
            let health = Arc::new(signpost_proxy::health::Health::new(timeout));
            let probe = health.clone();
            let handlers = http::Handlers {
                metrics: Arc::new(move || render.render()),
                ready: Arc::new(|| true),
                healthy: Arc::new(move || probe.check(std::time::Instant::now())),
            };
            let server = serve_all(metrics_addr, healthz_addr, handlers).await?;
            let cfg = signpost_proxy::controller::Config {
                node_name,
                resync: resync_secs,
                mutant,
                health,
                masquerade,
                node_port_addresses,
            };
            if let Some(m) = mutant {
                tracing::warn!(
                    mutant = m.name(),
                    "running with a deliberate fault (mutation test)"
                );
            }
            let run = async {
                match mode {
                    ProxyMode::Nftables => {
                        signpost_proxy::controller::run(client, cfg, metrics).await
                    }
                    ProxyMode::Ipvs => {
                        signpost_proxy::controller::run_ipvs(client, cfg, metrics).await
                    }
                }
            };
            tokio::select! {
                r = run => r.context("proxy stopped")?,
                r = server => r.context("metrics server panicked")?.context("metrics server stopped")?,
                _ = shutdown() => tracing::info!("shutting down; rules stay in the kernel"),
            }
        }
        Command::Dns(args) => run_dns(cli.kubeconfig, args).await?,
        Command::Demo { args } => demo(&args)?,
    }
    Ok(())
}

/// `signpost dns` options.
#[derive(clap::Args)]
struct DnsArgs {
    /// The cluster zone.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Address to serve DNS on, UDP and TCP (repeatable).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: Vec<SocketAddr>,
    /// Upstream resolver for other names (repeatable; port 53 unless given).
    /// Without it, the nameservers of --resolv-conf.
    #[arg(long)]
    upstream: Vec<String>,
    /// The resolv.conf whose nameservers are the upstreams.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// TTL of cluster records in seconds.
    #[arg(long, default_value_t = signpost_model::spec::DEFAULT_TTL_SECS)]
    ttl: u32,
    /// Pod records `<dashed-ip>.<ns>.pod.<zone>`.
    #[arg(long, value_enum, default_value = "disabled")]
    pods: PodsArg,
    /// Seconds a forwarded query may take.
    #[arg(long, default_value_t = 2)]
    forward_timeout: u64,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:10282")]
    metrics_addr: SocketAddr,
    /// Seconds to keep answering after SIGTERM with /readyz at 503
    /// (kubeadm's Corefile: `health { lameduck 5s }`).
    #[arg(long, default_value_t = 5)]
    lameduck_secs: u64,
    /// Forwarded queries in flight at most; more get SERVFAIL at once
    /// (CoreDNS's `forward { max_concurrent }`).
    #[arg(long, default_value_t = signpost_dns::forward::MAX_IN_FLIGHT)]
    max_concurrent: usize,
    /// Clients whose outside names are forwarded (repeatable CIDR); others
    /// get REFUSED for them, cluster names are answered to all. Default:
    /// private, CGNAT, loopback and link-local ranges, where a cluster's
    /// Pods and nodes are (not an open resolver). `0.0.0.0/0` and `::/0`
    /// forward for anyone.
    #[arg(long, value_delimiter = ',', default_values_t = signpost_dns::guard::default_forward_allow())]
    forward_allow: Vec<signpost_dns::guard::Cidr>,
    /// Response rate limit per client address (IPv6: per /64) for
    /// forwarded and NXDOMAIN answers over UDP; over it, every second
    /// response slips out truncated (the client retries over TCP) and the
    /// rest are dropped. 0: no limit.
    #[arg(long, default_value_t = 1000)]
    rrl_responses_per_second: u32,
    /// Rotate the order of A/AAAA answers per query (CoreDNS's `loadbalance`).
    #[arg(long)]
    loadbalance: bool,
    /// Keep forwarded answers for their TTL, at most this many seconds
    /// (CoreDNS's `cache`; 0: no cache). Cluster answers are never cached.
    #[arg(long, default_value_t = 0)]
    cache_secs: u64,
    /// Take the configuration from a CoreDNS Corefile (kubeadm's default
    /// works as it is): its `kubernetes`, `forward`, `health`, `ready`,
    /// `prometheus`, `bind` and `loadbalance` settings replace the flags
    /// above; a plugin Signpost lacks is an error naming its line.
    #[arg(long)]
    corefile: Option<PathBuf>,
    /// Extra addresses serving /health(z), /ready(z) and /metrics (from a
    /// Corefile's `health`, `ready` and `prometheus`).
    #[arg(skip)]
    more_http: Vec<SocketAddr>,
    /// Build in a deliberate fault (the conformance harness's mutation test).
    #[arg(long, hide = true)]
    mutant: Option<signpost_model::mutant::Mutant>,
}

fn parse_upstream(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .parse()
        .with_context(|| format!("upstream {s:?} is neither ip nor ip:port"))?;
    Ok(SocketAddr::new(ip, 53))
}

/// Replaces `a`'s settings with a Corefile's (see `--corefile`).
fn apply_corefile(
    path: &std::path::Path,
    a: &mut DnsArgs,
    kubeconfig: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    use signpost_dns::corefile::{Forward, Pods};
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cf = signpost_dns::corefile::parse(&text)
        .with_context(|| format!("--corefile {}", path.display()))?;
    for note in &cf.notes {
        tracing::info!(corefile = %path.display(), "{note}");
    }
    a.zone = cf.zone;
    a.listen = cf.listen;
    a.ttl = cf.ttl;
    a.pods = match cf.pods {
        Pods::Disabled => PodsArg::Disabled,
        Pods::Insecure => PodsArg::Insecure,
        Pods::Verified => PodsArg::Verified,
    };
    match cf.forward {
        Forward::None => a.upstream = Vec::new(),
        Forward::ResolvConf(p) => {
            a.upstream = Vec::new();
            a.resolv_conf = p;
        }
        Forward::Addrs(addrs) => a.upstream = addrs.iter().map(ToString::to_string).collect(),
    }
    if let Some(n) = cf.max_concurrent {
        a.max_concurrent = n;
    }
    if let Some(d) = cf.lameduck {
        a.lameduck_secs = d.as_secs_f64().ceil() as u64;
    }
    if let Some(ttl) = cf.cache {
        a.cache_secs = ttl.as_secs();
    }
    a.loadbalance = cf.loadbalance;
    let http: Vec<SocketAddr> = [cf.health, cf.ready, cf.prometheus]
        .into_iter()
        .flatten()
        .fold(Vec::new(), |mut v, x| {
            if !v.contains(&x) {
                v.push(x);
            }
            v
        });
    if let Some((first, rest)) = http.split_first() {
        a.metrics_addr = *first;
        a.more_http = rest.to_vec();
    }
    if kubeconfig.is_none() {
        *kubeconfig = cf.kubeconfig;
    }
    Ok(())
}

async fn run_dns(mut kubeconfig: Option<PathBuf>, mut a: DnsArgs) -> anyhow::Result<()> {
    use signpost_dns::forward::{Forwarder, dedup, upstreams_from_resolv_conf};
    use signpost_model::spec::PodsMode;
    if let Some(path) = a.corefile.clone() {
        apply_corefile(&path, &mut a, &mut kubeconfig)?;
    }
    let zone = a.zone.trim_end_matches('.').to_ascii_lowercase();
    signpost_model::cluster::validate_dns1123_subdomain("--zone", &zone)
        .map_err(|e| anyhow::anyhow!("--zone {zone:?}: {e}"))?;
    let upstreams = if a.upstream.is_empty() {
        upstreams_from_resolv_conf(&a.resolv_conf)
            .with_context(|| format!("reading upstreams from {}", a.resolv_conf.display()))?
    } else {
        a.upstream
            .iter()
            .map(|u| parse_upstream(u))
            .collect::<anyhow::Result<_>>()?
    };
    let upstreams = dedup(upstreams);
    let pods_mode = match a.pods {
        PodsArg::Disabled => PodsMode::Disabled,
        PodsArg::Insecure => PodsMode::Insecure,
        PodsArg::Verified => PodsMode::Verified,
    };
    let client = client(kubeconfig, "signpost-dns", None).await?;
    let shared = Arc::new(
        signpost_dns::server::Shared::new(
            signpost_dns::ZoneIndex::with_pods(&zone, pods_mode),
            a.ttl,
            Forwarder::with_limit(
                upstreams.clone(),
                Duration::from_secs(a.forward_timeout),
                a.max_concurrent,
            ),
        )
        .with_mutant(a.mutant)
        .with_loadbalance(a.loadbalance)
        .with_forward_allow(a.forward_allow.clone())
        .with_rrl(a.rrl_responses_per_second)
        .with_cache(Duration::from_secs(a.cache_secs)),
    );
    if let Some(m) = a.mutant {
        tracing::warn!(
            mutant = m.name(),
            "running with a deliberate fault (mutation test)"
        );
    }
    let mut server =
        signpost_dns::server::serve(shared.clone(), &a.listen, Duration::from_secs(10))
            .await
            .with_context(|| format!("binding {:?}", a.listen))?;
    // Loop probes (CoreDNS's loop plugin's idea): at start, periodically,
    // and when the forwards in flight hit their bound.
    let probes = shared.clone();
    tokio::spawn(async move { probes.forwarder.run_loop_probes().await });
    let (render, ready) = (shared.clone(), shared.clone());
    // Lameduck (CoreDNS's `health { lameduck }`): after SIGTERM, /readyz
    // says 503 so the Service stops sending here, while queries already on
    // their way are still answered for --lameduck-secs.
    let lameduck = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ducking = lameduck.clone();
    let handlers = http::Handlers {
        ready: Arc::new(move || {
            ready.synced() && !ducking.load(std::sync::atomic::Ordering::Relaxed)
        }),
        ..http::Handlers::metrics_only(Arc::new(move || render.metrics.render()))
    };
    for addr in &a.more_http {
        // Each serves every path; they end with the process.
        drop(
            http::serve(*addr, handlers.clone())
                .await
                .with_context(|| format!("binding {addr}"))?,
        );
    }
    let http = http::serve(a.metrics_addr, handlers)
        .await
        .with_context(|| format!("binding {}", a.metrics_addr))?;
    tracing::info!(%zone, listen = ?a.listen, ?upstreams, ttl = a.ttl, metrics_addr = %a.metrics_addr, "signpost dns starting");
    let serving = async {
        tokio::select! {
            () = signpost_dns::watch::run(client, shared, pods_mode) => anyhow::bail!("watches stopped"),
            r = server.block_until_done() => r.context("DNS server stopped")?,
            r = http => r.context("metrics server panicked")?.context("metrics server stopped")?,
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r?,
        _ = shutdown() => {
            let secs = a.lameduck_secs;
            tracing::info!(secs, "lameduck: /readyz is 503, still answering");
            lameduck.store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                r = &mut serving => r?,
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = shutdown() => tracing::info!("second signal: lameduck cut short"),
            }
            tracing::info!("shutting down");
        }
    }
    Ok(())
}

fn max_per_slice(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: a number from 1 to 1000")),
    }
}

/// `--cleanup`: removes what either data plane programmed (as kube-proxy's
/// `--cleanup` removes every mode's rules), whichever mode is asked for.
async fn cleanup_all() -> anyhow::Result<()> {
    // Removing a table that is not there is not an error.
    if signpost_proxy::nftables::apply::list()?.is_some() {
        signpost_proxy::nftables::apply::apply(&signpost_proxy::nftables::build::cleanup())?;
        tracing::info!("removed table inet {}", signpost_proxy::nftables::TABLE);
    }
    match signpost_proxy::ipvs::IpvsSink::connect(Vec::new(), Default::default()).await {
        Ok(sink) => {
            sink.cleanup().await?;
            tracing::info!(
                "removed Signpost's IPVS services, {} and table inet {}",
                signpost_proxy::ipvs::DUMMY,
                signpost_proxy::ipvs::NFT_TABLE
            );
        }
        // No IPVS in this kernel: there is nothing of that mode to remove.
        Err(e) => tracing::info!(error = %e, "no IPVS here; nothing of the ipvs mode to remove"),
    }
    Ok(())
}

/// Serves the handlers on `main` and, when given, on `extra` too; the
/// returned task ends when the main server does.
async fn serve_all(
    main: SocketAddr,
    extra: Option<SocketAddr>,
    handlers: http::Handlers,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    if let Some(addr) = extra.filter(|a| *a != main) {
        drop(
            http::serve(addr, handlers.clone())
                .await
                .with_context(|| format!("binding {addr}"))?,
        );
    }
    http::serve(main, handlers)
        .await
        .with_context(|| format!("binding {main}"))
}

/// `signpost demo`: runs the rig's `signpost-demo` from beside this binary
/// (the demo drives a local cluster, which is the harness's job, and the
/// components it starts are this binary).
fn demo(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this binary")?;
    let beside = exe.with_file_name("signpost-demo");
    if !beside.exists() {
        anyhow::bail!(
            "{} is missing: build it with `cargo build -p signpost-conformance --bin signpost-demo` (ci/demo does)",
            beside.display()
        );
    }
    let err = std::process::Command::new(&beside).args(args).exec();
    Err(anyhow::Error::new(err).context(format!("running {}", beside.display())))
}
