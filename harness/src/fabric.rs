//! The pod fabric: `cluster.pod("voyager-0").label("app", "voy").start()`
//! makes a Pod that is real on both sides — a network namespace on the node's
//! bridge running our echo server, and a Pod object whose status (IP,
//! readiness, termination) the rig sets, since no kubelet runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::cluster::{
    ApiHandle, BRIDGE, LocalCluster, NODE_IP, NODE_NAME, POD_GATEWAY, POD_GATEWAY_V6, Running,
};
use crate::netns::{NetNs, unique};
use crate::process::Daemon;
use crate::{Error, Result};

/// A container port of a test Pod.
#[derive(Debug, Clone)]
struct PortSpec {
    name: String,
    port: u16,
    protocol: &'static str,
}

/// Builds a Pod.
#[derive(Debug)]
pub struct PodBuilder<'c> {
    cluster: &'c LocalCluster<Running>,
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    node: String,
    ready: bool,
    ports: Vec<PortSpec>,
    peer_ports: Vec<u16>,
    hostname: Option<String>,
    subdomain: Option<String>,
}

impl LocalCluster<Running> {
    /// A Pod named `name` in namespace `default` on the rig's node, ready,
    /// serving TCP and UDP port 8080 named `http`, unless told otherwise.
    pub fn pod(&self, name: &str) -> PodBuilder<'_> {
        PodBuilder {
            cluster: self,
            name: name.to_owned(),
            namespace: "default".into(),
            labels: BTreeMap::new(),
            node: NODE_NAME.into(),
            ready: true,
            ports: Vec::new(),
            peer_ports: Vec::new(),
            hostname: None,
            subdomain: None,
        }
    }
}

