//! Upstream's own sig-network e2e tests (`e2e.test`, built by
//! `ci/upstream-e2e`) against a stack on the rig's real node: a local
//! control plane with kube-scheduler and a conformant controller manager,
//! containerd and kubelet in the node namespace, the test images built from
//! this machine's files, and the stack's proxy, cluster DNS and
//! EndpointSlice controller. Each stack gets a fresh cluster; the results
//! of the stacks are compared test by test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signpost_harness::cluster::{LocalCluster, Running};
use signpost_harness::process::Daemon;
use signpost_harness::{ImageSpec, upstream};

use crate::sut::{self, ClusterChoice, DnsChoice, EndpointsChoice, ProxyChoice, Sut};
use crate::{Error, Result};

/// The tests the issue names: upstream's `[sig-network]` Services and DNS.
pub const DEFAULT_FOCUS: &str = r"\[sig-network\] (Services|DNS) ";

/// A set of components the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stack {
    /// kube-proxy (nftables), CoreDNS, kube-controller-manager's EndpointSlice controller.
    Upstream,
    /// Signpost's proxy (nftables), DNS and EndpointSlice controller.
    Signpost,
}

impl Stack {
    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Upstream => "upstream",
            Stack::Signpost => "signpost",
        }
    }

    /// The components, as the conformance harness chooses them.
    pub fn sut(self) -> Sut {
        let (proxy, dns, endpoints) = match self {
            Stack::Upstream => (
                ProxyChoice::KubeProxyNftables,
                DnsChoice::CoreDns,
                EndpointsChoice::KubeControllerManager,
            ),
            Stack::Signpost => (
                ProxyChoice::SignpostNftables,
                DnsChoice::Signpost,
                EndpointsChoice::Signpost,
            ),
        };
        Sut {
            proxy,
            dns,
            endpoints,
            cluster: ClusterChoice::LocalKubelet,
            mutant: None,
        }
    }
}

impl std::str::FromStr for Stack {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "upstream" => Ok(Stack::Upstream),
            "signpost" => Ok(Stack::Signpost),
            other => Err(Error::Usage(format!(
                "stack {other:?}: known are upstream, signpost"
            ))),
        }
    }
}

/// A test left out on purpose: a ginkgo skip pattern and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// A regular expression over the test's full name.
    pub pattern: String,
    /// Why this rig does not run it.
    pub reason: String,
}

/// Reads a skip list: one `PATTERN<TAB>REASON` per line, `#` comments.
/// A pattern without a reason is an error: every skip says why.
pub fn parse_skips(text: &str) -> Result<Vec<Skip>> {
    let mut skips = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('\t') {
            Some((pattern, reason)) if !pattern.is_empty() && !reason.trim().is_empty() => skips
                .push(Skip {
                    pattern: pattern.to_owned(),
                    reason: reason.trim().to_owned(),
                }),
            _ => {
                return Err(Error::Usage(format!(
                    "skip list line {}: expected PATTERN<TAB>REASON, got {line:?}",
                    n + 1
                )));
            }
        }
    }
    Ok(skips)
}

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Passed,
    /// Failed, with upstream's failure message.
    Failed(String),
    /// Skipped at run time by the test itself (e.g. it needs two nodes), with its message.
    Skipped(String),
}

impl Outcome {
    /// A one-word label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Outcome::Passed => "",
            Outcome::Failed(m) | Outcome::Skipped(m) => m,
        }
    }
}

/// The outcome of every test a run selected, by full name.
pub type Results = BTreeMap<String, (Outcome, f64)>;

