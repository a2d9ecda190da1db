//! `signpost-conform`: certifies a service proxy, cluster DNS and
//! EndpointSlice controller against Signpost's model, rule by rule.
//!
//! With no flags it certifies Signpost's own components on a local cluster;
//! `--proxy kube-proxy-nftables --dns coredns --endpoints kube-controller-manager`
//! certifies upstream the same way. `--mutation-score` instead runs every
//! mutant of Signpost's proxy and DNS and reports which rule caught each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use signpost_conformance::live::Live;
use signpost_conformance::report::Report;
use signpost_conformance::run::{Options, run_scenario};
use signpost_conformance::sut::{
    ClusterChoice, DnsChoice, EndpointsChoice, ProxyChoice, Sut, version_of,
};
use signpost_conformance::verdict::{Failure, Tally, judge};
use signpost_conformance::{catalogue, check, walk, world};
use signpost_model::mutant::Mutant;

#[derive(Parser)]
#[command(
    name = "signpost-conform",
    about = "Certify a service proxy, cluster DNS and EndpointSlice controller against Signpost's model"
)]
struct Args {
    /// signpost-nftables | signpost-ipvs | kube-proxy-nftables | kube-proxy-iptables | kube-proxy-ipvs | none | cmd:'TEMPLATE' ({kubeconfig}, {node})
    #[arg(long, default_value = "signpost-nftables")]
    proxy: String,
    /// signpost | coredns | none | addr:IP:PORT
    #[arg(long, default_value = "signpost")]
    dns: String,
    /// signpost | kube-controller-manager
    #[arg(long, default_value = "signpost")]
    endpoints: String,
    /// local | kubeconfig:PATH
    #[arg(long, default_value = "local")]
    cluster: String,
    /// Build a named fault into Signpost's proxy or DNS.
    #[arg(long)]
    mutant: Option<Mutant>,
    /// Run only these catalogue scenarios (repeatable; default: all).
    #[arg(long)]
    scenario: Vec<String>,
    /// Skip the catalogue.
    #[arg(long)]
    no_catalogue: bool,
    /// Skip the Gherkin features.
    #[arg(long)]
    no_features: bool,
    /// Random walks of the model to replay.
    #[arg(long, default_value_t = 2)]
    walks: u32,
    /// Most choices per walk.
    #[arg(long, default_value_t = 5)]
    steps: u8,
    /// Seed of the walks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay one walk (`K.I,K.I,...`, as printed for a failing walk) instead of random ones.
    #[arg(long)]
    walk: Option<String>,
    /// Seconds a step may take to converge.
    #[arg(long, default_value_t = 20)]
    deadline: u64,
    /// Where reports go.
    #[arg(long, default_value = "reports/conformance")]
    out: PathBuf,
    /// File name stem of the reports (default: from the system under test).
    #[arg(long)]
    name: Option<String>,
    /// Run every mutant and print the mutation score instead of certifying.
    #[arg(long)]
    mutation_score: bool,
    /// With --cluster kubeconfig: a link to move into the node namespace so
    /// the node reaches the API server, as LINK/ADDRESS/PREFIX (eth0/10.0.2.15/24).
    #[arg(long)]
    uplink: Option<signpost_harness::Uplink>,
    /// Print the report files to stdout for the kernel VM rig's host to collect.
    #[arg(long, hide = true)]
    emit_reports: bool,
    /// Only print the files of this log directory for the VM rig's host, then exit.
    #[arg(long, hide = true)]
    emit_logs: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    signpost_harness::netns::clean_up_on_signals("signpost-conform");
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("signpost-conform: {e}");
            std::process::exit(2);
        }
    }
}

fn sut(a: &Args) -> signpost_conformance::Result<Sut> {
    let mut cluster = a.cluster.parse::<ClusterChoice>()?;
    match (&mut cluster, &a.uplink) {
        (ClusterChoice::Kubeconfig { uplink, .. }, Some(u)) => *uplink = Some(u.clone()),
        // The scenarios start the rig's own Pods on node-a, which the
        // kubelet would claim: not yet on the real node (issue #15, item 4).
        (ClusterChoice::LocalKubelet, _) => {
            return Err(signpost_conformance::Error::Unsupported(
                "--cluster local-kubelet: the scenarios do not run on kubelet Pods yet (the node rig serves Live::run_container)".into(),
            ));
        }
        (ClusterChoice::Local, Some(_)) => {
            return Err(signpost_conformance::Error::Usage(
                "--uplink is for --cluster kubeconfig:PATH".into(),
            ));
        }
        _ => {}
    }
    Ok(Sut {
        proxy: a.proxy.parse::<ProxyChoice>()?,
        dns: a.dns.parse::<DnsChoice>()?,
        endpoints: a.endpoints.parse::<EndpointsChoice>()?,
        cluster,
        mutant: a.mutant,
    })
}

