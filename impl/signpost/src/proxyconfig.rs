//! `signpost proxy --config`: a KubeProxyConfiguration file
//! (`kubeproxy.config.k8s.io/v1alpha1`), as kubeadm writes it into the
//! `kube-proxy` ConfigMap. Fields Signpost implements replace the flags;
//! fields that do not apply to it (conntrack sysctls, profiling, QPS) are
//! noted; a field that would change what is programmed and that Signpost
//! does not implement is an error naming it. A field left at its zero value
//! (empty, null, false, `0s`) is never an error: kubeadm writes them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// What a KubeProxyConfiguration sets.
#[derive(Debug, Default, PartialEq)]
pub struct ProxyConfig {
    /// `mode`: `nftables` or `ipvs` (empty: the flag's).
    pub mode: Option<String>,
    /// `hostnameOverride`.
    pub hostname_override: Option<String>,
    /// `syncPeriod` (or the mode's `nftables.syncPeriod` / `ipvs.syncPeriod`).
    pub sync_period: Option<Duration>,
    /// `metricsBindAddress`.
    pub metrics_bind_address: Option<SocketAddr>,
    /// `healthzBindAddress`.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `masqueradeAll` (or the mode's `nftables.masqueradeAll` /
    /// `iptables.masqueradeAll`, which kube-proxy's ipvs mode reads).
    pub masquerade_all: bool,
    /// `clusterCIDR` (comma-separated CIDRs).
    pub cluster_cidr: Option<String>,
    /// `nodePortAddresses` (CIDRs and/or `primary`).
    pub node_port_addresses: Option<Vec<String>>,
    /// What was read but does not apply, one line each (logged).
    pub notes: Vec<String>,
}

/// Fields read but not applicable to Signpost, with why.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    ("bindAddress", "Signpost's proxy opens no proxy sockets"),
    (
        "bindAddressHardFail",
        "Signpost's proxy opens no proxy sockets",
    ),
    (
        "clientConnection.acceptContentTypes",
        "the client speaks JSON",
    ),
    ("clientConnection.contentType", "the client speaks JSON"),
    (
        "clientConnection.burst",
        "watches, not polling: no client rate limit",
    ),
    (
        "clientConnection.qps",
        "watches, not polling: no client rate limit",
    ),
    (
        "configSyncPeriod",
        "informers are not resynced; the data plane is (--sync-period)",
    ),
    (
        "conntrack",
        "Signpost does not tune conntrack sysctls; set them on the node",
    ),
    ("enableProfiling", "no pprof endpoint"),
    ("logging", "use --log-format and -v"),
    ("oomScoreAdj", "set by the Pod spec"),
    ("showHiddenMetricsForVersion", "no hidden metrics"),
    ("winkernel", "Linux only"),
    ("windowsRunAsService", "Linux only"),
    ("featureGates", "Signpost has no feature gates"),
    (
        "minSyncPeriod",
        "each batch of changes is applied at once as one transaction",
    ),
    (
        "nftables.minSyncPeriod",
        "each batch of changes is applied at once as one transaction",
    ),
    (
        "ipvs.minSyncPeriod",
        "each batch of changes is applied at once as one transaction",
    ),
    (
        "iptables",
        "the iptables mode is not implemented; its settings have no effect",
    ),
];

/// A zero value: what kubeadm writes for a field left unset.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0s",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

fn string(v: &Value, path: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{path}: expected a string, got {v}"))
}

fn duration(v: &Value, path: &str) -> Result<Duration, String> {
    signpost_runtime::duration::parse(&string(v, path)?).map_err(|e| format!("{path}: {e}"))
}

fn address(v: &Value, path: &str) -> Result<SocketAddr, String> {
    let s = string(v, path)?;
    s.parse()
        .map_err(|_| format!("{path}: {s:?} is not an ip:port (e.g. 0.0.0.0:10256)"))
}