/// Reads ginkgo's JSON report (`--ginkgo.json-report`): every spec that
/// ran or was skipped at run time. Specs the focus left out are not listed.
pub fn parse_report(json: &str) -> Result<Results> {
    let suites: Value = serde_json::from_str(json)
        .map_err(|e| Error::Observe(format!("ginkgo JSON report: {e}")))?;
    let mut out = Results::new();
    for suite in suites.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut parts: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            parts.extend(spec["LeafNodeText"].as_str());
            let name = parts.join(" ");
            let message = spec["Failure"]["Message"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_owned();
            let outcome = match spec["State"].as_str().unwrap_or("") {
                "passed" => Outcome::Passed,
                "skipped" if message.is_empty() => continue,
                "skipped" => Outcome::Skipped(message),
                "pending" => continue,
                state => Outcome::Failed(if message.is_empty() {
                    state.to_owned()
                } else {
                    message
                }),
            };
            let seconds = spec["RunTime"].as_f64().unwrap_or(0.0) / 1e9;
            out.insert(name, (outcome, seconds));
        }
    }
    Ok(out)
}

/// The images the selected tests run, under the names `e2e.test` asks
/// for, built from this machine's files: agnhost (the static build from
/// the pinned module) with busybox's applets and Debian's dig, curl,
/// netcat, wget, iproute2, socat, bash and getent, and the pinned CoreDNS
/// as `/coredns` (a DNS test runs its own name server from it), as
/// upstream's image carries them; busybox; glibc-dns-testing (dig and
/// glibc's getent); pause (agnhost's pause, which exits on SIGTERM).
///
/// Where a glibc is in the image, Debian's programs stand in for busybox's
/// applets that resolve names: static busybox loads the image's NSS
/// modules and crashes (seen: `wget` exiting 139 in every attempt).
pub fn images(agnhost: &Path, coredns: &Path) -> Result<Vec<ImageSpec>> {
    let hosts = "hosts: files dns\n";
    // bash is /bin/sh: Debian's static busybox runs its own applets ahead
    // of PATH, so under its sh `nc` would be busybox's, not netcat's.
    let tools = |image: ImageSpec| -> Result<ImageSpec> {
        Ok(image
            .busybox()?
            .text("/etc/nsswitch.conf", hosts)
            .program("/usr/bin/bash", "/usr/bin/bash")?
            .link("/bin/sh", "/usr/bin/bash")
            .program("/usr/bin/dig", "/usr/bin/dig")?
            .program("/usr/bin/getent", "/usr/bin/getent")?)
    };
    let agnhost_image = tools(ImageSpec::new(
        "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
    ))?
    .file(agnhost, "/agnhost")
    .link("/agnhost-2", "agnhost")
    .program("/usr/bin/curl", "/usr/bin/curl")?
    .program("/usr/bin/nc.openbsd", "/usr/bin/nc")?
    .program("/usr/bin/ip", "/usr/bin/ip")?
    .program("/usr/bin/ss", "/usr/bin/ss")?
    .program("/usr/bin/socat", "/usr/bin/socat")?
    .program("/usr/bin/wget", "/usr/bin/wget")?
    .program(&coredns.display().to_string(), "/coredns")?
    .entrypoint(&["/agnhost"])
    .cmd(&["pause"]);
    Ok(vec![
        agnhost_image,
        ImageSpec::new("registry.k8s.io/e2e-test-images/busybox:1.37.0-2")
            .busybox()?
            .text("/etc/nsswitch.conf", hosts)
            .cmd(&["sh"]),
        tools(ImageSpec::new(
            "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1",
        ))?
        .cmd(&["sh"]),
        ImageSpec::new("registry.k8s.io/pause:3.10.2")
            .file(agnhost, "/agnhost")
            .entrypoint(&["/agnhost", "pause"]),
    ])
}

/// What a run selects and where it writes.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Ginkgo focus.
    pub focus: String,
    /// Tests left out, each with its reason.
    pub skips: Vec<Skip>,
    /// Where each stack's files go (`<out>/<stack>/`).
    pub out: PathBuf,
    /// Ginkgo's time limit for the whole suite.
    pub timeout: Duration,
}

