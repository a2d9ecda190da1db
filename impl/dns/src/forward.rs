//! Forwarding names that are not the cluster's (DNS-19) to the upstream
//! resolvers, over the protocol the client used, with loop detection: every
//! forwarded query is remembered until its reply, and a query that arrives
//! while it is outstanding came back to us: that upstream forwards to us.
//! The looping query is refused, logged and counted, and that upstream is
//! skipped for a while.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long an upstream found looping is skipped.
pub const LOOP_QUARANTINE: Duration = Duration::from_secs(30);

/// Why a forward did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolvers configured")]
    NoUpstream,
    /// Every upstream loops back to this server.
    #[error("every upstream forwards back to this server (loop)")]
    Loop,
    /// Every upstream failed.
    #[error("every upstream failed; last error: {0}")]
    Failed(io::Error),
}

/// The upstream resolvers and the queries in flight to them.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    /// (query id, lower-case name) of forwards in flight, with their upstream.
    outstanding: Mutex<HashMap<(u16, String), SocketAddr>>,
    looping: Mutex<HashMap<SocketAddr, Instant>>,
    seed: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

/// Reads the `nameserver` lines of a resolv.conf (port 53).
pub fn upstreams_from_resolv_conf(path: &Path) -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A zone index (`fe80::1%eth0`) is not supported: such lines are skipped.
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Forwarder {
            upstreams,
            timeout,
            outstanding: Mutex::new(HashMap::new()),
            looping: Mutex::new(HashMap::new()),
            seed: Default::default(),
            counter: AtomicU64::new(0),
        }
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Whether a query arriving now is one this server forwarded and is
    /// still waiting for: a loop. The upstream it went to is skipped for
    /// [`LOOP_QUARANTINE`].
    pub fn is_loop(&self, id: u16, name: &str) -> bool {
        let key = (id, name.to_ascii_lowercase());
        let upstream = self
            .outstanding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        match upstream {
            Some(u) => {
                self.looping
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(u, Instant::now());
                true
            }
            None => false,
        }
    }

    fn fresh_id(&self) -> u16 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        (self.seed.hash_one(n) & 0xffff) as u16
    }

    fn usable(&self) -> Vec<SocketAddr> {
        let mut looping = self.looping.lock().unwrap_or_else(|e| e.into_inner());
        looping.retain(|_, since| since.elapsed() < LOOP_QUARANTINE);
        self.upstreams
            .iter()
            .filter(|u| !looping.contains_key(u))
            .copied()
            .collect()
    }

    /// Sends `query` (a whole DNS message, at least 12 bytes) for `name` to
    /// the upstreams in turn and returns the first reply, its id set back to
    /// the query's. `tcp` picks the transport.
    pub async fn forward(
        &self,
        query: &[u8],
        name: &str,
        tcp: bool,
    ) -> Result<Vec<u8>, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let usable = self.usable();
        if usable.is_empty() {
            return Err(ForwardError::Loop);
        }
        let client_id = [query[0], query[1]];
        let mut last = io::Error::other("not tried");
        for upstream in usable {
            let id = self.fresh_id();
            let key = (id, name.to_ascii_lowercase());
            self.outstanding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), upstream);
            let mut msg = query.to_vec();
            msg[..2].copy_from_slice(&id.to_be_bytes());
            let result = tokio::time::timeout(self.timeout, async {
                if tcp {
                    exchange_tcp(upstream, &msg).await
                } else {
                    exchange_udp(upstream, &msg).await
                }
            })
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            self.outstanding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            match result {
                Ok(mut reply) if reply.len() >= 12 && reply[..2] == id.to_be_bytes() => {
                    reply[..2].copy_from_slice(&client_id);
                    return Ok(reply);
                }
                Ok(_) => last = io::Error::other(format!("bad reply from {upstream}")),
                Err(e) => last = io::Error::new(e.kind(), format!("{upstream}: {e}")),
            }
        }
        Err(ForwardError::Failed(last))
    }
}

async fn exchange_udp(upstream: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(msg).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Ignore stray datagrams whose id does not match.
        if n >= 12 && buf[..2] == msg[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("query too long"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await?;
    let n = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The distinct upstreams, in order.
pub fn dedup(upstreams: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    upstreams.into_iter().filter(|u| seen.insert(*u)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let dir = std::env::temp_dir().join(format!("signpost-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("resolv.conf");
        std::fs::write(
            &p,
            "# c\nsearch a b\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\noptions ndots:5\n",
        )
        .unwrap();
        let got = upstreams_from_resolv_conf(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_forward_to_nobody_fails_cleanly() {
        let f = Forwarder::new(Vec::new(), Duration::from_millis(100));
        let q = [0u8; 12];
        assert!(matches!(
            f.forward(&q, "example.org", false).await,
            Err(ForwardError::NoUpstream)
        ));
    }
}