/// The flags the guest harness gets when the run moves into the kernel VM rig.
fn guest_args(a: &Args, stem: &str) -> Vec<String> {
    let mut g = Vec::new();
    for sc in &a.scenario {
        g.extend(["--scenario".to_owned(), sc.clone()]);
    }
    if a.no_catalogue {
        g.push("--no-catalogue".into());
    }
    if a.no_features {
        g.push("--no-features".into());
    }
    if let Some(w) = &a.walk {
        g.extend(["--walk".to_owned(), w.clone()]);
    }
    if a.mutation_score {
        g.push("--mutation-score".into());
    }
    g.extend([
        format!("--walks={}", a.walks),
        format!("--steps={}", a.steps),
        format!("--seed={}", a.seed),
        format!("--deadline={}", a.deadline),
        format!("--name={stem}"),
    ]);
    g
}

fn components(s: &Sut) -> BTreeMap<String, String> {
    let up = |n: &str| {
        signpost_harness::upstream::binary(n)
            .map(|b| version_of(&b, "--version"))
            .unwrap_or_else(|_| "missing".into())
    };
    let sp = || {
        signpost_harness::process::workspace_binary("signpost")
            .map(|b| version_of(&b, "--version"))
            .unwrap_or_else(|_| "missing".into())
    };
    let mut m = BTreeMap::new();
    m.insert(
        format!("proxy ({})", s.proxy),
        match s.proxy {
            ProxyChoice::SignpostNftables | ProxyChoice::SignpostIpvs => sp(),
            ProxyChoice::KubeProxyNftables
            | ProxyChoice::KubeProxyIptables
            | ProxyChoice::KubeProxyIpvs => up("kube-proxy"),
            _ => "-".into(),
        },
    );
    m.insert(
        format!("dns ({})", s.dns),
        match s.dns {
            DnsChoice::Signpost => sp(),
            DnsChoice::CoreDns => up("coredns").replace('\n', " "),
            _ => "-".into(),
        },
    );
    m.insert(
        format!("endpoints ({})", s.endpoints),
        match s.endpoints {
            EndpointsChoice::Signpost => sp(),
            EndpointsChoice::KubeControllerManager => up("kube-controller-manager"),
        },
    );
    m.insert("kube-apiserver".into(), up("kube-apiserver"));
    m
}

