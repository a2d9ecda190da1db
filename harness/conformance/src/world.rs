//! The Gherkin features' [`Cluster`] on a live system: one [`Live`] shared by
//! every scenario of a run (scenarios run one at a time), each scenario
//! starting from an empty `default` namespace. `settle` waits until every
//! observer of [`crate::check`] agrees with the oracle, so a feature step
//! passes only when the components have converged.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod as KPod, Service as KService};
use kube::api::{Api, DeleteParams, ListParams};
use signpost_features::{Cluster, Connect, EndpointView};
use signpost_model::cluster::ClusterIps;

use crate::check::observe;
use crate::live::{Live, Seen};
use crate::step::{PodSpec, ServiceSpec, Step};
use crate::{Error, Result};

const NS: &str = "default";

static SHARED: Mutex<Option<Live>> = Mutex::new(None);

/// Rules `spec/deviations.md` lists for the system under test: a check of
/// only such rules does not hold a feature step back (the feature is about
/// its own rules), and its failures are kept for the verdicts instead.
static DEVIATING: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Failed checks of deviating rules seen while settling, one per feature
/// step and check.
static DEVIATED: Mutex<Vec<crate::check::Check>> = Mutex::new(Vec::new());

/// Makes `live` the system every feature world of this process runs on, and
/// installs the `cluster` backend.
pub fn install(live: Live) {
    let imps = live.sut().implementations();
    *DEVIATING.lock().unwrap_or_else(|e| e.into_inner()) = crate::rules::deviations()
        .into_iter()
        .filter(|d| imps.contains(&d.implementation))
        .map(|d| d.rule)
        .collect();
    DEVIATED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    *SHARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(live);
    signpost_features::install_backend(("cluster", make));
}

