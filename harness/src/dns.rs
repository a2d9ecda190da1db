//! Cluster DNS servers under test and a small DNS client for comparing them.
//!
//! [`start_signpost`] runs `signpost dns` and [`start_coredns`] runs the
//! pinned CoreDNS with a kubeadm-style Corefile (kubernetes plugin,
//! `pods insecure`, `ttl 30`), both in the node namespace against the local
//! API server. [`query`] asks one question over UDP or TCP from inside the
//! node namespace and returns the answer as a set, TTLs dropped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::cluster::{LocalCluster, Running};
use crate::process::{Daemon, workspace_binary};
use crate::upstream;
use crate::{Error, Result};

/// One answer: response code, answer-section records as
/// `(owner, type, rdata)` lower-case text, and whether it was truncated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Answer {
    /// The response code (`NoError`, `NXDomain`, ...).
    pub rcode: String,
    /// The answer section as a set, TTLs dropped.
    pub records: BTreeSet<(String, String, String)>,
    /// The TC bit.
    pub truncated: bool,
    /// Whether the authority section holds an SOA.
    pub soa_in_authority: bool,
}

/// Encodes a one-question query with EDNS (payload `edns`, if any).
pub fn encode_query(id: u16, name: &str, rtype: RecordType, edns: Option<u16>) -> Result<Vec<u8>> {
    let name = Name::from_ascii(name).map_err(|e| Error::Dns(format!("bad name {name}: {e}")))?;
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    let mut q = Query::query(name, rtype);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        msg.set_edns(e);
    }
    msg.to_vec()
        .map_err(|e| Error::Dns(format!("encoding a query: {e}")))
}

/// Decodes a reply into an [`Answer`].
pub fn decode_answer(bytes: &[u8]) -> Result<Answer> {
    let msg =
        Message::from_vec(bytes).map_err(|e| Error::Dns(format!("reply does not parse: {e}")))?;
    Ok(Answer {
        rcode: format!("{:?}", msg.metadata.response_code),
        records: msg
            .answers
            .iter()
            .map(|r| {
                let data = match &r.data {
                    // Serials and timers are each server's own: compare the names only.
                    RData::SOA(soa) => format!("{} {}", soa.mname, soa.rname),
                    d => d.to_string(),
                };
                (
                    r.name.to_ascii().to_ascii_lowercase(),
                    r.record_type().to_string(),
                    data.to_ascii_lowercase(),
                )
            })
            .collect(),
        truncated: msg.metadata.truncation,
        soa_in_authority: msg
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
    })
}

/// Sends raw bytes to `server` over UDP and returns the reply (in the calling namespace).
pub fn exchange_udp(server: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(server)?;
    s.send(msg)?;
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Sends raw bytes to `server` over TCP (length-prefixed) and returns the reply.
pub fn exchange_tcp(server: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("too long"))?;
    s.write_all(&len.to_be_bytes())?;
    s.write_all(msg)?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Asks `server` one question from inside the cluster's node namespace.
pub fn query(
    cluster: &LocalCluster<Running>,
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    tcp: bool,
) -> Result<Answer> {
    let msg = encode_query(0x5151, name, rtype, Some(1232))?;
    let reply = cluster
        .node_namespace()
        .within(move || {
            let t = Duration::from_secs(3);
            if tcp {
                exchange_tcp(server, &msg, t)
            } else {
                exchange_udp(server, &msg, t)
            }
        })?
        .map_err(|e| Error::Dns(format!("asking {server} for {name} {rtype}: {e}")))?;
    decode_answer(&reply)
}

/// Runs `signpost dns` in the node namespace, serving `listen`, metrics on
/// `127.0.0.1:<metrics_port>`, with extra flags, authenticated as its
/// ServiceAccount with deploy/'s RBAC.
pub fn start_signpost(
    cluster: &LocalCluster<Running>,
    name: &str,
    listen: SocketAddr,
    metrics_port: u16,
    extra: &[&str],
) -> Result<Daemon> {
    let bin = workspace_binary("signpost")?;
    let kc = cluster.component_kubeconfig(crate::deploy::Component::Dns)?;
    let mut args = vec![
        format!("--kubeconfig={}", kc.display()),
        "dns".to_owned(),
        format!("--listen={listen}"),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Daemon::spawn(
        cluster.node_namespace(),
        name,
        &bin,
        &args,
        cluster.logs().join(format!("{name}.log")),
    )
}

/// Runs the pinned CoreDNS on `port` (all addresses of the node namespace)
/// with the kubeadm Corefile's kubernetes plugin block, `pods insecure`, `ttl 30`.
pub fn start_coredns(cluster: &LocalCluster<Running>, name: &str, port: u16) -> Result<Daemon> {
    let bin = upstream::binary("coredns")?;
    let corefile = cluster.logs().join(format!("{name}.Corefile"));
    let text = format!(
        ".:{port} {{\n    errors\n    ready 127.0.0.1:{ready}\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {kc}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }}\n    prometheus 127.0.0.1:{prom}\n    loadbalance\n}}\n",
        ready = port + 1,
        prom = port + 2,
        kc = cluster.kubeconfig().display()
    );
    std::fs::write(&corefile, text)
        .map_err(Error::io(format!("writing {}", corefile.display())))?;
    Daemon::spawn(
        cluster.node_namespace(),
        name,
        &bin,
        &["-conf".to_owned(), corefile.display().to_string()],
        cluster.logs().join(format!("{name}.log")),
    )
}

/// Waits until `server` answers `dns-version.cluster.local TXT` with NOERROR
/// (both servers answer SERVFAIL or nothing before their first sync).
pub fn wait_ready(
    cluster: &LocalCluster<Running>,
    server: SocketAddr,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match query(
            cluster,
            server,
            "dns-version.cluster.local.",
            RecordType::TXT,
            false,
        ) {
            Ok(a) if a.rcode == "NoError" && !a.records.is_empty() => return Ok(()),
            r if Instant::now() > deadline => {
                return Err(Error::Dns(format!(
                    "DNS server {server} not ready within {within:?}: last {r:?}"
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