fn run(a: Args) -> signpost_conformance::Result<i32> {
    let started = Instant::now();
    if let Some(dir) = &a.emit_logs {
        signpost_conformance::vm::emit_dir(dir, signpost_conformance::vm::GUEST_LOG)?;
        return Ok(0);
    }
    let s = sut(&a)?;
    if s.needs_vm() {
        s.validate()?;
        let stem = a.name.clone().unwrap_or_else(|| default_stem(&s));
        let outcome = signpost_conformance::vm::certify(&s, &guest_args(&a, &stem), &a.out)?;
        let names: Vec<String> = outcome
            .written
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "reports: {} ({:.0}s in all)",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
            started.elapsed().as_secs_f64()
        );
        return Ok(outcome.code);
    }
    let opts = Options {
        deadline: Duration::from_secs(a.deadline),
        ..Options::default()
    };
    eprintln!(
        "signpost-conform: {} with {}",
        match s.cluster {
            ClusterChoice::Local => "starting a local cluster",
            ClusterChoice::LocalKubelet => "starting a local cluster with a kubelet node",
            ClusterChoice::Kubeconfig { .. } => "attaching a node to the cluster",
        },
        s.flags()
    );
    let mut live = Live::start(&s)?;
    eprintln!(
        "signpost-conform: cluster and components up in {:.1}s (logs: {})",
        started.elapsed().as_secs_f64(),
        live.logs().display()
    );
    if a.mutation_score {
        return mutation_score(&mut live, &opts);
    }
    let mut tally = Tally::default();
    let mut sources = BTreeMap::new();
    if let Some(w) = &a.walk {
        let choices = walk::parse(w)?;
        let m = walk::model(a.steps);
        let ok = walk::replay(&mut live, &m, &choices, &opts, &mut tally)?;
        eprintln!("walk {w}: {}", if ok { "pass" } else { "FAIL" });
        sources.insert("walks".into(), 1);
    } else {
        if !a.no_catalogue {
            let mut n = 0;
            for sc in catalogue::all() {
                if !a.scenario.is_empty() && !a.scenario.iter().any(|x| x == sc.name) {
                    continue;
                }
                run_scenario(&mut live, &sc, &opts, &mut tally)?;
                n += 1;
            }
            sources.insert("catalogue scenarios".into(), n);
        }
        if a.walks > 0 && a.scenario.is_empty() {
            let out = walk::run(&mut live, a.seed, a.walks, a.steps, &opts, &mut tally)?;
            sources.insert("model walks replayed".into(), out.replayed);
            if let Some(min) = &out.minimal {
                eprintln!(
                    "a model walk failed; shrunk to {} choices ({:?}); replay: signpost-conform {} --steps {} --walk {}",
                    min.len(),
                    out.minimal_actions,
                    s.flags(),
                    a.steps,
                    walk::spell(min)
                );
            }
        }
    }
    let stem = a.name.clone().unwrap_or_else(|| default_stem(&s));
    if !a.no_features && a.walk.is_none() && a.scenario.is_empty() {
        world::install(live);
        let results = world::run_features(&a.out.join(format!("{stem}.features.junit.xml")));
        let back = world::uninstall();
        let results = results?;
        sources.insert("feature scenarios".into(), results.len() as u64);
        for r in results {
            let ctx = Failure {
                scenario: format!("feature {}", r.name),
                trace: vec![],
                what: String::new(),
                evidence: String::new(),
                replay: format!("signpost-conform {} (features)", s.flags()),
            };
            let checks = vec![check::Check {
                rules: r
                    .rules
                    .iter()
                    .map(|x| &*Box::leak(x.clone().into_boxed_str()))
                    .collect(),
                what: r.name.clone(),
                ok: r.passed,
                evidence: "a step failed (see the features JUnit report)".into(),
            }];
            tally.record(&checks, None, &ctx);
        }
        let deviated = world::deviated_checks();
        if !deviated.is_empty() {
            let ctx = Failure {
                scenario: "features (settling)".into(),
                trace: vec![],
                what: String::new(),
                evidence: String::new(),
                replay: format!("signpost-conform {} (features)", s.flags()),
            };
            tally.record(&deviated, None, &ctx);
        }
        drop(back);
    } else {
        drop(live);
    }
    let verdicts = judge(&tally, &s.implementations());
    let command = format!("signpost-conform {}", s.flags());
    let report = Report::new(
        s.implementation(),
        components(&s),
        command,
        started.elapsed().as_secs_f64(),
        sources,
        verdicts,
    );
    print!("{}", report.table());
    report.write(&a.out, &stem)?;
    if a.emit_reports {
        signpost_conformance::vm::emit_dir(&a.out, "")?;
    }
    eprintln!(
        "reports: {0}/{stem}.json, {0}/{stem}.junit.xml, {0}/{stem}.html ({1:.0}s in all)",
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(if report.certified { 0 } else { 1 })
}

fn default_stem(s: &Sut) -> String {
    match s.implementation().as_str() {
        "signpost" => "signpost".into(),
        "kubernetes upstream" => "upstream".into(),
        _ => format!("{}-{}-{}", s.proxy, s.dns, s.endpoints).replace([':', '/', ' ', '\''], "_"),
    }
}

/// Every mutant of Signpost's proxy and DNS, each run through the catalogue
/// until the rule it breaks fails: caught, or missed.
fn mutation_score(live: &mut Live, opts: &Options) -> signpost_conformance::Result<i32> {
    let results = signpost_conformance::mutation::score(live, &Mutant::ALL, opts)?;
    let caught = results.iter().filter(|r| r.caught).count();
    println!(
        "mutation score: {caught}/{} mutants caught by the rule they break",
        results.len()
    );
    for r in &results {
        println!("  {r}");
    }
    Ok(if caught == results.len() { 0 } else { 1 })
}