/// Reads a KubeProxyConfiguration (YAML or JSON).
pub fn parse(text: &str) -> Result<ProxyConfig, String> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let Value::Object(top) = doc else {
        return Err("expected a KubeProxyConfiguration object".into());
    };
    match top.get("apiVersion").and_then(Value::as_str) {
        Some("kubeproxy.config.k8s.io/v1alpha1") => {}
        other => {
            return Err(format!(
                "apiVersion {other:?}: expected kubeproxy.config.k8s.io/v1alpha1"
            ));
        }
    }
    match top.get("kind").and_then(Value::as_str) {
        Some("KubeProxyConfiguration") => {}
        other => return Err(format!("kind {other:?}: expected KubeProxyConfiguration")),
    }
    let mut cfg = ProxyConfig::default();
    let mut mode_sync: Vec<(String, Duration)> = Vec::new();
    // Flatten to dotted paths one level into the nested objects.
    let mut fields: Vec<(String, &Value)> = Vec::new();
    for (k, v) in &top {
        match (k.as_str(), v) {
            ("apiVersion" | "kind", _) => {}
            (
                "clientConnection" | "ipvs" | "nftables" | "iptables" | "detectLocal",
                Value::Object(o),
            ) => {
                fields.extend(o.iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2)));
            }
            _ => fields.push((k.clone(), v)),
        }
    }
    for (path, v) in fields {
        if is_zero(v) {
            continue;
        }
        let known = |p: &str| path == p;
        if known("mode") {
            let m = string(v, &path)?;
            match m.as_str() {
                "nftables" | "ipvs" => cfg.mode = Some(m),
                other => {
                    return Err(format!(
                        "mode {other:?}: Signpost programs nftables or ipvs"
                    ));
                }
            }
        } else if known("hostnameOverride") {
            cfg.hostname_override = Some(string(v, &path)?);
        } else if known("syncPeriod") {
            cfg.sync_period = Some(duration(v, &path)?);
        } else if known("nftables.syncPeriod") || known("ipvs.syncPeriod") {
            mode_sync.push((path.clone(), duration(v, &path)?));
        } else if known("metricsBindAddress") {
            cfg.metrics_bind_address = Some(address(v, &path)?);
        } else if known("healthzBindAddress") {
            cfg.healthz_bind_address = Some(address(v, &path)?);
        } else if known("clientConnection.kubeconfig") {
            cfg.kubeconfig = Some(PathBuf::from(string(v, &path)?));
        } else if known("masqueradeAll")
            || known("nftables.masqueradeAll")
            || known("iptables.masqueradeAll")
        {
            // Zero values were skipped above: this is `true` or not a bool.
            if v.as_bool() != Some(true) {
                return Err(format!("{path}: expected true or false, got {v}"));
            }
            cfg.masquerade_all = true;
        } else if known("clusterCIDR") {
            cfg.cluster_cidr = Some(string(v, &path)?);
        } else if known("detectLocalMode") {
            let m = string(v, &path)?;
            if m != "ClusterCIDR" {
                return Err(format!(
                    "detectLocalMode {m:?}: Signpost tells local traffic by clusterCIDR only"
                ));
            }
        } else if known("nodePortAddresses") {
            let items = v
                .as_array()
                .ok_or_else(|| format!("{path}: expected a list, got {v}"))?;
            cfg.node_port_addresses = Some(
                items
                    .iter()
                    .map(|i| string(i, &path))
                    .collect::<Result<_, _>>()?,
            );
        } else if known("ipvs.scheduler") {
            let s = string(v, &path)?;
            if s != "rr" {
                return Err(format!(
                    "ipvs.scheduler {s:?}: Signpost's IPVS plane uses rr (round robin)"
                ));
            }
        } else if let Some((_, why)) = NOT_APPLICABLE
            .iter()
            .find(|(p, _)| path == *p || path.starts_with(&format!("{p}.")))
        {
            cfg.notes.push(format!("{path}: not applicable ({why})"));
        } else {
            return Err(format!(
                "{path}: not implemented by Signpost's proxy (remove it or leave it at its zero value)"
            ));
        }
    }
    // The mode's own sync period, as kube-proxy reads it, when the top one is unset.
    if cfg.sync_period.is_none() {
        let mode = cfg.mode.as_deref().unwrap_or("nftables");
        cfg.sync_period = mode_sync
            .iter()
            .find(|(p, _)| p.starts_with(mode))
            .map(|(_, d)| *d);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubeadm config print init-defaults --component-configs
    /// KubeProxyConfiguration` writes, in its field order, with the mode
    /// and addresses an operator sets.
    const KUBEADM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: ""
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeTimeout: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: nftables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 1s
  syncPeriod: 30s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    #[test]
    fn kubeadms_configuration_is_read() {
        let c = parse(KUBEADM).unwrap();
        assert_eq!(c.mode.as_deref(), Some("nftables"));
        assert_eq!(c.sync_period, Some(Duration::from_secs(30)));
        assert_eq!(
            c.metrics_bind_address,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(
            c.healthz_bind_address,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert!(
            c.notes.iter().any(|n| n.starts_with("bindAddress")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.starts_with("nftables.minSyncPeriod")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn masquerading_and_node_port_addresses_are_read() {
        let c = parse(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\ndetectLocalMode: ClusterCIDR\n\
             nodePortAddresses: [primary, 192.168.0.0/16]\n",
        )
        .unwrap();
        assert_eq!(
            c.cluster_cidr.as_deref(),
            Some("10.244.0.0/16,fd00:10:244::/56")
        );
        assert_eq!(
            c.node_port_addresses,
            Some(vec!["primary".to_owned(), "192.168.0.0/16".to_owned()])
        );
        assert!(!c.masquerade_all);
        for field in [
            "masqueradeAll",
            "nftables:\n  masqueradeAll",
            "iptables:\n  masqueradeAll",
        ] {
            let c = parse(&format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{field}: true\n"
            ))
            .unwrap();
            assert!(c.masquerade_all, "{field}");
        }
    }

    #[test]
    fn what_would_change_programming_and_is_not_implemented_is_an_error() {
        for (field, value) in [
            ("masqueradeAll", "yes please"),
            ("detectLocalMode", "InterfaceNamePrefix"),
            ("nodePortAddresses", "primary"),
            ("ipvs:\n  strictARP", "true"),
            ("mode", "iptables"),
            ("ipvs:\n  scheduler", "wrr"),
            ("syncPeriod", "fortnightly"),
        ] {
            let text = format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{field}: {value}\n"
            );
            let e = parse(&text).expect_err(field);
            let name = field.rsplit(' ').next().unwrap();
            assert!(
                e.contains(name) || e.contains(value.trim_matches('"')),
                "{field}: {e}"
            );
        }
        assert!(parse("apiVersion: v1\nkind: ConfigMap\n").is_err());
        assert!(parse(": : :").is_err());
    }
}
