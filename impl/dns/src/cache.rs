//! A cache for forwarded answers (CoreDNS's `cache` for names outside the
//! cluster; cluster answers come from the index and are never cached).
//! An answer is kept for the smallest TTL among its answer and authority
//! records, capped by the configured maximum, and served with its TTLs
//! counted down. Only NOERROR and NXDOMAIN answers that were not truncated
//! are kept; a negative answer without an SOA (nothing says how long it
//! holds) is not. Bounded: at [`CAPACITY`] entries, expired ones go first,
//! then the ones closest to expiring.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Metadata, ResponseCode};
use hickory_proto::rr::{Record, RecordType};

/// Entries at most (CoreDNS's default capacity is of the same order).
pub const CAPACITY: usize = 10_000;

/// The question an answer is for: lower-case name, type, class.
pub type Key = (String, u16, u16);

#[derive(Debug, Clone)]
struct Entry {
    metadata: Metadata,
    sections: [Vec<Record>; 3],
    stored: Instant,
    ttl: Duration,
}

/// A cached answer, TTLs counted down.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The upstream's header (the caller sets the client's ID).
    pub metadata: Metadata,
    /// Answers, authorities, additionals.
    pub sections: [Vec<Record>; 3],
}

/// The cache.
#[derive(Debug)]
pub struct AnswerCache {
    max_ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl AnswerCache {
    /// Keeps answers at most `max_ttl`.
    pub fn new(max_ttl: Duration) -> Self {
        Self::with_capacity(max_ttl, CAPACITY)
    }

    /// The same with a given bound on entries.
    pub fn with_capacity(max_ttl: Duration, capacity: usize) -> Self {
        AnswerCache {
            max_ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer for `key` if one is still fresh at `now`.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Hit> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(key)?;
        let age = now.saturating_duration_since(e.stored);
        if age >= e.ttl {
            entries.remove(key);
            return None;
        }
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let mut sections = e.sections.clone();
        for r in sections.iter_mut().flatten() {
            if r.record_type() != RecordType::OPT {
                r.ttl = r.ttl.saturating_sub(elapsed);
            }
        }
        Some(Hit {
            metadata: e.metadata,
            sections,
        })
    }

    /// Keeps `msg` for `key` if it may be cached; returns for how long.
    pub fn put(&self, key: Key, msg: &Message, now: Instant) -> Option<Duration> {
        let rcode = msg.metadata.response_code;
        if msg.metadata.truncation
            || !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain)
        {
            return None;
        }
        let negative = rcode == ResponseCode::NXDomain || msg.answers.is_empty();
        let ttl = if negative {
            // RFC 2308: the SOA's TTL, no longer than its minimum.
            msg.authorities.iter().find_map(|r| match &r.data {
                hickory_proto::rr::RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?
        } else {
            msg.answers
                .iter()
                .chain(&msg.authorities)
                .map(|r| r.ttl)
                .min()?
        };
        let ttl = Duration::from_secs(u64::from(ttl)).min(self.max_ttl);
        if ttl.is_zero() {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| now.saturating_duration_since(e.stored) < e.ttl);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.stored + e.ttl)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            key,
            Entry {
                metadata: msg.metadata,
                sections: [
                    msg.answers.clone(),
                    msg.authorities.clone(),
                    msg.additionals
                        .iter()
                        .filter(|r| r.record_type() != RecordType::OPT)
                        .cloned()
                        .collect(),
                ],
                stored: now,
                ttl,
            },
        );
        Some(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData};

    fn key(n: &str) -> Key {
        (n.into(), 1, 1)
    }

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new(7, MessageType::Response, hickory_proto::op::OpCode::Query);
        let name = Name::from_ascii("example.org.").unwrap();
        m.answers.push(Record::from_rdata(
            name.clone(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m.answers.push(Record::from_rdata(
            name,
            ttl + 100,
            RData::A(A::new(192, 0, 2, 2)),
        ));
        m
    }

    #[test]
    fn an_answer_is_kept_for_its_smallest_ttl_capped_and_counts_down() {
        let c = AnswerCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(
            c.put(key("example.org"), &answer(20), t0),
            Some(Duration::from_secs(20))
        );
        let hit = c
            .get(&key("example.org"), t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(hit.sections[0][0].ttl, 15);
        assert_eq!(hit.sections[0][1].ttl, 115);
        assert!(
            c.get(&key("example.org"), t0 + Duration::from_secs(20))
                .is_none(),
            "expired"
        );
        assert!(c.is_empty(), "an expired entry is dropped when asked");
        // The cap: a day-long TTL is kept 30 s.
        assert_eq!(
            c.put(key("example.org"), &answer(86_400), t0),
            Some(Duration::from_secs(30))
        );
        assert!(c.get(&key("other.org"), t0).is_none());
    }

    #[test]
    fn failures_truncated_and_unbounded_negatives_are_not_kept() {
        let c = AnswerCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let mut fail = answer(20);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(c.put(key("a"), &fail, t0), None);
        let mut tc = answer(20);
        tc.metadata.truncation = true;
        assert_eq!(c.put(key("a"), &tc, t0), None);
        let mut nx = Message::new(7, MessageType::Response, hickory_proto::op::OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(c.put(key("a"), &nx, t0), None, "no SOA: no negative TTL");
        let zone = Name::from_ascii("org.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, 12);
        nx.authorities
            .push(Record::from_rdata(zone, 900, RData::SOA(soa)));
        assert_eq!(
            c.put(key("a"), &nx, t0),
            Some(Duration::from_secs(12)),
            "the SOA minimum"
        );
        assert_eq!(c.put(key("b"), &answer(0), t0), None, "TTL 0 is not cached");
    }

    #[test]
    fn it_holds_at_most_its_capacity() {
        let c = AnswerCache::with_capacity(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        for (i, ttl) in [10, 20, 5, 25].into_iter().enumerate() {
            c.put(key(&format!("n{i}")), &answer(ttl), t0);
        }
        assert_eq!(c.len(), 3);
        assert!(
            c.get(&key("n2"), t0).is_none(),
            "the one closest to expiring went"
        );
        assert!(c.get(&key("n3"), t0).is_some());
    }
}
