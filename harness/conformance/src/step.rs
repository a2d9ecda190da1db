//! The one step vocabulary every scenario source speaks: the model's user
//! actions (Service create/delete, Pod create/ready/unready/terminating/
//! delete), extended with what Services can be — ports and protocols,
//! types, selectors, affinity, internalTrafficPolicy, publishNotReadyAddresses,
//! headless names, dual-stack.

use std::fmt;

use serde_json::{Value, json};

/// How a Service port reaches its Pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A container port number.
    Number(u16),
    /// A container port name.
    Named(&'static str),
}

/// One Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Its name.
    pub name: &'static str,
    /// The port on the ClusterIP.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// Where it goes.
    pub target: Target,
}

impl Port {
    /// A TCP port to the Pods' named port `http` (TCP 8080).
    pub fn http(port: u16) -> Self {
        Port {
            name: "http",
            port,
            protocol: "TCP",
            target: Target::Named("http"),
        }
    }
}

/// The type of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `ClusterIP`.
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `clusterIP: None`.
    Headless,
    /// `ExternalName` with this name.
    ExternalName(&'static str),
}

/// What a Service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `app=<selector>`, or no selector.
    pub selector: Option<&'static str>,
    /// The type.
    pub kind: Kind,
    /// The ports.
    pub ports: Vec<Port>,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub itp_local: bool,
    /// `publishNotReadyAddresses`.
    pub publish_not_ready: bool,
    /// `ipFamilyPolicy: PreferDualStack`.
    pub dual_stack: bool,
}

impl ServiceSpec {
    /// A single-stack ClusterIP Service selecting `app=<app>`, port 80 → `http`.
    pub fn selecting(app: &'static str) -> Self {
        ServiceSpec {
            selector: Some(app),
            kind: Kind::ClusterIp,
            ports: vec![Port::http(80)],
            affinity: None,
            itp_local: false,
            publish_not_ready: false,
            dual_stack: false,
        }
    }

    /// The Service object's `spec`.
    pub fn to_json(&self) -> Value {
        let mut spec = json!({});
        if let Some(app) = self.selector {
            spec["selector"] = json!({ "app": app });
        }
        match &self.kind {
            Kind::ClusterIp => spec["type"] = json!("ClusterIP"),
            Kind::NodePort => spec["type"] = json!("NodePort"),
            Kind::Headless => {
                spec["type"] = json!("ClusterIP");
                spec["clusterIP"] = json!("None");
            }
            Kind::ExternalName(n) => {
                spec["type"] = json!("ExternalName");
                spec["externalName"] = json!(n);
            }
        }
        if !matches!(self.kind, Kind::ExternalName(_)) {
            spec["ports"] = self
                .ports
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "port": p.port,
                        "protocol": p.protocol,
                        "targetPort": match p.target {
                            Target::Number(n) => json!(n),
                            Target::Named(n) => json!(n),
                        },
                    })
                })
                .collect();
            if self.dual_stack {
                spec["ipFamilyPolicy"] = json!("PreferDualStack");
            }
            if let Some(t) = self.affinity {
                spec["sessionAffinity"] = json!("ClientIP");
                spec["sessionAffinityConfig"] = json!({ "clientIP": { "timeoutSeconds": t } });
            }
            if self.itp_local {
                spec["internalTrafficPolicy"] = json!("Local");
            }
        }
        if self.publish_not_ready {
            spec["publishNotReadyAddresses"] = json!(true);
        }
        spec
    }
}

/// A Pod as scenarios create it: the rig's echo server serving TCP 8080
/// (`http`), UDP 8080 (`http-udp`) and UDP 8081 (`alt-udp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// `app=<app>`.
    pub app: &'static str,
    /// `spec.nodeName` (`node-a` is the proxy's node).
    pub node: &'static str,
    /// Ready at start.
    pub ready: bool,
    /// `spec.hostname` and `spec.subdomain`.
    pub hostname: Option<(&'static str, &'static str)>,
}

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create or replace a Service.
    Service(&'static str, ServiceSpec),
    /// Delete a Service.
    DeleteService(&'static str),
    /// Start a Pod.
    Pod(&'static str, PodSpec),
    /// Set a Pod's Ready condition.
    SetReady(&'static str, bool),
    /// Give a Pod a deletionTimestamp (it keeps running).
    Terminate(&'static str),
    /// Delete a Pod object (its process keeps running, as a slow kubelet's would).
    DeletePod(&'static str),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Service(n, s) => {
                let kind = match &s.kind {
                    Kind::ClusterIp => "ClusterIP".to_owned(),
                    Kind::NodePort => "NodePort".to_owned(),
                    Kind::Headless => "headless".to_owned(),
                    Kind::ExternalName(e) => format!("ExternalName {e}"),
                };
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol))
                    .collect();
                write!(f, "apply Service {n} ({kind}")?;
                if let Some(a) = s.selector {
                    write!(f, ", app={a}")?;
                }
                if !ports.is_empty() && !matches!(s.kind, Kind::ExternalName(_)) {
                    write!(f, ", ports {}", ports.join(" "))?;
                }
                if let Some(t) = s.affinity {
                    write!(f, ", ClientIP affinity {t}s")?;
                }
                if s.itp_local {
                    write!(f, ", internalTrafficPolicy Local")?;
                }
                if s.publish_not_ready {
                    write!(f, ", publishNotReadyAddresses")?;
                }
                if s.dual_stack {
                    write!(f, ", dual-stack")?;
                }
                write!(f, ")")
            }
            Step::DeleteService(n) => write!(f, "delete Service {n}"),
            Step::Pod(n, p) => {
                write!(
                    f,
                    "start {} Pod {n} app={} on {}",
                    if p.ready { "ready" } else { "unready" },
                    p.app,
                    p.node
                )?;
                if let Some((h, s)) = p.hostname {
                    write!(f, " hostname {h}.{s}")?;
                }
                Ok(())
            }
            Step::SetReady(n, r) => write!(f, "Pod {n} {}", if *r { "ready" } else { "unready" }),
            Step::Terminate(n) => write!(f, "Pod {n} terminating"),
            Step::DeletePod(n) => write!(f, "delete Pod {n}"),
        }
    }
}
