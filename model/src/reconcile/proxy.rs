//! The service proxy's plan (PXY-8): the ops that turn the observed table
//! (read back from the kernel) into the desired one. One endpoint change is
//! one op.

use crate::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// One change to a data plane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyOp {
    /// Create a virtual service with no backends (it rejects until one is added).
    AddService {
        /// The virtual address.
        key: VirtualKey,
        /// ClientIP affinity timeout.
        affinity_timeout: Option<u32>,
    },
    /// Change a virtual service's affinity in place.
    EditService {
        /// The virtual address.
        key: VirtualKey,
        /// ClientIP affinity timeout.
        affinity_timeout: Option<u32>,
    },
    /// Remove a virtual service and its backends.
    DeleteService {
        /// The virtual address.
        key: VirtualKey,
    },
    /// Add a backend.
    AddBackend {
        /// The virtual address.
        key: VirtualKey,
        /// The backend.
        backend: SocketAddr,
    },
    /// Remove a backend.
    RemoveBackend {
        /// The virtual address.
        key: VirtualKey,
        /// The backend.
        backend: SocketAddr,
    },
}

/// Plans the ops that turn `observed` into `desired`.
pub fn plan(desired: &ProxyTable, observed: &ProxyTable) -> Vec<ProxyOp> {
    let mut ops = Vec::new();
    for key in observed.keys().filter(|k| !desired.contains_key(k)) {
        ops.push(ProxyOp::DeleteService { key: *key });
    }
    let empty = VirtualService::default();
    for (key, want) in desired {
        let have = match observed.get(key) {
            Some(have) => {
                if have.affinity_timeout != want.affinity_timeout {
                    ops.push(ProxyOp::EditService {
                        key: *key,
                        affinity_timeout: want.affinity_timeout,
                    });
                }
                have
            }
            None => {
                ops.push(ProxyOp::AddService {
                    key: *key,
                    affinity_timeout: want.affinity_timeout,
                });
                &empty
            }
        };
        for backend in have.backends.difference(&want.backends) {
            ops.push(ProxyOp::RemoveBackend {
                key: *key,
                backend: *backend,
            });
        }
        for backend in want.backends.difference(&have.backends) {
            ops.push(ProxyOp::AddBackend {
                key: *key,
                backend: *backend,
            });
        }
    }
    ops
}

/// PXY-11: the UDP flows to forget once `ops` are applied over `observed`:
/// every (virtual address, backend) pair the ops take away, one backend at a
/// time or with its whole virtual service. The data plane deletes the
/// connection-tracking entries of these pairs after the ops are in place, so
/// the next datagram of such a flow is balanced again.
pub fn stale_udp_flows(
    ops: &[ProxyOp],
    observed: &ProxyTable,
) -> BTreeSet<(VirtualKey, SocketAddr)> {
    let mut out = BTreeSet::new();
    for op in ops {
        match op {
            ProxyOp::RemoveBackend { key, backend } if key.protocol == Protocol::Udp => {
                out.insert((*key, *backend));
            }
            ProxyOp::DeleteService { key } if key.protocol == Protocol::Udp => {
                if let Some(vs) = observed.get(key) {
                    out.extend(vs.backends.iter().map(|b| (*key, *b)));
                }
            }
            _ => {}
        }
    }
    out
}

/// Applies ops to a table, as a data plane would; used by the model's
/// kernel and by tests of `plan`.
pub fn apply_ops(table: &mut ProxyTable, ops: &[ProxyOp]) {
    for op in ops {
        match op {
            ProxyOp::AddService {
                key,
                affinity_timeout,
            }
            | ProxyOp::EditService {
                key,
                affinity_timeout,
            } => {
                table.entry(*key).or_default().affinity_timeout = *affinity_timeout;
            }
            ProxyOp::DeleteService { key } => {
                table.remove(key);
            }
            ProxyOp::AddBackend { key, backend } => {
                table.entry(*key).or_default().backends.insert(*backend);
            }
            ProxyOp::RemoveBackend { key, backend } => {
                if let Some(vs) = table.get_mut(key) {
                    vs.backends.remove(backend);
                }
            }
        }
    }
}
