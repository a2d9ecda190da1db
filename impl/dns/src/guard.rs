//! Not an open resolver: forwarding only for clients in an allow-list
//! (default: private, loopback and link-local ranges, where a cluster's
//! Pods and nodes are), and response rate limiting (RRL) per client for the
//! answers an attacker can make this server send at will — forwarded ones
//! and NXDOMAIN. Over the rate, UDP responses are dropped, except every
//! second one, which "slips" out as an empty truncated answer so a real
//! client retries over TCP (TCP is never limited: its source is verified).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((_, "")) => return Err(format!("{s:?}: a prefix length after /")),
            Some((a, p)) => (a, p),
            None => (s, ""),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0 to {max}"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where a cluster's Pods and nodes are: RFC 1918, CGNAT, loopback,
/// link-local, unique-local IPv6.
pub const DEFAULT_FORWARD_ALLOW: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// The default allow-list.
pub fn default_forward_allow() -> Vec<Cidr> {
    DEFAULT_FORWARD_ALLOW
        .iter()
        .map(|c| c.parse().expect("a valid built-in CIDR"))
        .collect()
}

/// What to do with a rate-limited response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Under the rate: answer.
    Answer,
    /// Over it: send an empty truncated answer (the client retries over TCP).
    Slip,
    /// Over it: send nothing.
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limited: u64,
}

/// Token buckets per client address (IPv6 per /64).
#[derive(Debug)]
pub struct Rrl {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Clients tracked at most; past it, buckets idle for a second are dropped
/// (they are full again by then), and if none are, the table is cleared.
const MAX_CLIENTS: usize = 65_536;

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Rrl {
    /// `rate` responses a second per client, bursts of as many.
    pub fn new(rate: u32) -> Self {
        Rrl {
            rate: f64::from(rate.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one response's token for `client` at `now`.
    pub fn check(&self, client: IpAddr, now: Instant) -> Limit {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_CLIENTS {
            b.retain(|_, x| now.duration_since(x.at).as_secs_f64() < 1.0);
            if b.len() >= MAX_CLIENTS {
                b.clear();
            }
        }
        let rate = self.rate;
        let e = b.entry(client_key(client)).or_insert(Bucket {
            tokens: rate,
            at: now,
            limited: 0,
        });
        e.tokens = (e.tokens + now.duration_since(e.at).as_secs_f64() * rate).min(rate);
        e.at = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            return Limit::Answer;
        }
        e.limited += 1;
        if e.limited % 2 == 1 {
            Limit::Slip
        } else {
            Limit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.244.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(
            one.contains("127.0.0.1".parse().unwrap())
                && !one.contains("127.0.0.2".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "banana", "::/129", "1.2.3.4/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let d = default_forward_allow();
        assert!(d.iter().any(|c| c.contains("192.168.1.1".parse().unwrap())));
        assert!(!d.iter().any(|c| c.contains("203.0.113.7".parse().unwrap())));
    }

    #[test]
    fn over_the_rate_half_slip_and_half_drop_and_the_bucket_refills() {
        let r = Rrl::new(10);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..10).all(|_| r.check(ip, t0) == Limit::Answer));
        let over: Vec<Limit> = (0..4).map(|_| r.check(ip, t0)).collect();
        assert_eq!(over, [Limit::Slip, Limit::Drop, Limit::Slip, Limit::Drop]);
        // Another client is not limited by this one.
        assert_eq!(r.check("10.0.0.10".parse().unwrap(), t0), Limit::Answer);
        // A tenth of a second refills one response.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(r.check(ip, t1), Limit::Answer);
        assert_ne!(r.check(ip, t1), Limit::Answer);
    }
}
