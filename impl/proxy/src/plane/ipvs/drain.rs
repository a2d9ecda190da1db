//! Graceful termination: a removed TCP/SCTP destination is set to weight 0
//! (IPVS sends it no new connections) and deleted once IPVS counts no
//! connection for it, or after a timeout. Weight-0 destinations found in the
//! kernel after a restart resume draining. The bookkeeping and the decision
//! are here, pure; the sink sends the messages.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use signpost_model::cluster::{ProxyTable, VirtualKey};

/// What to do with one draining destination, given what IPVS says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting.
    Wait,
    /// Delete it: no connection is left, or its time is up.
    Delete,
    /// Stop tracking it: it is gone already, or it is a backend again (weight > 0).
    Forget,
}

/// A destination as IPVS reports it, as much as draining needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its weight.
    pub weight: u32,
    /// Active plus inactive connections.
    pub connections: u32,
}

/// The decision for a destination draining since `since` (`None`: IPVS no
/// longer has it).
pub fn step(seen: Option<Seen>, since: Instant, now: Instant, timeout: Duration) -> Step {
    match seen {
        None => Step::Forget,
        Some(d) if d.weight > 0 => Step::Forget,
        Some(d) if d.connections == 0 || now.duration_since(since) >= timeout => Step::Delete,
        Some(_) => Step::Wait,
    }
}

/// Destinations draining, with when each began.
#[derive(Debug, Clone, Default)]
pub struct Draining {
    since: BTreeMap<(VirtualKey, SocketAddr), Instant>,
}

impl Draining {
    /// `backend` of `key` begins draining now (a removal).
    pub fn start(&mut self, key: VirtualKey, backend: SocketAddr) {
        self.since.insert((key, backend), Instant::now());
    }

    /// `backend` of `key` was found at weight 0: it drains from now unless it already was.
    pub fn adopt(&mut self, key: VirtualKey, backend: SocketAddr) {
        self.since
            .entry((key, backend))
            .or_insert_with(Instant::now);
    }

    /// Stops tracking destinations that are backends of `want` again, or
    /// whose virtual service is gone.
    pub fn settle(&mut self, want: &ProxyTable) {
        self.since.retain(|(k, b), _| {
            !want.get(k).is_some_and(|vs| vs.backends.contains(b)) && want.contains_key(k)
        });
    }

    /// Every draining destination with when it began.
    pub fn entries(&self) -> Vec<((VirtualKey, SocketAddr), Instant)> {
        self.since.iter().map(|(k, t)| (*k, *t)).collect()
    }

    /// Stops tracking one.
    pub fn remove(&mut self, key: &VirtualKey, backend: &SocketAddr) {
        self.since.remove(&(*key, *backend));
    }

    /// How many are draining.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// None is draining.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signpost_model::cluster::{Protocol, VirtualService};

    #[test]
    fn a_destination_is_deleted_when_idle_or_late_and_forgotten_when_back_or_gone() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let timeout = Duration::from_secs(5);
        let seen = |weight, connections| {
            Some(Seen {
                weight,
                connections,
            })
        };
        assert_eq!(step(seen(0, 3), t0, t0, timeout), Step::Wait);
        assert_eq!(step(seen(0, 0), t0, t0, timeout), Step::Delete);
        assert_eq!(step(seen(0, 3), t0, later, timeout), Step::Delete);
        assert_eq!(step(seen(1, 3), t0, later, timeout), Step::Forget);
        assert_eq!(step(None, t0, t0, timeout), Step::Forget);
    }

    #[test]
    fn settling_keeps_only_removed_backends_of_live_services() {
        let key = |port| VirtualKey {
            ip: "10.96.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        };
        let b1: SocketAddr = "10.244.0.2:80".parse().unwrap();
        let b2: SocketAddr = "10.244.0.3:80".parse().unwrap();
        let mut d = Draining::default();
        d.start(key(80), b1);
        d.start(key(80), b2);
        d.start(key(81), b1);
        let mut want = ProxyTable::new();
        want.insert(
            key(80),
            VirtualService {
                backends: [b2].into(),
                affinity_timeout: None,
            },
        );
        d.settle(&want);
        let left: Vec<_> = d.entries().into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![(key(80), b1)]);
    }
}