/// The failed checks of listed deviations seen while the features settled
/// (see [`DEVIATING`]); taken, so a second call returns none.
pub fn deviated_checks() -> Vec<crate::check::Check> {
    std::mem::take(&mut *DEVIATED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Takes the live system back (statics are never dropped: whoever installs
/// must uninstall, or its processes and namespaces outlive the run).
pub fn uninstall() -> Option<Live> {
    SHARED.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn make() -> std::result::Result<Box<dyn Cluster>, String> {
    let w = LiveWorld { _private: () };
    w.reset().map_err(|e| e.to_string())?;
    Ok(Box::new(w))
}

/// One feature scenario's view of the live system.
#[derive(Debug)]
pub struct LiveWorld {
    _private: (),
}

impl LiveWorld {
    fn with<R>(&self, f: impl FnOnce(&mut Live) -> Result<R>) -> std::result::Result<R, String> {
        let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let live = guard.as_mut().ok_or("no live system installed")?;
        f(live).map_err(|e| e.to_string())
    }

    /// Empties `default` (every Service but `kubernetes`, every Pod) and waits
    /// until the API server shows it empty.
    fn reset(&self) -> Result<()> {
        let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let live = guard
            .as_mut()
            .ok_or_else(|| Error::Scenario("no live system installed".into()))?;
        live.forget_pods(NS);
        live.api().block_on(|c| async move {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            let svcs = Api::<KService>::namespaced(c.clone(), NS);
            for s in svcs.list(&ListParams::default()).await.map_err(api)?.items {
                let name = s.metadata.name.unwrap_or_default();
                if name != "kubernetes" {
                    svcs.delete(&name, &dp).await.map_err(api)?;
                }
            }
            let pods = Api::<KPod>::namespaced(c, NS);
            pods.delete_collection(&dp, &ListParams::default())
                .await
                .map_err(api)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !pods
                .list(&ListParams::default())
                .await
                .map_err(api)?
                .items
                .is_empty()
            {
                if Instant::now() > deadline {
                    return Err(Error::Api("Pods of default not gone after 30 s".into()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        })??;
        // The observers' client Pod (and `default` as a namespace of the run).
        live.namespace(NS)
    }
}

fn api(e: kube::Error) -> Error {
    Error::Api(e.to_string())
}

impl Cluster for LiveWorld {
    fn create_service(&mut self, name: &str, app: &str) -> std::result::Result<(), String> {
        let (name, app) = (leak(name), leak(app));
        self.with(|l| l.apply(NS, &Step::Service(name, ServiceSpec::selecting(app))))
    }

    fn delete_service(&mut self, name: &str) -> std::result::Result<(), String> {
        let name = leak(name);
        self.with(|l| l.apply(NS, &Step::DeleteService(name)))
    }

    fn start_pod(&mut self, name: &str, app: &str, node: &str) -> std::result::Result<(), String> {
        let spec = PodSpec {
            app: leak(app),
            node: leak(node),
            ready: true,
            hostname: None,
        };
        self.with(|l| l.start_pod(NS, name, &spec))
    }

    fn set_ready(&mut self, pod: &str, ready: bool) -> std::result::Result<(), String> {
        let pod = leak(pod);
        self.with(|l| l.apply(NS, &Step::SetReady(pod, ready)))
    }

    fn terminate(&mut self, pod: &str) -> std::result::Result<(), String> {
        let pod = leak(pod);
        self.with(|l| l.apply(NS, &Step::Terminate(pod)))
    }

    fn delete_pod(&mut self, pod: &str) -> std::result::Result<(), String> {
        let pod = leak(pod);
        self.with(|l| l.apply(NS, &Step::DeletePod(pod)))
    }

    fn settle(&mut self) -> std::result::Result<(), String> {
        self.with(|l| {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                l.check_components()?;
                let snap = l.snapshot()?;
                let checks = observe(l, NS, &snap, &Default::default());
                let deviating = DEVIATING.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (known, bad): (Vec<_>, Vec<_>) = checks
                    .iter()
                    .filter(|c| !c.ok)
                    .partition(|c| c.rules.iter().all(|r| deviating.contains(*r)));
                if bad.is_empty() {
                    DEVIATED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(known.into_iter().cloned());
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(Error::Scenario(format!(
                        "not settled after 30 s: {} of {} checks fail, first: {}: {}",
                        bad.len(),
                        checks.len(),
                        bad[0].what,
                        bad[0].evidence
                    )));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    }

    fn cluster_ip(&self, service: &str) -> Option<IpAddr> {
        let snap = self.with(|l| l.snapshot()).ok()?;
        let svc = snap
            .services
            .iter()
            .find(|s| s.key.namespace == NS && s.key.name == service)?;
        match &svc.cluster_ips {
            ClusterIps::Ips(ips) => ips.first().copied(),
            _ => None,
        }
    }

    fn resolve(&mut self, pod: &str, name: &str) -> std::result::Result<Vec<IpAddr>, String> {
        let ips = self.with(|l| l.getent_from(NS, pod, name))?;
        if ips.is_empty() {
            Err(format!("{name} does not resolve in {pod}"))
        } else {
            Ok(ips)
        }
    }

    fn connect(
        &mut self,
        pod: &str,
        ip: IpAddr,
        port: u16,
    ) -> std::result::Result<Connect, String> {
        let seen = self.with(|l| l.connect_from(NS, pod, SocketAddr::new(ip, port), false, 20))?;
        let pods: BTreeSet<String> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Pod(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        Ok(if seen.iter().all(|s| matches!(s, Seen::Pod(_))) {
            Connect::Reached(pods)
        } else if seen.iter().all(|s| *s == Seen::Refused) {
            Connect::Refused
        } else if pods.is_empty() {
            Connect::NoRoute
        } else {
            let odd: Vec<&Seen> = seen.iter().filter(|s| !matches!(s, Seen::Pod(_))).collect();
            return Err(format!(
                "mixed outcomes: {} of {} reached {pods:?}, the others: {odd:?}",
                seen.len() - odd.len(),
                seen.len()
            ));
        })
    }

    fn endpoints(&self, service: &str) -> BTreeSet<EndpointView> {
        let Ok(snap) = self.with(|l| l.snapshot()) else {
            return BTreeSet::new();
        };
        snap.slices
            .iter()
            .filter(|s| s.key.namespace == NS && s.service == service)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.address.is_ipv4())
            .map(|e| EndpointView {
                pod: e.pod.clone().unwrap_or_default(),
                ready: e.ready,
                terminating: e.terminating,
            })
            .collect()
    }
}

/// Feature steps name objects at run time; the step vocabulary holds
/// `&'static str`. A feature run names a few dozen objects, so leaking them
/// costs nothing worth a second vocabulary.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// One feature scenario's outcome.
#[derive(Debug, Clone)]
pub struct FeatureResult {
    /// `Feature: Scenario`.
    pub name: String,
    /// The rule IDs its name cites.
    pub rules: Vec<String>,
    /// Whether every step passed.
    pub passed: bool,
}

static RESULTS: Mutex<Vec<FeatureResult>> = Mutex::new(Vec::new());

/// The Gherkin features shipped with Signpost (`$SIGNPOST_FEATURES_DIR`,
/// else the source tree's `features/`).
pub fn features_dir() -> std::path::PathBuf {
    match std::env::var_os("SIGNPOST_FEATURES_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../features"),
    }
}

/// Runs every feature on the installed live system, one scenario at a time,
/// writing cucumber's JUnit report to `junit`.
pub fn run_features(junit: &std::path::Path) -> Result<Vec<FeatureResult>> {
    use cucumber::World as _;
    use futures::FutureExt as _;
    if let Some(dir) = junit.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    }
    let file =
        std::fs::File::create(junit).map_err(|e| Error::Io(format!("{}: {e}", junit.display())))?;
    RESULTS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    futures::executor::block_on(
        signpost_features::SignpostWorld::cucumber()
            .max_concurrent_scenarios(1)
            .fail_on_skipped()
            .with_writer(cucumber::writer::JUnit::new(file, 0))
            .after(|feature, _, scenario, ev, _| {
                let passed = matches!(ev, cucumber::event::ScenarioFinished::StepPassed);
                let name = format!("{}: {}", feature.name, scenario.name);
                let rules = scenario
                    .name
                    .split_whitespace()
                    .chain(feature.name.split_whitespace().take(1))
                    .filter(|w| {
                        w.split_once('-').is_some_and(|(a, b)| {
                            !a.is_empty()
                                && a.chars().all(|c| c.is_ascii_uppercase())
                                && !b.is_empty()
                                && b.chars().all(|c| c.is_ascii_digit())
                        })
                    })
                    .map(str::to_owned)
                    .collect();
                let why = match ev {
                    cucumber::event::ScenarioFinished::StepPassed => String::new(),
                    cucumber::event::ScenarioFinished::StepSkipped => ": a step was skipped".into(),
                    cucumber::event::ScenarioFinished::BeforeHookFailed(_) => {
                        ": the world could not start".into()
                    }
                    cucumber::event::ScenarioFinished::StepFailed(_, _, e) => format!(": {e}"),
                };
                eprintln!(
                    "  feature {name}: {}{why}",
                    if passed { "pass" } else { "FAIL" }
                );
                RESULTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(FeatureResult {
                        name,
                        rules,
                        passed,
                    });
                async {}.boxed_local()
            })
            // Not our command line: cucumber would parse (and reject) the harness's flags.
            .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default())
            .run(features_dir()),
    );
    let results = RESULTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if results.is_empty() {
        // Never a silent pass: no scenario ran means the features were not found.
        return Err(Error::Scenario(format!(
            "no feature scenario ran from {}",
            features_dir().display()
        )));
    }
    Ok(results)
}
