//! `signpost`: one binary for Signpost's cluster components:
//! `signpost endpoints` (the EndpointSlice controller),
//! `signpost proxy --mode nftables|ipvs` (the service proxy) and
//! `signpost dns` (the cluster DNS).

mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signpost_endpoints::metrics::Metrics;

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
        #[arg(long, default_value = "kube-system")]
        lease_namespace: String,
        /// Name of the leader lease.
        #[arg(long, default_value = "signpost-endpoints")]
        lease_name: String,
        /// Lease duration in seconds (1 to 3600).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
        lease_duration: u64,
        /// Also wait this many milliseconds for more events before reconciling a batch
        /// (events that queue up while a batch is reconciled are always coalesced).
        #[arg(long, default_value_t = 0)]
        debounce_ms: u64,
        /// Address for /healthz and /metrics.
        #[arg(long, default_value = "127.0.0.1:10280")]
        metrics_addr: SocketAddr,
        /// Lead through the lease before writing; `--leader-elect=false`
        /// writes at once (one replica only).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
    },
    /// Run the service proxy on this node.
    Proxy {
        /// The data plane.
        #[arg(long, value_enum, default_value = "nftables")]
        mode: ProxyMode,
        /// This node's name (default: $NODE_NAME, then the hostname).
        #[arg(long, alias = "hostname-override")]
        node_name: Option<String>,
        /// Remove everything Signpost programmed and exit.
        #[arg(long)]
        cleanup: bool,
        /// Seconds between read-back-and-repair resyncs (1 to 86400).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        resync_secs: u64,
        /// `/healthz` answers 503 once a change has waited this many seconds
        /// without reaching the kernel (default: twice --resync-secs, as
        /// kube-proxy's is twice its sync period).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=172_800))]
        healthz_timeout_secs: Option<u64>,
        /// Address for /healthz and /metrics.
        #[arg(long, default_value = "127.0.0.1:10281")]
        metrics_addr: SocketAddr,
        /// Build in a deliberate fault (the conformance harness's mutation test).
        #[arg(long, hide = true)]
        mutant: Option<signpost_model::mutant::Mutant>,
    },
    /// Run the cluster DNS.
    Dns(DnsArgs),
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
enum ProxyMode {
    /// nftables (one `inet signpost` table).
    Nftables,
    /// IPVS (virtual services over generic netlink, addresses on kube-ipvs0, an `inet signpost-ipvs` table).
    Ipvs,
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // hickory-server logs every query at info: two lines per request.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn,hickory_proto=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Endpoints {
            identity,
            lease_namespace,
            lease_name,
            lease_duration,
            debounce_ms,
            metrics_addr,
            leader_elect,
        } => {
            let client = client(cli.kubeconfig).await?;
            let metrics = Arc::new(Metrics::default());
            let cfg = signpost_endpoints::Config {
                lease_namespace,
                lease_name,
                identity: identity.unwrap_or_else(signpost_endpoints::lease::default_identity),
                lease_duration: Duration::from_secs(lease_duration),
                debounce: Duration::from_millis(debounce_ms),
                leader_elect,
            };
            let render = metrics.clone();
            let server = http::serve(
                metrics_addr,
                http::Handlers::metrics_only(Arc::new(move || render.render())),
            )
            .await?;
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
            mode,
            node_name,
            cleanup,
            resync_secs,
            healthz_timeout_secs,
            metrics_addr,
            mutant,
        } => {
            if cleanup {
                match mode {
                    ProxyMode::Nftables => {
                        // Removing a table that is not there is not an error.
                        if signpost_proxy::nftables::apply::list()?.is_some() {
                            signpost_proxy::nftables::apply::apply(
                                &signpost_proxy::nftables::build::cleanup(),
                            )?;
                        }
                        tracing::info!("removed table inet {}", signpost_proxy::nftables::TABLE);
                    }
                    ProxyMode::Ipvs => {
                        signpost_proxy::ipvs::IpvsSink::connect(Vec::new())
                            .await?
                            .cleanup()
                            .await?;
                        tracing::info!(
                            "removed Signpost's IPVS services, {} and table inet {}",
                            signpost_proxy::ipvs::DUMMY,
                            signpost_proxy::ipvs::NFT_TABLE
                        );
                    }
                }
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
            let client = client(cli.kubeconfig).await?;
            let metrics = Arc::new(signpost_proxy::metrics::Metrics::default());
            let render = metrics.clone();
            // kube-proxy's healthz timeout is twice its sync period.
            let timeout = Duration::from_secs(healthz_timeout_secs.unwrap_or(2 * resync_secs));
            let health = Arc::new(signpost_proxy::health::Health::new(timeout));
            let probe = health.clone();
            let server = http::serve(
                metrics_addr,
                http::Handlers {
                    metrics: Arc::new(move || render.render()),
                    ready: Arc::new(|| true),
                    healthy: Arc::new(move || probe.check(std::time::Instant::now())),
                },
            )
            .await?;
            let cfg = signpost_proxy::controller::Config {
                node_name,
                resync: Duration::from_secs(resync_secs),
                mutant,
                health,
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
    let client = client(kubeconfig).await?;
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

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
