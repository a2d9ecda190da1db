//! DNS questions and answers as the spec talks about them: names are
//! lower-case and fully qualified without the trailing dot.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Record types the cluster zone knows; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias.
    Cname,
    /// Service location.
    Srv,
    /// Reverse pointer.
    Ptr,
    /// Text.
    Txt,
    /// Start of authority.
    Soa,
    /// Name server.
    Ns,
    /// Any type (answered minimally).
    Any,
    /// Any other numeric type.
    Other(u16),
}

/// Record data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias target (absolute, no trailing dot).
    Cname(String),
    /// A service location.
    Srv {
        /// Priority (always 0 in the cluster zone).
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target name.
        target: String,
    },
    /// A reverse pointer target.
    Ptr(String),
    /// A text string.
    Txt(String),
}

impl RData {
    /// The type of this data.
    pub fn rtype(&self) -> RType {
        match self {
            RData::A(_) => RType::A,
            RData::Aaaa(_) => RType::Aaaa,
            RData::Cname(_) => RType::Cname,
            RData::Srv { .. } => RType::Srv,
            RData::Ptr(_) => RType::Ptr,
            RData::Txt(_) => RType::Txt,
        }
    }
}

/// A resource record without TTL or class (the oracle ignores both).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    /// Owner name, lower-case, no trailing dot.
    pub name: String,
    /// Data.
    pub data: RData,
}

/// A DNS question.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Question {
    /// The name as asked (any case, with or without trailing dot).
    pub name: String,
    /// The type asked for.
    pub rtype: RType,
}

impl Question {
    /// A question.
    pub fn new(name: impl Into<String>, rtype: RType) -> Self {
        Question {
            name: name.into(),
            rtype,
        }
    }
    /// DNS-12: the name, case-folded and without trailing dot.
    pub fn normalized_name(&self) -> String {
        self.name.trim_end_matches('.').to_ascii_lowercase()
    }
}

/// Response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rcode {
    /// Success (with or without records: NODATA is NoError with none).
    NoError,
    /// The name does not exist.
    NxDomain,
    /// The server cannot answer (not synced).
    ServFail,
    /// The server will not answer (AXFR).
    Refused,
}

/// What the cluster DNS does with a question.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DnsOutcome {
    /// Answered from the cluster data.
    Answer {
        /// Response code.
        rcode: Rcode,
        /// Answer section, as a set.
        records: BTreeSet<Record>,
    },
    /// Not ours: forwarded to the upstream resolvers (DNS-19).
    Forward,
}

impl DnsOutcome {
    /// An answer with records (NoError).
    pub fn records(records: BTreeSet<Record>) -> Self {
        DnsOutcome::Answer {
            rcode: Rcode::NoError,
            records,
        }
    }
    /// A bare response code.
    pub fn rcode(rcode: Rcode) -> Self {
        DnsOutcome::Answer {
            rcode,
            records: BTreeSet::new(),
        }
    }
    /// The response code, if answered.
    pub fn code(&self) -> Option<Rcode> {
        match self {
            DnsOutcome::Answer { rcode, .. } => Some(*rcode),
            DnsOutcome::Forward => None,
        }
    }
    /// True for NoError with no records.
    pub fn is_nodata(&self) -> bool {
        matches!(self, DnsOutcome::Answer { rcode: Rcode::NoError, records } if records.is_empty())
    }
}