impl<'c> PodBuilder<'c> {
    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// Adds labels.
    pub fn labels<'a>(mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.labels
            .extend(pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        self
    }
    /// The namespace.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }
    /// The node name written into the Pod.
    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }
    /// The Ready condition at start.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }
    /// A TCP and UDP port (named) served by the echo server.
    pub fn port(mut self, name: &str, port: u16) -> Self {
        self.ports.push(PortSpec {
            name: name.into(),
            port,
            protocol: "TCP",
        });
        self.ports.push(PortSpec {
            name: format!("{name}-udp").chars().take(15).collect(),
            port,
            protocol: "UDP",
        });
        self
    }
    /// One named port of one protocol (`"TCP"` or `"UDP"`) only.
    pub fn port_of(mut self, name: &str, port: u16, protocol: &'static str) -> Self {
        self.ports.push(PortSpec {
            name: name.into(),
            port,
            protocol,
        });
        self
    }
    /// A TCP port whose reply also names the connection's source address
    /// (`<pod> <address>`: was it masqueraded?). Not in the Pod's spec: a
    /// Service reaches it by number.
    pub fn peer_port(mut self, port: u16) -> Self {
        self.peer_ports.push(port);
        self
    }
    /// `spec.hostname` and `spec.subdomain`.
    pub fn hostname(mut self, hostname: &str, subdomain: &str) -> Self {
        self.hostname = Some(hostname.into());
        self.subdomain = Some(subdomain.into());
        self
    }

    /// Creates the namespace, the veth into the node's bridge, the echo
    /// server, and the Pod object with its status.
    pub fn start(mut self) -> Result<PodHandle> {
        if self.ports.is_empty() {
            self = self.port("http", 8080);
        }
        let cluster = self.cluster;
        let (ip, ip6) = cluster.next_pod_ip();
        let ns = NetNs::create(unique("spp"))?;
        let host_if = unique("spv");
        let node_ns = cluster.node_namespace();
        node_ns.ip([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node_ns.ip(["link", "set", &host_if, "master", BRIDGE, "up"])?;
        // Hairpin: a Pod may reach itself through a Service.
        node_ns.ip([
            "link",
            "set",
            &host_if,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        ns.ip(["addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
        ns.ip([
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(["link", "set", "eth0", "up"])?;
        ns.ip(["route", "add", "default", "via", &POD_GATEWAY.to_string()])?;
        ns.ip([
            "-6",
            "route",
            "add",
            "default",
            "via",
            &POD_GATEWAY_V6.to_string(),
        ])?;

        let echo_bin = cluster.echo_binary()?;
        let mut args = vec!["--name".to_owned(), self.name.clone()];
        for p in &self.ports {
            args.push(if p.protocol == "TCP" {
                "--tcp".into()
            } else {
                "--udp".into()
            });
            args.push(p.port.to_string());
        }
        for p in &self.peer_ports {
            args.push("--tcp-peer".into());
            args.push(p.to_string());
        }
        let log = cluster
            .workdir()
            .logs()
            .join(format!("pod-{}.log", self.name));
        let echo = Daemon::spawn(
            &ns,
            &format!("echo server of {}", self.name),
            &echo_bin,
            &args,
            log.clone(),
        )?;
        let mut pod = PodHandle {
            echo,
            ns,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            ip,
            ip6,
            api: cluster.api(),
        };
        pod.wait_listening(&log)?;
        self.create_object(ip, ip6)?;
        pod.set_ready(self.ready)?;
        Ok(pod)
    }

    fn create_object(&self, ip: Ipv4Addr, ip6: std::net::Ipv6Addr) -> Result<()> {
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|p| serde_json::json!({ "name": p.name, "containerPort": p.port, "protocol": p.protocol }))
            .collect();
        let mut spec = serde_json::json!({
            "nodeName": self.node,
            "containers": [{ "name": "echo", "image": "signpost.invalid/echo", "ports": ports }],
        });
        if let (Some(h), Some(s)) = (&self.hostname, &self.subdomain) {
            spec["hostname"] = h.clone().into();
            spec["subdomain"] = s.clone().into();
        }
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": self.name, "namespace": self.namespace, "labels": self.labels },
            "spec": spec,
        }))
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let status = serde_json::json!({ "status": {
            "phase": "Running",
            "hostIP": NODE_IP.to_string(),
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }, { "ip": ip6.to_string() }],
        }});
        let (name, namespace) = (self.name.clone(), self.namespace.clone());
        self.cluster.block_on(|client| async move {
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            pods.create(&PostParams::default(), &pod).await?;
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            Ok::<_, Error>(())
        })?
    }
}

/// A running test Pod. Dropping it stops its echo server and removes its
/// namespace (and with it the veth); the Pod object is left to the cluster.
#[derive(Debug)]
pub struct PodHandle {
    echo: Daemon,
    ns: NetNs,
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    ip6: std::net::Ipv6Addr,
    api: ApiHandle,
}

impl PodHandle {
    fn wait_listening(&mut self, log: &std::path::Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.echo.check_running()?;
            if std::fs::read_to_string(log).is_ok_and(|s| s.contains("listening")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("echo server of {}", self.name),
                    secs: 10,
                    logs: log.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The Pod's IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// The Pod's IPv6 address.
    pub fn ip6(&self) -> std::net::Ipv6Addr {
        self.ip6
    }
    /// The echo server's process id.
    pub fn echo_pid(&self) -> u32 {
        self.echo.pid()
    }
    /// The Pod's network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Sets the Ready condition through the status subresource.
    pub fn set_ready(&self, ready: bool) -> Result<()> {
        let value = if ready { "True" } else { "False" };
        let status = serde_json::json!({ "status": { "conditions": [
            { "type": "PodScheduled", "status": "True" },
            { "type": "ContainersReady", "status": value },
            { "type": "Ready", "status": value },
        ]}});
        let (name, namespace) = (self.name.clone(), self.namespace.clone());
        self.api.block_on(|client| async move {
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            Ok::<_, Error>(())
        })?
    }

    /// Starts graceful deletion: with no kubelet to finish it, the Pod stays
    /// with a deletionTimestamp (terminating) until [`PodHandle::delete`].
    pub fn terminate(&self) -> Result<()> {
        self.delete_with(Some(3600))
    }

    /// Deletes the Pod object at once.
    pub fn delete(&self) -> Result<()> {
        self.delete_with(Some(0))
    }

    fn delete_with(&self, grace: Option<u32>) -> Result<()> {
        let (name, namespace) = (self.name.clone(), self.namespace.clone());
        self.api.block_on(|client| async move {
            let pods: Api<Pod> = Api::namespaced(client, &namespace);
            let dp = DeleteParams {
                grace_period_seconds: grace,
                ..DeleteParams::default()
            };
            pods.delete(&name, &dp).await?;
            Ok::<_, Error>(())
        })?
    }

    /// Opens a TCP connection from this Pod to `to` and returns the first line
    /// the server sends (an echo server's Pod name).
    pub fn tcp_request(&self, to: SocketAddr, timeout: Duration) -> Result<String> {
        self.ns.within(move || -> Result<String> {
            let mut s = TcpStream::connect_timeout(&to, timeout)
                .map_err(Error::io(format!("TCP connect to {to}")))?;
            s.set_read_timeout(Some(timeout))
                .map_err(Error::io("setting a timeout"))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)
                .map_err(Error::io(format!("TCP read from {to}")))?;
            Ok(buf.trim().to_owned())
        })?
    }

    /// Sends one UDP datagram from this Pod to `to` and returns the reply.
    pub fn udp_request(&self, to: SocketAddr, timeout: Duration) -> Result<String> {
        self.udp_request_from(0, to, timeout)
    }

    /// As `udp_request`, from a chosen source port (0: any), so successive
    /// calls with one port are one flow to the connection tracker.
    pub fn udp_request_from(&self, port: u16, to: SocketAddr, timeout: Duration) -> Result<String> {
        self.ns.within(move || -> Result<String> {
            let bind: SocketAddr = if to.is_ipv4() {
                SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port)
            } else {
                SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port)
            };
            let s = UdpSocket::bind(bind).map_err(Error::io("binding a UDP socket"))?;
            s.set_read_timeout(Some(timeout))
                .map_err(Error::io("setting a timeout"))?;
            s.send_to(b"hello\n", to)
                .map_err(Error::io(format!("UDP send to {to}")))?;
            let mut buf = [0u8; 512];
            let (n, _) = s
                .recv_from(&mut buf)
                .map_err(Error::io(format!("UDP receive from {to}")))?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
        })?
    }
}
