//! A node's proxy table: which virtual address goes to which backends. It is
//! both what the oracle says should be programmed and what a data plane reads
//! back from the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::Protocol;

/// A virtual address: a ClusterIP (or node address) with protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualKey {
    /// The ClusterIP or node address.
    pub ip: IpAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
}

/// What a virtual address does with a new connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtualService {
    /// Backends picked from uniformly; empty means reject (PXY-3).
    pub backends: BTreeSet<SocketAddr>,
    /// ClientIP session affinity timeout in seconds (PXY-5).
    pub affinity_timeout: Option<u32>,
}

impl VirtualService {
    /// True when new connections are rejected.
    pub fn rejects(&self) -> bool {
        self.backends.is_empty()
    }
}

/// The whole table of one node.
pub type ProxyTable = BTreeMap<VirtualKey, VirtualService>;