/// Starts a cluster with `stack`, runs the selected tests in its node
/// namespace, and reads the results. Writes the JUnit and JSON reports
/// and the run's log to `<out>/<stack>/`.
pub fn run_stack(stack: Stack, sel: &Selection) -> Result<Results> {
    let dir = sel.out.join(stack.name());
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
    let e2e_bin = upstream::e2e_binary("e2e.test")?;
    let kubectl = upstream::e2e_binary("kubectl")?;
    let agnhost = upstream::e2e_binary("agnhost")?;
    let started = Instant::now();
    let say = |what: &str| {
        eprintln!(
            "e2e[{}] {:>6.1}s {what}",
            stack.name(),
            started.elapsed().as_secs_f64()
        )
    };
    say("starting the cluster (control plane, containerd, kubelet)");
    let cluster = LocalCluster::new(&format!("e2e-{}", stack.name()))?
        .with_node()
        .with_full_control_plane(stack == Stack::Upstream)
        .start()?;
    let node = cluster
        .kubelet_node()
        .ok_or_else(|| Error::Unsupported("the cluster started without its node".into()))?;
    for image in images(&agnhost, &upstream::binary("coredns")?)? {
        say(&format!("importing {}", image.name()));
        node.import(&image)?;
    }
    let components = start_components(&cluster, &stack.sut())?;
    say("components running; DNS answers");
    let json_report = dir.join("report.json");
    let skip = sel
        .skips
        .iter()
        .map(|s| format!("({})", s.pattern))
        .collect::<Vec<_>>()
        .join("|");
    let mut args = vec![
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        format!("--kubectl-path={}", kubectl.display()),
        "--provider=skeleton".into(),
        format!("--report-dir={}", dir.display()),
        format!("--ginkgo.json-report={}", json_report.display()),
        format!("--ginkgo.focus={}", sel.focus),
        format!("--ginkgo.timeout={}s", sel.timeout.as_secs()),
        "--ginkgo.v".into(),
        "--ginkgo.no-color".into(),
        "--ginkgo.flake-attempts=1".into(),
        "--num-nodes=1".into(),
        "--node-os-distro=debian".into(),
        "--disable-log-dump".into(),
        format!("--e2e-output-dir={}", dir.join("output").display()),
    ];
    if !skip.is_empty() {
        args.push(format!("--ginkgo.skip={skip}"));
    }
    let log = dir.join("e2e.log");
    let _ = std::fs::remove_file(&json_report);
    say(&format!("running e2e.test (log: {})", log.display()));
    let mut run = Daemon::spawn(
        cluster.node_namespace(),
        "e2e.test",
        &e2e_bin,
        &args,
        log.clone(),
    )?;
    let mut seen = (0, 0, 0);
    let status = loop {
        if let Some(status) = run.wait_exit(Duration::from_secs(10)) {
            break status;
        }
        let now = progress(&std::fs::read_to_string(&log).unwrap_or_default());
        if now != seen {
            seen = now;
            say(&format!(
                "{} done: {} passed, {} failed, {} skipped",
                now.0 + now.1 + now.2,
                now.0,
                now.1,
                now.2
            ));
        }
    };
    // A component that died mid-run explains the failures after it.
    let mut components = components;
    for c in &mut components {
        if let Err(e) = c.check_running() {
            say(&format!(
                "a component of the stack exited during the run: {e}"
            ));
        }
    }
    drop(components);
    let report = std::fs::read_to_string(&json_report).map_err(|e| {
        Error::Observe(format!(
            "e2e.test exited ({status}) without its JSON report {}: {e}; see {}",
            json_report.display(),
            log.display()
        ))
    })?;
    let results = parse_report(&report)?;
    say(&format!(
        "e2e.test exited ({status}); {} tests reported",
        results.len()
    ));
    Ok(results)
}

/// Counts of specs the verbose log shows finished: passed, failed, skipped.
fn progress(log: &str) -> (usize, usize, usize) {
    let mut n = (0, 0, 0);
    for line in log.lines() {
        if line.starts_with("• [FAILED]")
            || line.starts_with("• [PANICKED]")
            || line.starts_with("• [TIMEDOUT]")
        {
            n.1 += 1;
        } else if line.starts_with("• [") {
            n.0 += 1;
        } else if line.starts_with("S [SKIPPED]") {
            n.2 += 1;
        }
    }
    n
}

