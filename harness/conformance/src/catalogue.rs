//! The hand-written catalogue: one scenario per behaviour upstream's e2e
//! tests check (affinity, reject without endpoints, unknown ports, same
//! port different protocols, terminating fallback, ITP=Local, NodePort,
//! ExternalName ↔ ClusterIP in DNS, headless per-endpoint names, SRV, PTR,
//! search-path resolution). Every scenario runs in a namespace of its own;
//! after each step every observer of `check` runs, so a scenario tests more
//! than the rules it is named after.

use crate::step::{Kind, PodSpec, Port, ServiceSpec, Step, Target};

/// A named list of steps.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name (also its namespace's name).
    pub name: &'static str,
    /// The rules it is written for.
    pub focus: &'static [&'static str],
    /// The steps.
    pub steps: Vec<Step>,
}

fn pod(app: &'static str, node: &'static str) -> PodSpec {
    PodSpec {
        app,
        node,
        ready: true,
        hostname: None,
    }
}

const A: &str = "node-a";
const B: &str = "node-b";

/// Every scenario of the catalogue.
pub fn all() -> Vec<Scenario> {
    let voy = ServiceSpec::selecting("voy");
    vec![
        Scenario {
            name: "lifecycle",
            focus: &["PXY-1", "PXY-2", "EPS-3", "EPS-4", "DNS-2", "RES-1"],
            steps: vec![
                Step::Pod("voyager-0", pod("voy", A)),
                Step::Pod("voyager-1", pod("voy", B)),
                Step::Service(
                    "voy",
                    ServiceSpec {
                        ports: vec![
                            Port::http(80),
                            Port {
                                name: "echo-udp",
                                port: 53,
                                protocol: "UDP",
                                target: Target::Number(8080),
                            },
                        ],
                        ..voy.clone()
                    },
                ),
                Step::Pod("voyager-2", pod("voy", A)),
                Step::SetReady("voyager-0", false),
                Step::Terminate("voyager-1"),
                Step::SetReady("voyager-2", false),
                Step::SetReady("voyager-0", true),
                Step::DeletePod("voyager-1"),
                Step::DeleteService("voy"),
            ],
        },
        Scenario {
            name: "no-endpoints",
            focus: &["PXY-3", "PXY-12", "DNS-5"],
            steps: vec![
                Step::Service("empty", ServiceSpec::selecting("nobody")),
                Step::Service(
                    "empty-headless",
                    ServiceSpec {
                        kind: Kind::Headless,
                        ..ServiceSpec::selecting("nobody")
                    },
                ),
            ],
        },
        Scenario {
            name: "affinity",
            focus: &["PXY-5"],
            steps: vec![
                Step::Pod("web-0", pod("web", A)),
                Step::Pod("web-1", pod("web", A)),
                Step::Pod("web-2", pod("web", B)),
                Step::Service(
                    "web",
                    ServiceSpec {
                        affinity: Some(60),
                        ..ServiceSpec::selecting("web")
                    },
                ),
                Step::Service("web", ServiceSpec::selecting("web")),
            ],
        },
        Scenario {
            name: "protocols",
            focus: &["PXY-6", "DNS-7", "DNS-8"],
            steps: vec![
                Step::Pod("dns-0", pod("dns", A)),
                Step::Pod("dns-1", pod("dns", B)),
                Step::Service(
                    "resolver",
                    ServiceSpec {
                        ports: vec![
                            Port {
                                name: "dns-tcp",
                                port: 53,
                                protocol: "TCP",
                                target: Target::Named("http"),
                            },
                            Port {
                                name: "dns",
                                port: 53,
                                protocol: "UDP",
                                target: Target::Named("alt-udp"),
                            },
                        ],
                        ..ServiceSpec::selecting("dns")
                    },
                ),
            ],
        },
        Scenario {
            name: "local-traffic",
            focus: &["PXY-4"],
            steps: vec![
                Step::Pod("near", pod("loc", A)),
                Step::Pod("far", pod("loc", B)),
                Step::Service(
                    "local",
                    ServiceSpec {
                        itp_local: true,
                        ..ServiceSpec::selecting("loc")
                    },
                ),
                Step::SetReady("near", false),
                Step::SetReady("near", true),
            ],
        },
        Scenario {
            name: "nodeport",
            focus: &["PXY-7", "REG-6"],
            steps: vec![
                Step::Pod("np-0", pod("np", A)),
                Step::Pod("np-1", pod("np", B)),
                Step::Service(
                    "np",
                    ServiceSpec {
                        kind: Kind::NodePort,
                        ..ServiceSpec::selecting("np")
                    },
                ),
                Step::Service("np", ServiceSpec::selecting("np")),
            ],
        },
        Scenario {
            name: "headless",
            focus: &["DNS-3", "DNS-4", "DNS-6", "DNS-7", "DNS-9", "EPS-7"],
            steps: vec![
                Step::Pod(
                    "db-0",
                    PodSpec {
                        hostname: Some(("db-0", "db")),
                        ..pod("db", A)
                    },
                ),
                Step::Pod(
                    "db-1",
                    PodSpec {
                        hostname: Some(("db-1", "db")),
                        ..pod("db", B)
                    },
                ),
                Step::Service(
                    "db",
                    ServiceSpec {
                        kind: Kind::Headless,
                        ports: vec![
                            Port::http(80),
                            Port {
                                name: "metrics",
                                port: 9090,
                                protocol: "TCP",
                                target: Target::Number(8080),
                            },
                        ],
                        ..ServiceSpec::selecting("db")
                    },
                ),
                Step::SetReady("db-1", false),
                Step::SetReady("db-0", false),
                Step::SetReady("db-0", true),
            ],
        },
        Scenario {
            name: "not-ready-published",
            focus: &["EPS-5", "DNS-4"],
            steps: vec![
                Step::Pod("peer-0", pod("peer", A)),
                Step::Pod(
                    "peer-1",
                    PodSpec {
                        ready: false,
                        ..pod("peer", B)
                    },
                ),
                Step::Service(
                    "peers",
                    ServiceSpec {
                        kind: Kind::Headless,
                        publish_not_ready: true,
                        ..ServiceSpec::selecting("peer")
                    },
                ),
            ],
        },
        Scenario {
            name: "external-name",
            focus: &["DNS-10", "REG-6"],
            steps: vec![
                Step::Pod("ext-0", pod("ext", A)),
                Step::Service(
                    "ext",
                    ServiceSpec {
                        kind: Kind::ExternalName("db.example.org"),
                        ..ServiceSpec::selecting("ext")
                    },
                ),
                Step::Service("ext", ServiceSpec::selecting("ext")),
                Step::Service(
                    "ext",
                    ServiceSpec {
                        kind: Kind::ExternalName("db.example.org"),
                        ..ServiceSpec::selecting("ext")
                    },
                ),
            ],
        },
        Scenario {
            name: "changes",
            focus: &["EPS-2", "PXY-1", "DNS-7"],
            steps: vec![
                Step::Pod("blue-0", pod("blue", A)),
                Step::Pod("green-0", pod("green", B)),
                Step::Service("app", ServiceSpec::selecting("blue")),
                Step::Service("app", ServiceSpec::selecting("green")),
                Step::Service(
                    "app",
                    ServiceSpec {
                        ports: vec![Port::http(81)],
                        ..ServiceSpec::selecting("green")
                    },
                ),
                Step::Service(
                    "app",
                    ServiceSpec {
                        selector: None,
                        ..ServiceSpec::selecting("green")
                    },
                ),
            ],
        },
        Scenario {
            name: "dual-stack",
            focus: &["EPS-8", "PXY-1", "DNS-2"],
            steps: vec![
                Step::Pod("ds-0", pod("ds", A)),
                Step::Pod("ds-1", pod("ds", B)),
                Step::Service(
                    "ds",
                    ServiceSpec {
                        dual_stack: true,
                        ..ServiceSpec::selecting("ds")
                    },
                ),
                Step::SetReady("ds-1", false),
            ],
        },
    ]
}