/// The stack's proxy, DNS and EndpointSlice controller; dropped, they stop.
fn start_components(cluster: &LocalCluster<Running>, s: &Sut) -> Result<Vec<Daemon>> {
    let mut daemons = Vec::new();
    daemons.extend(sut::start_endpoints(cluster, s.endpoints)?);
    daemons.extend(sut::start_proxy(cluster, &s.proxy, None)?);
    daemons.extend(sut::start_dns(cluster, &s.dns, None)?);
    signpost_harness::dns::wait_ready(cluster, sut::DNS_ADDR, Duration::from_secs(60))?;
    Ok(daemons)
}

/// The full names of the tests `focus` selects, from a dry run of the suite.
pub fn selected(focus: &str, scratch: &Path) -> Result<Vec<String>> {
    let report = scratch.join("dry-run.json");
    let out = std::process::Command::new(upstream::e2e_binary("e2e.test")?)
        .arg("--ginkgo.dry-run")
        .arg(format!("--ginkgo.focus={focus}"))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .output()
        .map_err(|e| Error::Io(format!("running e2e.test --ginkgo.dry-run: {e}")))?;
    let text = std::fs::read_to_string(&report).map_err(|e| {
        Error::Observe(format!(
            "e2e.test --ginkgo.dry-run wrote no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    Ok(parse_report(&text)?.into_keys().collect())
}

/// The selected tests the skip list leaves out, each with its reason.
pub fn exclusions(selected: &[String], skips: &[Skip]) -> Result<Vec<(String, String)>> {
    let compiled = skips
        .iter()
        .map(|s| {
            regex::Regex::new(&s.pattern)
                .map(|r| (r, s.reason.clone()))
                .map_err(|e| Error::Usage(format!("skip pattern {:?}: {e}", s.pattern)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(selected
        .iter()
        .filter_map(|name| {
            compiled
                .iter()
                .find(|(r, _)| r.is_match(name))
                .map(|(_, reason)| (name.clone(), reason.clone()))
        })
        .collect())
}

/// Every selected test's outcome per stack, the excluded ones with their
/// reasons: Markdown (a table and the tally) and JSON.
pub fn compare(runs: &[(Stack, Results)], excluded: &[(String, String)]) -> (String, Value) {
    let mut names: Vec<&String> = runs.iter().flat_map(|(_, r)| r.keys()).collect();
    names.sort();
    names.dedup();
    let mut md = String::new();
    let _ = writeln!(md, "# Upstream sig-network e2e: {}\n", stacks_title(runs));
    let _ = writeln!(
        md,
        "| Stack | Passed | Failed | Skipped by the test | Excluded |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut tallies = serde_json::Map::new();
    for (stack, results) in runs {
        let count = |label: &str| results.values().filter(|(o, _)| o.label() == label).count();
        let (p, f, s) = (count("passed"), count("failed"), count("skipped"));
        let _ = writeln!(
            md,
            "| {} | {p} | {f} | {s} | {} |",
            stack.name(),
            excluded.len()
        );
        tallies.insert(
            stack.name().into(),
            json!({ "passed": p, "failed": f, "skipped": s, "excluded": excluded.len() }),
        );
    }
    let _ = write!(md, "\n| Test |");
    for (stack, _) in runs {
        let _ = write!(md, " {} |", stack.name());
    }
    let _ = write!(md, "\n|---|");
    for _ in runs {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let mut tests = Vec::new();
    for name in &names {
        let _ = write!(md, "| {} |", escape(name));
        let mut row = serde_json::Map::new();
        row.insert("test".into(), json!(name));
        for (stack, results) in runs {
            let cell = match results.get(*name) {
                Some((o, secs)) => {
                    row.insert(
                        stack.name().into(),
                        json!({ "outcome": o.label(), "seconds": secs, "detail": o.detail() }),
                    );
                    match o {
                        Outcome::Passed => format!("passed ({secs:.0} s)"),
                        Outcome::Failed(m) => format!("**failed**: {}", escape(first_line(m))),
                        Outcome::Skipped(m) => {
                            format!("skipped: {}", escape(first_line(m)))
                        }
                    }
                }
                None => "not run".into(),
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
        tests.push(Value::Object(row));
    }
    let _ = writeln!(md, "\n## Excluded, with reasons\n");
    let _ = writeln!(md, "| Test | Reason |\n|---|---|");
    let mut excluded_json = Vec::new();
    for (name, reason) in excluded {
        let _ = writeln!(md, "| {} | {} |", escape(name), escape(reason));
        excluded_json.push(json!({ "test": name, "reason": reason }));
    }
    let only: Vec<String> = names
        .iter()
        .filter(|n| {
            let get = |st: Stack| {
                runs.iter()
                    .find(|(s, _)| *s == st)
                    .and_then(|(_, r)| r.get(**n))
                    .map(|(o, _)| o.label())
            };
            get(Stack::Signpost) == Some("passed") && get(Stack::Upstream) == Some("failed")
        })
        .map(|n| n.to_string())
        .collect();
    let _ = writeln!(
        md,
        "\n## Passed by Signpost, failed by upstream\n\n{}",
        if only.is_empty() {
            "None.".to_owned()
        } else {
            only.iter()
                .map(|n| format!("- {n}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    );
    let value = json!({
        "tally": tallies,
        "tests": tests,
        "excluded": excluded_json,
        "signpost_passes_upstream_fails": only,
    });
    (md, value)
}

fn stacks_title(runs: &[(Stack, Results)]) -> String {
    runs.iter()
        .map(|(s, _)| s.name())
        .collect::<Vec<_>>()
        .join(" vs ")
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_without_a_reason_is_refused() {
        assert!(parse_skips("\\[Disruptive\\]\n").is_err());
        let skips = parse_skips("# why\n\\[Disruptive\\]\trestarts the node over SSH\n").unwrap();
        assert_eq!(skips.len(), 1);
        assert_eq!(skips[0].reason, "restarts the node over SSH");
    }

    #[test]
    fn the_report_gives_each_spec_its_full_name_and_outcome() {
        let report = r#"[{"SpecReports": [
          {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-network] Services"],
           "LeafNodeText": "should serve a basic endpoint from pods", "State": "passed", "RunTime": 12000000000},
          {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-network] DNS"],
           "LeafNodeText": "should provide DNS for services", "State": "failed",
           "Failure": {"Message": "timed out\nmore"}, "RunTime": 1},
          {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-network] Services"],
           "LeafNodeText": "should need two nodes", "State": "skipped",
           "Failure": {"Message": "Requires at least 2 nodes"}},
          {"LeafNodeType": "It", "ContainerHierarchyTexts": ["[sig-apps] X"],
           "LeafNodeText": "not focused", "State": "skipped"},
          {"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"}
        ]}]"#;
        let r = parse_report(report).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r["[sig-network] Services should serve a basic endpoint from pods"],
            (Outcome::Passed, 12.0)
        );
        assert_eq!(
            r["[sig-network] DNS should provide DNS for services"].0,
            Outcome::Failed("timed out\nmore".into())
        );
        assert_eq!(
            r["[sig-network] Services should need two nodes"].0.label(),
            "skipped"
        );
    }

    #[test]
    fn the_comparison_names_what_only_signpost_passes() {
        let name = "[sig-network] Services x".to_owned();
        let up: Results = [(name.clone(), (Outcome::Failed("boom".into()), 1.0))].into();
        let sp: Results = [(name.clone(), (Outcome::Passed, 1.0))].into();
        let skips = parse_skips("\\[Disruptive\\]\tneeds SSH\n").unwrap();
        let selected = vec![
            name.clone(),
            "[sig-network] Services y [Disruptive]".to_owned(),
        ];
        let excluded = exclusions(&selected, &skips).unwrap();
        assert_eq!(excluded.len(), 1);
        let (md, v) = compare(&[(Stack::Upstream, up), (Stack::Signpost, sp)], &excluded);
        assert_eq!(v["signpost_passes_upstream_fails"][0], json!(name));
        assert_eq!(v["excluded"][0]["reason"], "needs SSH");
        assert!(md.contains("| [sig-network] Services x | **failed**: boom | passed (1 s) |"));
    }
}
